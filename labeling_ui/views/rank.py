"""Rank: K >= 3 responses ordered by the annotator (ties allowed: give them the same rank)."""
from __future__ import annotations

import string

import streamlit as st

from db.models import FLAGS
from db.services import labels
from labeling_ui.common import (
    labeling_page,
    ordering_from_ranks,
    render_prompt,
    seconds_on,
    show_text,
    skip_action,
    task_action,
    task_header,
)
from labeling_ui.vocab import FLAG_NAMES, SKIP_REASONS

KIND = "rank"

user, project = labeling_page()


@st.fragment
def rank_body(project: dict) -> None:
    head = task_header(KIND, project, "Rank")
    if head is None:
        return
    user, view = head
    pid = project["id"]
    tid, k = view.task_id, len(view.responses)
    with st.container(border=True):
        st.caption(f"PROMPT · task #{tid}")
        render_prompt(view)
    st.caption(f"Give each response a rank from 1 (best) to {k}. Equal ranks mean a tie.")
    per_row = k if k <= 4 else 3
    letters = string.ascii_uppercase
    for start in range(0, k, per_row):
        cols = st.columns(per_row, gap="medium")
        for col, i in zip(cols, range(start, min(k, start + per_row))):
            resp = view.responses[i]
            with col:
                with st.container(border=True, height=380):
                    st.markdown(f"#### Response {letters[i]}")
                    show_text(resp["text"])
                st.segmented_control(f"Rank of {letters[i]}", list(range(1, k + 1)),
                                     key=f"rank_{tid}_{resp['id']}", width="stretch")
    with st.container(border=True):
        c1, c2 = st.columns([1, 1])
        c1.pills("Flags", list(FLAGS), format_func=FLAG_NAMES.get, selection_mode="multi", key=f"rank_flags_{tid}")
        c2.text_input("Comment (optional)", key=f"rank_comment_{tid}")
        arow = st.columns([2, 3, 1], vertical_alignment="bottom")
        submit = arow[0].button("Submit ranking", key=f"rank_submit_{tid}", type="primary", shortcut="Enter",
                                icon=":material/send:", width="stretch")
        reason = arow[1].selectbox("Skip reason", SKIP_REASONS, key=f"rank_skip_reason_{tid}",
                                   label_visibility="collapsed")
        skip = arow[2].button("Skip", key=f"rank_skip_{tid}", shortcut="S", width="stretch")
        msg = st.empty()
    if submit:
        ranks = {r["id"]: st.session_state.get(f"rank_{tid}_{r['id']}") for r in view.responses}
        missing = [letters[i] for i, r in enumerate(view.responses) if ranks[r["id"]] is None]
        if missing:
            msg.warning(f"Give every response a rank (missing: {', '.join(missing)}).")
            return
        task_action(KIND, pid, lambda s: labels.submit_ranking(
            s, user["id"], tid, ordering_from_ranks(ranks), flags=st.session_state.get(f"rank_flags_{tid}") or [],
            comment=st.session_state.get(f"rank_comment_{tid}", ""), seconds=seconds_on(KIND, pid)),
            lambda r: ("Ranking saved" if r[1] else "Already saved — nothing changed", ":material/check:"),
            on_error=lambda e: msg.error(str(e), icon=":material/error:"))
    if skip:
        skip_action(KIND, pid, user["id"], tid, reason)


rank_body(project)
