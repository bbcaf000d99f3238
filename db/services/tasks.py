"""Task creation: compare (A/B randomized once and stored), rank (K >= 3), demonstrate, rate (one response)."""
from __future__ import annotations

import random
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Demonstration, Prompt, Response, Task
from db.services import summary
from db.services.content import sha
from db.services.errors import InputError, NotFound


def _dedup_key(kind: str, prompt_id: int, response_ids: Sequence[int]) -> str:
    # Order-free: the same pair shown B/A is the same task.
    return sha({"kind": kind, "prompt": prompt_id, "responses": sorted(response_ids)})


def create_task(session: Session, project_id: int, kind: str, prompt_id: int,
                response_ids: Sequence[int] = (), *, rng: random.Random | None = None,
                shuffle: bool = True, source: str = "") -> tuple[Task, bool]:
    """Create one task unless an identical one exists. Returns (task, created)."""
    response_ids = [int(r) for r in response_ids]
    if kind == "compare" and len(response_ids) != 2:
        raise InputError("a compare task needs exactly 2 responses", field="response_ids")
    if kind == "rank" and len(response_ids) < 3:
        raise InputError("a rank task needs at least 3 responses", field="response_ids")
    if kind == "demonstrate" and response_ids:
        raise InputError("a demonstrate task has no responses", field="response_ids")
    if kind == "rate" and len(response_ids) != 1:
        raise InputError("a rate task needs exactly 1 response", field="response_ids")
    if kind not in ("compare", "rank", "demonstrate", "rate"):
        raise InputError(f"unknown task kind {kind!r}", field="kind")
    if len(set(response_ids)) != len(response_ids):
        raise InputError("the same response appears twice", field="response_ids")
    key = _dedup_key(kind, prompt_id, response_ids)
    existing = session.scalar(select(Task).where(Task.project_id == project_id, Task.dedup_key == key))
    if existing is not None:
        return existing, False
    if response_ids:
        found = session.scalars(select(Response).where(Response.id.in_(response_ids))).all()
        if len(found) != len(response_ids) or any(r.prompt_id != prompt_id for r in found):
            raise InputError("responses must exist and belong to the task's prompt", field="response_ids")
    ordered = list(response_ids)
    if shuffle:
        (rng or random.SystemRandom()).shuffle(ordered)
    task = Task(project_id=project_id, kind=kind, prompt_id=prompt_id, response_ids=ordered,
                dedup_key=key, source=source)
    session.add(task)
    session.flush()
    summary.count_change(session, project_id, kind, None, task.status)  # the Dashboard's counts
    return task, True


def create_demonstrate_tasks(session: Session, project_id: int, *, only_without_demonstration: bool = True,
                             source: str = "", actor_id: int | None = None) -> int:
    """One demonstrate task per prompt of the project (skipping prompts that already have one). Admins only
    (`actor_id`; None is the command line)."""
    from db.services import audit

    audit.require_admin(session, actor_id, "creating tasks")
    q = select(Prompt.id).where(Prompt.project_id == project_id)
    if only_without_demonstration:
        has_demo = select(Demonstration.prompt_id).where(Demonstration.status != "rejected")
        q = q.where(Prompt.id.not_in(has_demo))
    n = 0
    for pid in session.scalars(q.order_by(Prompt.id)):
        _, created = create_task(session, project_id, "demonstrate", pid, source=source)
        n += created
    return n


def get_task(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    return task


def task_counts(session: Session, project_id: int) -> dict[str, int]:
    rows = session.execute(select(Task.status, func.count()).where(Task.project_id == project_id)
                           .group_by(Task.status)).all()
    return {status: n for status, n in rows}


def count_tasks(session: Session, project_id: int, kind: str | None = None) -> int:
    """All tasks of the project (of one kind, if given), whatever their state."""
    q = select(func.count()).select_from(Task).where(Task.project_id == project_id)
    if kind:
        q = q.where(Task.kind == kind)
    return session.scalar(q) or 0
