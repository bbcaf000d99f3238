"""My history: every label the annotator gave and every task they skipped, as they saw them (A/B, response
numbers in screen order); revising a label within the project's revision window; undoing a skip."""
from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from db.models import FLAGS, LIKERT_RANGE, STRENGTHS
from db.services import assignment, labels, projects, skips
from db.services.errors import ServiceError
from labeling_ui import auth
from labeling_ui.common import (
    db,
    done_with,
    held_key,
    local_time,
    ordering_from_ranks,
    project_picker,
    render_mode,
    render_prompt,
    show_error,
    show_text,
)
from labeling_ui.vocab import CHOICE_NAMES, FLAG_NAMES, KIND_NAMES, RATING_NAMES, ordinal

user = auth.require_user()
project = project_picker()
if project is None:
    st.info("No projects yet.")
    st.stop()
pid = project["id"]
mode = render_mode(project)
hours = project["settings"].get("revision_window_hours", projects.DEFAULT_SETTINGS["revision_window_hours"])
st.subheader(f"My history · {project['name']}")
st.caption(f"Your labels and skips in this project, newest first, as you saw them. You can revise a label for "
           f"{hours:g} hours after submitting it, and undo a skip while the task still needs labels.")
# A save's confirmation is shown beside the button that made it (flashed() below), not at the top of the page,
# ~1,100 px above the button and out of view.
flash = st.session_state.pop("_flash_hist", None)

with db() as s:
    rows = labels.history(s, user["id"], project_id=pid, limit=500)
    skipped = skips.skipped_tasks(s, user["id"], project_id=pid, limit=500)
    orders = skips.display_orders(s, [r["task_id"] for r in rows if r["kind"] in ("compare", "rank")])
if not rows and not skipped:
    if flash:  # the skip just undone was the only entry
        st.success(flash[1], icon=":material/check:")
    st.info("You have not labelled or skipped anything in this project yet.")
    st.stop()


def _names(kind: str, task_id: int) -> dict[int, str]:
    """Response id -> the name the labeling page showed it under (A/B on Compare, 1..K on Rank)."""
    order = orders.get(task_id, [])
    return {rid: ("AB"[i] if kind == "compare" and i < 2 else str(i + 1)) for i, rid in enumerate(order)}


def _summary(r: dict[str, Any]) -> str:
    if r["kind"] == "skip":
        return f"Skipped: {r['reason']}"
    if r["kind"] == "compare":
        return CHOICE_NAMES.get(r["choice"], r["choice"]) + (f" ({r['strength']})" if r.get("strength") else "")
    if r["kind"] == "rate":
        return RATING_NAMES[r["good"]] + (f", score {r['likert']}/7" if r.get("likert") is not None else "")
    if r["kind"] == "rank":
        names = _names("rank", r["task_id"])
        groups = [sorted(names.get(x, "?") for x in g) for g in r["ordering"]]
        return "Best first: " + " > ".join(" = ".join(g) for g in groups)
    return f"{r['status']}: {r['text'][:80]}"


items: dict[str, dict[str, Any]] = {f"{r['kind']}:{r['id']}": r for r in rows}
for sk in skipped:
    items[f"skip:{sk['task_id']}"] = {"kind": "skip", "task_kind": sk["kind"], "task_id": sk["task_id"],
                                      "created_at": sk["skipped_at"], "reason": sk["reason"],
                                      "undoable": sk["undoable"]}
ordered = sorted(items, key=lambda k: items[k]["created_at"], reverse=True)
table = pd.DataFrame([{
    "When": local_time(r["created_at"]),
    "Task": f"{KIND_NAMES[r.get('task_kind', r['kind'])]} #{r['task_id']}" if r.get("task_id") else "",
    "Your label": _summary(r),
    "Flags": ", ".join(FLAG_NAMES.get(f, f) for f in r.get("flags") or []),
    "Time spent": r.get("seconds"),
    "Revised": bool(r.get("updated_at")),
} for r in (items[k] for k in ordered)])
# at most 6 rows high (the table scrolls itself), so the revise form and its Save button start higher on the page
st.dataframe(table, hide_index=True, width="stretch", placeholder="—", height=min(len(table), 6) * 35 + 38,  # a skip has no time spent (not "None")
             column_config={"Time spent": st.column_config.NumberColumn(format="%.1f s")})

st.markdown("#### Revise a label or undo a skip")
if flash and flash[0] not in items:  # an undone skip leaves the list: its confirmation goes where its button was
    st.success(flash[1], icon=":material/check:")
# The browser keeps showing an option's old text when only its text changes (a revised answer), so each save
# gives the picker a new key; the choice itself is carried over.
version = st.session_state.get("_hist_version", 0)
picked = st.session_state.get("_hist_picked")
key = st.selectbox("Label", ordered, index=ordered.index(picked) if picked in ordered else 0,
                   key=f"hist_pick_{version}",
                   format_func=lambda k: f"{KIND_NAMES[items[k].get('task_kind', items[k]['kind'])]} · task "
                                         f"#{items[k]['task_id']} · {_summary(items[k])}")
st.session_state["_hist_picked"] = key


def _saved(message: str) -> None:
    st.session_state["_flash_hist"] = (key, message)
    st.session_state["_hist_version"] = version + 1
    st.rerun()

def flashed(where: Any) -> None:
    """The last save's confirmation, at `where` (beside its button), when it was about the label picked now."""
    if flash and flash[0] == key:
        where.success(flash[1], icon=":material/check:")


r = items[key]
view = None
if r.get("task_id") is not None:
    with db() as s:
        view = assignment.open_task(s, user["id"], r["task_id"])
rank_of = {rid: i + 1 for i, g in enumerate(r.get("ordering") or []) for rid in g}


def _show_task(letters: bool) -> None:
    """The task as the labeling page showed it: prompt, then the responses in screen order."""
    with st.container(border=True):
        st.caption(f"PROMPT · task #{view.task_id}")
        render_prompt(view, mode, key="hist_prompt")
    cols = st.columns(max(1, min(len(view.responses), 4)))
    for i, resp in enumerate(view.responses):
        name = "" if len(view.responses) == 1 else "AB"[i] if letters and i < 2 else str(i + 1)
        with cols[i % len(cols)], st.container(border=True):
            st.markdown(f"**Response {name}**" if name else "**Response**")
            show_text(resp["text"], key=f"hist_{view.task_id}_{i}", mode=mode)
            if r["kind"] == "rank":
                st.segmented_control(f"Rank of response {name}", list(range(1, len(view.responses) + 1)),
                                     default=rank_of.get(resp["id"]), key=f"hist_rank_{r['id']}_{resp['id']}",
                                     format_func=ordinal, width="stretch")


if r["kind"] == "skip":
    if view is not None:
        _show_task(letters=r["task_kind"] == "compare")
    if r["undoable"]:
        st.caption("Undo the skip to get this task back: it is the next one its page shows you.")
        row = st.columns([1, 3], vertical_alignment="center")
        flashed(row[1])
        if row[0].button("Undo skip", key=f"hist_unskip_{r['task_id']}", icon=":material/undo:"):
            held = st.session_state.get(held_key(r["task_kind"], pid))
            try:
                with db() as s:
                    skips.undo_skip(s, user["id"], r["task_id"])
                    if held is not None and held.task_id != r["task_id"]:
                        # the task that page was showing goes back to the pool, so the one taken back shows first
                        assignment.release_task(s, user["id"], held.task_id)
            except ServiceError as e:
                show_error(e)
            else:
                done_with(r["task_kind"], pid)
                _saved(f"Skip undone: task #{r['task_id']} is back on the {KIND_NAMES[r['task_kind']]} page.")
    else:
        flashed(st)
        st.caption("This task has all the labels it needs now, so the skip stays.")
    st.stop()

with st.form(f"revise_{key}"):
    if view is not None and r["kind"] in ("compare", "rank", "rate"):
        _show_task(letters=r["kind"] == "compare")
    # two controls a row, so Save sits ~170 px higher (it was below the fold at 1280x720)
    if r["kind"] == "compare":
        c1, c2 = st.columns([3, 2])
        choice = c1.radio("Your choice", list(CHOICE_NAMES), format_func=CHOICE_NAMES.get, horizontal=True,
                          index=list(CHOICE_NAMES).index(r["choice"]), key=f"hist_choice_{r['id']}")
        strength = c2.radio("Strength (A/B only)", list(STRENGTHS), horizontal=True, format_func=str.capitalize,
                            index=list(STRENGTHS).index(r.get("strength") or "clear"), key=f"hist_str_{r['id']}")
        c1, c2 = st.columns(2)
        flags = c1.multiselect("Flags", list(FLAGS), default=r.get("flags") or [], format_func=FLAG_NAMES.get,
                               key=f"hist_flags_{r['id']}")
        comment = c2.text_input("Comment", value=r.get("comment") or "", key=f"hist_comment_{r['id']}")
    elif r["kind"] == "rank":
        flags = st.multiselect("Flags", list(FLAGS), default=r.get("flags") or [], format_func=FLAG_NAMES.get,
                               key=f"hist_flags_{r['id']}")
    elif r["kind"] == "rate":
        c1, c2 = st.columns([1, 2])
        good = c1.radio("Your rating", [True, False], format_func=RATING_NAMES.get, horizontal=True,
                        index=0 if r["good"] else 1, key=f"hist_good_{r['id']}")
        likert = c2.segmented_control("Score (optional)", list(range(LIKERT_RANGE[0], LIKERT_RANGE[1] + 1)),
                                      default=r.get("likert"), key=f"hist_likert_{r['id']}")
        c1, c2 = st.columns(2)
        flags = c1.multiselect("Flags", list(FLAGS), default=r.get("flags") or [], format_func=FLAG_NAMES.get,
                               key=f"hist_flags_{r['id']}")
        comment = c2.text_input("Comment", value=r.get("comment") or "", key=f"hist_comment_{r['id']}")
    else:
        if view is not None:
            render_prompt(view, mode, key="hist_prompt")
        text = st.text_area("Demonstration", value=r["text"], height=240)
        if r.get("review_note"):
            st.caption(f"Reviewer's note: {r['review_note']}")
    # the labeling pages' sticky action bar (style.py's `action_bar` key): Save revision and its confirmation
    # stay at the bottom of the window while the form is in view (Save sat below the fold at 1280x720)
    with st.container(key="action_bar"):
        row = st.columns([1, 3], vertical_alignment="center")
        save = row[0].form_submit_button("Save revision", type="primary")
        note = row[1].empty()
        flashed(note)
if save:
    try:
        with db() as s:
            if r["kind"] == "compare":
                labels.revise_preference(s, user["id"], r["id"], choice, strength=strength, flags=flags,
                                         comment=comment)
            elif r["kind"] == "rank":
                ids = [x["id"] for x in view.responses] if view is not None else list(rank_of)
                new_ranks = {rid: st.session_state.get(f"hist_rank_{r['id']}_{rid}") for rid in ids}
                missing = [i + 1 for i, rid in enumerate(ids) if new_ranks[rid] is None]
                if missing:
                    raise ServiceError(f"Give every response a rank (missing: response "
                                       f"{', '.join(map(str, missing))}).")
                labels.revise_ranking(s, user["id"], r["id"], ordering_from_ranks(new_ranks), flags=flags)
            elif r["kind"] == "rate":
                labels.revise_rating(s, user["id"], r["id"], good, likert=likert, flags=flags, comment=comment)
            else:
                labels.revise_demonstration(s, user["id"], r["id"], text)
    except ServiceError as e:
        show_error(e, note)
    else:
        _saved("Revision saved.")
