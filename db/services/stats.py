"""Progress statistics: tasks by state, labels per day / annotator / project, model versions."""
from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from typing import Any

import pandas as pd
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import (
    Assignment,
    LabelDay,
    LabelSeconds,
    ModelVersion,
    Project,
    ProjectCount,
    Task,
    User,
    utcnow,
)
from db.services.summary import _day


def _day_start(now: dt.datetime) -> dt.datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


# Every count of labels below reads the summaries db.services.summary keeps in the transaction of each label
# write (LabelDay: per project, annotator, kind and UTC day; LabelSeconds: the multiset of times): reading the
# labels themselves took 75 s for the Dashboard at 1M labels.
def label_counts(session: Session, project_id: int, *, user_id: int | None = None,
                 now: dt.datetime | None = None, kind: str | None = None) -> dict[str, int]:
    """Labels (preferences, rankings, ratings, demonstrations) in a project, optionally one user's own and of
    one task kind only: {"total", "today"} (today = since 00:00 UTC). Each labeling page shows its own kind's."""
    today = _day(_day_start(now or utcnow()))
    # created_at >= today's 00:00 UTC is the same as its UTC day >= today's ('YYYY-MM-DD' sorts as dates)
    q = (select(func.sum(LabelDay.n), func.sum(case((LabelDay.day >= today, LabelDay.n), else_=0)))
         .where(LabelDay.project_id == project_id))
    if user_id is not None:
        q = q.where(LabelDay.user_id == user_id)
    if kind is not None:
        q = q.where(LabelDay.kind == kind)
    n, t = session.execute(q).one()
    return {"total": int(n or 0), "today": int(t or 0)}


def _task_counts(session: Session, project_id: int) -> tuple[dict[str, int], dict[str, int]]:
    """Tasks by state and by kind, from the counts db.services.summary keeps (counting the tasks read all of
    them: 1M rows on PostgreSQL)."""
    by_state: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    counts = select(ProjectCount.status, ProjectCount.kind, ProjectCount.n).where(
        ProjectCount.project_id == project_id, ProjectCount.kind.not_in(("prompt", "skipped")), ProjectCount.n != 0)
    for status, kind, n in session.execute(counts):
        by_state[status] = by_state.get(status, 0) + n
        by_kind[kind] = by_kind.get(kind, 0) + n
    return dict(sorted(by_state.items())), dict(sorted(by_kind.items()))


def progress(session: Session, project_id: int, *, user_id: int | None = None,
             now: dt.datetime | None = None) -> dict[str, Any]:
    """Counts for one project (optionally one user's own): tasks by state and kind, labels total/today."""
    now = now or utcnow()
    by_state, by_kind = _task_counts(session, project_id)
    # live leases are few: ix_assignments_state_expires finds them
    live = session.scalar(select(func.count()).select_from(Assignment).join(Task, Task.id == Assignment.task_id)
                          .where(Task.project_id == project_id, Assignment.state == "assigned",
                                 Assignment.expires_at > now)) or 0
    counts = label_counts(session, project_id, user_id=user_id, now=now)
    if user_id is None:  # kept with the task counts: SQLite's planner read every assignment to count them
        skipped = session.scalar(select(func.sum(ProjectCount.n)).where(ProjectCount.project_id == project_id,
                                                                        ProjectCount.kind == "skipped"))
    else:  # one user's: ix_assignments_user_state
        skipped = session.scalar(select(func.count()).select_from(Assignment).join(Task, Task.id == Assignment.task_id)
                                 .where(Task.project_id == project_id, Assignment.state == "skipped",
                                        Assignment.user_id == user_id))
    return {"tasks": sum(by_state.values()), "tasks_by_state": by_state, "tasks_by_kind": by_kind,
            "leased": live, "labels": counts["total"], "labels_today": counts["today"], "skipped": skipped or 0}


def labels_over_time(session: Session, project_id: int | None = None) -> pd.DataFrame:
    """Labels per day: columns day, project, annotator, kind, n."""
    names = dict(session.execute(select(User.id, User.username)).all())
    pnames = dict(session.execute(select(Project.id, Project.name)).all())
    q = select(LabelDay.day, LabelDay.project_id, LabelDay.user_id, LabelDay.kind, LabelDay.n).where(LabelDay.n > 0)
    if project_id is not None:
        q = q.where(LabelDay.project_id == project_id)
    rows = [(d, pnames[p], names[u], kind, n) for d, p, u, kind, n in session.execute(q)]
    if not rows:
        return pd.DataFrame(columns=["day", "project", "annotator", "kind", "n"])
    df = pd.DataFrame(rows, columns=["day", "project", "annotator", "kind", "n"])
    df["day"] = pd.to_datetime(df["day"], utc=True)
    df["n"] = df["n"].astype("int64")
    return df.sort_values(["day", "project", "annotator", "kind"], ignore_index=True)


def seconds_multisets(session: Session, project_id: int | None, by_kind: bool
                      ) -> dict[tuple[int, str], list[tuple[float, int]]]:
    """{(user id, kind or ''): [(seconds, how many labels took them)] sorted by seconds} from LabelSeconds."""
    q = select(LabelSeconds.user_id, LabelSeconds.kind, LabelSeconds.seconds, func.sum(LabelSeconds.n)).where(
        LabelSeconds.n > 0)
    if project_id is not None:
        q = q.where(LabelSeconds.project_id == project_id)
    q = q.group_by(LabelSeconds.user_id, LabelSeconds.kind, LabelSeconds.seconds)
    out: dict[tuple[int, str], Counter] = defaultdict(Counter)
    for uid, kind, sec, n in session.execute(q):
        out[(uid, kind if by_kind else "")][float(sec)] += int(n)
    return {k: sorted(c.items()) for k, c in out.items()}


def nth_value(values: list[tuple[float, int]], i: int) -> float:
    """The i-th (0-based) of the sorted multiset [(value, count)]."""
    for v, n in values:
        if i < n:
            return v
        i -= n
    raise IndexError(i)


def per_annotator(session: Session, project_id: int | None = None) -> pd.DataFrame:
    """Per annotator: labels, median seconds per task, first and last label."""
    names = dict(session.execute(select(User.id, User.username)).all())
    q = select(LabelDay.user_id, func.sum(LabelDay.n), func.min(LabelDay.first_at), func.max(LabelDay.last_at)
               ).where(LabelDay.n > 0)
    if project_id is not None:
        q = q.where(LabelDay.project_id == project_id)
    agg = {uid: (int(n), first, last) for uid, n, first, last in session.execute(q.group_by(LabelDay.user_id))}
    if not agg:
        return pd.DataFrame(columns=["annotator", "labels", "median_seconds", "first", "last"])
    median = {}
    for (uid, _), xs in seconds_multisets(session, project_id, by_kind=False).items():
        n = sum(c for _, c in xs)  # the mean of the middle one or two, as pandas takes the median
        median[uid] = (nth_value(xs, (n + 1) // 2 - 1) + nth_value(xs, (n + 2) // 2 - 1)) / 2
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
                     "prompts": session.scalar(select(func.sum(ProjectCount.n)).where(
                         ProjectCount.project_id == p.id, ProjectCount.kind == "prompt")) or 0,
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
