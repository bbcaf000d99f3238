"""Rank: K >= 3 responses ordered by the annotator (ties allowed: give them the same rank)."""
from __future__ import annotations

import streamlit as st

from db.models import FLAGS
from db.services import labels
from labeling_ui.common import (
    labeling_page,
    ordering_from_ranks,
    raw_toggle,
    render_mode,
    render_prompt,
    saved_message,
    seconds_on,
    show_error,
    show_text,
    skip_action,
    skipping,
    submit_skip_row,
    task_action,
    task_header,
)
from labeling_ui.vocab import FLAG_NAMES, ordinal

KIND = "rank"
# "Next best" keys: the response numbers 1, 2, 3... pressed best first (letters would hit Streamlit's own C and
# R keys). Ranks are shown as ordinals (1st, 2nd) so they never read like response numbers.
MAX_KEYED = 9

user, project = labeling_page()


def _rank_key(tid: int, rid: int) -> str:
    return f"rank_{tid}_{rid}"


def _next_best(tid: int, rid: int, ids: list[int]) -> None:
    """Give `rid` the best rank not given yet (ranks clicked by hand are respected); when one response is left,
    it takes the best rank still free. Never beyond K."""
    state = st.session_state
    if state.get(_rank_key(tid, rid)) is not None:
        return
    free = sorted(set(range(1, len(ids) + 1)) - {state.get(_rank_key(tid, r)) for r in ids})
    if not free:
        return
    state[_rank_key(tid, rid)] = free[0]
    left = [r for r in ids if state.get(_rank_key(tid, r)) is None]
    if len(left) == 1 and len(free) > 1:
        state[_rank_key(tid, left[0])] = free[1]


def _clear_ranks(tid: int, ids: list[int]) -> None:
    for r in ids:
        st.session_state[_rank_key(tid, r)] = None


@st.fragment
def rank_body(project: dict) -> None:
    head = task_header(KIND, project, "Rank")
    if head is None:
        return
    user, view = head
    pid = project["id"]
    tid, k = view.task_id, len(view.responses)
    mode = render_mode(project)
    with st.container(border=True, key="prompt_box"):
        st.caption(f"PROMPT · task #{tid}")
        render_prompt(view, mode)
    ids = [r["id"] for r in view.responses]
    keyed = k <= MAX_KEYED
    keys_live = not skipping("rank", tid)  # 1-4 choose a skip reason meanwhile
    hint = " Keys: the response numbers, best first (the last ranks itself); Backspace clears." if keyed else ""
    st.caption(f"Rank each response, 1st = best; equal ranks tie.{hint}")
    per_row = k if k <= 4 else 3
    for start in range(0, k, per_row):
        cols = st.columns(per_row, gap="small")
        for col, i in zip(cols, range(start, min(k, start + per_row))):
            resp = view.responses[i]
            with col:
                with st.container(border=True, key=f"resp_{i}"):
                    raw = raw_toggle(f"Response {i + 1}", f"raw_{tid}_{i}", compact=k > 2)
                    show_text(resp["text"], key=f"resp_{tid}_{i}", mode=mode, raw=raw)
                st.segmented_control(f"Rank of response {i + 1}", list(range(1, k + 1)), format_func=ordinal,
                                     key=_rank_key(tid, resp["id"]), width="stretch")
                if keyed:
                    st.button(f"{i + 1} is next best", key=f"rank_next_{tid}_{resp['id']}",
                              shortcut=str(i + 1) if keys_live else None, on_click=_next_best,
                              args=(tid, resp["id"], ids), width="stretch")
    if keyed:
        st.button("Clear ranks", key=f"rank_clear_{tid}", shortcut="Backspace" if keys_live else None,
                  on_click=_clear_ranks, args=(tid, ids), icon=":material/backspace:")
    # Sticky at the bottom of the window (labeling_ui.style). Flags get a row of their own: pills do not wrap,
    # and beside the comment field the last one ("Other") ended up under it.
    with st.container(border=True, key="action_bar", gap="small"):
        st.pills("Flags", list(FLAGS), format_func=FLAG_NAMES.get, selection_mode="multi", key=f"rank_flags_{tid}",
                 label_visibility="collapsed")
        submit, skip_reason = submit_skip_row("rank", tid, "Submit ranking", middle=lambda: st.text_input(
            "Comment (optional)", key=f"rank_comment_{tid}", placeholder="Comment (optional)",
            label_visibility="collapsed"))
        msg = st.empty()
    if submit:
        ranks = {r["id"]: st.session_state.get(_rank_key(tid, r["id"])) for r in view.responses}
        missing = [str(i + 1) for i, r in enumerate(view.responses) if ranks[r["id"]] is None]
        if missing:
            msg.warning(f"Give every response a rank (missing: response {', '.join(missing)}).")
            return
        ordering = ordering_from_ranks(ranks)
        task_action(KIND, pid, lambda s: labels.submit_ranking(
            s, user["id"], tid, ordering, flags=st.session_state.get(f"rank_flags_{tid}") or [],
            comment=st.session_state.get(f"rank_comment_{tid}", ""), seconds=seconds_on(KIND, pid)),
            lambda r: saved_message(r[1], r[0].ordering == ordering, "Ranking saved", "ranking"),
            on_error=lambda e: show_error(e, msg))
    if skip_reason:
        skip_action(KIND, pid, user["id"], tid, skip_reason)


rank_body(project)
