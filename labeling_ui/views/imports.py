"""Admin: import prompts, preference datasets (TRL / HH) or OpenAssistant trees from an upload.

Same services and messages as `python -m db import`: a bad row names file, line and field, and the
whole file is rolled back (nothing written).
"""
from __future__ import annotations

import streamlit as st

from db.services import importers
from db.services.errors import ServiceError
from labeling_ui import auth
from labeling_ui.common import db, project_picker, show_error

user = auth.require_user("admin")
st.subheader("Import")
project = project_picker(st)
if project is None:
    st.info("Create a project first (Projects page).")
    st.stop()

KINDS = {"prompts": "Prompts (JSONL / CSV: text or messages)",
         "preferences": "Preference pairs (TRL or Anthropic HH JSONL)",
         "oasst": "OpenAssistant message trees (JSONL)"}
kind = st.radio("What", list(KINDS), format_func=KINDS.get, horizontal=True, key="imp_kind")
fmt, demo_tasks = "auto", False
if kind == "preferences":
    fmt = st.selectbox("Format", ["auto", "trl", "hh"], key="imp_fmt")
if kind == "prompts":
    demo_tasks = st.checkbox("Also queue a demonstrate task for each prompt of this file", key="imp_demo")
upload = st.file_uploader("File", type=["jsonl", "json", "csv"], key="imp_file")
if st.button("Import", type="primary", disabled=upload is None, key="imp_go", icon=":material/upload:"):
    data, name = upload.getvalue(), upload.name
    try:
        with db() as s:  # one transaction: any error rolls the whole file back
            if kind == "prompts":
                r = importers.import_prompts(s, data, project["name"], filename=name, demonstrate_tasks=demo_tasks)
            elif kind == "preferences":
                r = importers.import_preferences(s, data, project["name"], fmt=fmt, filename=name)
            else:
                r = importers.import_oasst(s, data, project["name"], filename=name)
    except ServiceError as e:
        show_error(e)
        st.caption("Nothing was imported: fix the file and upload it again.")
    else:
        st.success(r.summary(), icon=":material/check:")
        st.toast(f"Imported {r.added} new", icon=":material/check:")
