"""Admin: import prompts, preference datasets (TRL / HH) or OpenAssistant trees from an upload.

Same services as `python -m db import`: a bad line is named by its line and field (in words), and the whole
file is rolled back (nothing written) unless "Skip invalid rows" is ticked: then every good row is imported
(one transaction) and the refused lines can be downloaded as a JSONL report, like `--skip-invalid`.

Imported prompts are not tasks yet: after a prompt import the page says so and offers the next step,
demonstrate tasks for the file's prompts at once, or a generate job (db.services.jobs) that samples a chosen
model version and makes compare or rank tasks of its responses.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import streamlit as st

from db.services import importers, jobs, registry
from db.services.errors import InputError, ServiceError
from labeling_ui import auth
from labeling_ui.common import db, in_words, project_picker, safe_markdown, show_error
from labeling_ui.vocab import plural

# what an import's "added" counts, by file kind (the toast says "Imported 3 new preference pairs", not "3 new")
ADDED = {"prompts": ("prompt", "prompts"), "preferences": ("preference pair", "preference pairs"),
         "oasst": ("ranked conversation", "ranked conversations"), "ratings": ("rating", "ratings")}
REPORT_KEY = "imp_report"  # the last import's refused lines, kept across reruns for the download button
NEXT_KEY = "imp_next"  # the last prompt import (file and counts), for the "what happens next" panel

user = auth.require_user("admin")
st.subheader("Import")
project = project_picker(st)
if project is None:
    st.info("Create a project first (Projects page).")
    st.stop()

KINDS = {"prompts": "Prompts (JSONL / CSV: text or messages)",
         "preferences": "Preference pairs (TRL or Anthropic HH JSONL)",
         "oasst": "OpenAssistant message trees (JSONL)",
         "ratings": "Good/bad ratings (TRL unpaired JSONL: prompt, completion, label)"}
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


def refused_in_words(e: importers.InvalidRowsError, name: str) -> list[str]:
    """The refused lines as sentences ("Line 6: the “rejected” field is missing."), then what to do."""
    bad = e.refused
    hint = importers.fill_hint(importers.UI_HINT, e.total - len(bad), len(bad))
    hint = hint[:1].upper() + hint[1:] + "."
    if len(bad) == 1:
        r = bad[0]
        return [in_words(InputError(r.reason, file=name, line=r.line, field=r.field)) + " Nothing was imported.",
                hint]
    head = f"{len(bad)} of {e.total} lines of {name} cannot be imported, so nothing was imported:"
    lines = [in_words(InputError(r.reason, line=r.line, field=r.field)) for r in bad[:importers.SHOWN_BAD_LINES]]
    if len(bad) > importers.SHOWN_BAD_LINES:
        lines.append(f"… and {len(bad) - importers.SHOWN_BAD_LINES} more (all of them in the report below).")
    return [head, *[f"- {x}" for x in lines], hint]


def _keep_report(name: str, refused: list[importers.RefusedLine]) -> None:
    st.session_state[REPORT_KEY] = {"name": name, "data": importers.report_bytes(name, refused),
                                    "count": len(refused)}


if st.button("Import", type="primary", disabled=upload is None, key="imp_go", icon=":material/upload:"):
    st.session_state.pop(REPORT_KEY, None)
    st.session_state.pop(NEXT_KEY, None)
    data, name = upload.getvalue(), upload.name
    try:
        with db() as s:  # one transaction: any error rolls the whole file back
            if kind == "prompts":
                r = importers.import_prompts(s, data, project["name"], filename=name, demonstrate_tasks=demo_tasks,
                                             skip_invalid=skip, actor_id=user["id"])
            elif kind == "preferences":
                r = importers.import_preferences(s, data, project["name"], fmt=fmt, filename=name,
                                                 skip_invalid=skip, actor_id=user["id"])
            elif kind == "ratings":
                r = importers.import_ratings(s, data, project["name"], filename=name, skip_invalid=skip,
                                             actor_id=user["id"])
            else:
                r = importers.import_oasst(s, data, project["name"], filename=name, skip_invalid=skip,
                                           actor_id=user["id"])
    except importers.InvalidRowsError as e:
        # the reasons quote the file's content: shown as text, one bad line per line
        *lines, hint = refused_in_words(e, name)
        st.error("  \n".join(safe_markdown(x) for x in lines) + "\n\n" + safe_markdown(hint), icon=":material/error:")
        _keep_report(name, e.refused)
    except ServiceError as e:
        show_error(e)
        st.caption("Nothing was imported: fix the file and upload it again.")
    else:
        st.success(r.summary(), icon=":material/check:")
        st.toast(f"Imported {plural(r.added, 'new ' + ADDED[kind][0], 'new ' + ADDED[kind][1])}",
                 icon=":material/check:")
        if r.refused:
            st.warning(f"{plural(len(r.refused), 'line')} of {name} {'was' if len(r.refused) == 1 else 'were'} "
                       "refused and not imported; the report lists "
                       "each with its line number and reason.", icon=":material/warning:")
            _keep_report(name, r.refused)
        if kind == "prompts":
            st.session_state[NEXT_KEY] = {"project_id": project["id"], "name": name, "data": data,
                                          "rows": r.rows, "added": r.added,
                                          "demonstrate": r.details.get("demonstrate tasks", 0) if demo_tasks else None}
        else:  # labelled data: say what it is for, and whether annotators see any of it
            st.session_state[NEXT_KEY] = {"project_id": project["id"], "kind": kind, "name": name, "added": r.added,
                                          "details": dict(r.details)}

report = st.session_state.get(REPORT_KEY)
if report:
    st.download_button(f"Download the report of {plural(report['count'], 'refused line')}", report["data"],
                       file_name=f"{Path(report['name']).name.removesuffix('.gz')}.refused.jsonl",
                       mime="application/jsonl", key="imp_report_dl", icon=":material/download:",
                       on_click="ignore")


def labelled_next_steps(last: dict) -> None:
    """After importing labelled data (pairs, ratings, ranked trees): its tasks come with their labels, for
    reward training; annotators see them only where the project asks for more labels per task than one."""
    n, name, per = last["added"], project["name"], project["labels_per_task"]
    sft = "SFT_MODEL"
    with db() as s:  # the reward model starts from a policy: the newest registered one, when there is one
        versions = [mv.name for mv in registry.list_versions(s) if mv.kind != "reward"]
    if versions:
        sft = versions[-1]
    with st.container(border=True, key="imp_next_panel"):
        st.markdown("#### What happens next")
        if last["kind"] == "ratings":
            st.markdown(f"**{last['name']}** added {plural(n, 'rating')} to **{name}**, each on a rate task "
                        "with its imported good/bad label. A reward model learns from them: a **Reward model** job on "
                        "the Jobs page with *From good/bad ratings* ticked, or the command below.")
            cmd = f"python -m rlhf.train_reward --from_ratings --model {shlex.quote(sft)} --project {shlex.quote(name)}"
            page = "Rate"
        else:
            what = ("preference pair" if last["kind"] == "preferences" else "ranked conversation")
            st.markdown(f"**{last['name']}** added {plural(n, what)} to **{name}**, each on a "
                        f"{'compare' if last['kind'] == 'preferences' else 'compare or rank'} task with its imported "
                        "label. A reward model learns from them: a **Reward model (preferences)** job on the Jobs page, or the "
                        "command below.")
            cmd = f"python -m rlhf.train_reward --model {shlex.quote(sft)} --project {shlex.quote(name)}"
            page = "Compare" if last["kind"] == "preferences" else "Compare and Rank"
        st.code(cmd, language="bash", wrap_lines=True)
        if per > 1:
            st.markdown(f"This project asks for {plural(per, 'label')} per task, so annotators label each of these "
                        f"{per - 1} more {'time' if per == 2 else 'times'} on the {page} page.")
        else:
            st.markdown("Annotators see none of them: this project asks for 1 label per task, and each has it. "
                        "(Raise *labels per task* on the Projects page to have annotators label them too.)")
        st.page_link("views/jobs.py", label="Jobs page", icon=":material/play_circle:")


def next_steps(last: dict) -> None:
    """After a prompt import: prompts are not tasks yet. Say so, and offer both ways to make tasks of them."""
    n = last["rows"]
    with st.container(border=True, key="imp_next_panel"):
        st.markdown("#### What happens next")
        if last["demonstrate"] is not None:
            st.markdown(f"The {n} prompts of **{last['name']}** are in **{project['name']}**, with "
                        f"{last['demonstrate']} new demonstrate tasks: annotators see them on the Demonstrate page now.")
        else:
            st.markdown(f"The {n} prompts of **{last['name']}** are in **{project['name']}**, but annotators see "
                        "nothing yet: a prompt becomes work once it has a task. Make some now:")
        left, right = st.columns([2, 3], gap="large")
        with left:
            st.markdown("**Demonstrate tasks** — annotators write the ideal answer (for SFT).")
            if st.button("Create demonstrate tasks", key="imp_next_demo", help=f"one for each of the {n} prompts of "
                         "this file", icon=":material/edit_note:", disabled=last["demonstrate"] is not None):
                try:
                    with db() as s:  # the same file again: its prompts are there, only the tasks are new
                        r = importers.import_prompts(s, last["data"], project["name"], filename=last["name"],
                                                     demonstrate_tasks=True, skip_invalid=True,
                                                     actor_id=user["id"])
                except ServiceError as e:
                    show_error(e)
                else:
                    last["demonstrate"] = r.details.get("demonstrate tasks", 0)
                    st.session_state["_imp_next_flash"] = (f"{last['demonstrate']} demonstrate tasks created: "
                                                           "they are on the Demonstrate page now.")
                    st.rerun()
        with right:
            st.markdown("**Compare or rank tasks** — a model answers each prompt, annotators judge the answers.")
            with db() as s:
                versions = [mv.name for mv in registry.list_versions(s) if mv.kind != "reward"]
            if not versions:
                st.caption("No model version is registered yet (Model versions page, or a pretrain job on the "
                           "Jobs page): register one, then come back here.")
                return
            c1, c2, c3 = st.columns([3, 3, 2], vertical_alignment="bottom")
            model = c1.selectbox("Model version", versions, index=len(versions) - 1, key="imp_next_model")
            what = c2.segmented_control("Tasks", ["compare", "rank"], default="compare", key="imp_next_kind",
                                        format_func=str.capitalize) or "compare"
            k = c3.number_input("Per prompt", 2 if what == "compare" else 3, 16, 2 if what == "compare" else 4,
                                key=f"imp_next_k_{what}", help="responses per prompt")
            args = {"project": project["name"], "models": [model], "num_samples": int(k), "tasks": what}
            if st.button("Queue a generate job", key="imp_next_gen", type="primary", icon=":material/play_arrow:",
                         help=f"{int(k)} responses per prompt from {model}, made into {what} tasks"):
                try:
                    with db() as s:
                        job = jobs.enqueue(s, "generate", args, created_by=user["id"])
                        jid = job.id
                except ServiceError as e:
                    show_error(e)
                else:
                    st.session_state["_imp_next_flash"] = (f"Job {jid} queued: the worker samples {model} and "
                                                           f"creates the {what} tasks. Follow it on the Jobs page.")
                    st.rerun()
            st.caption("It answers every prompt of the project that has no responses from this version yet. "
                       "The job waits until a worker runs it (`make demo` starts one). Or run it yourself:")
            st.code(f"python -m rlhf.generate --project {shlex.quote(project['name'])} --models {shlex.quote(model)} --num_samples {int(k)} "
                    f"--tasks {what}", language="bash", wrap_lines=True)
        st.page_link("views/jobs.py", label="Jobs page", icon=":material/play_circle:")


flash = st.session_state.pop("_imp_next_flash", None)
if flash:
    st.success(flash, icon=":material/check:")
last = st.session_state.get(NEXT_KEY)
if last and last["project_id"] == project["id"]:
    (next_steps if last.get("kind", "prompts") == "prompts" else labelled_next_steps)(last)
