"""Hostile text in a real Chromium on every page that shows model or user text: prompts, responses, comments,
demonstrations, names, model versions and a job's log carry HTML, a script, Markdown links and images, a bare
URL, zero-width and right-to-left characters. Nothing runs (the payload would set window.__pwn), no img or a
element comes out of it, and on the pages that render text the invisible characters show as ⟦U+…⟧ tokens.

One app server, one sign-in (an admin, who sees the labeling pages too). Fails when /usr/bin/chromium is missing.
"""
from __future__ import annotations

import random

import pytest

from db.services import accounts, content, jobs, labels, projects, registry, tasks
from db.session import session_scope
from labeling_ui.devserver import launch_chromium, sign_in, streamlit_server
from tests.browser.test_ui_browser import _nav, _page, fresh_app_db

PAYLOAD = ('<img src=x onerror="window.__pwn=1"> <script>window.__pwn=2</script> '
           '[click me](javascript:window.__pwn=3) ![pic](http://evil.example/p.png) '
           '<a href="http://evil.example/a" onclick="window.__pwn=4">link</a> https://evil.example/bare '
           'zero\u200bwidth \u202egnp.exe\u202c')
# What a page may never contain, whatever the text around it
FORBIDDEN_JS = """() => ({
  pwn: window.__pwn === undefined ? null : window.__pwn,
  img: [...document.querySelectorAll('img')].filter(e => /evil|^x$|\\/x$/.test(e.getAttribute('src') || '')).length,
  a: [...document.querySelectorAll('a')].filter(e => /evil|javascript:/i.test(e.getAttribute('href') || '')).map(e => e.getAttribute('href')).join(' ; ') || 0,
  handlers: [...document.querySelectorAll('[onerror],[onclick]')].filter(e => /__pwn/.test(e.outerHTML)).length,
  scripts: [...document.querySelectorAll('script')].filter(e => /__pwn/.test(e.textContent)).length,
  text: document.body.innerText })"""


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory):
    d, url = fresh_app_db(tmp_path_factory, "inert")
    with session_scope(url) as s:
        boss = accounts.create_user(s, "boss", "boss-pass-1", role="admin", display_name="Boss " + PAYLOAD[:40])
        ann = accounts.create_user(s, "ann", "ann-pass-1", display_name="Ann " + PAYLOAD)
        p = projects.create_project(s, "hostile", labels_per_task=2, guidelines=PAYLOAD,
                                    settings={"min_demonstration_chars": 1})
        m1 = registry.get_or_register(s, "model-a", "base", "/m/a", config={"note": PAYLOAD})
        m2 = registry.get_or_register(s, "model-b", "sft", "/m/b", config={"note": PAYLOAD})
        rng = random.Random(0)
        made = {}
        for kind, n in (("compare", 2), ("rank", 3), ("demonstrate", 0)):
            for copy in range(2):
                pr, _ = content.add_prompt(s, p.id, text=f"{kind} {copy}: {PAYLOAD}")
                rids = [content.add_response(s, pr.id, f"response {i} {PAYLOAD}",
                                             model_version_id=(m1, m2)[i % 2].id)[0].id for i in range(n)]
                made[(kind, copy)] = tasks.create_task(s, p.id, kind, pr.id, rids, rng=rng)[0].id
        s.commit()
        # the second copy of each kind is labelled by both (history, review, agreement, dashboard, export show
        # their comments and texts); the first stays open for the labeling pages
        for who in (boss.id, ann.id):
            labels.submit_preference(s, who, made[("compare", 1)], "a", strength="slight", comment=PAYLOAD)
            labels.submit_demonstration(s, who, made[("demonstrate", 1)], f"demo by {who}: {PAYLOAD}")
        job = jobs.enqueue(s, "generate", {"project": "hostile", "models": ["model-a"]}, created_by=boss.id)
        log = d / "job.log"
        log.write_text(f"step 1 {PAYLOAD}\n")
        job.log_path, job.state, job.error = str(log), "failed", PAYLOAD
    with streamlit_server(url, log=d / "streamlit.log") as base:
        yield base


@pytest.fixture(scope="module")
def admin_page(hostile_app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch_chromium(pw)
        ctx, page = _page(b)
        sign_in(page, hostile_app, "boss", "boss-pass-1")
        yield page
        ctx.close()
        b.close()


# page (sidebar link) -> whether it shows model or user text as formatted text (so the invisible characters
# must show as tokens); the others show it in data grids and code blocks, which draw characters, never markup
PAGES = [("Compare", True), ("Rank", True), ("Demonstrate", True), ("My history", True),
         ("Review demonstrations", True), ("Dashboard", False), ("Agreement", False), ("Export", False),
         ("Model versions", False), ("Leaderboard", False), ("Jobs", False)]


def test_hostile_text_is_inert_and_unambiguous_on_every_page(admin_page):
    page, seen = admin_page, {}
    for name, formatted in PAGES:
        _nav(page, name)
        if formatted:  # the text is drawn (a loaded machine may draw it after the run settles)
            page.get_by_text("<script>window.__pwn=2</script>", exact=False).first.wait_for()
        page.wait_for_timeout(500)  # an injected image or script would have loaded and run by now
        got = page.evaluate(FORBIDDEN_JS)
        text = got.pop("text")
        seen[name] = got
        assert got == {"pwn": None, "img": 0, "a": 0, "handlers": 0, "scripts": 0}, (name, got)
        assert "Traceback" not in text, name
        if formatted:
            assert "<script>window.__pwn=2</script>" in text, (name, "the markup shows as text", text[-1500:])
            assert "⟦U+200B⟧" in text and "⟦U+202E⟧" in text, (name, "invisible characters are marked")
            assert "\u202e" not in text, (name, "no live right-to-left override")
    assert len(seen) == len(PAGES)
