"""Progress statistics: tasks by state, labels per day / annotator / project, model versions."""
from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import (
    Assignment,
    Demonstration,
    ModelVersion,
    PreferenceLabel,
    Project,
    Prompt,
    Ranking,
    Rating,
    Task,
    User,
    utcnow,
)

LABEL_TABLES = ((PreferenceLabel, "compare"), (Ranking, "rank"), (Rating, "rate"))


def _day_start(now: dt.datetime) -> dt.datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def label_counts(session: Session, project_id: int, *, user_id: int | None = None,
                 now: dt.datetime | None = None) -> dict[str, int]:
    """Labels (preferences, rankings, ratings, demonstrations) in a project, optionally one user's own:
    {"total", "today"} (today = since 00:00 UTC). The labeling pages show it on every task."""
    today = _day_start(now or utcnow())
    total = n_today = 0
    for table, _ in LABEL_TABLES:
        q = select(func.count()).select_from(table).join(Task, Task.id == table.task_id).where(
            Task.project_id == project_id)
        if user_id is not None:
            q = q.where(table.user_id == user_id)
        total += session.scalar(q) or 0
        n_today += session.scalar(q.where(table.created_at >= today)) or 0
    dq = select(func.count()).select_from(Demonstration).join(Prompt, Prompt.id == Demonstration.prompt_id).where(
        Prompt.project_id == project_id)
    if user_id is not None:
        dq = dq.where(Demonstration.user_id == user_id)
    total += session.scalar(dq) or 0
    n_today += session.scalar(dq.where(Demonstration.created_at >= today)) or 0
    return {"total": total, "today": n_today}


def progress(session: Session, project_id: int, *, user_id: int | None = None,
             now: dt.datetime | None = None) -> dict[str, Any]:
    """Counts for one project (optionally one user's own): tasks by state and kind, labels total/today."""
    now = now or utcnow()
    by_state = dict(session.execute(select(Task.status, func.count()).where(Task.project_id == project_id)
                                    .group_by(Task.status)).all())
    by_kind = dict(session.execute(select(Task.kind, func.count()).where(Task.project_id == project_id)
                                   .group_by(Task.kind)).all())
    live = session.scalar(select(func.count()).select_from(Assignment).join(Task, Task.id == Assignment.task_id)
                          .where(Task.project_id == project_id, Assignment.state == "assigned",
                                 Assignment.expires_at > now)) or 0
    counts = label_counts(session, project_id, user_id=user_id, now=now)
    skipped = session.scalar(select(func.count()).select_from(Assignment).join(Task, Task.id == Assignment.task_id)
                             .where(Task.project_id == project_id, Assignment.state == "skipped",
                                    *( [Assignment.user_id == user_id] if user_id is not None else [])))
    return {"tasks": sum(by_state.values()), "tasks_by_state": by_state, "tasks_by_kind": by_kind,
            "leased": live, "labels": counts["total"], "labels_today": counts["today"], "skipped": skipped or 0}


def _label_frame(session: Session, project_id: int | None) -> pd.DataFrame:
    frames = []
    for table, kind in LABEL_TABLES:
        q = (select(table.created_at, table.seconds, User.username, Project.name)
             .join(Task, Task.id == table.task_id).join(Project, Project.id == Task.project_id)
             .join(User, User.id == table.user_id))
        if project_id is not None:
            q = q.where(Task.project_id == project_id)
        rows = session.execute(q).all()
        frames.append(pd.DataFrame(rows, columns=["created_at", "seconds", "annotator", "project"]).assign(kind=kind))
    q = (select(Demonstration.created_at, Demonstration.seconds, User.username, Project.name)
         .join(Prompt, Prompt.id == Demonstration.prompt_id).join(Project, Project.id == Prompt.project_id)
         .join(User, User.id == Demonstration.user_id))
    if project_id is not None:
        q = q.where(Prompt.project_id == project_id)
    frames.append(pd.DataFrame(session.execute(q).all(),
                               columns=["created_at", "seconds", "annotator", "project"]).assign(kind="demonstrate"))
    df = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else \
        pd.DataFrame(columns=["created_at", "seconds", "annotator", "project", "kind"])
    if len(df):
        df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    return df


def labels_over_time(session: Session, project_id: int | None = None) -> pd.DataFrame:
    """Labels per day: columns day, project, annotator, kind, n."""
    df = _label_frame(session, project_id)
    if not len(df):
        return pd.DataFrame(columns=["day", "project", "annotator", "kind", "n"])
    df["day"] = df["created_at"].dt.floor("D")
    return (df.groupby(["day", "project", "annotator", "kind"]).size().rename("n").reset_index()
            .sort_values(["day", "project", "annotator", "kind"], ignore_index=True))


def per_annotator(session: Session, project_id: int | None = None) -> pd.DataFrame:
    """Per annotator: labels, median seconds per task, first and last label."""
    df = _label_frame(session, project_id)
    if not len(df):
        return pd.DataFrame(columns=["annotator", "labels", "median_seconds", "first", "last"])
    g = df.groupby("annotator")
    out = pd.DataFrame({"labels": g.size(), "median_seconds": g["seconds"].median(),
                        "first": g["created_at"].min(), "last": g["created_at"].max()}).reset_index()
    return out.sort_values("labels", ascending=False, ignore_index=True)


def per_project(session: Session) -> pd.DataFrame:
    """One row per project: prompts, tasks by state, labels."""
    rows = []
    for p in session.scalars(select(Project).order_by(Project.id)):
        pr = progress(session, p.id)
        rows.append({"project": p.name, "labels_per_task": p.labels_per_task,
                     "prompts": session.scalar(select(func.count()).select_from(Prompt)
                                               .where(Prompt.project_id == p.id)) or 0,
                     "tasks": pr["tasks"], "open": pr["tasks_by_state"].get("open", 0),
                     "done": pr["tasks_by_state"].get("done", 0), "leased": pr["leased"],
                     "labels": pr["labels"], "labels_today": pr["labels_today"], "skipped": pr["skipped"]})
    return pd.DataFrame(rows, columns=["project", "labels_per_task", "prompts", "tasks", "open", "done", "leased",
                                       "labels", "labels_today", "skipped"])


def model_versions_table(session: Session) -> pd.DataFrame:
    """The registry with lineage and headline metrics."""
    names = {mv.id: mv.name for mv in session.scalars(select(ModelVersion))}
    rows = []
    for mv in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
        snap = mv.label_snapshot or {}
        ids = snap.get("ids") if isinstance(snap.get("ids"), dict) else snap
        n_labels = sum(len(v) for v in ids.values() if isinstance(v, list)) or snap.get("count")
        rows.append({"name": mv.name, "kind": mv.kind, "parent": names.get(mv.parent_id), "path": mv.path,
                     "trained_on_labels": n_labels,
                     "metrics": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in sorted((mv.metrics or {}).items())),
                     "created_at": mv.created_at})
    return pd.DataFrame(rows, columns=["name", "kind", "parent", "path", "trained_on_labels", "metrics",
                                       "created_at"])
