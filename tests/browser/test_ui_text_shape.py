"""Formatted (markdown) mode keeps the visible shape of a response in a real Chromium (issue 14): `- ` lines keep
their dash (no bullet glyph, no indent), and a run of blank lines shows as many lines as were written (Markdown
merged three line breaks into one paragraph gap). The pane's visible text must equal the stored text.

Fails when /usr/bin/chromium is missing.
"""
from __future__ import annotations

import pytest

from db.services import accounts, content, projects, tasks
from db.session import session_scope
from labeling_ui.devserver import launch_chromium, sign_in, streamlit_server
from tests.browser.test_ui_browser import _page, _pick_project, _visible, fresh_app_db

SHAPE = ("Steps:\n- a dash line\n- another one\n* a star line\n\n\nthree line breaks above\n\n"
         "one blank line above, **bold** stays bold")


@pytest.fixture(scope="module")
def shape_app(tmp_path_factory):
    d, url = fresh_app_db(tmp_path_factory, "shape")
    with session_scope(url) as s:
        accounts.create_user(s, "ann", "ann-pass-1")
        p = projects.create_project(s, "shape")
        pr, _ = content.add_prompt(s, p.id, text="Keep the shape.", source="test")
        ids = [content.add_response(s, pr.id, t)[0].id for t in (SHAPE, "short B")]
        tid = tasks.create_task(s, p.id, "compare", pr.id, ids, shuffle=False)[0].id
    with streamlit_server(url, log=d / "streamlit.log") as base:
        yield base, tid


def test_dash_lines_and_blank_line_runs_show_as_written(shape_app):
    from playwright.sync_api import sync_playwright

    base, tid = shape_app
    with sync_playwright() as pw:
        b = launch_chromium(pw)
        ctx, page = _page(b)
        sign_in(page, base, "ann", "ann-pass-1")
        _pick_project(page, "shape")
        page.get_by_text(f"PROMPT · task #{tid}").wait_for()
        pane = page.locator(f".st-key-mt_resp_{tid}_A")
        assert _visible(pane) == SHAPE.replace("**", "")  # emphasis still renders: only its markers go
        assert pane.locator("li").count() == 0 and pane.locator("strong").count() == 1
        ctx.close()
        b.close()
