"""Model-version registry and lineage: which labels trained which model."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import MODEL_KINDS, ModelVersion
from db.services.errors import InputError, NotFound, ServiceError


def register_model_version(session: Session, name: str, kind: str, path: str = "", *,
                           parent: str | int | None = None, config: dict[str, Any] | None = None,
                           metrics: dict[str, Any] | None = None,
                           label_snapshot: dict[str, Any] | None = None,
                           actor_id: int | None = None) -> ModelVersion:
    """Add a version. `parent` is a version name or id (e.g. the SFT model a reward model started from).
    `actor_id`: the acting user (admins only; None is the command line or a job)."""
    from db.services import audit

    audit.require_admin(session, actor_id, "registering model versions")
    if kind not in MODEL_KINDS:
        raise InputError(f"kind must be one of {', '.join(MODEL_KINDS)}, not {kind!r}", field="kind")
    if not name:
        raise InputError("model version name is empty", field="name")
    if session.scalar(select(ModelVersion).where(ModelVersion.name == name)) is not None:
        raise ServiceError(f"model version {name!r} already exists")
    parent_row = resolve(session, parent) if parent is not None else None
    mv = ModelVersion(name=name, kind=kind, path=str(path), parent_id=parent_row.id if parent_row else None,
                      config=config or {}, metrics=metrics or {}, label_snapshot=label_snapshot or {})
    session.add(mv)
    session.flush()
    return mv


def resolve(session: Session, ref: str | int) -> ModelVersion:
    """A version by id, name, or path."""
    mv = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        mv = session.get(ModelVersion, int(ref))
    if mv is None and isinstance(ref, str):
        mv = session.scalar(select(ModelVersion).where(ModelVersion.name == ref))
        if mv is None:
            mv = session.scalar(select(ModelVersion).where(ModelVersion.path == ref).order_by(ModelVersion.id))
    if mv is None:
        raise NotFound(f"no model version {ref!r}")
    return mv


def get_or_register(session: Session, name: str, kind: str, path: str = "", **kw: Any) -> ModelVersion:
    """The version called `name`, registered now if there is none. Two processes registering the same name at
    once both get the one row (the loser's insert is rolled back to a savepoint and the row read again)."""
    mv = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if mv is not None:
        return mv
    try:
        with session.begin_nested():
            return register_model_version(session, name, kind, path, **kw)
    except IntegrityError:
        mv = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
        if mv is None:
            raise
        return mv


def list_versions(session: Session, kind: str | None = None) -> list[ModelVersion]:
    q = select(ModelVersion).order_by(ModelVersion.id)
    if kind:
        q = q.where(ModelVersion.kind == kind)
    return list(session.scalars(q))


def update_metrics(session: Session, ref: str | int, metrics: dict[str, Any]) -> ModelVersion:
    mv = resolve(session, ref)
    mv.metrics = {**(mv.metrics or {}), **metrics}
    session.flush()
    return mv


def lineage(session: Session, ref: str | int) -> list[ModelVersion]:
    """The version and its ancestors, newest first."""
    chain, mv, seen = [], resolve(session, ref), set()
    while mv is not None and mv.id not in seen:
        chain.append(mv)
        seen.add(mv.id)
        mv = session.get(ModelVersion, mv.parent_id) if mv.parent_id else None
    return chain
