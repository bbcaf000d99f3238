"""Assignment (DESIGN.md §4): atomic next_task with exact overlap, skip, lease expiry.

A task slot is taken by a submitted label or by a live lease. `next_task` runs in one write
transaction: SQLite takes the write lock first (BEGIN IMMEDIATE), PostgreSQL locks the task row
(FOR UPDATE SKIP LOCKED) and recounts in a fresh statement, so two annotators asking at once never
both take the last slot.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from db.models import Assignment, Project, Prompt, Response, Task, utcnow
from db.services.content import prompt_messages
from db.services.errors import NotFound, ServiceError
from db.session import write_transaction
from db.settings import LEASE_MINUTES


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


def _live(now: dt.datetime):
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
                          .where(Assignment.task_id == task_id, _live(now))) or 0


def next_task(session: Session, user_id: int, project_id: int, *, kind: str | None = None,
              now: dt.datetime | None = None, lease_minutes: int | None = None) -> TaskView | None:
    """Lease the next task for `user_id` in the project, or None when nothing is left for them.

    A live lease the user already holds is returned again (a page reload shows the same task).
    """
    now = now or utcnow()
    lease = dt.timedelta(minutes=lease_minutes if lease_minutes is not None else LEASE_MINUTES)
    with write_transaction(session):
        project = session.get(Project, project_id)
        if project is None:
            raise NotFound(f"no project with id {project_id}")
        held_q = (select(Assignment).join(Task, Task.id == Assignment.task_id)
                  .where(Assignment.user_id == user_id, Task.project_id == project_id,
                         Assignment.state == "assigned", Assignment.expires_at > now))
        if kind:
            held_q = held_q.where(Task.kind == kind)
        held = session.scalars(held_q.order_by(Assignment.assigned_at, Assignment.id).limit(1)).first()
        if held is not None:
            return task_view(session, session.get(Task, held.task_id), held)

        overlap = project.labels_per_task
        done_by_me = exists().where(Assignment.task_id == Task.id, Assignment.user_id == user_id,
                                    Assignment.state.in_(("submitted", "skipped")))
        taken = (select(func.count()).select_from(Assignment)
                 .where(Assignment.task_id == Task.id, _live(now)).correlate(Task).scalar_subquery())
        is_pg = session.get_bind().dialect.name == "postgresql"
        tried: list[int] = []
        for attempt in range(50):
            q = select(Task).where(Task.project_id == project_id, Task.status == "open", ~done_by_me,
                                   taken < overlap)
            if kind:
                q = q.where(Task.kind == kind)
            if tried:
                q = q.where(Task.id.not_in(tried))
            q = q.order_by(Task.n_submitted.desc(), Task.id).limit(1)
            task = session.scalars(q.with_for_update(skip_locked=True, of=Task) if is_pg else q).first()
            if task is None:
                # PostgreSQL skipped rows that other transactions hold right now (someone claiming or submitting
                # them): that is not "nothing left". Wait for those short transactions and look again.
                if is_pg and session.scalars(q).first() is not None:
                    time.sleep(min(0.05, 0.005 * (attempt + 1)))
                    continue
                return None
            # PostgreSQL: the candidate query ran on a snapshot taken before we held the row lock;
            # recount now that no one else can claim this task.
            if is_pg and slots_taken(session, task.id, now) >= overlap:
                tried.append(task.id)
                continue
            mine = session.scalar(select(Assignment).where(Assignment.task_id == task.id,
                                                           Assignment.user_id == user_id))
            if mine is None:
                mine = Assignment(task_id=task.id, user_id=user_id)
                session.add(mine)
            mine.state, mine.assigned_at, mine.expires_at = "assigned", now, now + lease
            mine.finished_at, mine.skip_reason = None, None
            session.flush()
            return task_view(session, task, mine)
        return None


def open_task(session: Session, user_id: int, task_id: int) -> TaskView:
    """A specific task for viewing (history / revision); no lease is taken."""
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    a = session.scalar(select(Assignment).where(Assignment.task_id == task_id, Assignment.user_id == user_id))
    return task_view(session, task, a)


def holds(session: Session, user_id: int, task_id: int) -> bool:
    """Whether the user still holds the task (leased, not yet labelled or skipped): a page showing it in one
    browser tab learns that another tab finished it."""
    state = session.scalar(select(Assignment.state).where(Assignment.task_id == task_id,
                                                          Assignment.user_id == user_id))
    return state == "assigned"


def skip_task(session: Session, user_id: int, task_id: int, reason: str = "",
              *, now: dt.datetime | None = None) -> Assignment:
    """Give the task back with a reason; the user is not offered it again."""
    now = now or utcnow()
    with write_transaction(session):
        # Lock the task row as submits do (PostgreSQL): a skip racing this user's own submit must not leave a
        # 'skipped' assignment beside a real label (the slot would be handed out again).
        session.get(Task, task_id, with_for_update=True, populate_existing=True)
        a = session.scalar(select(Assignment).where(Assignment.task_id == task_id,
                                                    Assignment.user_id == user_id).execution_options(
                                                        populate_existing=True))
        if a is None:
            raise ServiceError(f"task {task_id} is not assigned to this user")
        if a.state == "submitted":
            raise ServiceError(f"task {task_id} is already labelled; revise it from the history instead")
        if a.state != "skipped":
            a.state, a.finished_at, a.skip_reason = "skipped", now, (reason or "").strip() or "no reason given"
        session.flush()
        return a


def release_task(session: Session, user_id: int, task_id: int) -> None:
    """End a lease without skipping (e.g. sign-out): the task returns to the pool at once."""
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
    done_by_me = exists().where(Assignment.task_id == Task.id, Assignment.user_id == user_id,
                                Assignment.state.in_(("submitted", "skipped")))
    taken = (select(func.count()).select_from(Assignment)
             .where(Assignment.task_id == Task.id, _live(now), Assignment.user_id != user_id)
             .correlate(Task).scalar_subquery())
    q = select(func.count()).select_from(Task).where(
        Task.project_id == project_id, Task.status == "open", ~done_by_me, taken < project.labels_per_task)
    if kind:
        q = q.where(Task.kind == kind)
    return session.scalar(q) or 0
