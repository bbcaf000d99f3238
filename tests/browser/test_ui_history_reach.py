"""My history at 1280x720 in a real Chromium (issue 14 trial): Save revision is in the window without scrolling
(it sat at y=734 under the form), and "Revision saved." shows in the window after a save (it showed at the top
of the page, ~1,100 px above the button).

Fails when /usr/bin/chromium is missing.
"""
from __future__ import annotations

import pytest

from db.services import accounts, assignment, content, labels, projects, tasks
from db.session import session_scope
from labeling_ui.devserver import launch_chromium, settle, sign_in, streamlit_server
from tests.browser.test_ui_browser import _nav, _page, fresh_app_db

IN_VIEW_JS = """el => { const r = el.getBoundingClientRect();
                        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }"""


@pytest.fixture(scope="module")
def history_app(tmp_path_factory):
    d, url = fresh_app_db(tmp_path_factory, "history")
    with session_scope(url) as s:
        ann = accounts.create_user(s, "ann", "ann-pass-1")
        p = projects.create_project(s, "hist")
        for i in range(8):  # a table of 8 labels above the form, as after a short session
            pr, _ = content.add_prompt(s, p.id, text=f"{i}+{i}=", source="test")
            ids = [content.add_response(s, pr.id, t)[0].id for t in (str(2 * i), str(2 * i + 1))]
            tasks.create_task(s, p.id, "compare", pr.id, ids, shuffle=False)
        s.flush()
        for _ in range(8):
            view = assignment.next_task(s, ann.id, p.id, kind="compare")
            labels.submit_preference(s, ann.id, view.task_id, "a", strength="slight")
    with streamlit_server(url, log=d / "streamlit.log") as base:
        yield base


def test_save_revision_and_its_confirmation_are_in_the_window(history_app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch_chromium(pw)
        ctx, page = _page(b)
        sign_in(page, history_app, "ann", "ann-pass-1")
        _nav(page, "My history")
        save = page.get_by_role("button", name="Save revision")
        save.wait_for()
        assert save.evaluate(IN_VIEW_JS), ("Save revision is below the fold", save.bounding_box())
        page.get_by_text("B is better", exact=True).click()
        save.click()
        done = page.get_by_text("Revision saved.")
        done.wait_for()
        settle(page)
        assert done.evaluate(IN_VIEW_JS), ("the confirmation is out of view", done.bounding_box())
        ctx.close()
        b.close()
