"""Label submission (preference, ranking, demonstration, rating), revision, history, review.

Submitting is idempotent: a second submit of the same task by the same user returns the first
label and writes nothing (double clicks, retries after a network error).
"""
from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session, make_transient_to_detached

from db import pg_functions
from db.models import (
    CHOICES,
    FLAGS,
    LIKERT_RANGE,
    STRENGTHS,
    Assignment,
    Demonstration,
    PreferenceLabel,
    Project,
    Ranking,
    Rating,
    Task,
    utcnow,
)
from db.services import audit, summary
from db.services.assignment import live_slot, sync_loaded
from db.services.content import check_size, sha
from db.services.errors import InputError, NotFound, ServiceError, check_id
from db.services.projects import setting
from db.session import _unstorable, write_transaction


def _check_flags(flags: Sequence[str] | None) -> list[str]:
    if flags is not None and (isinstance(flags, (str, bytes)) or not isinstance(flags, (list, tuple, set))):
        raise InputError(f"flags must be a list of flag names, not {type(flags).__name__}", field="flags")
    flags = list(flags or [])
    bad = [f for f in flags if not isinstance(f, str) or f not in FLAGS]
    if bad:
        raise InputError(f"unknown flag(s) {', '.join(map(repr, bad))}; allowed: {', '.join(FLAGS)}",
                         field="flags")
    return sorted(set(flags))


def _check_preference(choice: str, strength: str | None) -> None:
    if choice not in CHOICES:
        raise InputError(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}", field="choice")
    if strength is not None and strength not in STRENGTHS:
        raise InputError(f"strength must be one of {', '.join(STRENGTHS)}, not {strength!r}", field="strength")


class TaskReassigned(ServiceError):
    """A late submit on a lease that ran out, after the slot went to another annotator: nothing was saved.
    The UI keeps what the annotator entered (they may copy it) and offers Skip."""


def _claim_slot(session: Session, task: Any, user_id: int, now: dt.datetime) -> bool:
    """Mark the user's assignment submitted and count it, if the task still has room for this label.

    A label is kept only while submitted labels plus *other* annotators' live leases leave room under
    `labels_per_task`, so a task never ends with more labels than its overlap. A live lease always has room
    (next_task only hands out free slots); a lease that ran out (or was released) keeps its room until
    next_task gives that slot to someone else, and then the late submit is refused with TaskReassigned.
    The caller holds the task row lock (PostgreSQL) or the database write lock (SQLite), so the count and
    the counter update cannot interleave with another submit or claim. `task` is `_task`'s row: the counts
    and the user's assignment were read after the lock was granted; the writes are two Core statements.
    Returns whether this label finished the task (its status changed to done).
    """
    if task.a_state == "skipped":
        raise ServiceError(f"task {task.id} was skipped by this user")
    if (task.others or 0) >= task.labels_per_task:
        lease_ended = task.a_id is not None and (task.a_state != "assigned" or task.a_expires_at <= now)
        if lease_ended:
            raise TaskReassigned(
                f"task {task.id} was reassigned: your lease ran out at {task.a_expires_at:%Y-%m-%d %H:%M} UTC "
                "and the task went to another annotator, so this answer was NOT saved. Copy anything you want "
                "to keep, then skip to get the next task.")
        raise ServiceError(f"task {task.id} already has all its labels ({task.labels_per_task}); "
                           "nothing was saved")
    if task.a_id is None:  # no lease (a direct service or script submit) into a free slot
        session.execute(_NEW_SUBMITTED, {"b_task": task.id, "b_user": user_id, "at": now})
    else:
        session.execute(_SUBMITTED, {"a_id": task.a_id, "at": now})
        sync_loaded(session, Assignment, task.a_id, state="submitted", finished_at=now)
    n, status = task.n_submitted + 1, task.status
    if n >= task.labels_per_task:
        status = "done"
    session.execute(_COUNTED, {"t_id": task.id, "n": n, "st": status})
    sync_loaded(session, Task, task.id, n_submitted=n, status=status)
    return status != task.status


# The submit path's statements, built once with bound parameters (building them per call cost more client CPU
# than running them).
_A, _T = Assignment.__table__, Task.__table__
_NEW_SUBMITTED = insert(_A).values(task_id=bindparam("b_task"), user_id=bindparam("b_user"), state="submitted",
                                   assigned_at=bindparam("at"), expires_at=bindparam("at"),
                                   finished_at=bindparam("at"))
_SUBMITTED = update(_A).where(_A.c.id == bindparam("a_id")).values(state="submitted", finished_at=bindparam("at"))
_COUNTED = update(_T).where(_T.c.id == bindparam("t_id")).values(n_submitted=bindparam("n"), status=bindparam("st"))
_TASK_ROW = (select(Task.id, Task.kind, Task.project_id, Task.prompt_id, Task.response_ids, Task.status,
                    Task.n_submitted, Project.labels_per_task, Project.settings)
             .join(Project, Project.id == Task.project_id).where(Task.id == bindparam("task_id")))


@functools.cache
def _state_columns(model: Any) -> tuple[Any, ...]:
    mine = (Assignment.task_id == bindparam("task_id"), Assignment.user_id == bindparam("user_id"))
    return (select(model.id).where(model.task_id == bindparam("task_id"), model.user_id == bindparam("user_id"))
            .scalar_subquery().label("existing"),
            *(select(c).where(*mine).scalar_subquery().label(name) for c, name in (
                (Assignment.id, "a_id"), (Assignment.state, "a_state"), (Assignment.expires_at, "a_expires_at"))),
            select(func.count()).select_from(Assignment).where(
                Assignment.task_id == bindparam("task_id"), Assignment.user_id != bindparam("user_id"),
                live_slot(bindparam("at"))).scalar_subquery().label("others"))


@functools.cache
def _task_statements(model: Any, pg: bool) -> tuple[Any, Any]:
    """PostgreSQL: (the locked task row, then the state); SQLite: (both in one, None)."""
    if pg:
        return _TASK_ROW.with_for_update(of=Task), select(*_state_columns(model))
    return _TASK_ROW.add_columns(*_state_columns(model)), None


def _task(session: Session, task_id: int, kind: str, model: Any, user_id: int,
          now: Callable[[], dt.datetime]) -> tuple[Any, dt.datetime]:
    """The task's row, locked, with its project's overlap and settings, and what a submit decides on: the
    user's label of `model` (`existing`), their assignment (`a_id`, `a_state`, `a_expires_at`) and the other
    annotators' slots (`others`: labels plus live leases at the returned time, `now()` read after the lock).

    Row lock on PostgreSQL: two annotators submitting the same task at once must not both write
    n_submitted = old + 1. The rest is read by a second statement there, whose snapshot is taken after the
    lock was granted (READ COMMITTED); on SQLite, already serialized by BEGIN IMMEDIATE, one statement reads
    everything."""
    check_id(task_id, "task")
    params = {"task_id": task_id, "user_id": user_id}
    first, state = _task_statements(model, session.get_bind().dialect.name == "postgresql")
    if state is None:
        at = now()
        task = session.execute(first, {**params, "at": at}).first()
    else:
        task = session.execute(first, params).first()
        at = now()  # read under the row lock
        if task is not None:
            task = _Joined(task, session.execute(state, {**params, "at": at}).one())
    if task is None:
        raise NotFound(f"no task {task_id}")
    if task.kind != kind:
        raise ServiceError(f"task {task_id} is a {task.kind} task, not {kind}")
    return task, at


class _Joined:
    """Two result rows read as one (attribute access)."""

    def __init__(self, *rows: Any) -> None:
        for r in rows:
            self.__dict__.update(r._mapping)


def _submit_once(session: Session, model: Any, kind: str, task_id: int, user_id: int, now: dt.datetime | None,
                 build: Callable[[Any, dt.datetime], Any], values: Callable[[], dict[str, Any]],
                 ) -> tuple[Any, bool]:
    """The idempotent submit every label kind shares, in one write transaction (see write_transaction).

    A repeat submit by the same user (double click, retry) returns the first row before the new input is
    even validated: a retry must not fail because, say, the project's minimum length changed since. Only a
    first submit goes through `build(task, now)` (task: `_task`'s row), which validates and returns the new,
    unsaved row; `values()` is the part of it that needs no task (checked input as the label's column values). The clock is read once the task is locked: a time taken before waiting for the lock could be
    older than a lease another transaction just wrote, and count that lapsed lease as live.

    PostgreSQL runs the same steps in one statement (il_submit, db/pg_functions.py), see _submit_fn.
    """
    if pg_functions.usable(session):
        done = _submit_fn(session, model, kind, task_id, user_id, now, values)
        if done is not None:
            return done
    with write_transaction(session):
        fixed = now
        task, now = _task(session, task_id, kind, model, user_id, (lambda: fixed) if fixed else utcnow)
        if task.existing is not None:
            return session.get(model, task.existing), False
        row = build(task, now)
        finished = _claim_slot(session, task, user_id, now)
        session.add(row)
        session.flush()
        summary.labels_written(session, kind, user_id, [task_id])  # the Dashboard / Agreement sums
        if finished:  # last: the project's count rows are shared by every submit, so their lock is held briefly
            summary.count_change(session, task.project_id, task.kind, task.status, "done")  # the Dashboard's counts
        return row, True


def _utc(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(dt.UTC)  # the server's TimeZone may be another; the Python path hands back UTC


def _submit_fn(session: Session, model: Any, kind: str, task_id: int, user_id: int, now: dt.datetime | None,
               values: Callable[[], dict[str, Any]]) -> tuple[Any, bool] | None:
    """PostgreSQL's one-statement submit, or None where it does not apply and the Python path runs instead:
    the input fails a check that needs no task (the Python path then returns a repeat submit's first label,
    or raises the same error), or the database lacks the function. The returned label is the row it wrote,
    attached to the session without reading it back."""
    if not (pg_functions.fits(task_id) and pg_functions.fits(user_id)):
        return None  # the Python path names the bad id
    try:
        v = values()
    except InputError:
        return None
    if any(_unstorable(x) for x in v.values()):
        return None  # the ORM path names the field
    ordering = v.get("ordering")
    if ordering is not None and (len(ordering) < 2 or not all(ordering)):
        return None  # which message (every response once / everything ties) needs the task: the Python path
    flags = v.get("flags")
    try:
        rows = pg_functions.call(session, pg_functions.SUBMIT_CALL, (
            kind, task_id, user_id, now, v.get("choice"), v.get("strength"),
            None if flags is None else json.dumps(flags), v.get("comment"), v.get("seconds"),
            None if ordering is None else json.dumps(ordering), v.get("good"), v.get("likert"), v.get("text"),
            v.get("content_hash")))
    except pg_functions.FunctionFailed as e:
        if e.code == "IL000":  # a case the function leaves to the Python path
            return None
        error = {"IL404": NotFound, "IL410": TaskReassigned}.get(e.code)
        if error is not None:
            raise error(e.message) from None
        if e.code == "IL422":
            raise InputError(e.message, field=e.field) from None
        raise ServiceError(e.message) from None
    if rows is None:
        return None
    r = rows[0]
    if not r.created:
        return session.get(model, r.label_id), False
    sync_loaded(session, Task, task_id, n_submitted=r.n_submitted, status=r.status)
    if r.assignment_id is not None:
        sync_loaded(session, Assignment, r.assignment_id, state="submitted", finished_at=_utc(r.created_at))
    if kind == "rate":
        v["response_id"] = r.response_id
    if kind == "demonstrate":
        v.update(prompt_id=r.prompt_id, status="submitted", review_note="", reviewed_by=None)
    label = model(id=r.label_id, task_id=task_id, user_id=user_id, created_at=_utc(r.created_at), updated_at=None, **v)
    make_transient_to_detached(label)
    session.add(label)  # persistent, unchanged: nothing to flush
    return label, True


def submit_preference(session: Session, user_id: int, task_id: int, choice: str, *,
                      strength: str | None = None, flags: Sequence[str] | None = None, comment: str = "",
                      seconds: float | None = None, now: dt.datetime | None = None
                      ) -> tuple[PreferenceLabel, bool]:
    """Record a pairwise judgement. Returns (label, created); created is False on a repeat submit."""
    def values() -> dict[str, Any]:
        _check_preference(choice, strength)
        check_size("comment", comment, field="comment")
        return {"choice": choice, "strength": strength if choice in ("a", "b") else None,
                "flags": _check_flags(flags), "comment": comment or "", "seconds": seconds}

    def build(task: Any, now: dt.datetime) -> PreferenceLabel:
        return PreferenceLabel(task_id=task_id, user_id=user_id, created_at=now, **values())

    return _submit_once(session, PreferenceLabel, "compare", task_id, user_id, now, build, values)


def _ordering_groups(ordering: Sequence[Sequence[int]]) -> list[list[int]]:
    try:
        return [[int(x) for x in g] for g in ordering]
    except (TypeError, ValueError) as e:
        raise InputError("ordering must be a list of lists of response ids", field="ordering") from e


def _check_ordering(task: Task, ordering: Sequence[Sequence[int]]) -> list[list[int]]:
    groups = _ordering_groups(ordering)
    flat = [x for g in groups for x in g]
    if sorted(flat) != sorted(task.response_ids) or any(not g for g in groups):
        raise InputError("ordering must place every response of the task exactly once", field="ordering")
    if len(groups) < 2:
        raise InputError("a ranking where everything ties says nothing; separate at least two groups",
                         field="ordering")
    return groups


def submit_ranking(session: Session, user_id: int, task_id: int, ordering: Sequence[Sequence[int]], *,
                   flags: Sequence[str] | None = None, comment: str = "", seconds: float | None = None,
                   now: dt.datetime | None = None) -> tuple[Ranking, bool]:
    """Record an ordering, best first; responses in one inner list tie."""
    def values() -> dict[str, Any]:  # the ordering against the task's responses: build / il_submit
        check_size("comment", comment, field="comment")
        return {"ordering": _ordering_groups(ordering), "flags": _check_flags(flags), "comment": comment or "",
                "seconds": seconds}

    def build(task: Any, now: dt.datetime) -> Ranking:
        v = values()
        return Ranking(task_id=task_id, user_id=user_id, created_at=now,
                       **{**v, "ordering": _check_ordering(task, v["ordering"])})

    return _submit_once(session, Ranking, "rank", task_id, user_id, now, build, values)


def _check_rating(good: Any, likert: Any) -> tuple[bool, int | None]:
    # A real bool only: "false" or 0 from a form or a script must not silently mean something.
    if not isinstance(good, bool):
        raise InputError(f"good must be true or false, not {good!r}", field="good")
    if likert is None:
        return good, None
    lo, hi = LIKERT_RANGE
    if isinstance(likert, bool) or not isinstance(likert, int) or not lo <= likert <= hi:
        raise InputError(f"the Likert score must be a whole number from {lo} to {hi}, not {likert!r}",
                         field="likert")
    return good, likert


def submit_rating(session: Session, user_id: int, task_id: int, good: bool, *, likert: int | None = None,
                  flags: Sequence[str] | None = None, comment: str = "", seconds: float | None = None,
                  now: dt.datetime | None = None) -> tuple[Rating, bool]:
    """Record a good/bad judgement of a rate task's one response (optionally a 1-7 Likert score)."""
    def values() -> dict[str, Any]:
        ok, score = _check_rating(good, likert)
        check_size("comment", comment, field="comment")
        return {"good": ok, "likert": score, "flags": _check_flags(flags), "comment": comment or "",
                "seconds": seconds}

    def build(task: Any, now: dt.datetime) -> Rating:
        return Rating(task_id=task_id, user_id=user_id, response_id=task.response_ids[0], created_at=now,
                      **values())

    return _submit_once(session, Rating, "rate", task_id, user_id, now, build, values)


def _check_demonstration(project: Any, text: str) -> str:
    """`project`: anything with the project's `settings` (the Project, or a submit's task row)."""
    text = (text or "").strip()
    check_size("demonstration", text, field="text")
    minimum = int(setting(project, "min_demonstration_chars") or 1)
    if len(text) < minimum:
        raise InputError(f"the demonstration has {len(text)} characters; write at least {minimum}", field="text")
    return text


def _check_not_written_before(session: Session, prompt_id: int, user_id: int, text: str,
                              exclude_id: int | None = None) -> None:
    # One user's demonstrations of a prompt are unique by text (the table's constraint): say so instead of
    # failing on it.
    q = select(Demonstration).where(Demonstration.prompt_id == prompt_id, Demonstration.user_id == user_id,
                                    Demonstration.content_hash == sha(text))
    if exclude_id is not None:
        q = q.where(Demonstration.id != exclude_id)
    same = session.scalar(q.limit(1))
    if same is not None:
        where = f"task {same.task_id}" if same.task_id is not None else "an import"
        raise InputError(f"you already wrote exactly this demonstration for this prompt (demonstration {same.id}, "
                         f"{where}); write a different one or skip the task", field="text")


def submit_demonstration(session: Session, user_id: int, task_id: int, text: str, *,
                         seconds: float | None = None, now: dt.datetime | None = None
                         ) -> tuple[Demonstration, bool]:
    """Record an ideal response written by the annotator (minimum length from project settings)."""
    def values() -> dict[str, Any]:  # its length against the project's minimum: build / il_submit
        clean = (text or "").strip()
        check_size("demonstration", clean, field="text")
        return {"text": clean, "content_hash": sha(clean), "seconds": seconds}

    def build(task: Any, now: dt.datetime) -> Demonstration:
        v = values()
        _check_demonstration(task, v["text"])  # the task row holds its project's settings
        _check_not_written_before(session, task.prompt_id, user_id, v["text"])
        return Demonstration(prompt_id=task.prompt_id, task_id=task_id, user_id=user_id, created_at=now, **v)

    return _submit_once(session, Demonstration, "demonstrate", task_id, user_id, now, build, values)


def _check_revision_window(session: Session, task_id: int, created_at: dt.datetime,
                           now: dt.datetime) -> None:
    project = session.get(Project, session.get(Task, task_id).project_id)
    hours = setting(project, "revision_window_hours")
    if hours is not None and now - created_at > dt.timedelta(hours=float(hours)):
        raise ServiceError(f"labels can be revised for {hours} hours after submitting; this one is older")


def _own_revisable(session: Session, model: type, label_id: int, noun: str, user_id: int, now: dt.datetime) -> Any:
    """The user's own ``model`` row ``label_id`` (``noun`` names it in errors), still inside its revision window."""
    label = session.get(model, check_id(label_id, noun))
    if label is None or label.user_id != user_id:
        raise NotFound(f"no {noun} {label_id} of yours")
    _check_revision_window(session, label.task_id, label.created_at, now)
    return label


def _apply_revision(session: Session, label: Any, user_id: int, target: str, now: dt.datetime,
                    values: dict[str, Any], comment: str | None) -> None:
    """Set a label's checked ``values`` (and ``comment`` when given) and write the label.revise audit entry:
    the new values, then the old ones as ``before`` (flags always as a list)."""
    before = {k: list(getattr(label, k) or []) if k == "flags" else getattr(label, k) for k in values}
    for k, v in values.items():
        setattr(label, k, v)
    if comment is not None:
        label.comment = comment
    label.updated_at = now
    session.flush()
    kind = {PreferenceLabel: "compare", Ranking: "rank", Rating: "rate"}.get(type(label))
    if kind is not None:  # the agreement sums follow the new value
        value = {"compare": "choice", "rank": "ordering", "rate": "good"}[kind]
        summary.labels_written(session, kind, label.user_id, [label.task_id], before={label.task_id: before[value]})
    audit.record(session, "label.revise", actor_id=user_id, target=target,
                 details={"task": label.task_id, **{k: list(v) if k == "flags" else v for k, v in values.items()},
                          "before": before})


def revise_preference(session: Session, user_id: int, label_id: int, choice: str, *,
                      strength: str | None = None, flags: Sequence[str] | None = None,
                      comment: str | None = None, now: dt.datetime | None = None) -> PreferenceLabel:
    _check_preference(choice, strength)
    check_size("comment", comment, field="comment")
    flags = _check_flags(flags)
    now = now or utcnow()
    with write_transaction(session):
        label = _own_revisable(session, PreferenceLabel, label_id, "label", user_id, now)
        _apply_revision(session, label, user_id, f"preference {label.id}", now,
                        {"choice": choice, "strength": strength if choice in ("a", "b") else None, "flags": flags},
                        comment)
        return label


def revise_rating(session: Session, user_id: int, rating_id: int, good: bool, *, likert: int | None = None,
                  flags: Sequence[str] | None = None, comment: str | None = None,
                  now: dt.datetime | None = None) -> Rating:
    ok, score = _check_rating(good, likert)
    check_size("comment", comment, field="comment")
    flags = _check_flags(flags)
    now = now or utcnow()
    with write_transaction(session):
        r = _own_revisable(session, Rating, rating_id, "rating", user_id, now)
        _apply_revision(session, r, user_id, f"rating {r.id}", now, {"good": ok, "likert": score, "flags": flags},
                        comment)
        return r


def revise_ranking(session: Session, user_id: int, ranking_id: int, ordering: Sequence[Sequence[int]], *,
                   flags: Sequence[str] | None = None, now: dt.datetime | None = None) -> Ranking:
    now = now or utcnow()
    with write_transaction(session):
        r = _own_revisable(session, Ranking, ranking_id, "ranking", user_id, now)
        checked = _check_ordering(session.get(Task, r.task_id), ordering)
        _apply_revision(session, r, user_id, f"ranking {r.id}", now,
                        {"ordering": checked, "flags": _check_flags(flags)}, None)
        return r


def revise_demonstration(session: Session, user_id: int, demo_id: int, text: str, *,
                         now: dt.datetime | None = None) -> Demonstration:
    now = now or utcnow()
    with write_transaction(session):
        d = session.get(Demonstration, check_id(demo_id, "demonstration"))
        if d is None or d.user_id != user_id:
            raise NotFound(f"no demonstration {demo_id} of yours")
        if d.status != "submitted":
            raise ServiceError(f"demonstration {demo_id} was already {d.status} by a reviewer")
        if d.task_id is not None:
            _check_revision_window(session, d.task_id, d.created_at, now)
        text = _check_demonstration(session.get(Project, d.prompt.project_id), text)
        _check_not_written_before(session, d.prompt_id, user_id, text, exclude_id=d.id)
        before = {"chars": len(d.text)}  # lengths only: the audit log holds no label text
        d.text, d.content_hash, d.updated_at = text, sha(text), now
        session.flush()
        audit.record(session, "label.revise", actor_id=user_id, target=f"demonstration {d.id}",
                     details={"task": d.task_id, "chars": len(text), "before": before})
        return d


def review_demonstration(session: Session, demo_id: int, reviewer_id: int, accept: bool,
                         note: str = "") -> Demonstration:
    """Accept or reject a demonstration: admins only (the reviewer is the acting user), audited."""
    check_size("comment", note, field="note")
    with write_transaction(session):
        audit.require_admin(session, reviewer_id, "reviewing demonstrations")
        d = session.get(Demonstration, check_id(demo_id, "demonstration"))
        if d is None:
            raise NotFound(f"no demonstration {demo_id}")
        before = d.status
        d.status, d.review_note, d.reviewed_by = ("accepted" if accept else "rejected"), note or "", reviewer_id
        d.updated_at = utcnow()
        session.flush()
        audit.record(session, "demonstration.review", actor_id=reviewer_id, target=f"demonstration {d.id}",
                     details={"from": before, "to": d.status, "author": d.user_id})
        return d


def list_demonstrations(session: Session, project_id: int, status: str | None = None,
                        limit: int = 200) -> list[Demonstration]:
    from db.models import Prompt
    q = (select(Demonstration).join(Prompt, Prompt.id == Demonstration.prompt_id)
         .where(Prompt.project_id == project_id))
    if status:
        q = q.where(Demonstration.status == status)
    return list(session.scalars(q.order_by(Demonstration.id).limit(limit)))


def history(session: Session, user_id: int, *, project_id: int | None = None,
            limit: int = 100) -> list[dict[str, Any]]:
    """The user's own labels, newest first, as plain rows for the history page."""
    rows: list[dict[str, Any]] = []
    for model, kind in ((PreferenceLabel, "compare"), (Ranking, "rank"), (Rating, "rate")):
        q = select(model, Task).join(Task, Task.id == model.task_id).where(model.user_id == user_id)
        if project_id is not None:
            q = q.where(Task.project_id == project_id)
        for lab, task in session.execute(q.order_by(model.id.desc()).limit(limit)):
            row = {"kind": kind, "id": lab.id, "task_id": task.id, "created_at": lab.created_at,
                   "updated_at": lab.updated_at, "flags": lab.flags, "seconds": lab.seconds}
            if kind == "compare":
                row.update(choice=lab.choice, strength=lab.strength, comment=lab.comment)
            elif kind == "rate":
                row.update(good=lab.good, likert=lab.likert, comment=lab.comment)
            else:
                row.update(ordering=lab.ordering)
            rows.append(row)
    from db.models import Prompt
    q = (select(Demonstration, Prompt).join(Prompt, Prompt.id == Demonstration.prompt_id)
         .where(Demonstration.user_id == user_id))
    if project_id is not None:
        q = q.where(Prompt.project_id == project_id)
    for d, _p in session.execute(q.order_by(Demonstration.id.desc()).limit(limit)):
        rows.append({"kind": "demonstrate", "id": d.id, "task_id": d.task_id,
                     "created_at": d.created_at, "updated_at": d.updated_at, "status": d.status,
                     "text": d.text, "seconds": d.seconds, "review_note": d.review_note})
    rows.sort(key=lambda r: r["created_at"], reverse=True)
    return rows[:limit]
