"""Admin: the human leaderboard of model versions (Bradley-Terry from preference labels, bootstrap intervals)."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from db.services import leaderboard, projects
from labeling_ui import auth
from labeling_ui.common import db

ALL = "(all projects)"

user = auth.require_user("admin")
st.subheader("Leaderboard")
st.caption("Human votes between responses of different model versions (compare labels; rankings as their pairs; "
           "ties and 'both bad' as half a win each), fitted with Bradley-Terry on the Elo scale (mean 1000), "
           "with 95% bootstrap intervals — as Chatbot Arena ranks models. Beside it, *RM-judged*: the mean score "
           "one reward model gives each version's responses in the project (Jobs → Evaluate → every version's "
           "responses), so the two judges can be compared. A dash in the table: no such number for that version "
           "(no RM has judged it, it has no parent, or no votes against its parent).")
with db() as s:
    names = [p.name for p in projects.list_projects(s)]
c1, c2, c3 = st.columns([2, 1, 1])
project = c1.selectbox("Project", [ALL, *names], key="lb_project")
rounds = c2.number_input("Bootstrap rounds", 0, 5000, leaderboard.DEFAULT_ROUNDS, step=100, key="lb_rounds")
rankings = c3.toggle("Count rankings", value=True, key="lb_rankings")
with db() as s:
    lb = leaderboard.leaderboard(s, None if project == ALL else project, rounds=int(rounds),
                                 include_rankings=rankings)
if lb.table.empty:
    st.info("No votes between two model versions yet. Queue a generate job with two versions (Jobs page, or "
            "“Generate comparisons from it” after a training job) and let annotators compare their responses.",
            icon=":material/leaderboard:")
    st.stop()

t = lb.table
st.markdown(f"**{lb.battles}** votes between versions · **{len(t)}** versions")
plot = t.assign(interval=t.apply(lambda r: "" if pd.isna(r["lower"]) else f"{r['lower']:.0f} – {r['upper']:.0f}",
                                 axis=1))
y = alt.Y("version:N", sort=list(t["version"]), title=None)
base = alt.Chart(plot)
chart = base.mark_point(filled=True, size=90).encode(
    x=alt.X("score:Q", title="Bradley-Terry score (Elo scale)", scale=alt.Scale(zero=False)), y=y,
    color=alt.Color("kind:N"),
    tooltip=["version", "kind", alt.Tooltip("score:Q", format=".0f"), "interval", "votes", "lineage"])
if not t["lower"].isna().all():
    chart = base.mark_rule(strokeWidth=2).encode(x="lower:Q", x2="upper:Q", y=y, color="kind:N") + chart
st.altair_chart(chart.properties(height=max(120, 40 * len(t))), width="stretch")
judged = t[t["rm_judged"].notna()]
if len(judged):
    st.markdown("##### Human score against the reward model's")
    st.altair_chart(alt.Chart(judged).mark_point(filled=True, size=90).encode(
        x=alt.X("score:Q", title="Bradley-Terry score (humans)", scale=alt.Scale(zero=False)),
        y=alt.Y("rm_judged:Q", title="mean RM score of its responses", scale=alt.Scale(zero=False)),
        color=alt.Color("kind:N"), tooltip=["version", "rm_judge", alt.Tooltip("score:Q", format=".0f"),
                                            alt.Tooltip("rm_judged:Q", format=".3f")])
        .properties(height=220), width="stretch")

# A policy's own held-out evaluation (PPO's eval/score, eval/win_rate): shown only when some version has one, and
# then said under the table, so the intro never names columns the table lacks.
POLICY_EVAL = [c for c in leaderboard.RM_METRICS if c in t]
shown = t.drop(columns=[c for c in POLICY_EVAL if t[c].isna().all()])
# Numbers formatted here, with a dash for a missing one (Streamlit would print "None"); values stay numbers.
FORMATS = {"score": "{:.0f}", "lower": "{:.0f}", "upper": "{:.0f}", "wins": "{:.1f}", "rm_judged": "{:.3f}",
           "win_rate": "{:.0%}", "win_rate_vs_parent": "{:.0%}", "votes_vs_parent": "{:.0f}", "rm_score": "{:.3f}",
           "rm_reference_score": "{:.3f}", "rm_win_rate": "{:.0%}"}
styled = shown.style.format({c: f for c, f in FORMATS.items() if c in shown}, na_rep="—").format(
    na_rep="—", subset=[c for c in shown if c not in FORMATS])
C = st.column_config.Column
st.dataframe(styled, hide_index=True, width="stretch", column_config={
    "rm_judged": C("RM-judged", help="mean score the reward model gives this version's responses in the project; "
                                     "— when no reward model has judged them (Jobs → Evaluate)"),
    "rm_judge": C("judged by", help="the reward model behind RM-judged; — when none has judged this version"),
    "win_rate": C("win rate"), "parent": C("parent", help="the version it was trained from; — for a base model"),
    "votes_vs_parent": C("votes vs parent", help="votes between this version's and its parent's responses; — when "
                                                 "it has no parent or none were voted on"),
    "win_rate_vs_parent": C("win rate vs parent", help="— when there are no votes against its parent"),
    "rm_score": C("RM score", help="the policy's own held-out score (PPO's eval/score); — for other versions"),
    "rm_reference_score": C("RM score of reference", help="its reference's score on the same prompts"),
    "rm_win_rate": C("RM win rate", help="how often the RM preferred it to its reference (eval/win_rate)")})
if any(c in shown for c in POLICY_EVAL):
    st.caption("*RM score*, *RM score of reference*, *RM win rate*: a policy's own held-out evaluation against its "
               "reference, judged by its training reward model (PPO's `eval/score`, `eval/win_rate`).")
with st.expander("Head to head", icon=":material/swap_horiz:"):
    st.dataframe(lb.head_to_head, hide_index=True, width="stretch", column_config={
        "version_a": "version A", "version_b": "version B",
        "a_win_rate": st.column_config.NumberColumn("A's win rate", format="percent")})
