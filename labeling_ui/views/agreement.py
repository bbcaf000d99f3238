"""Admin: agreement (percent, Cohen's and Fleiss' kappa), annotators vs majority, speed, disagreements."""
from __future__ import annotations

import math

import streamlit as st

from db.services import agreement
from labeling_ui import auth
from labeling_ui.common import db, project_picker

user = auth.require_user("admin")
st.subheader("Agreement")
project = project_picker(st)
if project is None:
    st.info("No projects yet.")
    st.stop()
with db() as s:
    rep = agreement.preference_agreement(s, project["id"])
    speed = agreement.annotator_speed(s, project["id"])
    dis = agreement.disagreements(s, project["id"])


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.0%}" if pct else f"{x:.2f}"


m = st.columns(4)
m[0].metric("Items with ≥ 2 labels", rep["n_tasks"],
            help="A compare task is one item; a rank task gives one item per pair of its responses.")
m[1].metric("Judgements on them", rep["n_labels"])
m[2].metric("Percent agreement", _fmt(rep["percent_agreement"], pct=True))
m[3].metric("Fleiss' kappa", _fmt(rep["fleiss_kappa"]),
            help="Chance-corrected agreement over all annotators (1 = perfect, 0 = chance).")
if rep["n_tasks"] == 0:
    st.info("No compare or rank task has two labels yet. Set 'labels per task' above 1 on the Projects page to "
            "measure agreement.")

left, right = st.columns(2)
with left:
    st.markdown("##### Each annotator vs the others' majority")
    st.dataframe(rep["per_annotator"], hide_index=True, width="stretch",
                 column_config={"agrees_with_majority": st.column_config.ProgressColumn(
                     "agrees with majority", min_value=0.0, max_value=1.0, format="percent")})
    st.markdown("##### Pairs of annotators (Cohen's kappa)")
    st.dataframe(rep["pairs"], hide_index=True, width="stretch",
                 column_config={"percent_agreement": st.column_config.NumberColumn(format="percent"),
                                "cohen_kappa": st.column_config.NumberColumn(format="%.2f")})
with right:
    st.markdown("##### Annotator speed")
    st.dataframe(speed, hide_index=True, width="stretch",
                 column_config={"median_seconds": st.column_config.NumberColumn("median s / task", format="%.1f"),
                                "p90_seconds": st.column_config.NumberColumn("p90 s / task", format="%.1f")})
st.markdown("##### Disagreements to review")
if len(dis):
    st.dataframe(dis, hide_index=True, width="stretch")
else:
    st.caption("No disagreements.")
