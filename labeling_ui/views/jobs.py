"""Admin: jobs — queue generate / train (SFT, reward, PPO, RLOO, GRPO) / evaluate / pretrain jobs, watch them run, cancel them.

The page never runs a job itself: it writes a job row (db.services.jobs.enqueue) and a worker
(`python -m rlhf.worker`, started by `make demo`) runs it as its own process. What is shown of a running job
(state, progress, metrics, log) is read from the row, its log file and its run folder's metrics.jsonl, and
refreshed every few seconds while it runs.
"""
from __future__ import annotations

import itertools
import re
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
import yaml

from db.services import export, jobs, projects, registry
from db.services.errors import ServiceError
from db.settings import database_url
from labeling_ui import auth
from labeling_ui.common import db, local_time, safe_markdown, show_error

KIND_TITLES = {"train_sft": "SFT (demonstrations)", "train_reward": "Reward model (preferences)",
               "train_ppo": "PPO (policy against a reward model)",
               "train_rloo": "RLOO (TRL, policy against a reward model)",
               "train_grpo": "GRPO (TRL, policy against a reward model)",
               "train_kto": "KTO (TRL, policy from good/bad ratings)", "generate": "Generate responses and tasks",
               "evaluate": "Evaluate", "pretrain": "Pretrain a base model"}
# The jobs table and picker say what a job does, not its internal kind.
KIND_WORDS = {"train_sft": "SFT training", "train_reward": "reward model training", "train_ppo": "PPO training",
              "train_rloo": "RLOO training", "train_grpo": "GRPO training", "train_kto": "KTO training",
              "generate": "generate", "evaluate": "evaluate", "pretrain": "pretraining"}
STATE_ICONS = {"queued": ":material/schedule:", "running": ":material/autorenew:", "succeeded": ":material/check_circle:",
               "failed": ":material/error:", "cancelled": ":material/cancel:"}
# Metric groups plotted per job kind (keys of metrics.jsonl; groups with no data are left out).
PLOTS: dict[str, list[tuple[str, list[str]]]] = {
    "train_sft": [("Loss", ["loss", "eval_loss"]),
                  ("Token accuracy", ["mean_token_accuracy", "eval_mean_token_accuracy"])],
    "train_reward": [("Loss", ["loss", "eval_loss"]), ("Pairwise accuracy", ["accuracy", "eval_accuracy"])],
    "train_ppo": [("Reward-model score", ["objective/scores", "objective/rlhf_reward"]),
                  ("KL to the reference", ["objective/kl"]), ("Losses", ["loss/policy", "loss/value"])],
    # TRL's RLOO/GRPO logs: the reward function is named after the reward model (rewards/<rm>/mean), so
    # the plot takes TRL's total `reward`; `kl` is logged when beta > 0.
    "train_rloo": [("Reward-model score", ["reward"]), ("KL to the reference", ["kl"]), ("Loss", ["loss"])],
    "train_grpo": [("Reward-model score", ["reward"]), ("KL to the reference", ["kl"]), ("Loss", ["loss"])],
    "train_kto": [("Loss", ["loss", "eval_loss"]), ("KL to the reference", ["kl"])],
    "pretrain": [("Loss", ["loss", "eval_train_loss", "val_loss"])],
}
REFRESH_S = 2.0

user = auth.require_user("admin")
st.subheader("Jobs")
flash = st.session_state.pop("_flash_jobs", None)
if flash:
    st.toast(flash, icon=":material/check:")

with db() as s:
    project_names = [p.name for p in projects.list_projects(s)]
    versions = [(mv.name, mv.kind) for mv in registry.list_versions(s)]
    recent = [{"id": j.id, "kind": KIND_WORDS.get(j.kind, j.kind), "name": j.name or "", "state": j.state,
               "progress": j.progress, "created": j.created_at, "started": j.started_at, "ended": j.ended_at,
               "version": j.model_version.name if j.model_version else ""} for j in jobs.list_jobs(s, limit=50)]

lms = [n for n, k in versions if k != "reward"]
reward_models = [n for n, k in versions if k == "reward"]
# The README's loop starts reward, KTO and RL training from the SFT model: the newest SFT version by default.
newest_sft = next((n for n, k in reversed(versions) if k == "sft"), None)
newest_rm = reward_models[-1] if reward_models else None


# ------------------------------------------------------------------------------------------ new job
def job_args(fields: dict[str, Any], advanced: str) -> dict[str, Any]:
    """The form's essential arguments plus the advanced YAML (flag: value lines) as one flag mapping."""
    args = {k: v for k, v in fields.items() if v not in (None, "", [])}
    extra = yaml.safe_load(advanced) if advanced.strip() else {}
    if not isinstance(extra, dict):
        raise ServiceError("advanced: write one 'flag: value' per line (YAML mapping), e.g. learning_rate: 1e-4")
    both = sorted(set(extra) & set(args))
    if both:
        raise ServiceError(f"advanced: {', '.join(both)} is already set in the form above")
    return {**args, **{str(k).removeprefix("--"): v for k, v in extra.items()}}


def pick(label: str, options: list[str], key: str, help_: str | None = None, default: str | None = None
         ) -> str | None:
    if not options:
        st.selectbox(label, ["(none registered yet)"], disabled=True, key=key + "_none", help=help_)
        return None
    return st.selectbox(label, options, key=key, help=help_,
                        index=options.index(default) if default in options else 0)


COUNT_CAP = 10_000


@st.cache_data(ttl=20, show_spinner=False)
def training_rows(url: str, project: str, what: str) -> int:
    """How many rows a training job on `project` would read with its default filters (`what`: "sft" accepted
    demonstrations, "reward" decisive preference pairs): the exporters the training modules read. Cached a
    few seconds: the form reruns on every click."""
    with db() as s:
        rows = (export.iter_sft_rows(s, project=project, statuses=("accepted",)) if what == "sft"
                else export.iter_preference_rows(s, project=project))
        # counted up to a cap: the note only needs "none / few / plenty", and a big project must not stream
        # its whole export on every visit to the form
        return sum(1 for _ in itertools.islice(rows, COUNT_CAP))


def data_note(kind: str, project: str | None) -> None:
    """Say how much data the job will train on before it is queued: a warning (not a refusal) when very little."""
    if not project or kind not in ("train_sft", "train_reward"):
        return
    what = "sft" if kind == "train_sft" else "reward"
    n = training_rows(database_url(), project, what)
    words = "accepted demonstrations" if what == "sft" else "decisive preference pairs (ties and both-bad left out)"
    if n == 0:
        st.warning(f"Project {project} has no {words} yet: the job would fail. "
                   + ("Accept demonstrations on the Review page first." if what == "sft"
                      else "Let annotators compare responses first (or train from ratings)."),
                   icon=":material/warning:")
    elif n < jobs.SMALL_DATA_ROWS:
        st.warning(f"Project {project} has only **{n}** {words}: enough for a smoke test, too few for a model to "
                   f"learn much beyond them (aim for {jobs.SMALL_DATA_ROWS} or more). The job still runs.",
                   icon=":material/warning:")
    else:
        many = f"{COUNT_CAP:,} or more" if n >= COUNT_CAP else f"{n:,}"
        st.caption(f"Project {project}: {many} {words}; a share of them is held out for evaluation.")


def new_job_form(kind: str) -> None:
    needs_project = kind == "generate" or kind.startswith("train_")
    if needs_project and not project_names:
        st.info("No projects yet: create one on the Projects page first.")
        return
    what = st.radio("Evaluate", list(jobs.EVALUATE_WHAT), horizontal=True, key="job_eval_what",
                    format_func={"reward": "a reward model on a preference file",
                                 "policy": "a policy against its reference, judged by a reward model",
                                 "responses": "every version's responses in a project, judged by a reward model "
                                              "(the Leaderboard's RM column)"}.get) \
        if kind == "evaluate" else None
    f: dict[str, Any] = {}
    if needs_project or what in ("policy", "responses"):
        # outside the form: a form's widgets do not rerun the page, and the data note below follows the project
        f["project"] = st.selectbox("Project", project_names, key=f"job_project_{kind}")
    data_note(kind, f.get("project"))
    with st.form(f"new_job_{kind}"):
        name = None
        if kind in jobs.TRAINING_JOB_KINDS:
            name = st.text_input("Name of the new model version", key=f"job_name_{kind}",
                                 placeholder=f"default: {kind.removeprefix('train_')}-job<id>")
        if kind == "generate":
            f["models"] = st.multiselect("Models", lms, default=lms[-1:], key="job_gen_models",
                                         help="each samples responses for every prompt of the project")
            c1, c2 = st.columns(2)
            f["num_samples"] = c1.number_input("Responses per prompt and model", 1, 16, 2, key="job_gen_k")
            f["max_new_tokens"] = c2.number_input("Max new tokens", 1, 4096, 64, key="job_gen_tokens")
            f["tasks"] = ",".join(st.multiselect("Tasks to create", ["compare", "rank", "rate", "demonstrate"],
                                                 default=["compare"], key="job_gen_tasks"))
        elif kind in ("train_sft", "train_reward", "train_kto"):
            f["model"] = pick("Start from", lms, f"job_model_{kind}",
                              "the model version to fine-tune (SFT: a base model; reward and KTO: usually the SFT "
                              "model)", default=None if kind == "train_sft" else newest_sft)
            if kind == "train_reward" and st.checkbox(
                    "From good/bad ratings (pointwise)", key="job_rm_ratings",
                    help="train on the project's rate tasks with binary cross-entropy instead of on comparisons"):
                f["from_ratings"] = True
            c1, c2 = st.columns(2)
            f["max_steps"] = c1.number_input("Steps (0 = by epochs)", 0, 10 ** 7, 0, key=f"job_steps_{kind}")
            f["num_train_epochs"] = c2.number_input("Epochs", 0.0, 1000.0, 3.0 if kind == "train_sft" else 1.0,
                                                    key=f"job_epochs_{kind}")
        elif kind == "train_ppo":
            f["model"] = pick("Policy to start from (the SFT model)", lms, "job_model_ppo", default=newest_sft)
            f["reward_model"] = pick("Reward model", reward_models, "job_rm_ppo", default=newest_rm)
            f["max_steps"] = st.number_input("PPO updates (steps)", 1, 10 ** 7, 100, key="job_steps_ppo")
        elif kind in ("train_rloo", "train_grpo"):
            algo = kind.removeprefix("train_")
            f["model"] = pick("Policy to start from (the SFT model)", lms, f"job_model_{algo}", default=newest_sft)
            f["reward_model"] = pick("Reward model", reward_models, f"job_rm_{algo}", default=newest_rm)
            c1, c2 = st.columns(2)
            f["max_steps"] = c1.number_input("Steps", 1, 10 ** 7, 100, key=f"job_steps_{algo}")
            f["num_generations"] = c2.number_input(
                "Completions per prompt", 2, 64, 4, key=f"job_k_{algo}",
                help="the group whose mean is the baseline (RLOO: leave-one-out; GRPO: mean and std)")
        elif kind == "evaluate" and what == "reward":
            f["model"] = pick("Reward model", reward_models, "job_eval_rm")
            f["dataset"] = st.text_input("Preference file (JSONL, on the worker's machine)", key="job_eval_data",
                                         help="e.g. one written by `python -m db export preferences`")
        elif kind == "evaluate" and what == "responses":
            f["reward"] = pick("Reward model (the judge)", reward_models, "job_eval_resp_judge",
                               "scores the stored responses of every model version in the project; the Leaderboard "
                               "shows each version's mean beside its human score", default=newest_rm)
        elif kind == "evaluate":
            f["model"] = pick("Policy", lms, "job_eval_policy")
            f["reference"] = pick("Reference (usually its SFT parent)", lms, "job_eval_ref")
            f["reward"] = pick("Reward model (the judge)", reward_models, "job_eval_judge")
        elif kind == "pretrain":
            c1, c2 = st.columns(2)
            f["steps"] = c1.number_input("Steps", 1, 10 ** 7, 600, key="job_pt_steps")
            f["attention"] = c2.selectbox("Attention", ["dense", "sparse"], key="job_pt_attn")
            f["vocab_size"] = c1.number_input("Vocabulary size", 256, 65536, 4096, key="job_pt_vocab")
            f["preset"] = c2.text_input("Preset", "tiny", key="job_pt_preset")
            st.caption("Trains on the documentation shipped inside CPython with short verifiable tasks mixed in "
                       "(offline; `task_docs`, `task_noise`, `docs`, `families` in Advanced) and registers the "
                       "export as a base version.")
        advanced = st.text_area("Advanced: any other flag, as YAML", key=f"job_adv_{kind}", height=90,
                                placeholder="learning_rate: 1.0e-4\nper_device_train_batch_size: 8",
                                help=f"every flag of `python -m {'pretrain.pipeline' if kind == 'pretrain' else 'rlhf.' + kind}"
                                     " --help`, without the leading --")
        if st.form_submit_button("Queue job", type="primary", icon=":material/play_arrow:"):
            if kind in ("train_sft", "train_reward"):
                if not f.get("max_steps"):
                    f.pop("max_steps", None)  # by epochs
                else:
                    f.pop("num_train_epochs", None)
            if what:
                f["what"] = what
            try:
                args = job_args({k: (int(v) if isinstance(v, float) and v.is_integer() and k != "num_train_epochs"
                                     else v) for k, v in f.items()}, advanced)
                with db() as s:
                    job = jobs.enqueue(s, kind, args, name=name, created_by=user["id"])
                    jid, jname = job.id, job.name
            except (ServiceError, yaml.YAMLError) as e:
                show_error(e)
            else:
                st.session_state["_flash_jobs"] = f"Job {jid} queued" + (f": it will register {jname}" if jname else "")
                st.session_state["_job_pick_next"] = jid
                st.rerun()


with st.expander("New job", icon=":material/add:", expanded=not recent):
    kind = st.selectbox("Kind", list(KIND_TITLES), format_func=KIND_TITLES.get, key="job_kind")
    new_job_form(kind)
    st.caption("A worker runs queued jobs (`python -m rlhf.worker`; `make demo` starts one). Nothing runs while "
               "no worker is up: the job waits, queued.")

if not recent:
    st.info("No jobs yet.")
    st.stop()

table = pd.DataFrame([{**r, **{c: local_time(r[c]) for c in ("created", "started", "ended")}} for r in recent])
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0,
                                                                        format="percent")})


# ------------------------------------------------------------------------------------------ one job
def metric_charts(kind: str, rows: list[dict[str, Any]]) -> int:
    """Line charts of the job's metrics.jsonl; returns how many were drawn."""
    rows = [r for r in rows if isinstance(r.get("step"), int | float) and not r.get("final")]
    drawn = 0
    groups = PLOTS.get(kind, [])
    cols = st.columns(max(1, len(groups)))
    for col, (title, keys) in zip(cols, groups):
        long = [{"step": r["step"], "metric": k, "value": float(r[k])} for r in rows for k in keys
                if isinstance(r.get(k), int | float) and not isinstance(r.get(k), bool)]
        if not long:
            continue
        drawn += 1
        with col:
            st.markdown(f"##### {title}")
            st.altair_chart(alt.Chart(pd.DataFrame(long)).mark_line(point=True).encode(
                x=alt.X("step:Q"), y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
                color=alt.Color("metric:N", legend=alt.Legend(orient="bottom")),
                tooltip=["step", "metric", "value"]).properties(height=220), width="stretch")
    return drawn


_STEPS = re.compile(r"(\d+)/(\d+) \[")


def progress_words(text: str | None) -> str:
    """A tqdm bar's text ("31%|###   | 940/3000 [01:02<02:10, ...]") as "940 / 3000 steps"; other text as is."""
    found = list(_STEPS.finditer(text or ""))
    if found:
        return f"{found[-1].group(1)} / {found[-1].group(2)} steps"
    return text or "running"


def _n(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def result_sentence(kind: str, args: dict[str, Any], r: dict[str, Any]) -> str | None:
    """What a generate or evaluate job did, in a sentence (None: the page shows its result as data only)."""
    if kind == "generate" and isinstance(r.get("tasks"), dict):
        models = " and ".join(map(str, r.get("models") or args.get("models") or [])) or "no model"
        made = [f"{v.get('created', 0)} {k} tasks created" + (f" ({v['existing']} already there)"
                                                                if v.get("existing") else "")
                for k, v in r["tasks"].items() if isinstance(v, dict)]
        resp = r.get("responses") or {}
        return (f"{'; '.join(made) or 'No tasks created'} from {models} in project {r.get('project', '?')}"
                f" ({r.get('prompts', '?')} prompts; {resp.get('generated', 0)} responses generated, "
                f"{resp.get('reused', 0)} reused).")
    if kind == "evaluate" and isinstance(r.get("versions"), dict):  # responses
        parts = [f"{v} {_n(e.get('score'))} ({e.get('responses', '?')} responses"
                 + (f", {e['accuracy']:.0%} correct" if isinstance(e.get("accuracy"), float) else "") + ")"
                 for v, e in r["versions"].items() if isinstance(e, dict)]
        return (f"{r.get('reward', 'The reward model')} judged the responses of {len(parts)} version"
                f"{'' if len(parts) == 1 else 's'} in project "
                f"{r.get('project', '?')}: mean score " + "; ".join(parts) + "."
                + ("" if r.get("recorded", True) else " Not recorded (--no_record)."))
    if kind == "evaluate" and "win_rate" in r:  # policy against its reference
        return (f"{r.get('model', 'The policy')} against {r.get('reference', 'its reference')} on "
                f"{r.get('prompts', '?')} held-out prompts, judged by {r.get('reward', 'the reward model')}: "
                f"score {_n(r.get('score'))} vs {_n(r.get('reference_score'))}, win rate {r['win_rate']:.0%}, "
                f"KL {_n(r.get('kl'))}.")
    if kind == "evaluate" and "accuracy" in r:  # a reward model on a preference file
        return (f"{r.get('model_version') or r.get('model', 'The reward model')} ranks the chosen response first "
                f"in {r['accuracy']:.0%} of {r.get('pairs', '?')} pairs of {r.get('dataset', 'the file')}.")
    return None


def cancel_job(job_id: int) -> None:
    try:
        with db() as s:
            jobs.cancel(s, job_id, actor_id=user["id"])
    except ServiceError as e:
        st.session_state[f"_job_cancel_error_{job_id}"] = e


def job_panel(job_id: int) -> None:
    try:
        with db() as s:
            d = jobs.job_detail(s, job_id)
    except ServiceError as e:
        show_error(e)
        return
    if d["state"] != by_id[job_id]["state"]:
        st.rerun()  # it moved on (started, ended): refresh the table too, and stop refreshing once it ended
    title = f"Job {d['id']} · {KIND_TITLES.get(d['kind'], d['kind'])}" + (f" · {d['name']}" if d["name"] else "")
    st.markdown(f"#### {title}")
    cancelled = jobs.cancel_note(d)
    st.markdown(f"{STATE_ICONS.get(d['state'], '')} **{d['state']}**"
                + (" (cancelling…)" if d["cancel_requested"] and d["state"] == "running" else "")
                # a cancelled job's exit status is the worker's SIGTERM: the note below says what happened
                + (f" · exit status {d['exit_status']}" if d["exit_status"] is not None and not cancelled else "")
                + (f" · started {local_time(d['started_at'])}" if d["started_at"] else "")
                + (f" · ended {local_time(d['ended_at'])}" if d["ended_at"] else "")
                + (f" · host {d['host']}, process {d['pid']}" if d["pid"] else ""))
    if cancelled:
        who, when = cancelled
        st.info(f"Cancelled by {who}" + (f" at {local_time(when)}" if when else "") + ".",
                icon=":material/cancel:")
    if d["state"] == "running":
        st.progress(d["progress"] or 0.0, text=progress_words(d["progress_text"]))
    elif d["state"] == "queued":
        st.caption("Waiting for a worker (`python -m rlhf.worker`).")
    cancellable = d["state"] in ("queued", "running") and not d["cancel_requested"]
    # A callback runs before the panel is drawn again, so the panel shows the cancel at once; cancelling in the
    # script and then rerunning the page from inside this fragment drew the button and the panel twice.
    if cancellable:
        st.button("Cancel job", icon=":material/stop_circle:", key=f"job_cancel_{job_id}", on_click=cancel_job,
                  args=(job_id,))
    if (err := st.session_state.pop(f"_job_cancel_error_{job_id}", None)) is not None:
        show_error(err)
    mv = d["model_version"]
    if d["state"] == "succeeded" and mv:
        st.success(f"Registered model version **{mv['name']}** ({mv['kind']}).", icon=":material/new_releases:")
        l1, l2 = st.columns(2)
        l1.page_link("views/models.py", label=f"{mv['name']} among the model versions",
                     icon=":material/model_training:")
        if mv["kind"] != "reward":
            l2.page_link("views/leaderboard.py", label="Leaderboard (once its responses are voted on)",
                         icon=":material/leaderboard:")
        if mv["kind"] != "reward" and project_names:
            c1, c2 = st.columns([2, 1])
            default = d["args"].get("project")
            proj = c1.selectbox("Project for the new comparisons", project_names, key=f"job_cmp_project_{job_id}",
                                index=project_names.index(default) if default in project_names else 0)
            c2.write("")
            if c2.button("Generate comparisons from it", icon=":material/compare_arrows:", type="primary",
                         key=f"job_cmp_{job_id}",
                         help="queues a generate job: responses of this version and its parent, paired as compare "
                              "tasks for the annotators"):
                try:
                    with db() as s:
                        g = jobs.enqueue_comparisons(s, mv["id"], proj, created_by=user["id"])
                        gid = g.id
                except ServiceError as e:
                    show_error(e)
                else:
                    st.session_state["_flash_jobs"] = f"Job {gid} queued: compare tasks from {mv['name']}"
                    st.session_state["_job_pick_next"] = gid
                    st.rerun()
    elif d["state"] == "succeeded" and d["result"]:
        sentence = result_sentence(d["kind"], d["args"], d["result"])
        if sentence:
            st.success(safe_markdown(sentence), icon=":material/check_circle:")
        with st.expander("Full result", icon=":material/data_object:", expanded=not sentence):
            st.json(d["result"])
        if d["kind"] == "evaluate" and d["args"].get("what") == "responses":
            st.page_link("views/leaderboard.py", label="Leaderboard: these scores beside the human ones",
                         icon=":material/leaderboard:")
    if d["result"].get("warning"):
        st.warning(safe_markdown(f"Warning: {d['result']['warning']}."), icon=":material/warning:")
    if d["error"]:
        # the error quotes the job's own output (model text, file names): shown as text, never as Markdown
        st.error(safe_markdown(d["error"].split("\n--- last log lines ---")[0]), icon=":material/error:")
    if not metric_charts(d["kind"], d["metrics"]) and d["kind"] in PLOTS and d["state"] == "running":
        st.caption("Metrics appear here once the job logs its first step.")
    with st.expander("Arguments and command", icon=":material/terminal:"):
        st.code(yaml.safe_dump(d["args"], sort_keys=True) or "{}", language="yaml")
        if d["command"]:
            st.code(" ".join(d["command"]), language="bash")
    st.markdown("##### Log")
    st.code(d["log_tail"] or "(no log yet)", language=None)
    if d["log_path"]:
        st.caption(f"Log file: `{d['log_path']}`" + (f" · run folder: `{d['run_dir']}`" if d["run_dir"] else ""))


ids = [r["id"] for r in recent]
by_id = {r["id"]: r for r in recent}
if "_job_pick_next" in st.session_state:  # a job just queued here: show it (set before the widget exists)
    st.session_state["job_pick"] = st.session_state.pop("_job_pick_next")
if st.session_state.get("job_pick") not in by_id:
    st.session_state["job_pick"] = ids[0]
# No state in the label: the box keeps showing the label it first drew ("running" after the job ended); the
# table above and the panel below say the state.
job_id = st.selectbox("Job", ids, key="job_pick",
                      format_func=lambda i: f"{i} · {by_id[i]['kind']}{' · ' + by_id[i]['name'] if by_id[i]['name'] else ''}")
# Refresh only the panel (not the page) while the job can still change.
active = by_id[job_id]["state"] in ("queued", "running")
st.fragment(job_panel, run_every=REFRESH_S if active else None)(job_id)
