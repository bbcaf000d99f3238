"""Demonstrate: write the ideal response to a prompt (minimum length from the project settings)."""
from __future__ import annotations

import streamlit as st

from db.services import labels, projects
from labeling_ui.common import (
    labeling_page,
    render_mode,
    render_prompt,
    saved_message,
    seconds_on,
    skip_action,
    submit_skip_row,
    task_action,
    task_header,
)
from labeling_ui.vocab import plural

KIND = "demonstrate"

user, project = labeling_page()


@st.fragment
def demonstrate_body(project: dict) -> None:
    head = task_header(KIND, project, "Demonstrate")
    if head is None:
        return
    user, view = head
    pid = project["id"]
    minimum = int(projects.DEFAULT_SETTINGS["min_demonstration_chars"]
                  if project["settings"].get("min_demonstration_chars") is None
                  else project["settings"]["min_demonstration_chars"])
    tid = view.task_id
    with st.container(border=True):
        st.caption(f"PROMPT · task #{tid}")
        render_prompt(view, render_mode(project))
    key = f"demo_text_{tid}"
    st.text_area("Your ideal response (Markdown)", key=key, height=300,
                 placeholder="Write the response you would want the assistant to give.")
    # No live count: the browser sends a text area's value only on blur or Ctrl+Enter, so a count drawn here read
    # "0 characters" with 61 typed. The length is checked at Submit, with the count in the message.
    st.caption(f"At least {plural(minimum, 'character')}: checked when you submit.")
    submit, skip_reason = submit_skip_row("demo", tid, keys=False)  # Enter and S belong to the text area
    if submit:
        text = st.session_state.get(key) or ""
        task_action(KIND, pid, lambda s: labels.submit_demonstration(
            s, user["id"], tid, text, seconds=seconds_on(KIND, pid)),
            lambda r: saved_message(r[1], r[0].text.strip() == text.strip(), "Demonstration saved", "text"))
    if skip_reason:
        skip_action(KIND, pid, user["id"], tid, skip_reason)


demonstrate_body(project)
