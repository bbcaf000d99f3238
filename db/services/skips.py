"""An annotator's skipped tasks, and taking a skip back (My history), plus the order tasks were shown in."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import settings
from db.models import Assignment, Project, Task, utcnow
from db.services import summary
from db.services.assignment import slots_taken
from db.services.errors import ServiceError, check_id
from db.session import write_transaction


def skipped_tasks(session: Session, user_id: int, *, project_id: int | None = None,
                  limit: int = 200) -> list[dict[str, Any]]:
    """The user's skips, newest first: {task_id, kind, reason, skipped_at, undoable}.

    `undoable`: the task is still open, so undo_skip can hand it back now (a slot could still be taken by
    others in between; undo_skip checks again).
    """
    q = (select(Assignment, Task).join(Task, Task.id == Assignment.task_id)
         .where(Assignment.user_id == user_id, Assignment.state == "skipped"))
    if project_id is not None:
        q = q.where(Task.project_id == project_id)
    rows = session.execute(q.order_by(Assignment.finished_at.desc(), Assignment.id.desc()).limit(limit))
    return [{"task_id": t.id, "kind": t.kind, "reason": a.skip_reason or "", "skipped_at": a.finished_at,
             "undoable": t.status == "open"} for a, t in rows]


def undo_skip(session: Session, user_id: int, task_id: int, *, now: dt.datetime | None = None,
              lease_minutes: int | None = None) -> Assignment:
    """Take a skip back: the task is leased to the user again (next_task hands it back first).

    Refused once the task no longer needs this user: it is done or closed, or others hold every slot.
    """
    now = now or utcnow()
    lease = dt.timedelta(minutes=lease_minutes if lease_minutes is not None else settings.lease_minutes())
    check_id(task_id, "task")
    with write_transaction(session):
        # The task row lock that submits and skips take (PostgreSQL), so the slot count below cannot go stale.
        task = session.get(Task, task_id, with_for_update=True, populate_existing=True)
        a = session.scalar(select(Assignment).where(Assignment.task_id == task_id, Assignment.user_id == user_id)
                           .execution_options(populate_existing=True))
        if task is None or a is None or a.state != "skipped":
            raise ServiceError(f"task {task_id} is not one you skipped")
        project = session.get(Project, task.project_id)
        if task.status != "open" or slots_taken(session, task_id, now) >= project.labels_per_task:
            raise ServiceError(f"task {task_id} has all the labels it needs now, so the skip cannot be undone")
        a.state, a.assigned_at, a.expires_at = "assigned", now, now + lease
        summary.count_change(session, task.project_id, "skipped", "", None)  # the Dashboard's skip count
        a.finished_at, a.skip_reason = None, None
        session.flush()
        return a


def display_orders(session: Session, task_ids: list[int]) -> dict[int, list[int]]:
    """{task_id: response ids in the order the task shows them} (A/B and 1..K on the labeling pages)."""
    if not task_ids:
        return {}
    rows = session.execute(select(Task.id, Task.response_ids).where(Task.id.in_(set(task_ids))))
    return {tid: list(rids or []) for tid, rids in rows}
