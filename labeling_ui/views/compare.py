"""Compare: prompt, responses A and B side by side, choice + strength + flags, submit / skip."""
from __future__ import annotations

import streamlit as st

from db.models import FLAGS, STRENGTHS
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
from labeling_ui.vocab import CHOICES, FLAG_NAMES, STRENGTH_KEYS

KIND = "compare"
user, project = labeling_page()
with st.sidebar.expander("Keyboard shortcuts", icon=":material/keyboard:"):
    st.markdown("**1** A better · **2** B better · **3** tie · **4** both bad  \n"
                "**Q / W / E** slight / clear / strong  \n**Enter** submit · **S** skip · **G** guidelines")


def _set_current(prefix: str, value: str, pid: int, tid: int) -> None:
    """Button callback: set the choice/strength of task `tid`, if it is still the task on screen.

    Keys carry the task id: a shortcut pressed again while the next task is painting (the first press looked
    lost) must not label a task the annotator has not seen yet; it is dropped instead.
    """
    view = st.session_state.get(held_key(KIND, pid))
    if view is not None and view.task_id == tid:
        st.session_state[f"{prefix}_{tid}"] = value


@st.fragment
def compare_body(project: dict) -> None:
    head = task_header(KIND, project, "Compare")
    if head is None:
        return
    user, view = head
    pid = project["id"]
    tid = view.task_id
    mode = render_mode(project)
    ck, sk, fk, mk = (f"cmp_choice_{tid}", f"cmp_strength_{tid}", f"cmp_flags_{tid}", f"cmp_comment_{tid}")
    st.session_state.setdefault(sk, "clear")

    prompt_box = st.container(border=True, key="prompt_box")
    cols = st.columns(2, gap="medium")
    # The buttons are sent before the task's text: by the time the new prompt shows, its shortcuts (keyed by
    # this task) are live, so a key pressed on seeing it counts, and a press on the old task's buttons is one
    # made before the new task was visible (dropped by _set_current).
    choice = st.session_state.get(ck)
    asking_skip = skipping("cmp", tid)  # 1-4 choose a skip reason meanwhile
    # One compact bar (sticky at the bottom of the window, labeling_ui.style): choice and strength in one row,
    # flags and comment in the next, then Submit / Skip.
    with st.container(border=True, key="action_bar", gap="small"):
        row = st.columns([1, 1, 1, 1, 0.1, 0.8, 0.8, 0.8], vertical_alignment="center")
        for c, (value, label, key) in zip(row, CHOICES):
            c.button(label, key=f"btn_{value}_{tid}", shortcut=None if asking_skip else key, width="stretch",
                     type="primary" if choice == value else "secondary", on_click=_set_current,
                     args=("cmp_choice", value, pid, tid))
        strength_help = "How much better (A/B only; ignored for tie and both bad)"
        for c, s_ in zip(row[5:], STRENGTHS):
            c.button(s_.capitalize(), key=f"btn_{s_}_{tid}", shortcut=STRENGTH_KEYS[s_], width="stretch",
                     type="primary" if st.session_state[sk] == s_ and choice in (None, "a", "b") else "secondary",
                     on_click=_set_current, args=("cmp_strength", s_, pid, tid), help=strength_help)
        # Flags get a row of their own: pills do not wrap, and beside another field the last ones were cut off.
        st.pills("Flags", list(FLAGS), format_func=FLAG_NAMES.get, selection_mode="multi", key=fk,
                 label_visibility="collapsed")
        submit, skip_reason = submit_skip_row("cmp", tid, middle=lambda: st.text_input(
            "Comment (optional)", key=mk, placeholder="Comment (optional)", label_visibility="collapsed"))
        msg = st.empty()
    with prompt_box:
        st.caption(f"PROMPT · task #{tid}")
        render_prompt(view, mode)
    for col, letter, resp in zip(cols, "AB", view.responses):
        with col, st.container(border=True, key=f"resp_{letter}"):
            raw = raw_toggle(f"Response {letter}", f"raw_{tid}_{letter}")
            show_text(resp["text"], key=f"resp_{tid}_{letter}", mode=mode, raw=raw)

    if submit:
        if choice is None:
            msg.warning("Pick one first: A better (1), B better (2), tie (3) or both bad (4).")
            return
        strength = st.session_state[sk] if choice in ("a", "b") else None
        task_action(KIND, pid, lambda s: labels.submit_preference(
            s, user["id"], tid, choice, strength=strength, flags=st.session_state.get(fk) or [],
            comment=st.session_state.get(mk, ""), seconds=seconds_on(KIND, pid)),
            lambda r: saved_message(r[1], (r[0].choice, r[0].strength) == (choice, strength), "Saved", "answer"))
    if skip_reason:
        skip_action(KIND, pid, user["id"], tid, skip_reason)


compare_body(project)
