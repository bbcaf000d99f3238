"""Demonstrate: write the ideal response to a prompt (minimum length from the project settings)."""
from __future__ import annotations

import streamlit as st

from db.services import assignment, labels, projects
from db.services.errors import ServiceError
from labeling_ui import auth
from labeling_ui.common import (
    current_task,
    db,
    done_with,
    empty_state,
    labeling_page,
    progress_line,
    render_prompt,
    rerun_fragment,
    seconds_on,
    show_error,
)
from labeling_ui.vocab import SKIP_REASONS

KIND = "demonstrate"

user, project = labeling_page()


@st.fragment
def demonstrate_body(project: dict) -> None:
    user = auth.require_user()
    pid = project["id"]
    minimum = int(projects.DEFAULT_SETTINGS["min_demonstration_chars"]
                  if project["settings"].get("min_demonstration_chars") is None
                  else project["settings"]["min_demonstration_chars"])
    flash = st.session_state.pop("_flash_demo", None)
    if flash:
        st.toast(flash, icon=":material/check:")
    top = st.columns([3, 2], vertical_alignment="bottom")
    top[0].subheader(f"Demonstrate · {project['name']}")
    with top[1]:
        progress_line(user["id"], pid, "demonstrate")
    view = current_task(user["id"], pid, KIND)
    if view is None:
        empty_state("No tasks left in this project — thanks!")
        return
    tid = view.task_id
    with st.container(border=True):
        st.caption(f"PROMPT · task #{tid}")
        render_prompt(view)
    key = f"demo_text_{tid}"
    st.text_area("Your ideal response (Markdown)", key=key, height=300,
                 placeholder="Write the response you would want the assistant to give.")
    n = len((st.session_state.get(key) or "").strip())
    st.caption(f"{n} characters · minimum {minimum}" + (" ✓" if n >= minimum else ""))
    arow = st.columns([2, 3, 1], vertical_alignment="bottom")
    submit = arow[0].button("Submit", key=f"demo_submit_{tid}", type="primary", icon=":material/send:",
                            width="stretch")
    reason = arow[1].selectbox("Skip reason", SKIP_REASONS, key=f"demo_skip_reason_{tid}",
                               label_visibility="collapsed")
    skip = arow[2].button("Skip", key=f"demo_skip_{tid}", width="stretch")
    if submit:
        try:
            with db() as s:
                _, created = labels.submit_demonstration(s, user["id"], tid, st.session_state.get(key) or "",
                                                         seconds=seconds_on(KIND, pid))
        except ServiceError as e:
            show_error(e)
            return
        st.session_state["_flash_demo"] = "Demonstration saved" if created else "Already saved"
        done_with(KIND, pid)
        rerun_fragment()
    if skip:
        try:
            with db() as s:
                assignment.skip_task(s, user["id"], tid, reason)
        except ServiceError as e:
            show_error(e)
            return
        st.session_state["_flash_demo"] = "Skipped"
        done_with(KIND, pid)
        rerun_fragment()


demonstrate_body(project)
