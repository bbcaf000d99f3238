"""Admin: import prompts, preference datasets (TRL / HH) or OpenAssistant trees from an upload.

Same services and messages as `python -m db import`: a bad line names file, line and field, and the whole
file is rolled back (nothing written) unless "Skip invalid rows" is ticked: then every good row is imported
(one transaction) and the refused lines can be downloaded as a JSONL report, like `--skip-invalid`.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from db.services import importers
from db.services.errors import ServiceError
from labeling_ui import auth
from labeling_ui.common import db, project_picker, safe_markdown, show_error

REPORT_KEY = "imp_report"  # the last import's refused lines, kept across reruns for the download button

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
skip = st.checkbox("Skip invalid rows", key="imp_skip",
                   help="Import every good row and list the lines that cannot be read in a report to download. "
                        "Off: one bad line refuses the whole file.")
upload = st.file_uploader("File", type=["jsonl", "json", "csv", "gz"], key="imp_file")


def _keep_report(name: str, refused: list[importers.RefusedLine]) -> None:
    st.session_state[REPORT_KEY] = {"name": name, "data": importers.report_bytes(name, refused),
                                    "count": len(refused)}


if st.button("Import", type="primary", disabled=upload is None, key="imp_go", icon=":material/upload:"):
    st.session_state.pop(REPORT_KEY, None)
    data, name = upload.getvalue(), upload.name
    try:
        with db() as s:  # one transaction: any error rolls the whole file back
            if kind == "prompts":
                r = importers.import_prompts(s, data, project["name"], filename=name, demonstrate_tasks=demo_tasks,
                                             skip_invalid=skip)
            elif kind == "preferences":
                r = importers.import_preferences(s, data, project["name"], fmt=fmt, filename=name,
                                                 skip_invalid=skip)
            else:
                r = importers.import_oasst(s, data, project["name"], filename=name, skip_invalid=skip)
    except importers.InvalidRowsError as e:
        # the reasons quote the file's content: shown as text, one bad line per line
        lines = e.describe(importers.UI_HINT).split("\n")
        st.error("  \n".join(safe_markdown(x) for x in lines), icon=":material/error:")
        _keep_report(name, e.refused)
    except ServiceError as e:
        show_error(e)
        st.caption("Nothing was imported: fix the file and upload it again.")
    else:
        st.success(r.summary(), icon=":material/check:")
        st.toast(f"Imported {r.added} new", icon=":material/check:")
        if r.refused:
            st.warning(f"{len(r.refused)} line(s) of {name} were refused and not imported; the report lists "
                       "each with its line number and reason.", icon=":material/warning:")
            _keep_report(name, r.refused)

report = st.session_state.get(REPORT_KEY)
if report:
    st.download_button(f"Download the report of {report['count']} refused line(s)", report["data"],
                       file_name=f"{Path(report['name']).name.removesuffix('.gz')}.refused.jsonl",
                       mime="application/jsonl", key="imp_report_dl", icon=":material/download:",
                       on_click="ignore")
