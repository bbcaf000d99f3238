"""Rate: one prompt and one response; good or bad, an optional 1-7 score, flags, comment, submit / skip."""
from __future__ import annotations

import streamlit as st

from db.models import FLAGS, LIKERT_RANGE
from db.services import labels
from labeling_ui.common import (
    held_key,
    labeling_page,
    raw_toggle,
    render_mode,
    render_prompt,
    saved_message,
    seconds_on,
    show_text,
    skip_action,
    skipping,
    submit_skip_row,
    task_action,
    task_header,
)
from labeling_ui.vocab import FLAG_NAMES, LIKERT_HELP, RATINGS

KIND = "rate"
SCORES = list(range(LIKERT_RANGE[0], LIKERT_RANGE[1] + 1))
user, project = labeling_page()
with st.sidebar.expander("Keyboard shortcuts", icon=":material/keyboard:"):
    st.markdown("**1** good · **2** bad  \n**Enter** submit · **S** skip · **G** guidelines  \n"
                "The 1–7 score is optional: click it")


def _set_current(key: str, value: object, pid: int, tid: int) -> None:
    """Button callback: set the answer of task `tid`, if it is still the task on screen (a shortcut pressed
    again while the next task paints must not rate a response the annotator has not seen)."""
    view = st.session_state.get(held_key(KIND, pid))
    if view is not None and view.task_id == tid:
        st.session_state[key] = value


@st.fragment
def rate_body(project: dict) -> None:
    head = task_header(KIND, project, "Rate")
    if head is None:
        return
    user, view = head
    pid, tid = project["id"], view.task_id
    mode = render_mode(project)
    gk, lk, fk, mk = f"rate_good_{tid}", f"rate_likert_{tid}", f"rate_flags_{tid}", f"rate_comment_{tid}"

    prompt_box = st.container(border=True, key="prompt_box")
    resp_box = st.container(border=True, key="resp_rate")
    # The buttons go out before the task's text (as on Compare): once the text shows, its shortcuts are live.
    good = st.session_state.get(gk)
    asking_skip = skipping("rate", tid)  # 1-4 choose a skip reason meanwhile
    with st.container(border=True, key="action_bar", gap="small"):
        row = st.columns([1, 1, 0.1, 2.6], vertical_alignment="center")
        for c, (value, label, key, icon) in zip(row, RATINGS):
            c.button(label, key=f"btn_{'good' if value else 'bad'}_{tid}", shortcut=None if asking_skip else key,
                     icon=icon, width="stretch", type="primary" if good is value else "secondary",
                     on_click=_set_current, args=(gk, value, pid, tid))
        row[3].segmented_control("Score (optional)", SCORES, key=lk, help=LIKERT_HELP, width="stretch")
        st.pills("Flags", list(FLAGS), format_func=FLAG_NAMES.get, selection_mode="multi", key=fk,
                 label_visibility="collapsed")
        submit, skip_reason = submit_skip_row("rate", tid, middle=lambda: st.text_input(
            "Comment (optional)", key=mk, placeholder="Comment (optional)", label_visibility="collapsed"))
        msg = st.empty()
    with prompt_box:
        st.caption(f"PROMPT · task #{tid}")
        render_prompt(view, mode)
    with resp_box:
        raw = raw_toggle("Response", f"raw_{tid}_rate")
        show_text(view.responses[0]["text"], key=f"resp_{tid}_rate", mode=mode, raw=raw)

    if submit:
        if good is None:
            msg.warning("Pick one first: Good (1) or Bad (2). The 1–7 score is optional.")
            return
        likert = st.session_state.get(lk)
        task_action(KIND, pid, lambda s: labels.submit_rating(
            s, user["id"], tid, good, likert=likert, flags=st.session_state.get(fk) or [],
            comment=st.session_state.get(mk, ""), seconds=seconds_on(KIND, pid)),
            lambda r: saved_message(r[1], (r[0].good, r[0].likert) == (good, likert), "Saved", "rating"))
    if skip_reason:
        skip_action(KIND, pid, user["id"], tid, skip_reason)


rate_body(project)
