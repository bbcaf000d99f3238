"""The Dashboard and Agreement services as they were before the summaries (db.services.summary): every call
reads the labels themselves. Kept verbatim as the reference test_stats_summary compares today's services with."""
from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import combinations, groupby
from typing import Any

import pandas as pd
from sqlalchemy import case, func, select, union_all
from sqlalchemy.orm import Session

from db.models import (
    CHOICES,
    Assignment,
    Demonstration,
    PreferenceLabel,
    Project,
    Prompt,
    Ranking,
    Rating,
    Response,
    Task,
    User,
    utcnow,
)
from db.services.agreement import _cohen_from_counts, _majority, _people_only, fleiss_kappa, percent_agreement
from db.services.content import prompt_as_text

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


def _preference_votes(session: Session, project_id: int | None) -> Iterator[tuple[int, str, str]]:
    """(task id, annotator, choice) of every preference label, by task then label: plain columns (1M ORM
    objects took longer than the whole report), usernames from one lookup instead of a join per row."""
    names = dict(session.execute(select(User.id, User.username)).all())
    q = _people_only(select(PreferenceLabel.task_id, PreferenceLabel.user_id, PreferenceLabel.choice),
                     PreferenceLabel.user_id, session)
    if project_id is not None:
        q = q.join(Task, Task.id == PreferenceLabel.task_id).where(Task.project_id == project_id)
    for task_id, user_id, choice in session.execute(q.order_by(PreferenceLabel.task_id, PreferenceLabel.id)):
        yield task_id, names[user_id], choice


def _ranking_items(session: Session, project_id: int | None
                   ) -> tuple[dict[tuple, list[tuple[str, str]]], Counter]:
    """(task, x, y) → [(annotator, a|b|tie)] for every response pair of every ranking; rankings per user."""
    names = dict(session.execute(select(User.id, User.username)).all())
    q = _people_only(select(Ranking.task_id, Ranking.ordering, Ranking.user_id, Task.response_ids)
                     .join(Task, Task.id == Ranking.task_id), Ranking.user_id, session)
    if project_id is not None:
        q = q.where(Task.project_id == project_id)
    items: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    per_user: Counter = Counter()
    for task_id, ordering, user_id, response_ids in session.execute(q.order_by(Ranking.task_id, Ranking.id)):
        username = names[user_id]
        per_user[username] += 1
        rank_of = {rid: i for i, group in enumerate(ordering) for rid in group}
        for x, y in combinations(sorted(response_ids), 2):
            if x in rank_of and y in rank_of:
                c = "tie" if rank_of[x] == rank_of[y] else ("a" if rank_of[x] < rank_of[y] else "b")
                items[(task_id, x, y)].append((username, c))
    return items, per_user


def preference_agreement(session: Session, project_id: int | None = None, *,
                         min_shared: int = 1, include_rankings: bool = True) -> dict[str, Any]:
    """Agreement report on compare tasks with several labels.

    Items are compare tasks and, with `include_rankings`, the response pairs of rank tasks.
    Returns {"n_tasks" (items), "n_labels", "percent_agreement", "fleiss_kappa",
    "pairs": DataFrame[annotator_a, annotator_b, shared_tasks, percent_agreement, cohen_kappa],
    "per_annotator": DataFrame[annotator, labels, compared, agrees_with_majority]}.
    Majority is leave-one-out (the other annotators' majority), tasks where it ties are left out.
    """
    by_task: dict[Any, list[tuple[str, str]]] = defaultdict(list)
    for task_id, username, choice in _preference_votes(session, project_id):
        by_task[task_id].append((username, choice))
    counts = Counter(u for v in by_task.values() for u, _ in v)  # labels per annotator
    if include_rankings:
        items, rankings_per_user = _ranking_items(session, project_id)
        by_task.update(items)
        counts.update(rankings_per_user)
    return _report(by_task, counts, list(CHOICES), min_shared)


def _report(by_task: dict[Any, list[tuple[str, Any]]], counts: Counter, cats: list[Any],
            min_shared: int) -> dict[str, Any]:
    """The agreement report of items -> [(annotator, category)] (see `preference_agreement`)."""
    multi = {t: v for t, v in by_task.items() if len(v) >= 2}
    table = [[sum(1 for _, c in v if c == cat) for cat in cats] for v in multi.values()]

    # One pass over the items. Looping over every annotator (and every pair of them) for every item cost
    # minutes at 1M labels; per pair, the counts of (a's choice, b's choice) on shared items are all that
    # Cohen's kappa and percent agreement need, and per annotator the leave-one-out majority is item-local.
    confusion: dict[tuple[str, str], Counter] = defaultdict(Counter)
    compared: Counter = Counter()
    agree: Counter = Counter()
    for v in multi.values():
        last = {u: c for u, c in v}  # an annotator's label on the item (their last one, if several)
        users = sorted(last)
        for i, a in enumerate(users):
            for b in users[i + 1:]:
                confusion[(a, b)][(last[a], last[b])] += 1
        for u in users:
            maj = _majority([c for uu, c in v if uu != u])
            if maj is None:
                continue
            compared[u] += 1
            agree[u] += next(c for uu, c in v if uu == u) == maj  # their first label, as before
    pair_rows = []
    for (a, b), conf in sorted(confusion.items()):
        shared = sum(conf.values())
        if shared < min_shared:
            continue
        same = sum(n for (x, y), n in conf.items() if x == y)
        pair_rows.append({"annotator_a": a, "annotator_b": b, "shared_tasks": shared,
                          "percent_agreement": same / shared, "cohen_kappa": _cohen_from_counts(conf)})
    ann_rows = [{"annotator": u, "labels": counts[u], "compared": compared[u],
                 "agrees_with_majority": agree[u] / compared[u] if compared[u] else math.nan}
                for u in sorted(counts)]

    return {
        "n_tasks": len(multi),
        "n_labels": sum(len(v) for v in multi.values()),
        "percent_agreement": percent_agreement([[c for _, c in v] for v in multi.values()]),
        "fleiss_kappa": fleiss_kappa(table),
        "pairs": pd.DataFrame(pair_rows, columns=["annotator_a", "annotator_b", "shared_tasks",
                                                  "percent_agreement", "cohen_kappa"]),
        "per_annotator": pd.DataFrame(ann_rows, columns=["annotator", "labels", "compared",
                                                         "agrees_with_majority"]),
    }


def rating_agreement(session: Session, project_id: int | None = None, *, min_shared: int = 1) -> dict[str, Any]:
    """Agreement on rate tasks with several ratings (good / bad), in `preference_agreement`'s shape, plus
    "disagreements": DataFrame[task_id, prompt, response, labels, majority, comments] of the split tasks.
    The optional Likert scores are not compared (few annotators give them)."""
    q = (select(Rating, User.username).join(User, User.id == Rating.user_id)
         .join(Task, Task.id == Rating.task_id).where(User.is_system.is_(False)))
    if project_id is not None:
        q = q.where(Task.project_id == project_id)
    by_task: dict[int, list[tuple[str, str]]] = defaultdict(list)
    comments: dict[int, list[str]] = defaultdict(list)
    for r, username in session.execute(q.order_by(Rating.task_id, Rating.id)):
        by_task[r.task_id].append((username, "good" if r.good else "bad"))
        if r.comment:
            comments[r.task_id].append(f"{username}: {r.comment}")
    counts = Counter(u for v in by_task.values() for u, _ in v)
    rep = _report(by_task, counts, ["good", "bad"], min_shared)
    rows = []
    for task_id, v in by_task.items():
        if len(v) < 2 or len({c for _, c in v}) == 1:
            continue
        task = session.get(Task, task_id)
        text = prompt_as_text(session.get(Prompt, task.prompt_id))
        resp = session.get(Response, task.response_ids[0]).text
        rows.append({"task_id": task_id, "prompt": text[:160] + ("…" if len(text) > 160 else ""),
                     "response": resp[:160] + ("…" if len(resp) > 160 else ""),
                     "labels": "; ".join(f"{u}: {c}" for u, c in v),
                     "majority": _majority([c for _, c in v]) or "(split)",
                     "comments": " | ".join(comments[task_id])})
    rep["disagreements"] = pd.DataFrame(rows, columns=["task_id", "prompt", "response", "labels", "majority",
                                                       "comments"])
    return rep


def disagreements(session: Session, project_id: int | None = None, *, limit: int = 200) -> pd.DataFrame:
    """Compare tasks whose labels are not unanimous, for review: one row per task."""
    # Streamed by task, stopping at `limit` split tasks, their prompts in one query: reading every label as an
    # ORM object and two lookups per row took ~30 s at 1M labels.
    names = dict(session.execute(select(User.id, User.username)).all())
    q = _people_only(select(PreferenceLabel.task_id, PreferenceLabel.user_id, PreferenceLabel.choice,
                            PreferenceLabel.strength, PreferenceLabel.comment), PreferenceLabel.user_id, session)
    if project_id is not None:
        q = q.join(Task, Task.id == PreferenceLabel.task_id).where(Task.project_id == project_id)
    split: list[tuple[int, list[Any]]] = []
    labels = session.execute(q.order_by(PreferenceLabel.task_id, PreferenceLabel.id),
                             execution_options={"yield_per": 5000})
    for task_id, group in groupby(labels, key=lambda lab: lab.task_id):
        v = list(group)
        if len(v) >= 2 and len({lab.choice for lab in v}) > 1:
            split.append((task_id, v))
            if len(split) >= limit:
                break
    labels.close()
    prompts = dict(session.execute(select(Task.id, Prompt).join(Prompt, Prompt.id == Task.prompt_id)
                                   .where(Task.id.in_([t for t, _ in split]))).all()) if split else {}
    rows = []
    for task_id, v in split:
        text = prompt_as_text(prompts[task_id])
        rows.append({
            "task_id": task_id,
            "prompt": text[:160] + ("…" if len(text) > 160 else ""),
            "labels": "; ".join(f"{names[lab.user_id]}: {lab.choice}" + (f" ({lab.strength})" if lab.strength else "")
                                for lab in v),
            "majority": _majority([lab.choice for lab in v]) or "(split)",
            "comments": " | ".join(f"{names[lab.user_id]}: {lab.comment}" for lab in v if lab.comment),
        })
    return pd.DataFrame(rows, columns=["task_id", "prompt", "labels", "majority", "comments"])


def annotator_speed(session: Session, project_id: int | None = None) -> pd.DataFrame:
    """Median and p90 seconds per task for each annotator and kind (labels with a recorded time)."""
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    for model, kind in ((PreferenceLabel, "compare"), (Ranking, "rank"), (Rating, "rate")):
        q = (select(User.username, model.seconds).join(User, User.id == model.user_id)
             .join(Task, Task.id == model.task_id).where(model.seconds.is_not(None)))
        if project_id is not None:
            q = q.where(Task.project_id == project_id)
        for u, s in session.execute(q):
            samples[(u, kind)].append(float(s))
    q = (select(User.username, Demonstration.seconds).join(User, User.id == Demonstration.user_id)
         .join(Prompt, Prompt.id == Demonstration.prompt_id).where(Demonstration.seconds.is_not(None)))
    if project_id is not None:
        q = q.where(Prompt.project_id == project_id)
    for u, s in session.execute(q):
        samples[(u, "demonstrate")].append(float(s))
    rows = []
    for (u, kind), xs in sorted(samples.items()):
        xs.sort()
        rows.append({"annotator": u, "kind": kind, "labels": len(xs),
                     "median_seconds": statistics.median(xs),
                     "p90_seconds": xs[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)]})
    return pd.DataFrame(rows, columns=["annotator", "kind", "labels", "median_seconds", "p90_seconds"])

