"""Admin: export datasets as downloads (same services and filters as `python -m db export`)."""
from __future__ import annotations

import datetime as dt
import itertools
import json

import streamlit as st

from db.services import accounts, export, registry
from db.services.errors import ServiceError
from db.settings import database_url
from labeling_ui import auth
from labeling_ui.common import db, project_picker, show_error

user = auth.require_user("admin")
st.subheader("Export")
project = project_picker(st)
with db() as s:
    versions = [mv.name for mv in registry.list_versions(s)]
    annotators = [u.username for u in accounts.list_users(s, include_system=True)]

KINDS = {"preferences": "Preference pairs (reward model / DPO)", "sft": "Demonstrations (SFT)",
         "ratings": "Good/bad ratings (KTO / pointwise reward model)", "raw": "Raw labels (audit)"}
kind = st.radio("Dataset", list(KINDS), format_func=KINDS.get, horizontal=True, key="exp_kind")
filters: dict = {"project": project["name"] if project else None}
c1, c2, c3 = st.columns(3)
since = c1.date_input("Since", value=None, key="exp_since")
until = c2.date_input("Until (exclusive)", value=None, key="exp_until")
annotator = c3.selectbox("Annotator", ["(all)"] + annotators, key="exp_annotator")
filters.update(since=since.isoformat() if since else None, until=until.isoformat() if until else None,
               annotator=None if annotator == "(all)" else annotator)
if kind == "preferences":
    c1, c2, c3 = st.columns(3)
    filters["fmt"] = c1.selectbox("Format", list(export.PREF_FORMATS), key="exp_fmt",
                                  format_func={"trl": "TRL (prompt / chosen / rejected)",
                                               "hh": "Anthropic HH"}.get)
    filters["aggregate"] = c2.selectbox("Several annotators", list(export.AGGREGATES), key="exp_agg")
    mv = c3.selectbox("Model version", ["(any)"] + versions, key="exp_mv")
    filters["model_version"] = None if mv == "(any)" else mv
    c1, c2 = st.columns(2)
    filters["include_ties"] = c1.checkbox("Include ties and both-bad", key="exp_ties")
    use_min = c2.checkbox("Minimum agreement", key="exp_use_min")
    if use_min:
        filters["min_agreement"] = c2.slider("Majority share at least", 0.0, 1.0, 0.67, 0.01, key="exp_min")
    filters["pair_ratings"] = c1.checkbox("Also pair good and bad ratings of a prompt", key="exp_pair_ratings",
                                          help="each good and each bad rated response of one prompt become a pair")
elif kind == "ratings":
    c1, c2, c3 = st.columns(3)
    filters["aggregate"] = c1.selectbox("Several annotators", list(export.AGGREGATES), key="exp_rate_agg")
    mv = c2.selectbox("Model version", ["(any)"] + versions, key="exp_rate_mv")
    filters["model_version"] = None if mv == "(any)" else mv
    if c3.checkbox("Minimum agreement", key="exp_rate_use_min"):
        filters["min_agreement"] = c3.slider("Majority share at least", 0.0, 1.0, 0.67, 0.01, key="exp_rate_min")
elif kind == "sft":
    c1, c2 = st.columns(2)
    filters["fmt"] = c1.selectbox("Format", list(export.SFT_FORMATS), key="exp_sft_fmt")
    statuses = c2.multiselect("Review status", ["accepted", "submitted", "rejected"],
                              default=["accepted", "submitted"], key="exp_status")
    filters["statuses"] = tuple(statuses)
else:
    mv = st.selectbox("Model version", ["(any)"] + versions, key="exp_raw_mv")
    filters["model_version"] = None if mv == "(any)" else mv

# Only a preview is read on each rerun; the file itself is built when a download is clicked (a deferred
# download), so changing a filter does not export the whole project again.
try:
    with db() as s:
        preview = list(itertools.islice(export.iter_rows(s, kind, **filters), 5))
except ServiceError as e:
    show_error(e)
    st.stop()


def _build() -> tuple[bytes, dict]:
    with db() as s:
        return export.export_bytes(s, kind, actor_id=user["id"], **filters)


@st.cache_data(ttl=15, show_spinner="Counting rows…")
def _count(url: str, kind: str, filters_json: str) -> int:
    """Rows the file would have (a pass over the rows, no file built); kept 15 s, so a filter change or new
    labels show within that time."""
    with db() as s:
        return sum(1 for _ in export.iter_rows(s, kind, **json.loads(filters_json)))


stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
base = f"{kind}{'-' + project['name'] if project else ''}-{stamp}"
if not preview:
    st.info("No rows match these filters.")
else:
    n_rows = _count(database_url(), kind, json.dumps(filters, sort_keys=True, default=list))
    st.markdown(f"**{n_rows:,} rows** match these filters" + (
        f" ({KINDS[kind].split(' (')[0].lower()})" if kind in KINDS else "") + ": the download has them all.",
        help="counted from the database now (refreshed every 15 s); the manifest records the same count")
c1, c2 = st.columns(2)
c1.download_button("Download JSONL", lambda: _build()[0], file_name=f"{base}.jsonl", mime="application/jsonl",
                   type="primary", icon=":material/download:", key="exp_download", width="stretch",
                   on_click="ignore", disabled=not preview)
c2.download_button("Download manifest", lambda: json.dumps(_build()[1], indent=2, default=str).encode(),
                   file_name=f"{base}.jsonl.manifest.json", mime="application/json", key="exp_manifest",
                   width="stretch", on_click="ignore", disabled=not preview,
                   help="row count, filters, schema revision and time of the export")
with st.expander("Preview (first 5 rows)", expanded=True):
    for i, row in enumerate(preview):
        st.json(row, expanded=i == 0)
