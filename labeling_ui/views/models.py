"""Admin: model versions (the registry and its lineage)."""
from __future__ import annotations

import streamlit as st

from db.models import MODEL_KINDS
from db.services import registry, stats
from db.services.errors import ServiceError
from labeling_ui import auth
from labeling_ui.common import db, human_columns, local_times, show_error

user = auth.require_user("admin")
st.subheader("Model versions")
flash = st.session_state.pop("_flash_models", None)
if flash:  # set before the rerun that follows a registration (a toast sent right before st.rerun is lost)
    st.toast(flash, icon=":material/check:")
with db() as s:
    table = stats.model_versions_table(s)
    names = [mv.name for mv in registry.list_versions(s)]
if len(table):
    st.dataframe(human_columns(local_times(table, "created_at"), {"created_at": "registered"}), hide_index=True,
                 width="stretch")
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
