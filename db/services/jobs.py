"""Jobs (generate, train_sft, train_reward, train_ppo, train_rloo, train_grpo, train_kto, evaluate, pretrain) queued
from the app or the CLI.

The app only writes job rows and reads their state, log and metrics; a worker (`python -m rlhf.worker`)
claims queued jobs and runs each as its own process. Claiming is atomic, so several workers (threads,
processes, machines on one PostgreSQL) never run one job twice: SQLite takes the write lock first
(BEGIN IMMEDIATE), PostgreSQL locks the oldest queued row with FOR UPDATE SKIP LOCKED (others skip it and
take the next one).

Life of a job: queued -> running (claimed; pid recorded once the process started) -> succeeded | failed |
cancelled. Cancelling a queued job ends it at once; a running one gets `cancel_requested`, which its worker
sees at the next heartbeat and acts on by terminating the process.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import JOB_KINDS, JOB_STATES, TRAINING_JOB_KINDS, Job, ModelVersion, User, utcnow
from db.services.errors import InputError, NotFound, ServiceError
from db.session import write_transaction

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = tuple(s for s in JOB_STATES if s not in ACTIVE_STATES)
EVALUATE_WHAT = ("reward", "policy", "responses")
# Flags the worker sets itself: the database and run folder must be the ones it watches and reports.
RESERVED_ARGS = ("database_url", "output_dir", "out", "config", "name", "help")
_FLAG = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
METRICS_FILE = "metrics.jsonl"
LOG_TAIL_LINES = 20
CANCEL_KEYS = ("cancelled_by", "cancelled_at")  # in Job.result: set by cancel(), kept by finish()
# Below this many training rows (demonstrations, decisive pairs) a fine-tune mostly memorises them: the Jobs page
# and the worker warn (a smoke test may mean it, so it is no refusal).
SMALL_DATA_ROWS = 50


# ------------------------------------------------------------------------------------------ writing

def _check_value(key: str, value: Any) -> None:
    scalar = (type(None), bool, int, float, str)
    if isinstance(value, list):
        if not all(isinstance(v, scalar) and v is not None for v in value):
            raise InputError(f"a list must hold plain values (text, numbers, true/false), not {value!r}", field=key)
    elif not isinstance(value, scalar):
        raise InputError(f"must be a plain value or a list of them, not {type(value).__name__} {value!r}",
                         field=key)
    if isinstance(value, str) and "\0" in value:  # a command-line argument cannot hold it
        raise InputError("holds a NUL character", field=key)


def validate_args(kind: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Check a job's arguments (flag name -> value); returns a plain dict without None values."""
    if kind not in JOB_KINDS:
        raise InputError(f"job kind must be one of {', '.join(JOB_KINDS)}, not {kind!r}", field="kind")
    if not isinstance(args, Mapping):
        raise InputError(f"arguments must be a mapping of flag names to values, not {type(args).__name__}",
                         field="args")
    out: dict[str, Any] = {}
    for key, value in args.items():
        if not isinstance(key, str) or not _FLAG.match(key):
            raise InputError(f"{key!r} is not a flag name (letters, digits, _ and -, without the leading --)",
                             field="args")
        if key.replace("-", "_") in RESERVED_ARGS:
            raise InputError("is set by the worker (the job's name is its own field; the database and run "
                             "folder are the worker's)", field=key)
        _check_value(key, value)
        if value is not None:
            out[key] = value
    if kind == "evaluate" and out.get("what") not in EVALUATE_WHAT:
        raise InputError(f"evaluate jobs need what: {' or '.join(EVALUATE_WHAT)}", field="what")
    return out


def _name_taken(session: Session, name: str, job_id: int | None = None) -> str | None:
    if session.scalar(select(ModelVersion.id).where(ModelVersion.name == name)) is not None:
        return f"model version {name!r} already exists"
    other = session.scalar(select(Job.id).where(Job.name == name, Job.state.in_(ACTIVE_STATES), Job.id != job_id))
    if other is not None:
        return f"job {other} (queued or running) will register {name!r}"
    return None


def enqueue(session: Session, kind: str, args: Mapping[str, Any] | None = None, *, name: str | None = None,
            created_by: int | None = None) -> Job:
    """Queue a job. Training jobs (and pretrain) register a model version called `name` (default
    `<kind>-job<id>`); it must be free, so the job cannot fail at its very end on a taken name. `created_by` is
    the acting user: admins only (None is the command line)."""
    from db.services import audit

    audit.require_admin(session, created_by, "queueing jobs")
    clean = validate_args(kind, args or {})
    name = (name or "").strip() or None
    if kind not in TRAINING_JOB_KINDS and name:
        raise InputError(f"{kind} jobs register no model version: leave the name empty", field="name")
    with write_transaction(session):
        if name:
            taken = _name_taken(session, name)
            if taken:
                raise InputError(f"{taken}: pick another name", field="name")
        job = Job(kind=kind, name=name, args=clean, state="queued", created_by=created_by)
        session.add(job)
        session.flush()
        if kind in TRAINING_JOB_KINDS and not name:
            job.name = f"{kind.removeprefix('train_')}-job{job.id}"
            if _name_taken(session, job.name, job.id):
                job.name = f"{job.name}-{utcnow().strftime('%Y%m%d%H%M%S')}"
            session.flush()
    return job


def enqueue_comparisons(session: Session, version: str | int, project: str, *, num_samples: int = 2,
                        created_by: int | None = None, against_parent: bool = True) -> Job:
    """Queue a generate job that samples from `version` (and its parent, so that the new tasks compare the two)
    and creates compare tasks in `project`: the next turn of the loop."""
    from db.services import projects, registry

    mv = registry.resolve(session, version)
    if mv.kind == "reward":
        raise InputError(f"{mv.name!r} is a reward model: it scores responses but writes none", field="version")
    projects.get_project(session, project)
    models = [mv.name]
    parent = session.get(ModelVersion, mv.parent_id) if (against_parent and mv.parent_id) else None
    if parent is not None and parent.kind != "reward":
        models.append(parent.name)
    args: dict[str, Any] = {"project": project, "models": models, "num_samples": num_samples, "tasks": "compare"}
    return enqueue(session, "generate", args, created_by=created_by)


def _locked(session: Session, job_id: int) -> Job:
    q = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    job = session.scalars(q).first()
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def claim_next(session: Session, worker: str, host: str, kinds: Iterable[str] = JOB_KINDS,
               now: dt.datetime | None = None) -> Job | None:
    """Take the oldest queued job of one of `kinds` for `worker` (state running), or None. Atomic: two
    workers asking at once never get the same job."""
    kinds = list(kinds)
    if not kinds:
        return None
    # A plain read first: idle workers polling an empty queue then never take the write lock.
    if session.scalar(select(Job.id).where(Job.state == "queued", Job.kind.in_(kinds)).limit(1)) is None:
        return None
    with write_transaction(session):
        q = (select(Job).where(Job.state == "queued", Job.kind.in_(kinds)).order_by(Job.id).limit(1)
             .execution_options(populate_existing=True))
        if session.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)  # another worker's claim in progress: take the next one
        job = session.scalars(q).first()  # SQLite: BEGIN IMMEDIATE already holds the write lock
        if job is None:
            return None
        now = now or utcnow()
        job.state, job.worker, job.host = "running", worker, host
        job.started_at = job.heartbeat_at = now
        job.progress, job.progress_text = None, "starting"
        session.flush()
    return job


def mark_started(session: Session, job_id: int, *, pid: int, pid_start: str | None, command: list[str],
                 log_path: str, run_dir: str | None) -> Job:
    """Record the job's process once it runs (the pid lets a restarted worker tell whether it died)."""
    with write_transaction(session):
        job = _locked(session, job_id)
        job.pid, job.pid_start, job.command = pid, pid_start, list(command)
        job.log_path, job.run_dir, job.progress_text = log_path, run_dir, "running"
        job.heartbeat_at = utcnow()
        session.flush()
    return job


def cancel_requested(session: Session, job_id: int) -> bool:
    """Whether a running job should be stopped (read only: workers ask every round)."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def heartbeat(session: Session, job_id: int, progress: float | None = None, progress_text: str | None = None) -> bool:
    """The worker's sign of life for a running job, with its progress; returns whether it should be cancelled.
    Workers send it every half minute or so, not every round: each one is a write, and on SQLite every write
    competes with the annotators' and the jobs' own."""
    with write_transaction(session):
        job = _locked(session, job_id)
        job.heartbeat_at = utcnow()
        if progress is not None:
            job.progress = max(0.0, min(1.0, float(progress)))
        if progress_text is not None:
            job.progress_text = progress_text[:300]
        session.flush()
        return bool(job.cancel_requested)


def finish(session: Session, job_id: int, *, exit_status: int | None, model_version_id: int | None = None,
           result: Mapping[str, Any] | None = None, error: str = "") -> Job:
    """The job's process ended: cancelled if a cancel was asked, else succeeded (exit status 0) or failed."""
    with write_transaction(session):
        job = _locked(session, job_id)
        if job.cancel_requested:
            job.state = "cancelled"
        else:
            job.state = "succeeded" if exit_status == 0 and not error else "failed"
        job.exit_status, job.model_version_id = exit_status, model_version_id
        kept = {k: v for k, v in (job.result or {}).items() if k in CANCEL_KEYS}  # who cancelled it, and when
        job.result = {**json.loads(json.dumps(dict(result or {}), default=str)), **kept}
        # A cancelled job's process ends by the worker's SIGTERM: that is the cancel, not a crash to report.
        job.error, job.ended_at = ("" if job.state == "cancelled" else error), utcnow()
        if job.state == "succeeded":
            job.progress = 1.0
        session.flush()
    return job


def cancel(session: Session, job_id: int, *, actor_id: int | None = None) -> Job:
    """Cancel a job: a queued one ends now, a running one is stopped by its worker within a few seconds.
    Admins only (`actor_id`; None is the command line)."""
    from db.services import audit

    audit.require_admin(session, actor_id, "cancelling jobs")
    with write_transaction(session):
        job = _locked(session, job_id)
        if job.state in FINAL_STATES:
            raise ServiceError(f"job {job_id} is already {job.state}: nothing to cancel")
        who = session.get(User, actor_id) if actor_id is not None else None
        job.result = {**(job.result or {}), "cancelled_by": who.username if who else "the command line",
                      "cancelled_at": utcnow().isoformat()}
        if job.state == "queued":
            job.state, job.ended_at = "cancelled", utcnow()
        else:
            job.cancel_requested = True
            job.progress_text = "cancelling"
        session.flush()
    return job


def fail_dead(session: Session, is_dead: Callable[[Job], str | None], *, stale_after: float | None = None,
              now: dt.datetime | None = None) -> list[int]:
    """Mark running jobs whose process died as failed, with their last log lines; returns their ids.

    `is_dead(job)` says why a job is dead, or None when it still runs (the worker checks pids on its host);
    with `stale_after`, a job whose worker sent no heartbeat for that many seconds counts as dead too (a
    worker on another machine that went away). A training job whose model version was registered after it
    started finished its work while nobody watched: it is marked succeeded with that version."""
    now = now or utcnow()
    ended: list[int] = []
    with write_transaction(session):
        q = select(Job).where(Job.state == "running").order_by(Job.id).execution_options(populate_existing=True)
        if session.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)  # rows a live worker is updating right now are alive
        for job in session.scalars(q).all():
            reason = is_dead(job)
            if reason is None and stale_after is not None and job.heartbeat_at is not None:
                age = (now - job.heartbeat_at).total_seconds()
                if age > stale_after:
                    reason = (f"no heartbeat from worker {job.worker} for {age:.0f} s (its machine or worker "
                              "stopped)")
            if reason is None:
                continue
            mv = None
            if job.name and job.started_at is not None:
                mv = session.scalar(select(ModelVersion).where(ModelVersion.name == job.name,
                                                               ModelVersion.created_at >= job.started_at))
            tail = log_tail(job.log_path, LOG_TAIL_LINES) if job.log_path else ""
            if mv is not None:
                job.state, job.model_version_id = "succeeded", mv.id
                job.error = f"{reason}; it had registered {mv.name!r} before that, so it counts as done"
                job.progress = 1.0
            elif job.cancel_requested:  # it was being stopped anyway
                job.state, job.error = "cancelled", ""
            else:
                job.state = "failed"
                job.error = reason + (f"\n--- last log lines ---\n{tail}" if tail else "")
            job.ended_at = now
            ended.append(job.id)
        session.flush()
    return ended


# ------------------------------------------------------------------------------------------ reading

def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def list_jobs(session: Session, *, states: Iterable[str] | None = None, kind: str | None = None,
              limit: int = 100) -> list[Job]:
    """Jobs, newest first."""
    q = select(Job).order_by(Job.id.desc()).limit(limit).execution_options(populate_existing=True)
    if states is not None:
        q = q.where(Job.state.in_(list(states)))
    if kind:
        q = q.where(Job.kind == kind)
    return list(session.scalars(q))


def _read_tail_bytes(path: Path, max_bytes: int) -> str:
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - max_bytes))
        data = fh.read()
    text = data.decode("utf-8", errors="replace")
    return text.split("\n", 1)[1] if size > max_bytes and "\n" in text else text


def log_tail(path: str | Path | None, lines: int = 40, max_bytes: int = 256 * 1024) -> str:
    """The last `lines` lines of a job's log, as a terminal shows them: of a progress bar redrawn with
    carriage returns only its last state. Empty when there is no log (yet, or not on this machine)."""
    if not path:
        return ""
    p = Path(path)
    if not p.is_file():
        return ""
    text = _read_tail_bytes(p, max_bytes)
    shown = [seg.rsplit("\r", 1)[-1] if "\r" in seg.rstrip("\r") else seg.rstrip("\r") for seg in text.split("\n")]
    while shown and not shown[-1].strip():
        shown.pop()
    return "\n".join(shown[-lines:])


_PROGRESS = re.compile(r"(\d+)/(\d+) \[")


def progress_from_log(tail: str) -> tuple[float | None, str | None]:
    """The last tqdm state in a log tail: (fraction done, the bar's text), or (None, None)."""
    for line in reversed(tail.splitlines()):
        m = None
        for m in _PROGRESS.finditer(line):
            pass
        if m is not None and int(m.group(2)) > 0:
            return min(1.0, int(m.group(1)) / int(m.group(2))), line.strip()[-300:]
    return None, None


def read_metrics(run_dir: str | Path | None) -> list[dict[str, Any]]:
    """Rows of a run's metrics.jsonl (a half-written last line is left out)."""
    if not run_dir:
        return []
    p = Path(run_dir) / METRICS_FILE
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def job_view(session: Session, job: Job, *, log_lines: int = 40) -> dict[str, Any]:
    """Everything the Jobs page shows of one job, as plain data."""
    mv = session.get(ModelVersion, job.model_version_id) if job.model_version_id else None
    tail = log_tail(job.log_path, log_lines)
    progress, progress_text = job.progress, job.progress_text
    if job.state == "running":  # fresher than the last heartbeat: the job's own progress bar, read now
        live, text = progress_from_log(tail)
        if live is not None:
            progress, progress_text = live, text or progress_text
    return {
        "id": job.id, "kind": job.kind, "name": job.name, "args": dict(job.args or {}), "state": job.state,
        "created_at": job.created_at, "started_at": job.started_at, "ended_at": job.ended_at,
        "heartbeat_at": job.heartbeat_at, "worker": job.worker, "host": job.host, "pid": job.pid,
        "command": list(job.command or []), "log_path": job.log_path, "run_dir": job.run_dir,
        "progress": progress, "progress_text": progress_text, "cancel_requested": job.cancel_requested,
        "exit_status": job.exit_status, "error": job.error, "result": dict(job.result or {}),
        "model_version": ({"id": mv.id, "name": mv.name, "kind": mv.kind, "parent_id": mv.parent_id}
                          if mv is not None else None),
        "log_tail": tail, "metrics": read_metrics(job.run_dir),
    }


def cancel_note(job: Job | Mapping[str, Any]) -> tuple[str, dt.datetime | None] | None:
    """(who, when) of a cancelled job, from what cancel() recorded; None when it was not cancelled."""
    state = job["state"] if isinstance(job, Mapping) else job.state
    result = (job["result"] if isinstance(job, Mapping) else job.result) or {}
    if state != "cancelled":
        return None
    at = result.get("cancelled_at")
    try:
        when = dt.datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        when = None
    return str(result.get("cancelled_by") or "someone"), when


def job_detail(session: Session, job_id: int, *, log_lines: int = 40) -> dict[str, Any]:
    return job_view(session, get_job(session, job_id), log_lines=log_lines)
