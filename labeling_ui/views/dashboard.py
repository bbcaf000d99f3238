"""Admin: progress dashboard — labels over time, per annotator, per project, tasks by state."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from db.services import stats
from labeling_ui import auth
from labeling_ui.common import db, human_columns, local_times, project_picker

user = auth.require_user("admin")
st.subheader("Dashboard")
project = project_picker(st.columns([1, 2])[0])
scope_all = st.toggle("All projects", key="dash_all")
pid = None if (scope_all or project is None) else project["id"]

with db() as s:
    prog = stats.progress(s, project["id"]) if project is not None else None
    over_time = stats.labels_over_time(s, pid)
    annot = stats.per_annotator(s, pid)
    per_proj = stats.per_project(s)

if prog is not None and not scope_all:
    m = st.columns(5)
    m[0].metric("Tasks", prog["tasks"])
    m[1].metric("Done", prog["tasks_by_state"].get("done", 0))
    m[2].metric("Labels", prog["labels"])
    m[3].metric("Labels today", prog["labels_today"])
    m[4].metric("Skipped", prog["skipped"])

left, right = st.columns(2)
with left:
    st.markdown("##### Labels over time")
    if len(over_time):
        daily = over_time.assign(day=pd.to_datetime(over_time["day"]).dt.strftime("%Y-%m-%d"))
        st.altair_chart(alt.Chart(daily).mark_bar().encode(
            x=alt.X("day:O", title="day (UTC)"), y=alt.Y("sum(n):Q", title="labels"),
            color=alt.Color("kind:N", title="task kind"),
            tooltip=["day", "project", "annotator", alt.Tooltip("kind", title="task kind"),
                     alt.Tooltip("n", title="labels")]).properties(height=300),
            width="stretch")
    else:
        st.info("No labels yet.")
with right:
    st.markdown("##### Per annotator")
    if len(annot):
        st.altair_chart(alt.Chart(annot).mark_bar().encode(
            x=alt.X("labels:Q"), y=alt.Y("annotator:N", sort="-x"),
            tooltip=["annotator", "labels", alt.Tooltip("median_seconds", title="median s / task", format=".1f")]),
            width="stretch")
    else:
        st.info("No labels yet.")
if len(annot):
    # Full width: in half the page the last column was cut off at 1280 px. Times in the viewer's zone.
    st.dataframe(human_columns(local_times(annot, "first", "last")), hide_index=True, width="stretch",
                 column_config={"median s / task": st.column_config.NumberColumn(format="%.1f s")})
left, right = st.columns(2)
with left:
    st.markdown("##### Per project")
    if len(per_proj):
        shown = human_columns(per_proj)
        st.altair_chart(alt.Chart(shown).mark_bar().encode(
            x=alt.X("labels:Q"), y=alt.Y("project:N", sort="-x"), tooltip=list(shown.columns)),
            width="stretch")
        st.dataframe(shown, hide_index=True, width="stretch")
with right:
    st.markdown("##### Tasks by state")
    if prog is not None and prog["tasks_by_state"]:
        states = pd.DataFrame([{"state": k, "tasks": v} for k, v in prog["tasks_by_state"].items()]
                              + [{"state": "leased now", "tasks": prog["leased"]}])
        st.altair_chart(alt.Chart(states).mark_arc(innerRadius=50).encode(
            theta="tasks:Q", color="state:N", tooltip=["state", "tasks"]).properties(height=260),
            width="stretch")
    else:
        st.info("No tasks yet.")
