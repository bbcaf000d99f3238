"""The page's CSS: faithful model text (labeling_ui.text) and a labeling layout where every control stays in view.

Containers are found by their Streamlit keys (class `st-key-<key>`): `prompt_box`, `resp_*`, `action_bar`.
"""
from __future__ import annotations

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
/* Rank: four ordinals (1st..4th) fit a quarter of a 1280 px window. */
[class*="st-key-rank_"]:not([class*="st-key-rank_flags"]) [data-testid="stButtonGroup"] button { padding-left: .3rem; padding-right: .3rem;
                                                              min-width: 0; }
/* Choice, strength, flags and Submit stay on screen however long the task is. The bar's own wrapper is what
   sticks (the bar fills it exactly, so it has no room to move in). */
[data-testid="stLayoutWrapper"]:has(> .st-key-action_bar) { position: sticky; bottom: 0; z-index: 99; }
.st-key-action_bar { background: #fff; box-shadow: 0 -6px 12px -10px rgba(0, 0, 0, .35); }
@media (prefers-color-scheme: dark) { .st-key-action_bar { background: #0e1117; } }
"""


def apply() -> None:
    """Once per page run (app.py)."""
    st.html(f"<style>{TEXT_CSS}{_LAYOUT_CSS}</style>")
