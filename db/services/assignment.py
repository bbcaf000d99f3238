"""Assignment (DESIGN.md §4): atomic next_task with exact overlap, skip, lease expiry.

A task slot is taken by a submitted label or by a live lease. `next_task` runs in one write
transaction: SQLite takes the write lock first (BEGIN IMMEDIATE), PostgreSQL locks the task row
(FOR UPDATE SKIP LOCKED) and recounts in a fresh statement, so two annotators asking at once never
both take the last slot.
"""
from __future__ import annotations

import datetime as dt
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, and_, bindparam, exists, func, literal, or_, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from db import pg_functions, settings
from db.models import TS, Assignment, Project, Prompt, Response, Task, utcnow
from db.services import summary
from db.services.content import check_size, prompt_messages
from db.services.errors import NotFound, ServiceError, check_id
from db.session import _unstorable, write_transaction


@dataclass
class TaskView:
    """Everything a labeling page shows; plain data, safe to keep in UI state."""
    task_id: int
    kind: str
    project_id: int
    project_name: str
    prompt_id: int
    prompt_text: str | None
    messages: list[dict[str, str]]
    responses: list[dict[str, Any]] = field(default_factory=list)  # [{"id", "text"}] in display order
    assignment_id: int | None = None
    assigned_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None


def live_slot(now: dt.datetime) -> Any:
    """An assignment that takes one of a task's `labels_per_task` slots: a submitted label or a live lease."""
    return or_(Assignment.state == "submitted",
               and_(Assignment.state == "assigned", Assignment.expires_at > now))


def task_view(session: Session, task: Task, assignment: Assignment | None = None) -> TaskView:
    prompt = session.get(Prompt, task.prompt_id)
    project = session.get(Project, task.project_id)
    by_id = {r.id: r for r in session.scalars(select(Response).where(Response.id.in_(task.response_ids or [])))}
    return TaskView(
        task_id=task.id, kind=task.kind, project_id=task.project_id, project_name=project.name,
        prompt_id=prompt.id, prompt_text=prompt.text, messages=prompt_messages(prompt),
        # Model names stay out of the view: annotators judge blind.
        responses=[{"id": rid, "text": by_id[rid].text} for rid in task.response_ids or []],
        assignment_id=assignment.id if assignment else None,
        assigned_at=assignment.assigned_at if assignment else None,
        expires_at=assignment.expires_at if assignment else None)


def slots_taken(session: Session, task_id: int, now: dt.datetime) -> int:
    """Submitted labels plus live leases on a task."""
    return session.scalar(select(func.count()).select_from(Assignment)
                          .where(Assignment.task_id == task_id, live_slot(now))) or 0


def next_task(session: Session, user_id: int, project_id: int, *, kind: str | None = None,
              now: dt.datetime | None = None, lease_minutes: int | None = None) -> TaskView | None:
    """Lease the next task for `user_id` in the project, or None when nothing is left for them.

    A live lease the user already holds is returned again (a page reload shows the same task).
    `now` (tests) fixes the clock; otherwise it is read once the lock is held (see `_next_task_pg`), so
    lease times follow the order in which transactions took the task.

    The hot path of every annotator: Core statements of plain columns, no ORM objects (the project and a held
    lease in one statement, the lease written by one upsert, the view's prompt and responses in one).
    """
    clock = (lambda: now) if now is not None else utcnow
    lease = dt.timedelta(minutes=lease_minutes if lease_minutes is not None else settings.lease_minutes())
    by_kind = bool(kind)
    if not pg_functions.fits(project_id):  # from a link or a script: no row has it (not a cast error on PostgreSQL)
        raise NotFound(f"no project with id {project_id}")
    if pg_functions.usable(session) and pg_functions.fits(user_id):
        view = _next_task_fn(session, user_id, project_id, kind or None, now, lease)
        if view is not _NO_FUNCTION:
            return view
    params = {"user_id": user_id, "project_id": project_id, **({"kind": kind} if by_kind else {})}
    with write_transaction(session):
        now_ = clock()  # SQLite: after BEGIN IMMEDIATE took the write lock
        # labels_per_task read fresh each call (it may have changed); the held lease, if any, beside it
        first = session.execute(_project_and_held(by_kind), {**params, "now": now_}).first()
        if first is None:
            raise NotFound(f"no project with id {project_id}")
        if first.assignment_id is not None:
            return _view(session, project_id, first.name, first, first.assignment_id, first.assigned_at,
                         first.expires_at)
        params["overlap"] = first.labels_per_task
        if session.get_bind().dialect.name != "postgresql":
            task = session.execute(_candidate(by_kind), {**params, "at": now_}).first()
            if task is None:  # the write lock is ours: nobody else can claim
                return None
            aid = _lease(session, task.task_id, user_id, now_, lease, None)
            return _view(session, project_id, first.name, task, aid, now_, now_ + lease)
        return _next_task_pg(session, by_kind, params, first.name, clock, lease)


_NO_FUNCTION = object()


def _next_task_fn(session: Session, user_id: int, project_id: int, kind: str | None, now: dt.datetime | None,
                  lease: dt.timedelta) -> Any:
    """PostgreSQL: the same rules in one statement, il_next_task (db/pg_functions.py), with no client round trips
    between the lock and the lease. _NO_FUNCTION when the database lacks it."""
    try:
        rows = pg_functions.call(session, pg_functions.NEXT_TASK_CALL,
                                 (user_id, project_id, kind, lease, now, PG_WAIT_SECONDS))
    except pg_functions.FunctionFailed as e:
        raise (NotFound if e.code == "IL404" else ServiceError)(e.message) from None
    if rows is None:
        return _NO_FUNCTION
    if not rows:
        return None
    r = rows[0]
    at, expires = r.assigned_at.astimezone(dt.UTC), r.expires_at.astimezone(dt.UTC)  # the server's TimeZone may differ
    sync_loaded(session, Assignment, r.assignment_id, state="assigned", assigned_at=at, expires_at=expires,
                finished_at=None, skip_reason=None)
    return TaskView(
        task_id=r.task_id, kind=r.kind, project_id=project_id, project_name=r.project_name, prompt_id=r.prompt_id,
        prompt_text=r.prompt_text,
        messages=list(r.messages) if r.messages else [{"role": "user", "content": r.prompt_text or ""}],
        responses=[{"id": x["id"], "text": x["text"]} for x in r.responses],
        assignment_id=r.assignment_id, assigned_at=at, expires_at=expires)


# What a TaskView needs of the task row (the candidate and held-lease statements select these).
_TASK_COLUMNS = (Task.id.label("task_id"), Task.kind, Task.prompt_id, Task.response_ids)

# next_task's statements are built once, with bound parameters: building and cache-keying a statement cost more
# client CPU than running it (32 annotators on 2 cores are limited by exactly that).


@functools.cache
def _project_and_held(by_kind: bool) -> Any:
    """The project's name and overlap, and the user's oldest live lease in it (its task's columns), if any."""
    held = (select(Assignment.id.label("assignment_id"), Assignment.assigned_at, Assignment.expires_at,
                   *_TASK_COLUMNS)
            .join(Task, Task.id == Assignment.task_id)
            .where(Assignment.user_id == bindparam("user_id"), Task.project_id == bindparam("project_id"),
                   Assignment.state == "assigned", Assignment.expires_at > bindparam("now")))
    if by_kind:
        held = held.where(Task.kind == bindparam("kind"))
    held = held.order_by(Assignment.assigned_at, Assignment.id).limit(1).subquery()
    return (select(Project.name, Project.labels_per_task, held).select_from(Project).outerjoin(held, true())
            .where(Project.id == bindparam("project_id")))


@functools.cache
def _candidate(by_kind: bool, lock: str = "", skip_full: bool = False) -> Any:
    """The best open task with a free slot at time `at` that this user has not done (`lock`: "skip" for FOR
    UPDATE SKIP LOCKED, "wait" for FOR UPDATE; `skip_full`: not one of the ids in `full`)."""
    done_by_me = exists().where(Assignment.task_id == Task.id, Assignment.user_id == bindparam("user_id"),
                                Assignment.state.in_(("submitted", "skipped")))
    taken = (select(func.count()).select_from(Assignment)
             .where(Assignment.task_id == Task.id, live_slot(bindparam("at"))).correlate(Task).scalar_subquery())
    q = select(*_TASK_COLUMNS).where(Task.project_id == bindparam("project_id"), Task.status == "open",
                                     ~done_by_me, taken < bindparam("overlap"))
    if by_kind:
        q = q.where(Task.kind == bindparam("kind"))
    if skip_full:
        q = q.where(Task.id.not_in(bindparam("full", expanding=True)))
    q = q.order_by(Task.n_submitted.desc(), Task.id).limit(1)
    return q.with_for_update(skip_locked=lock == "skip", of=Task) if lock else q


@functools.cache
def _lease_statement(dialect: str, counted: bool) -> Any:
    rows = select(bindparam("task_id", type_=Integer), bindparam("user_id", type_=Integer), literal("assigned"),
                  bindparam("now", type_=TS), bindparam("expires", type_=TS))
    if counted:
        rows = rows.where(select(func.count()).select_from(Assignment)
                          .where(Assignment.task_id == bindparam("task_id"), live_slot(bindparam("now")))
                          .scalar_subquery() < bindparam("overlap"))
    else:
        rows = rows.where(true())  # SQLite: an INSERT ... SELECT upsert needs a WHERE (parsing ambiguity)
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(Assignment.__table__).from_select(
        ["task_id", "user_id", "state", "assigned_at", "expires_at"], rows)
    # Never over the user's own label or skip: one committed (from another tab) after the candidate query's
    # snapshot was taken would otherwise be turned back into a lease, freeing its slot for a label too many.
    ins = ins.on_conflict_do_update(index_elements=["task_id", "user_id"], set_={
        "state": ins.excluded.state, "assigned_at": ins.excluded.assigned_at, "expires_at": ins.excluded.expires_at,
        "finished_at": None, "skip_reason": None},
        where=Assignment.__table__.c.state.not_in(("submitted", "skipped")))
    return ins.returning(Assignment.__table__.c.id)


def _lease(session: Session, task_id: int, user_id: int, now: dt.datetime, lease: dt.timedelta,
           overlap: int | None) -> int | None:
    """Write the user's lease on the task (a new assignment row, or their old one, expired or released, taken
    again) in one statement; returns its id. With `overlap` the row is written only while submitted labels plus
    live leases leave room (the count runs in this statement, so on PostgreSQL it sees everything committed
    before the caller's row lock was granted); None when the task turned out full, or the user's own label or
    skip is there after all."""
    stmt = _lease_statement(session.get_bind().dialect.name, overlap is not None)
    aid = session.execute(stmt, {"task_id": task_id, "user_id": user_id, "now": now, "expires": now + lease,
                                 **({"overlap": overlap} if overlap is not None else {})}).scalar()
    if aid is not None:
        sync_loaded(session, Assignment, aid, state="assigned", assigned_at=now, expires_at=now + lease,
                    finished_at=None, skip_reason=None)
    return aid


def sync_loaded(session: Session, model: type, pk: int, **values: Any) -> None:
    """Values a Core statement just wrote, set on the session's copy of the row if it holds one (a page or a
    test may keep the ORM object; sessions here do not expire objects on commit)."""
    obj = session.identity_map.get(identity_key(model, pk))
    if obj is not None:
        for k, v in values.items():
            set_committed_value(obj, k, v)


_VIEW = (select(Prompt.text, Prompt.messages, Response.id, Response.text.label("response")).select_from(Prompt)
         .outerjoin(Response, Response.id.in_(bindparam("rids", expanding=True)))
         .where(Prompt.id == bindparam("prompt_id")))


def _view(session: Session, project_id: int, project_name: str, task: Any, assignment_id: int | None,
          assigned_at: dt.datetime | None, expires_at: dt.datetime | None) -> TaskView:
    """The TaskView of a task row (_TASK_COLUMNS): its prompt and responses in one statement."""
    rids = list(task.response_ids or [])
    rows = session.execute(_VIEW, {"rids": rids, "prompt_id": task.prompt_id}).all()
    by_id = {r.id: r.response for r in rows if r.id is not None}
    p = rows[0]
    return TaskView(
        task_id=task.task_id, kind=task.kind, project_id=project_id, project_name=project_name,
        prompt_id=task.prompt_id, prompt_text=p.text,
        messages=list(p.messages) if p.messages else [{"role": "user", "content": p.text or ""}],
        # Model names stay out of the view: annotators judge blind.
        responses=[{"id": rid, "text": by_id[rid]} for rid in rids],
        assignment_id=assignment_id, assigned_at=assigned_at, expires_at=expires_at)


def _is_deadlock(e: OperationalError) -> bool:
    return type(e.orig).__name__ == "DeadlockDetected"  # psycopg.errors.DeadlockDetected (SQLSTATE 40P01)


# How long next_task may wait behind other transactions on PostgreSQL before saying "busy, try again".
PG_WAIT_SECONDS = 30.0


def _next_task_pg(session: Session, by_kind: bool, params: dict[str, Any], project_name: str,
                  clock: Callable[[], dt.datetime], lease: dt.timedelta) -> TaskView | None:
    """PostgreSQL: lock a candidate task row, then write the lease if the task still has a free slot.

    The candidate query runs on a snapshot taken before the row lock, so the slot count is redone once the
    row is ours: by the lease upsert itself, a later statement with a fresh snapshot (READ COMMITTED). A
    candidate that turns out full is released at once (its SAVEPOINT is rolled back, which drops the row
    lock) so no row stays locked for the rest of the transaction. SKIP LOCKED spreads concurrent callers over
    different tasks; when every candidate is locked by someone else, the first one is waited for with a plain
    FOR UPDATE instead of reporting "no tasks left": None is returned only when the committed data holds no
    candidate for this user.
    """
    deadline = time.monotonic() + PG_WAIT_SECONDS
    full: list[int] = []  # candidates found full once locked: left out of this call's later looks
    user_id, project_id, overlap = params["user_id"], params["project_id"], params["overlap"]
    while True:
        look = {**params, "at": clock(), **({"full": full} if full else {})}
        for wait in (False, True):
            try:
                with session.begin_nested() as sp:
                    task = session.execute(_candidate(by_kind, "wait" if wait else "skip", bool(full)), look).first()
                    if task is not None:
                        now = clock()  # read under the row lock: no later lease of this task is older
                        aid = _lease(session, task.task_id, user_id, now, lease, overlap)
                        if aid is not None:
                            return _view(session, project_id, project_name, task, aid, now, now + lease)
                    sp.rollback()  # full after all (or nothing lockable): release the row lock at once
            except OperationalError as e:
                # The blocking wait can close a cycle with callers that hold rows from earlier in their
                # transactions; PostgreSQL then cancels one wait. Its savepoint is rolled back (so is our
                # wait), and we look again after a short random pause instead of failing the annotator.
                if not _is_deadlock(e):
                    raise
                time.sleep(random.uniform(0.005, 0.05))
                break
            if task is not None:
                full.append(task.task_id)
                break  # start over with SKIP LOCKED on a fresh snapshot
            if not wait and session.execute(_candidate(by_kind, "", bool(full)), look).first() is None:
                return None  # nothing for this user in the committed data, locked or not
            # else: every candidate is held by someone else right now; wait for the first one (wait=True)
        if time.monotonic() > deadline:
            raise ServiceError("the task queue is very busy: no task could be taken for "
                               f"{PG_WAIT_SECONDS:.0f} s; try again in a moment")


def open_task(session: Session, user_id: int, task_id: int) -> TaskView:
    """A specific task for viewing (history / revision); no lease is taken."""
    task = session.get(Task, check_id(task_id, "task"))
    if task is None:
        raise NotFound(f"no task {task_id}")
    a = session.scalar(select(Assignment).where(Assignment.task_id == task_id, Assignment.user_id == user_id))
    return task_view(session, task, a)


def holds(session: Session, user_id: int, task_id: int) -> bool:
    """Whether the user still holds the task (leased, not yet labelled or skipped): a page showing it in one
    browser tab learns that another tab finished it."""
    try:
        check_id(task_id, "task")
    except NotFound:
        return False
    state = session.scalar(select(Assignment.state).where(Assignment.task_id == task_id,
                                                          Assignment.user_id == user_id))
    return state == "assigned"


def skip_task(session: Session, user_id: int, task_id: int, reason: str = "",
              *, now: dt.datetime | None = None) -> Assignment:
    """Give the task back with a reason; the user is not offered it again."""
    check_id(task_id, "task")
    check_size("comment", reason or "", field="reason")  # skip reasons share the comment limit
    reason = (reason or "").strip() or "no reason given"
    if pg_functions.usable(session) and pg_functions.fits(user_id) and not _unstorable(reason):
        a = _skip_fn(session, user_id, task_id, reason, now)
        if a is not _NO_FUNCTION:
            return a
    now = now or utcnow()
    with write_transaction(session):
        # Lock the task row as submits do (PostgreSQL): a skip racing this user's own submit must not leave a
        # 'skipped' assignment beside a real label (the slot would be handed out again).
        task = session.get(Task, task_id, with_for_update=True, populate_existing=True)
        a = session.scalar(select(Assignment).where(Assignment.task_id == task_id,
                                                    Assignment.user_id == user_id).execution_options(
                                                        populate_existing=True))
        if a is None:
            raise ServiceError(f"task {task_id} is not assigned to this user")
        if a.state == "submitted":
            raise ServiceError(f"task {task_id} is already labelled; revise it from the history instead")
        if a.state != "skipped":
            a.state, a.finished_at, a.skip_reason = "skipped", now, reason
            summary.count_change(session, task.project_id, "skipped", None, "")  # the Dashboard's skip count
        session.flush()
        return a


def _skip_fn(session: Session, user_id: int, task_id: int, reason: str, now: dt.datetime | None) -> Any:
    """PostgreSQL: skip_task in one statement (il_skip); the user's assignment, attached to the session.
    _NO_FUNCTION when the database lacks it."""
    try:
        rows = pg_functions.call(session, pg_functions.SKIP_CALL, (user_id, task_id, reason, now))
    except pg_functions.FunctionFailed as e:
        raise ServiceError(e.message) from None
    if rows is None:
        return _NO_FUNCTION
    r = rows[0]
    values = {"state": r.state, "assigned_at": r.assigned_at.astimezone(dt.UTC),
              "expires_at": r.expires_at.astimezone(dt.UTC) if r.expires_at else None,
              "finished_at": r.finished_at.astimezone(dt.UTC) if r.finished_at else None,
              "skip_reason": r.skip_reason}
    held = session.identity_map.get(identity_key(Assignment, r.assignment_id))
    if held is not None:  # the page's copy of the row, brought up to date
        sync_loaded(session, Assignment, r.assignment_id, **values)
        return held
    a = Assignment(id=r.assignment_id, task_id=task_id, user_id=user_id, **values)
    make_transient_to_detached(a)
    session.add(a)  # persistent, unchanged: nothing to flush
    return a


def release_task(session: Session, user_id: int, task_id: int) -> None:
    """End a lease without skipping (e.g. sign-out): the task returns to the pool at once."""
    check_id(task_id, "task")
    with write_transaction(session):
        session.execute(update(Assignment).where(Assignment.task_id == task_id, Assignment.user_id == user_id,
                                                 Assignment.state == "assigned").values(state="expired"))


def expire_leases(session: Session, *, now: dt.datetime | None = None) -> int:
    """Mark leases past their expiry as expired (next_task already ignores them; this tidies stats)."""
    now = now or utcnow()
    with write_transaction(session):
        res = session.execute(update(Assignment).where(Assignment.state == "assigned",
                                                       Assignment.expires_at <= now).values(state="expired"))
        return res.rowcount or 0


def tasks_left(session: Session, user_id: int, project_id: int, *, kind: str | None = None,
               now: dt.datetime | None = None) -> int:
    """Open tasks (of one kind, if given) this user could still be given."""
    now = now or utcnow()
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"no project with id {project_id}")
    done_by_me = exists().where(Assignment.task_id == Task.id, Assignment.user_id == user_id,
                                Assignment.state.in_(("submitted", "skipped")))
    taken = (select(func.count()).select_from(Assignment)
             .where(Assignment.task_id == Task.id, live_slot(now), Assignment.user_id != user_id)
             .correlate(Task).scalar_subquery())
    q = select(func.count()).select_from(Task).where(
        Task.project_id == project_id, Task.status == "open", ~done_by_me, taken < project.labels_per_task)
    if kind:
        q = q.where(Task.kind == kind)
    return session.scalar(q) or 0
