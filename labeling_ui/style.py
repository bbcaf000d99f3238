"""The page's CSS: faithful model text (labeling_ui.text) and a labeling layout where every control stays in view.

Containers are found by their Streamlit keys (class `st-key-<key>`): `prompt_box`, `resp_*`, `action_bar`.
"""
from __future__ import annotations

import re

import streamlit as st

from labeling_ui.text import TEXT_CSS

# Streamlit's own light and dark page colours: the sticky bar must hide what scrolls under it. Its default
# theme follows the system setting, as prefers-color-scheme does.
_LAYOUT_CSS = """
/* Streamlit leaves ~6rem above the page under its transparent header: 2.25rem clears its buttons. */
.stMainBlockContainer { padding-top: 2.25rem; padding-bottom: .25rem; }
/* The sidebar's header (its collapse button only: no logo) took 60 px above the links. */
[data-testid="stSidebarHeader"] { height: 2.25rem; min-height: 0; margin-bottom: 0; padding-top: .25rem; padding-bottom: 0; }
/* Labeling panes are as tall as their text, up to what leaves the action bar in view, and scroll inside. */
.st-key-prompt_box { max-height: 22vh; overflow-y: auto; }
[class*="st-key-resp_"] { max-height: max(150px, calc(100vh - 520px)); overflow-y: auto; }
/* A pane whose text runs past its bottom says so (the page script sets data-more): headless and overlay
   scrollbars are invisible, and an annotator who does not know there is more judges half a response. */
.st-key-prompt_box[data-more]::after, [class*="st-key-resp_"][data-more]::after {
  content: "\\25BC  more below: scroll this box"; position: sticky; bottom: 0; display: block; flex: none;
  margin-top: -.25rem; padding: .6rem 0 .1rem; text-align: center; font-size: .8rem; color: #555;
  background: linear-gradient(rgba(255, 255, 255, 0), #fff 55%); pointer-events: none; }
@media (prefers-color-scheme: dark) {
  .st-key-prompt_box[data-more]::after, [class*="st-key-resp_"][data-more]::after {
    color: #bbb; background: linear-gradient(rgba(14, 17, 23, 0), #0e1117 55%); } }
/* Rank: four ordinals (1st..4th) fit a quarter of a 1280 px window. */
[class*="st-key-rank_"]:not([class*="st-key-rank_flags"]) [data-testid="stButtonGroup"] button { padding-left: .3rem; padding-right: .3rem;
                                                              min-width: 0; }
/* Choice, strength, flags and Submit stay on screen however long the task is. The bar's own wrapper is what
   sticks (the bar fills it exactly, so it has no room to move in). */
[data-testid="stLayoutWrapper"]:has(> .st-key-action_bar) { position: sticky; bottom: 0; z-index: 99; }
.st-key-action_bar { background: #fff; box-shadow: 0 -6px 12px -10px rgba(0, 0, 0, .35); }
@media (prefers-color-scheme: dark) { .st-key-action_bar { background: #0e1117; } }
/* A script-only st.html (style.page_script, common.scroll_to_top) has no height but took a gap in its column. */
[data-testid="stElementContainer"]:has(> [data-testid="stHtml"] > script:only-child) { display: none; }
/* An admin's 16 links pushed "Sign out" below a 720 px window (y = 762): on short windows the links sit closer
   together (no gap between them, 26 px rows), so the name and Sign out under them stay on screen. */
@media (max-height: 800px) {
  [data-testid="stSidebarNav"] li { margin-top: 0; margin-bottom: 0; }
  [data-testid="stSidebarNavLink"] { height: 26px; line-height: 26px; }
  [data-testid="stSidebarUserContent"] { padding-top: .5rem; }
}
"""

# Script for every signed-in page (app.py puts it in the sidebar, where its empty element takes no room in a
# labeling layout). Once per browser tab:
# - a copy of displayed text leaves out the word joiners (U+2060) that labeling_ui.text puts in so Streamlit keeps
#   the characters; a model's own invisible characters are shown as ⟦U+…⟧ tokens, so every joiner is the page's.
#   A copy from a field (a demonstration being written) is left alone.
# - the "Raw" switch gives its focus back after a mouse click: Streamlit ignores shortcut keys while an <input> has focus,
#   so after showing one response raw, 1/2/Enter did nothing until the annotator clicked elsewhere.
_PAGE_JS = """
if (!window.__instructloopPage) {
  window.__instructloopPage = true;
  const J = /\u2060/g;
  document.addEventListener('copy', (e) => {
    // a copy from a field has the field as its target: what was typed there is copied as typed
    const t = e.target instanceof Element ? e.target : e.target.parentElement, sel = document.getSelection();
    if (!sel || sel.rangeCount === 0 || (t && t.closest('input, textarea, [contenteditable="true"]'))) return;
    const text = sel.toString();
    if (!text.includes('\u2060')) return;
    const box = document.createElement('div');
    for (let i = 0; i < sel.rangeCount; i++) box.appendChild(sel.getRangeAt(i).cloneContents());
    e.clipboardData.setData('text/plain', text.replace(J, ''));
    e.clipboardData.setData('text/html', box.innerHTML.replace(J, ''));
    e.preventDefault();
  });
  // panes that scroll inside say "more below" until their end is in view (style.py's [data-more]); checked on
  // every scroll and twice a second, as Streamlit redraws panes without an event a page script could hear
  const PANES = '.st-key-prompt_box, [class*="st-key-resp_"]';
  const mark = () => document.querySelectorAll(PANES).forEach((el) => {
    const more = el.scrollHeight - el.clientHeight - el.scrollTop > 4;
    if (more !== el.hasAttribute('data-more')) el.toggleAttribute('data-more', more);
  });
  document.addEventListener('scroll', mark, true);
  setInterval(mark, 500);
  // the switch focuses its hidden input itself, after the click (no change event): blur once the click is done
  const RAW = '[class*="st-key-raw_"]';
  document.addEventListener('click', (e) => {
    if (!(e.target instanceof Element && e.target.closest(RAW))) return;
    setTimeout(() => { const a = document.activeElement; if (a && a.closest(RAW)) a.blur(); }, 0);
  }, true);
}
"""


def apply() -> None:
    """Once per page run (app.py)."""
    st.html(f"<style>{TEXT_CSS}{_LAYOUT_CSS}</style>")


def page_script() -> None:
    """Once per signed-in page run, in the sidebar (app.py): see _PAGE_JS."""
    # The browser's sanitizer (DOMPurify) silently drops a script whose text has "<" before a letter, "/" or "!"
    # (as a tag would): say so here rather than lose the script.
    bad = re.search(r"<[/\w!]", _PAGE_JS)
    if bad:
        raise RuntimeError(f"labeling_ui/style.py _PAGE_JS: {bad.group()!r} would make the browser drop the script")
    st.html(f"<script>{_PAGE_JS}</script>", unsafe_allow_javascript=True)
