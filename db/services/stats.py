"""Progress statistics: tasks by state, labels per day / annotator / project, model versions."""
from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
from sqlalchemy import case, func, select, union_all
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


def _sources() -> list[tuple[Any, str, Any, tuple[Any, Any]]]:
    """(label table, kind, its project column, the join that reaches it) of each kind of label."""
    return [*((table, kind, Task.project_id, (Task, Task.id == table.task_id)) for table, kind in LABEL_TABLES),
            (Demonstration, "demonstrate", Prompt.project_id, (Prompt, Prompt.id == Demonstration.prompt_id))]


def _utc_day(session: Session, col: Any) -> Any:
    """The UTC calendar day of a timestamp column, as 'YYYY-MM-DD' text."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", col), "YYYY-MM-DD")
    return func.date(col)  # SQLite stores UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'


def _day_start(now: dt.datetime) -> dt.datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def label_counts(session: Session, project_id: int, *, user_id: int | None = None,
                 now: dt.datetime | None = None, kind: str | None = None) -> dict[str, int]:
    """Labels (preferences, rankings, ratings, demonstrations) in a project, optionally one user's own and of
    one task kind only: {"total", "today"} (today = since 00:00 UTC). Each labeling page shows its own kind's."""
    today = _day_start(now or utcnow())
    total = n_today = 0
    for table, source_kind, project_col, join in _sources():
        if kind is not None and source_kind != kind:
            continue
        # total and today in one scan (two counts read the project's labels twice: 1M rows each)
        q = (select(func.count(), func.sum(case((table.created_at >= today, 1), else_=0)))
             .select_from(table).join(*join).where(project_col == project_id))
        if user_id is not None:
            q = q.where(table.user_id == user_id)
        n, t = session.execute(q).one()
        total, n_today = total + (n or 0), n_today + (t or 0)
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


def labels_over_time(session: Session, project_id: int | None = None) -> pd.DataFrame:
    """Labels per day: columns day, project, annotator, kind, n."""
    # Counted by the database (GROUP BY day, project, annotator): loading every label into a frame took
    # ~40 s at 1M labels.
    names = dict(session.execute(select(User.id, User.username)).all())
    pnames = dict(session.execute(select(Project.id, Project.name)).all())
    rows = []
    for table, kind, project_col, join in _sources():
        day = _utc_day(session, table.created_at)
        q = (select(day, project_col, table.user_id, func.count()).select_from(table).join(*join)
             .group_by(day, project_col, table.user_id))
        if project_id is not None:
            q = q.where(project_col == project_id)
        rows += [(d, pnames[p], names[u], kind, n) for d, p, u, n in session.execute(q)]
    if not rows:
        return pd.DataFrame(columns=["day", "project", "annotator", "kind", "n"])
    df = pd.DataFrame(rows, columns=["day", "project", "annotator", "kind", "n"])
    df["day"] = pd.to_datetime(df["day"], utc=True)
    df["n"] = df["n"].astype("int64")
    return df.sort_values(["day", "project", "annotator", "kind"], ignore_index=True)


def per_annotator(session: Session, project_id: int | None = None) -> pd.DataFrame:
    """Per annotator: labels, median seconds per task, first and last label."""
    # Counts, first/last and the median are computed by the database (the median as the mean of the middle
    # one or two of each annotator's sorted times, as pandas takes it): a frame of every label took ~40 s at 1M.
    names = dict(session.execute(select(User.id, User.username)).all())
    agg: dict[int, list[Any]] = {}
    parts = []
    for table, _, project_col, join in _sources():
        q = (select(table.user_id, func.count(), func.min(table.created_at), func.max(table.created_at))
             .select_from(table).join(*join).group_by(table.user_id))
        part = select(table.user_id.label("uid"), table.seconds.label("sec")).select_from(table).join(*join)
        if project_id is not None:
            q, part = q.where(project_col == project_id), part.where(project_col == project_id)
        parts.append(part)
        for uid, n, first, last in session.execute(q):
            if uid in agg:
                a = agg[uid]
                a[0], a[1], a[2] = a[0] + n, min(a[1], first), max(a[2], last)
            else:
                agg[uid] = [n, first, last]
    if not agg:
        return pd.DataFrame(columns=["annotator", "labels", "median_seconds", "first", "last"])
    times = union_all(*parts).subquery()
    ranked = (select(times.c.uid, times.c.sec,
                     func.row_number().over(partition_by=times.c.uid, order_by=times.c.sec).label("rn"),
                     func.count().over(partition_by=times.c.uid).label("n"))
              .where(times.c.sec.is_not(None)).subquery())
    median = dict(session.execute(
        select(ranked.c.uid, func.avg(ranked.c.sec))
        .where(ranked.c.rn.in_([(ranked.c.n + 1) // 2, (ranked.c.n + 2) // 2])).group_by(ranked.c.uid)).all())
    rows = sorted((names[uid], n, median.get(uid), first, last) for uid, (n, first, last) in agg.items())
    out = pd.DataFrame(rows, columns=["annotator", "labels", "median_seconds", "first", "last"])
    out["median_seconds"] = out["median_seconds"].astype("float64")
    out["first"], out["last"] = pd.to_datetime(out["first"], utc=True), pd.to_datetime(out["last"], utc=True)
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


# Metrics a registry listing shows first (held-out quality before training bookkeeping); the rest are counted.
HEADLINE_METRICS = ("accuracy", "reward", "score", "kl", "loss")
SHOWN_METRICS = 4
_BOOKKEEPING = ("runtime", "per_second", "flos", "epoch", "global_step")


def metrics_summary(metrics: dict[str, Any] | None, *, limit: int | None = SHOWN_METRICS) -> str:
    """"eval_accuracy=0.91, train_loss=0.42, ... (+7 more)": headline metrics first, at most `limit` (None: all,
    sorted by name). A listing of many versions stays readable; `db stats --json` gives all of them."""
    items = sorted((metrics or {}).items())
    if limit is not None:
        def rank(kv: tuple[str, Any]) -> tuple[int, int, str]:
            k = kv[0].lower()
            head = next((i for i, w in enumerate(HEADLINE_METRICS) if w in k), len(HEADLINE_METRICS))
            return (any(b in k for b in _BOOKKEEPING), head, k)
        items = sorted(items, key=rank)
    shown = items if limit is None else items[:limit]
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)
    return text + (f" (+{len(items) - len(shown)} more)" if len(items) > len(shown) else "")


def model_versions_table(session: Session, *, all_metrics: bool = False) -> pd.DataFrame:
    """The registry with lineage and headline metrics (`all_metrics`: every metric, for --json)."""
    names = {mv.id: mv.name for mv in session.scalars(select(ModelVersion))}
    rows = []
    for mv in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
        snap = mv.label_snapshot or {}
        ids = snap.get("ids") if isinstance(snap.get("ids"), dict) else snap
        n_labels = sum(len(v) for v in ids.values() if isinstance(v, list)) or snap.get("count")
        rows.append({"name": mv.name, "kind": mv.kind, "parent": names.get(mv.parent_id), "path": mv.path,
                     "trained_on_labels": n_labels,
                     "metrics": metrics_summary(mv.metrics, limit=None if all_metrics else SHOWN_METRICS),
                     "created_at": mv.created_at})
    df = pd.DataFrame(rows, columns=["name", "kind", "parent", "path", "trained_on_labels", "metrics",
                                     "created_at"])
    # a count, with blanks for versions not trained on labels (a float column printed 49.0 and NaN)
    df["trained_on_labels"] = pd.to_numeric(df["trained_on_labels"], errors="coerce").astype("Int64")
    return df
