"""My history: the annotator's own labels, and revising one within the project's revision window."""
from __future__ import annotations

import string

import pandas as pd
import streamlit as st

from db.models import FLAGS, STRENGTHS
from db.services import assignment, labels, projects
from db.services.errors import ServiceError
from labeling_ui import auth
from labeling_ui.common import (
    db,
    ordering_from_ranks,
    project_picker,
    render_mode,
    render_prompt,
    show_error,
    show_text,
)
from labeling_ui.vocab import CHOICE_NAMES, FLAG_NAMES

user = auth.require_user()
project = project_picker()
if project is None:
    st.info("No projects yet.")
    st.stop()
pid = project["id"]
hours = project["settings"].get("revision_window_hours", projects.DEFAULT_SETTINGS["revision_window_hours"])
st.subheader(f"My history · {project['name']}")
st.caption(f"Your labels in this project, newest first. You can revise a label for {hours} hours after "
           "submitting it.")
flash = st.session_state.pop("_flash_hist", None)
if flash:
    st.toast(flash, icon=":material/check:")

with db() as s:
    rows = labels.history(s, user["id"], project_id=pid, limit=500)
if not rows:
    st.info("You have not labelled anything in this project yet.")
    st.stop()


def _summary(r: dict) -> str:
    if r["kind"] == "compare":
        return CHOICE_NAMES.get(r["choice"], r["choice"]) + (f" ({r['strength']})" if r.get("strength") else "")
    if r["kind"] == "rank":
        return " > ".join("=".join(str(x) for x in g) for g in r["ordering"])
    return f"{r['status']}: {r['text'][:80]}"


table = pd.DataFrame([{"when": r["created_at"], "kind": r["kind"], "task": r["task_id"], "label": _summary(r),
                       "flags": ", ".join(r.get("flags") or []), "seconds": r.get("seconds"),
                       "revised": r.get("updated_at") is not None} for r in rows])
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"when": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                            "seconds": st.column_config.NumberColumn(format="%.1f s")})

st.markdown("#### Revise a label")
labels_by_key = {f"{r['kind']}:{r['id']}": r for r in rows}
key = st.selectbox("Label", list(labels_by_key), key="hist_pick",
                   format_func=lambda k: f"{labels_by_key[k]['kind']} · task {labels_by_key[k]['task_id']} · "
                                         f"{_summary(labels_by_key[k])}")
r = labels_by_key[key]
view = None
if r.get("task_id") is not None:
    with db() as s:
        view = assignment.open_task(s, user["id"], r["task_id"])
if view is not None:
    with st.expander("Show the task", expanded=False):
        render_prompt(view)
        cols = st.columns(max(1, len(view.responses)))
        # as on the labeling pages: A/B on compare, 1..K on rank
        names = string.ascii_uppercase if r["kind"] == "compare" else [str(i + 1) for i in range(len(view.responses))]
        for i, (c, name, resp) in enumerate(zip(cols, names, view.responses)):
            with c.container(border=True):
                st.markdown(f"**Response {name}** (id {resp['id']})")
                show_text(resp["text"], key=f"hist_{view.task_id}_{i}", mode=render_mode(project))

with st.form(f"revise_{key}"):
    if r["kind"] == "compare":
        choice = st.radio("Choice", list(CHOICE_NAMES), format_func=CHOICE_NAMES.get, horizontal=True,
                          index=list(CHOICE_NAMES).index(r["choice"]))
        strength = st.radio("Strength", list(STRENGTHS), horizontal=True,
                            index=list(STRENGTHS).index(r.get("strength") or "clear"))
        flags = st.multiselect("Flags", list(FLAGS), default=r.get("flags") or [], format_func=FLAG_NAMES.get)
        comment = st.text_input("Comment", value=r.get("comment") or "")
    elif r["kind"] == "rank":
        rank_of = {rid: i + 1 for i, g in enumerate(r["ordering"]) for rid in g}
        ids = [x for g in r["ordering"] for x in g] if view is None else [x["id"] for x in view.responses]
        new_ranks = {rid: st.number_input(f"Rank of response {i + 1}", 1, len(ids), rank_of.get(rid, 1),
                                          help=f"response id {rid}")
                     for i, rid in enumerate(ids)}
        flags = st.multiselect("Flags", list(FLAGS), default=r.get("flags") or [], format_func=FLAG_NAMES.get)
    else:
        text = st.text_area("Demonstration", value=r["text"], height=240)
        if r.get("review_note"):
            st.caption(f"Reviewer's note: {r['review_note']}")
    save = st.form_submit_button("Save revision", type="primary")
if save:
    try:
        with db() as s:
            if r["kind"] == "compare":
                labels.revise_preference(s, user["id"], r["id"], choice, strength=strength, flags=flags,
                                         comment=comment)
            elif r["kind"] == "rank":
                labels.revise_ranking(s, user["id"], r["id"], ordering_from_ranks(new_ranks), flags=flags)
            else:
                labels.revise_demonstration(s, user["id"], r["id"], text)
    except ServiceError as e:
        show_error(e)
    else:
        st.session_state["_flash_hist"] = "Revision saved"
        st.rerun()
