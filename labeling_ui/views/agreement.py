"""Admin: agreement (percent, Cohen's and Fleiss' kappa), annotators vs majority, speed, disagreements."""
from __future__ import annotations

import math
import re

import pandas as pd
import streamlit as st

from db.services import agreement, assignment
from db.services.errors import ServiceError
from labeling_ui import auth
from labeling_ui.common import (
    db,
    human_columns,
    project_picker,
    render_mode,
    render_prompt,
    show_error,
    show_text,
)
from labeling_ui.vocab import CHOICE_NAMES

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
    ratings = agreement.rating_agreement(s, project["id"])
has_ratings = bool(ratings["n_labels"] or len(ratings["per_annotator"]))


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.0%}" if pct else f"{x:.2f}"


# The top sections are about compare and rank labels; ratings (rate tasks) have their own section below.
st.markdown("#### Compare and rank")
m = st.columns(4)
m[0].metric("Items with ≥ 2 labels", rep["n_tasks"],
            help="A compare task is one item; a rank task gives one item per pair of its responses.")
m[1].metric("Judgements on them", rep["n_labels"])
m[2].metric("Percent agreement", _fmt(rep["percent_agreement"], pct=True))
m[3].metric("Fleiss' kappa", _fmt(rep["fleiss_kappa"]),
            help="Chance-corrected agreement over all annotators (1 = perfect, 0 = chance).")
def _choices_in_words(text: str) -> str:
    """"alice: a (strong); bob: both_bad" -> "alice: A is better (strong); bob: Both bad"."""
    return re.sub(r"(^|: )(both_bad|tie|a|b)\b", lambda m: m[1] + CHOICE_NAMES[m[2]], text)


def task_panel(task_id: int) -> None:
    """One task of the disagreements table (its link): the prompt, the responses as annotators saw them, the
    labels given."""
    try:
        with db() as s:
            view = assignment.open_task(s, user["id"], task_id)
    except ServiceError as e:
        show_error(e)
        return
    if view.project_id != project["id"]:
        st.warning(f"Task #{task_id} belongs to project {view.project_name}: pick it in the sidebar.")
        return
    with st.container(border=True, key="agreement_task"):
        st.markdown(f"#### Task #{task_id} · {view.kind}")
        row = dis[dis["task_id"] == task_id]
        if len(row):
            st.markdown(f"**Labels:** {_choices_in_words(row.iloc[0]['labels'])}  \n"
                        f"**Majority:** {_choices_in_words(row.iloc[0]['majority'])}")
            if row.iloc[0]["comments"]:
                st.caption("Comments: " + row.iloc[0]["comments"])
        mode = render_mode(project)
        render_prompt(view, mode, key="agr_prompt")
        cols = st.columns(max(1, min(len(view.responses), 4)))
        for i, resp in enumerate(view.responses):
            name = "AB"[i] if view.kind == "compare" and i < 2 else str(i + 1)
            with cols[i % len(cols)], st.container(border=True):
                st.markdown(f"**Response {name}**")
                show_text(resp["text"], key=f"agr_{task_id}_{i}", mode=mode)
        if st.button("Close", key="agr_close", icon=":material/close:"):
            st.query_params.pop("task", None)
            st.rerun()


picked = st.query_params.get("task")  # a link of the disagreements table
if picked and picked.isdigit():
    task_panel(int(picked))

if rep["n_tasks"] == 0:
    # Say why it is empty (a fresh demo: one annotator, one label per task) and how to get figures.
    who = list(rep["per_annotator"]["annotator"])
    why = []
    if project["labels_per_task"] < 2:
        why.append(f"each task of **{project['name']}** goes to one annotator only (labels per task = "
                   f"{project['labels_per_task']}), so no task gets a second label to agree with")
    if len(who) < 2:
        why.append("only one annotator has labelled a compare or rank task here" + (f" ({who[0]})" if who else "")
                   if who else "no one has labelled a compare or rank task here yet")
    why = why or ["no compare or rank task has two labels yet (tasks wait for their second annotator)"]
    st.info("**No compare / rank agreement figures yet:** agreement compares the labels that several annotators "
            "gave the same task, and " + "; and ".join(why) + "."
            + ("  \nRatings of single responses have their own figures below." if has_ratings else "")
            + "  \n**To get figures:** set *labels per task* to 2 or more on "
            "the Projects page (open tasks then wait for more labels), give a second person an annotator account "
            "on the Users page, and let both label the same tasks.", icon=":material/info:")
else:
    left, right = st.columns(2)
    with left:
        st.markdown("##### Each annotator vs the others' majority")
        st.dataframe(human_columns(rep["per_annotator"], {"compared": "items compared"}), hide_index=True,
                     width="stretch", column_config={"agrees with majority": st.column_config.ProgressColumn(
                         min_value=0.0, max_value=1.0, format="percent")})
    with right:
        st.markdown("##### Pairs of annotators (Cohen's kappa)")
        # A plain table: every column as wide as its words (the data grid cut "Cohen's kappa" off).
        pairs = rep["pairs"].assign(percent_agreement=[f"{x:.0%}" for x in rep["pairs"]["percent_agreement"]],
                                    cohen_kappa=[_fmt(x) for x in rep["pairs"]["cohen_kappa"]])
        st.table(human_columns(pairs).set_index("annotator"))
st.markdown("##### Annotator speed")
if len(speed):
    st.dataframe(human_columns(speed, {"kind": "task kind"}), hide_index=True, width="stretch",
                 column_config={"median s / task": st.column_config.NumberColumn(format="%.1f"),
                                "p90 s / task": st.column_config.NumberColumn(format="%.1f")})
else:
    st.caption("No timed labels yet.")
st.markdown("##### Compare disagreements to review")
if len(dis):
    st.caption("Compare tasks whose annotators chose differently; open one to see what they saw.")
    shown = pd.DataFrame({"task": [f"agreement?task={t}" for t in dis["task_id"]], "prompt": dis["prompt"],
                          "labels": [_choices_in_words(x) for x in dis["labels"]],
                          "majority": [_choices_in_words(x) for x in dis["majority"]], "comments": dis["comments"]})
    st.dataframe(shown, hide_index=True, width="stretch", key="agr_dis", column_config={
        "task": st.column_config.LinkColumn("task", display_text=r"task=(\d+)$", width="small",
                                            help="opens the task (prompt, responses, labels) at the top of this page")})
elif rep["n_tasks"]:
    st.caption("No disagreements: every task with several labels got the same answer from all.")
else:
    st.caption("None yet (no compare task has two labels).")


# --- ratings (rate tasks): a section of its own, from db.services.agreement.rating_agreement
def _rating_section(rr: dict) -> None:
    if not has_ratings:
        return  # the project has no rate tasks' ratings: nothing to say
    st.markdown("#### Ratings (good / bad of one response)")
    c = st.columns(4)
    c[0].metric("Rated responses with ≥ 2 ratings", rr["n_tasks"])
    c[1].metric("Ratings on them", rr["n_labels"])
    pa, fk = rr["percent_agreement"], rr["fleiss_kappa"]
    c[2].metric("Percent agreement", "—" if pa is None or math.isnan(pa) else f"{pa:.0%}")
    c[3].metric("Fleiss' kappa", "—" if fk is None or math.isnan(fk) else f"{fk:.2f}",
                help="Chance-corrected agreement on good / bad over all annotators (1 = perfect, 0 = chance).")
    left, right = st.columns(2)
    with left:
        st.caption("Each annotator vs the others' majority")
        st.dataframe(human_columns(rr["per_annotator"], {"compared": "items compared"}), hide_index=True,
                     width="stretch", key="agr_rate_ann", column_config={
                         "agrees with majority": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0,
                                                                                 format="percent")})
    with right:
        st.caption("Pairs of annotators (Cohen's kappa)")
        if len(rr["pairs"]):  # a plain table, as for compare: the data grid cut "Cohen's kappa" off
            pairs = rr["pairs"].assign(percent_agreement=[f"{x:.0%}" for x in rr["pairs"]["percent_agreement"]],
                                       cohen_kappa=[_fmt(x) for x in rr["pairs"]["cohen_kappa"]])
            st.table(human_columns(pairs).set_index("annotator"))
        else:
            st.caption("No two annotators rated the same response yet.")
    if len(rr["disagreements"]):
        st.caption("Responses rated good by some and bad by others")
        st.dataframe(human_columns(rr["disagreements"]), hide_index=True, width="stretch", key="agr_rate_dis")


_rating_section(ratings)
