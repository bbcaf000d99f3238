"""Admin: the audit log — who changed roles, (de)activated users, reviewed demonstrations, revised labels,
exported what and ran imports, newest first (db.services.audit)."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from db.services import audit
from labeling_ui import auth
from labeling_ui.common import db, local_time

user = auth.require_user("admin")
st.subheader("Audit log")
st.caption("Every entry was written in the same transaction as the change it records. "
           "`cli:<name>` is the command line (`python -m db`), run by that OS user.")

c1, c2, c3 = st.columns([1, 1, 1])
action = c1.selectbox("Action", ["(all)", *audit.ACTIONS], key="audit_action")
actor = c2.text_input("By (username)", key="audit_actor").strip()
limit = c3.number_input("Show at most", min_value=10, max_value=5000, value=200, step=50, key="audit_limit")
with db() as s:
    rows = audit.entries(s, action=None if action == "(all)" else action, actor=actor or None, limit=int(limit))
if not rows:
    st.info("No audit entries match." if action != "(all)" or actor else "Nothing has been audited yet.")
    st.stop()


def _details(details: dict | None) -> str:
    """`role: admin · was: annotator` rather than raw JSON; nested values stay JSON."""
    def show(v):
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
    return " · ".join(f"{k.replace('_', ' ')}: {show(v)}" for k, v in sorted((details or {}).items()))


# Plain text columns: usernames and targets are user input, never rendered as markdown or HTML.
table = pd.DataFrame([{"when": local_time(r["at"]), "by": r["actor"], "action": r["action"], "target": r["target"],
                       "details": _details(r["details"])}
                      for r in rows])
st.dataframe(table, hide_index=True, width="stretch")
st.caption(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, newest first.")
