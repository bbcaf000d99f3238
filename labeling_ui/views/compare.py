"""Compare: prompt, responses A and B side by side, choice + strength + flags, submit / skip."""
from __future__ import annotations

import streamlit as st

from db.models import FLAGS, STRENGTHS
from db.services import labels
from labeling_ui.common import (
    held_key,
    labeling_page,
    render_prompt,
    seconds_on,
    show_text,
    skip_action,
    task_action,
    task_header,
)
from labeling_ui.vocab import CHOICES, FLAG_NAMES, SKIP_REASONS, STRENGTH_KEYS

KIND = "compare"
user, project = labeling_page()
with st.sidebar.expander("Keyboard shortcuts", icon=":material/keyboard:"):
    st.markdown("**1** A better · **2** B better · **3** tie · **4** both bad  \n"
                "**Q / W / E** slight / clear / strong  \n**Enter** submit · **S** skip · **G** guidelines")


def _set_current(prefix: str, value: str, pid: int) -> None:
    """Button callback: set the choice/strength of the task on screen *now*.

    Keys and callback arguments are stable across tasks on purpose: a shortcut pressed while the next
    task is still painting reaches the button rendered for the previous task, and must still count.
    """
    view = st.session_state.get(held_key(KIND, pid))
    if view is not None:
        st.session_state[f"{prefix}_{view.task_id}"] = value


@st.fragment
def compare_body(project: dict) -> None:
    head = task_header(KIND, project, "Compare")
    if head is None:
        return
    user, view = head
    pid = project["id"]
    tid = view.task_id
    ck, sk, fk, mk = (f"cmp_choice_{tid}", f"cmp_strength_{tid}", f"cmp_flags_{tid}", f"cmp_comment_{tid}")
    st.session_state.setdefault(sk, "clear")

    with st.container(border=True, key="prompt_box"):
        st.caption(f"PROMPT · task #{tid}")
        render_prompt(view)
    cols = st.columns(2, gap="medium")
    for col, letter, resp in zip(cols, "AB", view.responses):
        with col, st.container(border=True, height=440, key=f"resp_{letter}"):
            st.markdown(f"#### Response {letter}")
            show_text(resp["text"])

    choice = st.session_state.get(ck)
    with st.container(border=True, key="action_bar"):
        row = st.columns(4)
        for c, (value, label, key) in zip(row, CHOICES):
            c.button(label, key=f"btn_{value}", shortcut=key, width="stretch",
                     type="primary" if choice == value else "secondary", on_click=_set_current,
                     args=("cmp_choice", value, pid))
        opts = st.columns([1, 1], vertical_alignment="bottom")
        with opts[0]:
            st.caption("Strength" + ("" if choice in (None, "a", "b") else " (only for A/B)"))
            srow = st.columns(3)
            for c, s_ in zip(srow, STRENGTHS):
                c.button(s_.capitalize(), key=f"btn_{s_}", shortcut=STRENGTH_KEYS[s_], width="stretch",
                         type="primary" if st.session_state[sk] == s_ else "secondary",
                         on_click=_set_current, args=("cmp_strength", s_, pid))
        with opts[1]:
            st.text_input("Comment (optional)", key=mk, placeholder="Anything the reviewers should know")
        st.pills("Flags", list(FLAGS), format_func=FLAG_NAMES.get, selection_mode="multi", key=fk)
        arow = st.columns([2, 3, 1], vertical_alignment="bottom")
        submit = arow[0].button("Submit", key="cmp_submit", type="primary", shortcut="Enter",
                                icon=":material/send:", width="stretch")
        reason = arow[1].selectbox("Skip reason", SKIP_REASONS, key=f"skip_reason_{tid}",
                                   label_visibility="collapsed")
        skip = arow[2].button("Skip", key="cmp_skip", shortcut="S", width="stretch")
        msg = st.empty()

    if submit:
        if choice is None:
            msg.warning("Pick one first: A better (1), B better (2), tie (3) or both bad (4).")
            return
        strength = st.session_state[sk] if choice in ("a", "b") else None
        task_action(KIND, pid, lambda s: labels.submit_preference(
            s, user["id"], tid, choice, strength=strength, flags=st.session_state.get(fk) or [],
            comment=st.session_state.get(mk, ""), seconds=seconds_on(KIND, pid)),
            lambda r: ("Saved" if r[1] else "Already saved — nothing changed", ":material/check:"))
    if skip:
        skip_action(KIND, pid, user["id"], tid, reason)


compare_body(project)
