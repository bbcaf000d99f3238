"""Admin CLI: `python -m db <command> …` (every command has --help).

Errors in input name file, line and field (an import lists its first few bad lines), exit with status 2
and write nothing; `import … --skip-invalid REPORT.jsonl` imports the good rows and reports the others.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from db.services.errors import ServiceError
from db.settings import DEFAULT_DATABASE_URL


def _session(args: argparse.Namespace):
    from db.session import session_scope
    return session_scope(args.url)


# What an imported label is, in the help of every import that writes labels (README "Imports").
IMPORTED_LABELS = ("Imported labels belong to an inactive pseudo-user named after the source (import:hh, "
                   "import:trl, import:oasst, import:trl-unpaired) that cannot sign in: they are exported and "
                   "trained on like any label and fill one of a task's labels-per-task slots (with 2, one more "
                   "person labels it), but agreement figures leave them out (a dataset is not an annotator).")


def _share(text: str) -> float:
    """An argparse type: a share from 0 to 1 (`--min-agreement 1.5` would silently export nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (a share from 0 to 1, e.g. 0.75)") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside 0..1 (a share: 0.75 means three labels in four "
                                         "agree)")
    return value


def _read_password(args: argparse.Namespace) -> str:
    # Never from argv: it would land in shell history and `ps`.
    if args.password_stdin:
        pw = sys.stdin.readline().rstrip("\n")
    else:
        pw = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != pw:
            raise ServiceError("the two passwords differ")
    return pw


# ----------------------------------------------------------------------------------- commands

def cmd_upgrade(args: argparse.Namespace) -> int:
    from db.migrate import upgrade
    rev = upgrade(args.url, args.revision)
    print(f"database at revision {rev}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from db.backup import backup
    from db.settings import database_url
    info = backup(args.url or database_url(), args.file, force=args.force)
    print(f"backed up the {info.backend} database (schema revision {info.revision}, {info.tables} tables) "
          f"to {info.path}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from db.backup import restore
    from db.settings import database_url
    info = restore(args.url or database_url(), args.file, force=args.force)
    print(f"restored {args.file} ({info.tables} tables, schema revision {info.revision}); run "
          "`python -m db upgrade` if this InstructLoop is newer than the backup")
    print(info.audit_note)
    return 0


def cmd_users_add(args: argparse.Namespace) -> int:
    from db.services import accounts
    pw = _read_password(args)
    with _session(args) as s:
        u = accounts.create_user(s, args.username, pw, role=args.role, display_name=args.display_name or "")
        print(f"created {u.role} {u.username!r} (id {u.id})")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    from db.services import accounts
    with _session(args) as s:
        rows = [{"id": u.id, "username": u.username, "display_name": u.display_name, "role": u.role,
                 "active": u.active, "created_at": u.created_at} for u in accounts.list_users(s)]
    print(pd.DataFrame(rows).to_string(index=False) if rows else "no users")
    return 0


def cmd_users_deactivate(args: argparse.Namespace) -> int:
    from db.services import accounts
    with _session(args) as s:
        accounts.set_active(s, args.username, args.activate)
    print(f"{args.username}: {'activated' if args.activate else 'deactivated'}")
    return 0


def cmd_users_set_password(args: argparse.Namespace) -> int:
    from db.services import accounts
    pw = _read_password(args)
    with _session(args) as s:
        accounts.set_password(s, args.username, pw)
    print(f"password of {args.username} changed")
    return 0


def cmd_users_set_role(args: argparse.Namespace) -> int:
    from db.services import accounts
    with _session(args) as s:
        accounts.set_role(s, args.username, args.role)
    print(f"{args.username} is now {args.role}")
    return 0


def cmd_projects_create(args: argparse.Namespace) -> int:
    from db.services import projects
    guidelines = Path(args.guidelines).read_text(encoding="utf-8") if args.guidelines else ""
    with _session(args) as s:
        p = projects.create_project(s, args.name, guidelines=guidelines, labels_per_task=args.labels_per_task)
        print(f"created project {p.name!r} (id {p.id}, {p.labels_per_task} label(s) per task)")
    return 0


def cmd_projects_list(args: argparse.Namespace) -> int:
    from db.services import stats
    with _session(args) as s:
        df = stats.per_project(s)
    print(df.to_string(index=False) if len(df) else "no projects")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from db.services import importers
    report = args.skip_invalid
    if report is not None:
        if Path(report).resolve() == Path(args.file).resolve():
            raise ServiceError(f"--skip-invalid {report}: the report would overwrite the file being imported")
        if not Path(report).resolve().parent.is_dir():
            raise ServiceError(f"--skip-invalid {report}: folder {Path(report).parent} does not exist")
    skip = report is not None
    with _session(args) as s:  # one transaction: any error rolls the whole file back
        if args.what == "prompts":
            # demonstrate tasks for this file's prompts only, not every prompt of the project
            r = importers.import_prompts(s, args.file, args.project, skip_invalid=skip,
                                         demonstrate_tasks=args.tasks == "demonstrate")
        elif args.what == "preferences":
            r = importers.import_preferences(s, args.file, args.project, fmt=args.format, skip_invalid=skip)
        elif args.what == "ratings":
            r = importers.import_ratings(s, args.file, args.project, skip_invalid=skip)
        else:
            r = importers.import_oasst(s, args.file, args.project, skip_invalid=skip)
        if skip:
            # before the commit: a report that cannot be written rolls the import back
            importers.write_report(report, r.file, r.refused)
    print(r.summary())
    if skip:
        print(f"{len(r.refused)} refused line(s) written to {report}")
        if r.refused and not r.rows:
            print(f"error: no line of {r.file} could be imported (reasons in {report})", file=sys.stderr)
            return 2
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from db.services import export
    filters: dict = {"project": args.project} if args.what == "prompts" else \
        {"project": args.project, "since": args.since, "until": args.until, "annotator": args.annotator}
    if args.what == "preferences":
        filters.update(fmt=args.format or "trl", aggregate=args.aggregate, include_ties=args.include_ties,
                       model_version=args.model_version, min_agreement=args.min_agreement,
                       conversational=args.conversational, pair_ratings=args.pair_ratings)
    elif args.what == "ratings":
        filters.update(aggregate=args.aggregate, model_version=args.model_version,
                       min_agreement=args.min_agreement, conversational=args.conversational)
    elif args.what == "sft":
        filters.update(fmt=args.format or "prompt_completion", conversational=args.conversational,
                       statuses=tuple(args.status.split(",")))
    elif args.what != "prompts":
        filters.update(model_version=args.model_version, with_usernames=args.with_usernames, salt=args.salt)
    out = args.output or f"exports/{args.what}{'-' + args.project if args.project else ''}.jsonl"
    with _session(args) as s:
        m = export.export_file(s, args.what, out, **filters)
    print(f"wrote {m['rows']} rows to {out} (manifest: {out}.manifest.json)")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from db.services import audit
    with _session(args) as s:
        rows = audit.entries(s, action=args.action, actor=args.by, limit=args.limit)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
    elif not rows:
        print("no audit entries" + (" match" if args.action or args.by else ""))
    else:
        table = pd.DataFrame([{**r, "details": json.dumps(r["details"], sort_keys=True, ensure_ascii=False)}
                              for r in rows]).drop(columns=["id"])
        print(table.to_string(index=False))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from db.services import projects, stats
    with _session(args) as s:
        pid = projects.get_project(s, args.project).id if args.project else None
        proj = stats.per_project(s)
        ann = stats.per_annotator(s, pid)
        mv = stats.model_versions_table(s, all_metrics=args.json)
    if args.json:
        print(json.dumps({"projects": proj.to_dict("records"), "annotators": ann.to_dict("records"),
                          "model_versions": mv.astype(object).where(mv.notna(), None).to_dict("records")},
                         default=str, indent=2))
        return 0
    pd.set_option("display.max_colwidth", 80)
    print("Projects\n" + (proj.to_string(index=False) if len(proj) else "  none"))
    print("\nAnnotators" + (f" ({args.project})" if args.project else "") + "\n"
          + (ann.to_string(index=False) if len(ann) else "  no labels yet"))
    print("\nModel versions\n" + (_plain(mv.drop(columns=["created_at"])) if len(mv) else "  none"))
    return 0


def _plain(df: pd.DataFrame) -> str:
    """A frame as a text table with blanks for missing values (not NaN / None / <NA>)."""
    return df.astype(object).where(df.notna(), "").to_string(index=False)


def cmd_models_list(args: argparse.Namespace) -> int:
    from db.services import stats
    with _session(args) as s:
        mv = stats.model_versions_table(s)
    print(_plain(mv) if len(mv) else "no model versions")
    return 0


def cmd_models_register(args: argparse.Namespace) -> int:
    from db.services import registry
    with _session(args) as s:
        mv = registry.register_model_version(s, args.name, args.kind, args.path, parent=args.parent)
        print(f"registered {mv.kind} model version {mv.name!r} (id {mv.id})")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from db.services import leaderboard
    with _session(args) as s:
        lb = leaderboard.leaderboard(s, args.project, rounds=args.rounds, seed=args.seed, prior=args.prior,
                                     include_rankings=not args.no_rankings)
    if args.json:
        print(json.dumps({"battles": lb.battles, "rounds": lb.rounds, "seed": lb.seed,
                          # to_json: missing values (no parent, no RM score) become null
                          "versions": json.loads(lb.table.to_json(orient="records", force_ascii=False)),
                          "head_to_head": json.loads(lb.head_to_head.to_json(orient="records"))}, indent=2,
                         ensure_ascii=False))
        return 0
    if not len(lb.table):
        print("no votes between two model versions yet (compare or rank tasks of responses from different "
              "versions: python -m rlhf.generate --models A B --tasks compare)")
        return 0
    t = lb.table.copy()
    for col in ("score", "lower", "upper"):
        t[col] = t[col].round(0)
    for col in ("rm_judged", "wins", "win_rate", "win_rate_vs_parent", *leaderboard.RM_METRICS):
        t[col] = t[col].astype(float).round(3)
    pd.set_option("display.width", 200)
    print(f"{lb.battles} votes between versions; Bradley-Terry on the Elo scale, 95% bootstrap interval over "
          f"{lb.rounds} resamples (seed {lb.seed})")
    print(t.to_string(index=False))
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from db.services import jobs
    with _session(args) as s:
        rows = [{"id": j.id, "kind": j.kind, "name": j.name or "", "state": j.state,
                 "progress": "" if j.progress is None else f"{j.progress:.0%}", "created_at": j.created_at,
                 "ended_at": j.ended_at, "version": j.model_version.name if j.model_version else ""}
                for j in jobs.list_jobs(s, states=args.state or None, limit=args.limit)]
    print(pd.DataFrame(rows).to_string(index=False) if rows else "no jobs")
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from db.services import jobs
    with _session(args) as s:
        d = jobs.job_detail(s, args.id, log_lines=args.lines)
    log = d.pop("log_tail")
    d.pop("metrics")
    print(json.dumps(d, default=str, indent=2))
    print("--- log ---\n" + (log or "(no log yet)"))
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    from db.services import jobs
    with _session(args) as s:
        j = jobs.cancel(s, args.id)
        state = j.state
    print(f"job {args.id}: " + ("cancelled" if state == "cancelled" else "cancel requested (its worker stops it)"))
    return 0


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    import yaml

    from db.services import jobs
    flags: dict = {}
    if args.args_file:
        loaded = yaml.safe_load(Path(args.args_file).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ServiceError(f"{args.args_file}: expected a YAML mapping of flag: value")
        flags.update(loaded)
    for item in args.arg or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ServiceError(f"--arg {item!r}: write FLAG=VALUE (the value is read as YAML: 2, true, [a, b])")
        flags[key.removeprefix("--")] = yaml.safe_load(value) if value else ""
    with _session(args) as s:
        j = jobs.enqueue(s, args.kind, flags, name=args.name)
        print(f"queued job {j.id} ({j.kind}{', registers ' + repr(j.name) if j.name else ''}); a worker runs it "
              "(python -m rlhf.worker)")
    return 0


# ------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m db", description="InstructLoop admin: database, users, "
                                "projects, imports, exports and statistics.")
    p.add_argument("--url", default=None, help=f"database URL (default: $DATABASE_URL or {DEFAULT_DATABASE_URL})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent, name: str, func: Callable, help_: str) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    up = add(sub, "upgrade", cmd_upgrade, "create or migrate the schema to the latest revision (alembic upgrade)")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    bk = add(sub, "backup", cmd_backup, "copy the whole database to FILE (SQLite: online backup API, safe while "
                                        "the app runs; PostgreSQL: pg_dump custom format)")
    bk.add_argument("file", help="backup file to write (written beside, then renamed: never half a file)")
    bk.add_argument("--force", action="store_true", help="replace FILE if it exists")
    rs = add(sub, "restore", cmd_restore, "replace the database with a backup made by `backup` (PostgreSQL: "
                                          "pg_restore in one transaction)")
    rs.add_argument("file", help="backup file made by `python -m db backup`")
    rs.add_argument("--force", action="store_true",
                    help="overwrite a database that already has tables (default: refuse)")

    users = sub.add_parser("users", help="manage accounts", description="manage accounts")
    us = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    ua = add(us, "add", cmd_users_add, "create a user (password asked at a prompt, or read from stdin)")
    ua.add_argument("username", help="login name (letters, digits, . _ @ -)")
    ua.add_argument("--role", choices=["annotator", "admin"], default="annotator", help="default: annotator")
    ua.add_argument("--display-name", help="name shown in the app (default: the username)")
    ua.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add(us, "list", cmd_users_list, "list users")
    ud = add(us, "deactivate", cmd_users_deactivate, "deactivate a user (they can no longer sign in)")
    ud.add_argument("username", help="login name of the account to deactivate (or --activate)")
    ud.add_argument("--activate", action="store_true", help="reactivate instead")
    sp_ = add(us, "set-password", cmd_users_set_password, "set a user's password (prompt or stdin)")
    sp_.add_argument("username", help="login name of the account whose password to set")
    sp_.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    sr = add(us, "set-role", cmd_users_set_role, "make a user admin or annotator")
    sr.add_argument("username", help="login name of the account whose role to set")
    sr.add_argument("role", choices=["annotator", "admin"], help="the new role")

    projects = sub.add_parser("projects", help="manage projects", description="manage projects")
    ps = projects.add_subparsers(dest="projects_command", required=True, metavar="ACTION")
    pc = add(ps, "create", cmd_projects_create, "create a project")
    pc.add_argument("name", help="project name (unique)")
    pc.add_argument("--labels-per-task", type=int, default=1, help="annotators per task (overlap; default 1)")
    pc.add_argument("--guidelines", help="markdown file with the labeling guidelines")
    add(ps, "list", cmd_projects_list, "list projects with their progress")

    imp = sub.add_parser("import", help="import prompts or existing labels",
                         description="import prompts or existing labels (one transaction: all or nothing, "
                                     "or every good row with --skip-invalid; re-importing the same file adds "
                                     "nothing)")
    ims = imp.add_subparsers(dest="what", required=True, metavar="WHAT")
    ip = add(ims, "prompts", cmd_import, "prompts: JSONL with 'prompt' or 'messages' (also MT-Bench 'turns', "
                                          "Alpaca 'instruction'), or CSV with a 'prompt' column")
    ip.add_argument("--tasks", choices=["none", "demonstrate"], default="none",
                    help="also queue a demonstrate task for each prompt of this file (default: none; use rlhf.generate "
                         "for compare/rank tasks)")
    ipr = add(ims, "preferences", cmd_import, "preference pairs: TRL (prompt/chosen/rejected[/margin], strings "
                                               "or chat turns) or Anthropic HH (chosen/rejected transcripts); "
                                               "the prompt is the conversations' shared start up to a user "
                                               "turn, so rows that diverge before the last reply keep "
                                               "several-turn responses. " + IMPORTED_LABELS)
    ipr.add_argument("--format", choices=["auto", "trl", "hh"], default="auto", help="default: detect per row")
    add(ims, "oasst", cmd_import, "OpenAssistant message trees (JSONL): ranked replies become rank tasks "
                                  "with the tree's ranking as a label. " + IMPORTED_LABELS)
    add(ims, "ratings", cmd_import, "good/bad ratings of single responses: TRL's unpaired preference format "
                                    "{prompt, completion, label: true|false} (strings or chat turns); each row "
                                    "becomes a rate task with its rating. " + IMPORTED_LABELS)
    for sp in (ip, ipr, ims.choices["oasst"], ims.choices["ratings"]):
        sp.add_argument("file", help="path of the file to import (.jsonl, or .jsonl.gz as HH and OASST publish it)")
        sp.add_argument("--project", required=True, help="project name (must exist)")
        sp.add_argument("--skip-invalid", metavar="REPORT.jsonl",
                        help="import every good row (still one transaction) and write each refused line to "
                             "REPORT.jsonl as {file, line, field, reason, text}; without it one bad line refuses "
                             "the whole file (exit status 2) and the error lists the first few")

    exp = sub.add_parser("export", help="export datasets as JSONL (+ manifest)",
                         description="export datasets as JSONL, streamed and ordered by id, with a "
                                     "<file>.manifest.json recording counts, filters and schema revision")
    es = exp.add_subparsers(dest="what", required=True, metavar="WHAT")
    ep = add(es, "preferences", cmd_export, "pairs for reward models: TRL {prompt, chosen, rejected, margin} "
                                             "or --format hh; rankings expand into all pairs with a group id")
    ep.add_argument("--format", choices=["trl", "hh"], help="trl (default) or hh")
    ep.add_argument("--aggregate", choices=["majority", "all", "unanimous"], default="majority",
                    help="several labels per task: strict majority (default), every label, or only unanimous")
    ep.add_argument("--include-ties", action="store_true", help="also write ties / both-bad (with a 'tie' field)")
    ep.add_argument("--min-agreement", type=_share, help="only tasks whose majority share is at least this (0-1)")
    ep.add_argument("--model-version", help="only tasks showing a response of this model version")
    ep.add_argument("--pair-ratings", action="store_true",
                    help="also turn each good and each bad rating of the same prompt into a pair (after the "
                         "compare/rank pairs; one group per prompt)")
    era = add(es, "ratings", cmd_export, "good/bad ratings for KTO or a pointwise reward model: TRL unpaired "
                                          "{prompt, completion, label}")
    era.add_argument("--aggregate", choices=["majority", "all", "unanimous"], default="majority",
                     help="several ratings per task: strict majority (default; an even split is left out), every "
                          "rating, or only unanimous")
    era.add_argument("--min-agreement", type=_share, help="only tasks whose majority share is at least this (0-1)")
    era.add_argument("--model-version", help="only ratings of responses of this model version")
    es_ = add(es, "sft", cmd_export, "demonstrations for SFT: {prompt, completion} or --format messages")
    es_.add_argument("--format", choices=["prompt_completion", "messages"], help="default: prompt_completion")
    es_.add_argument("--status", default="accepted,submitted",
                     help="comma-separated review states to include (default: accepted,submitted)")
    er = add(es, "raw", cmd_export, "one row per label with pseudonymous annotator, times, flags, model versions")
    er.add_argument("--model-version", help="only tasks showing a response of this model version")
    er.add_argument("--with-usernames", action="store_true",
                    help="real usernames instead of pseudonyms (the file then identifies people)")
    er.add_argument("--salt", help="pseudonym salt: the same salt gives the same pseudonyms in every export "
                                   "(reruns, joins); default: a random one per export. Never written out")
    epr = add(es, "prompts", cmd_export, "prompts for online RL (rlhf.train_ppo --dataset): {prompt, prompt_id"
                                          "[, answer]}, chat prompts as turns")
    epr.add_argument("--project", help="project name (default: all projects)")
    epr.add_argument("-o", "--output", help="output file (default: exports/prompts[-<project>].jsonl)")
    for sp in (ep, es_, era):
        sp.add_argument("--conversational", choices=["auto", "always", "never"], default="auto",
                        help="message lists instead of strings (auto: when the project has chat prompts)")
    for sp in (ep, es_, era, er):
        sp.add_argument("--project", help="project name (default: all projects)")
        sp.add_argument("--since", help="labels created on/after this ISO date")
        sp.add_argument("--until", help="labels created before this ISO date")
        sp.add_argument("--annotator", help="only this annotator's labels (username)")
        sp.add_argument("-o", "--output", help="output file (default: exports/<what>[-<project>].jsonl)")

    from db.services.audit import ACTIONS

    au = add(sub, "audit", cmd_audit, "the audit log, newest first: role changes, (de)activations, passwords set, "
                                      "reviews, label revisions, exports, imports (who, when, what)")
    au.add_argument("--action", choices=ACTIONS, help="only this action")
    au.add_argument("--by", metavar="USERNAME", help="only what this user did (cli:<name> for the command line)")
    au.add_argument("--limit", type=int, default=100, help="entries to show (default 100)")
    au.add_argument("--json", action="store_true", help="JSON instead of a table")
    st = add(sub, "stats", cmd_stats, "progress per project and annotator, model versions with their metrics")
    st.add_argument("--project", help="annotator table for this project only")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    lb = add(sub, "leaderboard", cmd_leaderboard,
             "human leaderboard of model versions: Bradley-Terry scores (Elo scale) from preference labels "
             "between responses of different versions (ties as half wins, rankings as their pairs), with "
             "bootstrap intervals (95 percent), votes, win rate against the parent, lineage and reward-model "
             "scores")
    lb.add_argument("--project", help="only labels of this project (default: all projects)")
    lb.add_argument("--rounds", type=int, default=200, help="bootstrap resamples for the intervals (default 200; "
                                                            "0: no intervals)")
    lb.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0: reruns agree)")
    lb.add_argument("--prior", type=float, default=0.1,
                    help="weight of the Gaussian prior on strengths (natural log-odds; keeps an unbeaten version "
                         "finite; 0: plain maximum likelihood; default 0.1)")
    lb.add_argument("--no-rankings", action="store_true", help="count compare labels only, not rankings")
    lb.add_argument("--json", action="store_true", help="machine-readable output (with head-to-head counts)")

    jb = sub.add_parser("jobs", help="jobs run by workers (python -m rlhf.worker)",
                        description="jobs run by workers (python -m rlhf.worker): list, show, cancel, submit")
    js = jb.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jl = add(js, "list", cmd_jobs_list, "list jobs, newest first")
    jl.add_argument("--state", action="append", choices=["queued", "running", "succeeded", "failed", "cancelled"],
                    help="only jobs in this state (repeatable)")
    jl.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    jsh = add(js, "show", cmd_jobs_show, "one job: state, arguments, command, outcome and its log tail")
    jsh.add_argument("id", type=int, help="job id (from `jobs list`)")
    jsh.add_argument("--lines", type=int, default=40, help="log lines to show (default 40)")
    jc = add(js, "cancel", cmd_jobs_cancel, "cancel a job (a running one is stopped by its worker)")
    jc.add_argument("id", type=int, help="job id (from `jobs list`)")
    jsu = add(js, "submit", cmd_jobs_submit, "queue a job: python -m rlhf.<kind> (pretrain: pretrain.pipeline) "
                                              "with the given flags")
    from db.models import JOB_KINDS

    jsu.add_argument("kind", choices=JOB_KINDS, help="what to run")
    jsu.add_argument("--name", help="model version the job registers (training and pretrain; default "
                                    "<kind>-job<id>)")
    jsu.add_argument("--arg", action="append", metavar="FLAG=VALUE",
                     help="a flag of the job (repeatable), e.g. --arg project=demo --arg max_steps=100 "
                          "--arg 'models=[base-v1, sft-v1]'; evaluate needs --arg what=reward|policy")
    jsu.add_argument("--args-file", metavar="FILE.yaml", help="flags as a YAML mapping (--arg wins)")

    models = sub.add_parser("models", help="model-version registry", description="model-version registry")
    ms = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    add(ms, "list", cmd_models_list, "list model versions with lineage and metrics")
    mr = add(ms, "register", cmd_models_register, "register a checkpoint (local path or hub id)")
    mr.add_argument("name", help="model version name (unique)")
    mr.add_argument("path", help="local checkpoint folder or hub id")
    mr.add_argument("--kind", choices=["base", "sft", "reward", "policy", "external"], default="external",
                    help="what the checkpoint is (default: external)")
    mr.add_argument("--parent", help="parent version name")

    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`stats | head`): no traceback, and none again when Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE
