"""Admin: model versions (the registry and its lineage)."""
from __future__ import annotations

from typing import Any

import streamlit as st

from db.models import MODEL_KINDS
from db.services import leaderboard, registry, stats
from db.services.errors import ServiceError
from labeling_ui import auth
from labeling_ui.common import db, human_columns, local_times, show_error


def readable_metrics(metrics: dict[str, Any] | None) -> str:
    """A version's metrics in a line a person reads: the RM-judged scores per project in words (the stored
    value is a nested mapping, which printed as a raw dict), then the headline numbers."""
    metrics = dict(metrics or {})
    judged = metrics.pop(leaderboard.RM_JUDGED, None)
    parts = []
    if isinstance(judged, dict):
        for project, e in sorted(judged.items()):
            if isinstance(e, dict) and isinstance(e.get("score"), int | float):
                parts.append(f"RM-judged in {project}: {e['score']:.3g} by {e.get('reward', '?')}"
                             + (f" ({e['responses']} responses)" if e.get("responses") else ""))
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}  # nested data: `db stats --json`
    rest = stats.metrics_summary(flat)
    return "; ".join(parts + ([rest] if rest else []))


user = auth.require_user("admin")
st.subheader("Model versions")
flash = st.session_state.pop("_flash_models", None)
if flash:  # set before the rerun that follows a registration (a toast sent right before st.rerun is lost)
    st.toast(flash, icon=":material/check:")
with db() as s:
    table = stats.model_versions_table(s)
    all_versions = registry.list_versions(s)
    names = [mv.name for mv in all_versions]
    summaries = {mv.name: readable_metrics(mv.metrics) for mv in all_versions}
if len(table):
    table["metrics"] = table["name"].map(summaries).fillna("")
    shown = human_columns(local_times(table, "created_at"), {"created_at": "registered"})
    # a dash, not "None", where a version has no parent or was trained on no labels
    st.dataframe(shown.style.format(na_rep="—"), hide_index=True, width="stretch", column_config={
        "parent": st.column_config.Column(help="the version it was trained from; — for one registered from outside"),
        "trained on labels": st.column_config.Column(
            help="how many labels (demonstrations, comparisons, ratings) its training read; — when none")})
else:
    st.info("No model versions registered yet.")
with st.expander("Register a model version", icon=":material/add:"), st.form("new_version", clear_on_submit=True):
        c1, c2 = st.columns(2)
        name = c1.text_input("Name")
        kind = c2.selectbox("Kind", MODEL_KINDS, index=MODEL_KINDS.index("external"))
        path = st.text_input("Path or hub id")
        parent = st.selectbox("Parent", ["(none)"] + names)
        if st.form_submit_button("Register", type="primary"):
            try:
                with db() as s:
                    registry.register_model_version(s, name.strip(), kind, path.strip(),
                                                    parent=None if parent == "(none)" else parent,
                                                    actor_id=user["id"])
            except ServiceError as e:
                show_error(e)
            else:
                st.session_state["_flash_models"] = f"Registered {name}"
                st.rerun()
