"""InstructLoop labeling app: `streamlit run labeling_ui/app.py`.

Navigation depends on who is signed in: visitors get only the sign-in page (every URL shows it),
annotators get the labeling pages and their history (admin URLs show a refusal), admins get all.
"""
from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st

from db import settings
from labeling_ui import auth, style
from labeling_ui.text import safe_markdown

st.set_page_config(page_title="InstructLoop", page_icon=":material/thumbs_up_down:", layout="wide")

# A setting that cannot be read (INSTRUCTLOOP_MAX_PROMPT_CHARS=abc) is a message on every page, not a traceback.
_bad_settings = settings.problems()
if _bad_settings:
    for _problem in _bad_settings:
        st.error(f"The app cannot start: {_problem}. Fix the variable and restart the app.")
    st.stop()

HERE = Path(__file__).parent
V = HERE / "views"

ANNOTATOR_PATHS = ["compare", "rank", "rate", "demonstrate", "history"]
ANNOTATOR_PAGES = [
    st.Page(V / "compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page(V / "rank.py", title="Rank", icon=":material/format_list_numbered:", url_path="rank"),
    st.Page(V / "rate.py", title="Rate", icon=":material/thumbs_up_down:", url_path="rate"),
    st.Page(V / "demonstrate.py", title="Demonstrate", icon=":material/edit_note:", url_path="demonstrate"),
    st.Page(V / "history.py", title="My history", icon=":material/history:", url_path="history"),
]
ADMIN_PAGES = [
    ("dashboard.py", "Dashboard", ":material/monitoring:", "dashboard"),
    ("agreement.py", "Agreement", ":material/handshake:", "agreement"),
    ("review.py", "Review demonstrations", ":material/rate_review:", "review"),
    ("projects.py", "Projects", ":material/folder:", "projects"),
    ("users.py", "Users", ":material/group:", "users"),
    ("imports.py", "Import", ":material/upload_file:", "import"),
    ("models.py", "Model versions", ":material/model_training:", "models"),
    ("jobs.py", "Jobs", ":material/play_circle:", "jobs"),
    ("leaderboard.py", "Leaderboard", ":material/leaderboard:", "leaderboard"),
    ("export.py", "Export", ":material/download:", "export"),
    ("audit.py", "Audit log", ":material/policy:", "audit"),
]

user = auth.current_user()
auth.write_cookie()
style.apply()
if user is None:
    # Every app URL shows the sign-in form (no "page not found"), and keeps its path so that a deep link
    # opens its page once signed in.
    paths = ANNOTATOR_PATHS + [u for *_, u in ADMIN_PAGES]
    pg = st.navigation([st.Page(auth.sign_in_page, title="Sign in", icon=":material/login:",
                                url_path="signin", default=True)]
                       + [st.Page(auth.sign_in_page, title="Sign in", url_path=u, visibility="hidden")
                          for u in paths], position="hidden")
else:
    with st.sidebar:
        # the role beside the name (one line: Sign out stays on a 720 px screen under an admin's links), unless it
        # would only say the name again ("annotator / annotator")
        name, role = user["display_name"], user["role"]
        st.markdown(f"**{safe_markdown(name)}**" + (f" · :gray[{role}]" if name.strip().lower() != role else ""),
                    help=f"signed in as {user['username']} ({role})")
        if st.button("Sign out", icon=":material/logout:", key="signout_btn"):
            auth.sign_out("You have signed out.")
            st.rerun()
        style.page_script()

    def to_compare() -> None:
        st.switch_page(ANNOTATOR_PAGES[0])

    # Streamlit serves the default page at "/" only: had Compare been the default, /compare (a bookmark, a deep
    # link kept through the sign-in) would say "Page not found". So "/" is a hidden page that forwards to it.
    alias = st.Page(to_compare, title="Start", url_path="start", visibility="hidden", default=True)
    if user["role"] == "admin":
        admin = [st.Page(V / f, title=t, icon=i, url_path=u) for f, t, i, u in ADMIN_PAGES]
        # expanded: every link, never a "View more" that hides Export on a 720 px screen
        pg = st.navigation({"Label": ANNOTATOR_PAGES, "Admin": admin, "": [alias]}, expanded=True)
    else:
        # Admin URLs stay registered (hidden) so that opening one shows a refusal, not a random page.
        hidden = [st.Page(auth.refuse, title=t, url_path=u, visibility="hidden") for _, t, _, u in ADMIN_PAGES]
        pg = st.navigation({"Label": ANNOTATOR_PAGES, "": [alias, *hidden]})
pg.run()
