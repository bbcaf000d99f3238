"""The label summaries the Dashboard and Agreement pages read (db.models LabelDay, LabelSeconds, AgreementCount).

Both pages used to read every label of a project: 75 s (Dashboard) and 57 s (Agreement) at 1M labels. They now
read these sums, which are as small as (annotators x days), (annotators x distinct times) and (annotator pairs x
categories). `labels_written` keeps them right: every service that writes or revises a label calls it in the
same transaction, after the write is flushed. `rebuild` computes them from the labels (migration 0007, and
databases filled by raw SQL such as the benchmarks' fixtures). ProjectCount (tasks by kind and status, prompts)
is kept by `count_change` where one task or prompt is written and `recount` after bulk writes.

Labels are never deleted (no service removes one), so day counts and first/last only grow; a revision changes
only the labelled value, which is all the agreement sums depend on.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import combinations, groupby
from typing import Any

from sqlalchemy import delete, func, insert, literal, select, union_all
from sqlalchemy.orm import Session

from db.models import (
    CHOICES,
    AgreementCount,
    Assignment,
    Demonstration,
    LabelDay,
    LabelSeconds,
    PreferenceLabel,
    ProjectCount,
    Prompt,
    Ranking,
    Rating,
    Task,
    User,
)

MODELS: dict[str, Any] = {"compare": PreferenceLabel, "rank": Ranking, "rate": Rating,
                          "demonstrate": Demonstration}
# The categories of an agreement item of each kind (a rank task's response pairs are first / second / tie).
CATEGORIES: dict[str, tuple[str, ...]] = {"compare": CHOICES, "rank": CHOICES, "rate": ("good", "bad")}
_CHUNK = 500
_BATCH = 1000
# A counter's key in AgreementCount: (what, user_a, user_b, x, y).
Key = tuple[str, int, int, str, str]


def utc_day(session: Session, col: Any) -> Any:
    """The UTC calendar day of a timestamp column, as 'YYYY-MM-DD' text (the same as `_day` in Python)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", col), "YYYY-MM-DD")
    return func.date(col)  # SQLite stores UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'


def _day(ts: dt.datetime) -> str:
    return (ts if ts.tzinfo is None else ts.astimezone(dt.UTC)).strftime("%Y-%m-%d")


def _project_join(kind: str) -> tuple[Any, tuple[Any, Any]]:
    """(the project column, the join reaching it) of a label kind; a demonstration's project is its prompt's."""
    if kind == "demonstrate":
        return Prompt.project_id, (Prompt, Prompt.id == Demonstration.prompt_id)
    model = MODELS[kind]
    return Task.project_id, (Task, Task.id == model.task_id)


def _value_columns(kind: str) -> list[Any]:
    return [getattr(MODELS[kind], {"compare": "choice", "rank": "ordering", "rate": "good"}[kind])]


def category(kind: str, value: Any) -> Any:
    """A label's value as the agreement report compares it: a choice, an ordering, or 'good' / 'bad'."""
    if kind == "rate":
        return "good" if value else "bad"
    return value


def items_of(kind: str, response_ids: Sequence[int], labels: Sequence[tuple[int, Any]]) -> list[list[tuple[int, Any]]]:
    """The agreement items of one task given its people's labels [(user id, category(value))]: the task itself,
    or for a rank task each pair of its responses both ranked (first better 'a', second 'b', or 'tie')."""
    if kind != "rank":
        return [list(labels)]
    ranks = [(u, {rid: i for i, group in enumerate(ordering) for rid in group}) for u, ordering in labels]
    items = []
    for x, y in combinations(sorted(response_ids), 2):
        items.append([(u, "tie" if r[x] == r[y] else ("a" if r[x] < r[y] else "b"))
                      for u, r in ranks if x in r and y in r])
    return items


def add_item_counts(kind: str, items: Iterable[Sequence[tuple[int, Any]]], out: Counter, sign: int = 1) -> None:
    """Add (sign=1) or take away (-1) what items with two or more labels contribute to the report's sums."""
    from db.services.agreement import _majority  # agreement reads the sums; the rule stays in one place

    cats = CATEGORIES[kind]
    for v in items:
        if len(v) < 2:
            continue
        out[("profile", 0, 0, ",".join(str(sum(1 for _, c in v if c == cat)) for cat in cats), "")] += sign
        last = dict(v)  # one label per annotator and task (unique key)
        users = sorted(last)
        for i, a in enumerate(users):
            for b in users[i + 1:]:
                out[("pair", a, b, last[a], last[b])] += sign
        for u in users:
            maj = _majority([c for uu, c in v if uu != u])
            if maj is None:
                continue
            out[("compared", u, 0, "", "")] += sign
            if last[u] == maj:
                out[("agreed", u, 0, "", "")] += sign


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for lo in range(0, len(ids), _CHUNK):
        yield ids[lo:lo + _CHUNK]


_UPSERTS: dict[tuple[Any, str], Any] = {}
_UPSERT_SPEC: dict[Any, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {}  # keys, least, greatest


def _upsert_statement(model: Any, dialect: str) -> Any:
    """INSERT ... ON CONFLICT (key) DO UPDATE n = n + excluded.n (and least / greatest): built once per table
    and dialect (building `excluded` each time cost ~1 ms per submit)."""
    stmt = _UPSERTS.get((model, dialect))
    if stmt is None:
        keys, least, greatest = _UPSERT_SPEC[model]
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
            lo, hi = func.least, func.greatest
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
            lo, hi = func.min, func.max  # SQLite's two-argument min/max are scalar
        table = model.__table__
        stmt = dialect_insert(table)
        ex = stmt.excluded
        values = {"n": table.c.n + ex.n, **{c: lo(table.c[c], ex[c]) for c in least},
                  **{c: hi(table.c[c], ex[c]) for c in greatest}}
        stmt = _UPSERTS[(model, dialect)] = stmt.on_conflict_do_update(index_elements=list(keys), set_=values)
    return stmt


def _upsert(session: Session, model: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT rows, or add their n to the row with the same key (and keep the least / greatest of columns).
    Rows go in key order, so concurrent writers lock shared counters in one order (no deadlock)."""
    if not rows:
        return
    keys = _UPSERT_SPEC[model][0]
    stmt = _upsert_statement(model, session.get_bind().dialect.name)
    rows = sorted(rows, key=lambda r: tuple(r[k] for k in keys))
    for i in range(0, len(rows), _BATCH):
        session.execute(stmt, rows[i:i + _BATCH])


def _agreement_rows(project_id: int, kind: str, counts: Counter) -> list[dict[str, Any]]:
    return [{"project_id": project_id, "kind": kind, "what": w, "user_a": a, "user_b": b, "x": x, "y": y, "n": n}
            for (w, a, b, x, y), n in counts.items() if n]


_UPSERT_SPEC.update({
    LabelDay: (("project_id", "user_id", "kind", "day"), ("first_at",), ("last_at",)),
    LabelSeconds: (("project_id", "user_id", "kind", "seconds"), (), ()),
    AgreementCount: (("project_id", "kind", "what", "user_a", "user_b", "x", "y"), (), ()),
    ProjectCount: (("project_id", "kind", "status"), (), ()),
})


def labels_written(session: Session, kind: str, user_id: int, task_ids: Iterable[int], *,
                   before: dict[int, Any] | None = None) -> None:
    """Bring the summaries up to date after `user_id`'s labels of `kind` on `task_ids` were written (flushed,
    same transaction). `before`: this was a revision, {task id: the label's old choice / ordering / good}; else
    the labels are new. Called by every label writer (labels.py, importers.py)."""
    model = MODELS[kind]
    ids = sorted(set(task_ids))
    if not ids:
        return
    session.flush()
    project_col, join = _project_join(kind)
    rated = kind in CATEGORIES
    # One read per 500 tasks: the writer's labels and, for agreement, every label of those tasks (a submit reads
    # at most labels_per_task rows); a statement less per submit is ~0.5 ms of the submit's CPU.
    cols = [project_col, model.task_id, model.user_id, User.is_system, model.created_at, model.seconds]
    if rated:
        cols += [*_value_columns(kind), Task.response_ids]
    days: dict[tuple[int, str], list[Any]] = {}
    secs: Counter = Counter()
    delta: dict[int, Counter] = defaultdict(Counter)
    for chunk in _chunks(ids):
        q = (select(*cols).select_from(model).join(*join).join(User, User.id == model.user_id)
             .where(model.task_id.in_(chunk)).order_by(model.task_id, model.id))
        if not rated:
            q = q.where(model.user_id == user_id)
        for (pid, task_id), group in groupby(session.execute(q), key=lambda r: (r[0], r[1])):
            rows = list(group)
            for r in rows:
                if r[2] != user_id or before is not None:
                    continue
                created = r[4]
                d = days.get((pid, _day(created)))
                if d is None:
                    days[(pid, _day(created))] = [1, created, created]
                else:
                    d[0], d[1], d[2] = d[0] + 1, min(d[1], created), max(d[2], created)
                if r[5] is not None:
                    secs[(pid, float(r[5]))] += 1
            # an import pseudo-user's labels are not in agreement (db.services.agreement)
            after = [(r[2], category(kind, r[6])) for r in rows if rated and not r[3]]
            if not any(u == user_id for u, _ in after):
                continue
            if before is None:
                prior = [(u, c) for u, c in after if u != user_id]
            else:
                prior = [(u, category(kind, before[task_id]) if u == user_id else c) for u, c in after]
            rids = rows[0][7]
            add_item_counts(kind, items_of(kind, rids, after), delta[pid], 1)
            add_item_counts(kind, items_of(kind, rids, prior), delta[pid], -1)
    _upsert(session, LabelDay, [
        {"project_id": p, "user_id": user_id, "kind": kind, "day": day, "n": n, "first_at": f, "last_at": la}
        for (p, day), (n, f, la) in days.items()])
    _upsert(session, LabelSeconds, [
        {"project_id": p, "user_id": user_id, "kind": kind, "seconds": sec, "n": n} for (p, sec), n in secs.items()])
    _upsert(session, AgreementCount, [r for pid, c in delta.items() for r in _agreement_rows(pid, kind, c)])


def system_labels_written(session: Session, project_id: int, kind: str, user_id: int, n: int,
                          at: dt.datetime) -> None:
    """What `labels_written` records for `n` new labels of `kind` by a system user (an import's pseudo-user)
    in one project, all created at `at` without seconds: one LabelDay count, as system users are in no
    agreement count. labels_written reads every label back (a sixth of a bulk HH import's CPU at 100k rows)."""
    if n:
        _upsert(session, LabelDay, [{"project_id": project_id, "user_id": user_id, "kind": kind, "day": _day(at),
                                     "n": n, "first_at": at, "last_at": at}])


def _people_labels(session: Session, kind: str, task_ids: Sequence[int] | None = None,
                   ) -> Iterator[tuple[int, int, list[int], list[tuple[int, Any]]]]:
    """(project id, task id, response ids, [(user id, value)] in label order) per task of people's labels of
    `kind`: of `task_ids`, or of every task (streamed, for rebuild)."""
    model = MODELS[kind]
    q = (select(Task.project_id, model.task_id, Task.response_ids, model.user_id, *_value_columns(kind))
         .join(Task, Task.id == model.task_id).join(User, User.id == model.user_id)
         .where(User.is_system.is_(False)).order_by(model.task_id, model.id))
    if task_ids is not None:
        q = q.where(model.task_id.in_(task_ids))
    rows = session.execute(q, execution_options={"yield_per": 5000})
    for (pid, task_id, rids), group in groupby(rows, key=lambda r: (r[0], r[1], tuple(r[2]))):
        yield pid, task_id, list(rids), [(r[3], r[4]) for r in group]


def count_change(session: Session, project_id: int, kind: str, old: str | None, new: str | None) -> None:
    """One task of `kind` changed status from `old` to `new` (None: it did not exist / no longer does), or a
    prompt was added (kind 'prompt', new ''), or an assignment was skipped (kind 'skipped', new '') or the skip
    undone (old ''). Called by the services that write one task, prompt or skip at a time."""
    if old == new:
        return
    _upsert(session, ProjectCount, [{"project_id": project_id, "kind": kind, "status": st, "n": d}
                                    for st, d in ((old, -1), (new, 1)) if st is not None])


def _counted(session: Session, project_id: int | None, *, skips: bool) -> list[Any]:
    """The statements of (project, kind, status, n) as the tasks and prompts (and, with `skips`, the skipped
    assignments: kind 'skipped') have them."""
    t = select(Task.project_id.label("project_id"), Task.kind.label("kind"), Task.status.label("status"),
               func.count().label("n")).group_by(Task.project_id, Task.kind, Task.status)
    p = select(Prompt.project_id, literal("prompt"), literal(""), func.count()).group_by(Prompt.project_id)
    k = (select(Task.project_id, literal("skipped"), literal(""), func.count()).select_from(Assignment)
         .join(Task, Task.id == Assignment.task_id).where(Assignment.state == "skipped").group_by(Task.project_id))
    if project_id is not None:
        t, p, k = t.where(Task.project_id == project_id), p.where(Prompt.project_id == project_id), k.where(
            Task.project_id == project_id)
    return [t, p, k] if skips else [t, p]


def recount(session: Session, project_id: int) -> None:
    """Bring a project's task and prompt counts up to date after a bulk write (imports, a new overlap).
    The difference between the rows and the counts is read in one statement and added: a submit committing
    meanwhile is either in both or in neither, and its own +1 still lands."""
    session.flush()
    kept = select(ProjectCount.project_id, ProjectCount.kind, ProjectCount.status, -ProjectCount.n).where(
        ProjectCount.project_id == project_id, ProjectCount.kind != "skipped")  # bulk writes skip nothing
    u = union_all(*_counted(session, project_id, skips=False), kept).subquery()
    diff = session.execute(select(u.c.kind, u.c.status, func.sum(u.c.n)).group_by(u.c.kind, u.c.status)).all()
    _upsert(session, ProjectCount, [{"project_id": project_id, "kind": k, "status": st, "n": int(d)}
                                    for k, st, d in diff if d])


def rebuild(session: Session, *, labels: bool = True, counts: bool = True) -> dict[str, int]:
    """Compute the summaries from the labels (`labels`: LabelDay, LabelSeconds, AgreementCount) and the task and
    prompt counts (`counts`: ProjectCount) from the tables, replacing what is there; the caller commits.
    Returns rows per summary table."""
    built = []
    if counts:
        built.append(ProjectCount)
        session.execute(delete(ProjectCount))
        for q in _counted(session, None, skips=True):
            session.execute(insert(ProjectCount).from_select(["project_id", "kind", "status", "n"], q))
    if labels:
        built += [LabelDay, LabelSeconds, AgreementCount]
        _rebuild_labels(session)
    return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) for m in built}


def _rebuild_labels(session: Session) -> None:
    for model in (LabelDay, LabelSeconds, AgreementCount):
        session.execute(delete(model))
    for kind, model in MODELS.items():
        project_col, join = _project_join(kind)
        day = utc_day(session, model.created_at)
        session.execute(insert(LabelDay).from_select(
            ["project_id", "user_id", "kind", "day", "n", "first_at", "last_at"],
            select(project_col, model.user_id, literal(kind), day, func.count(), func.min(model.created_at),
                   func.max(model.created_at)).select_from(model).join(*join)
            .group_by(project_col, model.user_id, day)))
        session.execute(insert(LabelSeconds).from_select(
            ["project_id", "user_id", "kind", "seconds", "n"],
            select(project_col, model.user_id, literal(kind), model.seconds, func.count()).select_from(model)
            .join(*join).where(model.seconds.is_not(None)).group_by(project_col, model.user_id, model.seconds)))
        if kind not in CATEGORIES:
            continue
        counts: dict[int, Counter] = defaultdict(Counter)
        for pid, _, rids, group in _people_labels(session, kind):
            add_item_counts(kind, items_of(kind, rids, [(u, category(kind, v)) for u, v in group]), counts[pid])
        rows = [r for pid, c in counts.items() for r in _agreement_rows(pid, kind, c)]
        for i in range(0, len(rows), _BATCH):
            session.execute(insert(AgreementCount), rows[i:i + _BATCH])
