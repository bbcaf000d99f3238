"""The audit log: who changed roles, (de)activated users, reviewed demonstrations, revised labels, exported
what and ran imports.

Services call `record` inside the transaction of the change (after its writes, before its commit), so an entry
exists exactly when the change does. The acting user is `actor_id`; None means the command line (`python -m
db`), which runs with the database's own credentials, and is logged as "cli:<OS user>". Details never hold
passwords, tokens or label text: ids, names, counts and filters only.

Admin services take `actor_id` too and call `require_admin` first: the app passes the signed-in user, so an
annotator who reaches one (a crafted request, a bug in a page) is refused before anything is written.
"""
from __future__ import annotations

import datetime as dt
import getpass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditEntry, User, utcnow
from db.services.errors import Forbidden

# The actions written, for the admin page's filter and the docs.
ACTIONS = (
    "user.create", "user.role", "user.activate", "user.deactivate", "user.password",
    "demonstration.review", "label.revise", "export", "import",
    "db.restore",  # written into the restored database, after the restore (db/backup.py)
)


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:120]
    except Exception:  # noqa: BLE001 - no user name in this environment (a container without passwd entry)
        return "cli"


def require_admin(session: Session, actor_id: int | None, what: str) -> User | None:
    """The acting admin (None for the command line); Forbidden for anyone else, before anything is written."""
    if actor_id is None:
        return None
    user = session.get(User, actor_id)
    if user is None or user.role != "admin" or not user.active or user.is_system:
        raise Forbidden(f"{what} is for admins only")
    return user


def record(session: Session, action: str, *, actor_id: int | None = None, target: str = "",
           details: dict[str, Any] | None = None, now: dt.datetime | None = None) -> AuditEntry:
    """Add one entry to the current transaction (flushed, not committed: the caller's commit decides)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    actor = _cli_actor()
    if actor_id is not None:
        user = session.get(User, actor_id)
        actor = user.username if user is not None else f"user {actor_id}"
    entry = AuditEntry(at=now or utcnow(), actor_id=actor_id, actor=actor, action=action, target=target[:300],
                       details=dict(details or {}))
    session.add(entry)
    session.flush()
    return entry


def entries(session: Session, *, action: str | None = None, actor: str | None = None,
            since: dt.datetime | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Newest first, as plain rows for the admin page (`actor` matches the recorded username)."""
    q = select(AuditEntry)
    if action:
        q = q.where(AuditEntry.action == action)
    if actor:
        q = q.where(AuditEntry.actor == actor)
    if since is not None:
        q = q.where(AuditEntry.at >= since)
    return [{"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
             "details": e.details} for e in session.scalars(q.order_by(AuditEntry.id.desc()).limit(limit))]
