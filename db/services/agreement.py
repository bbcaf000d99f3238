"""Label quality: inter-annotator agreement (percent, Cohen's and Fleiss' kappa), agreement with the
majority per annotator, annotator speed, disagreements to review, and an annotator's own progress.

Agreement is computed on items with at least two labels: a compare task is one item (categories a / b /
tie / both_bad); a rank task contributes one item per pair of its responses (first better / second
better / tie, mapped onto a / b / tie), so rankings and comparisons share one report. Ratings of single
responses (rate tasks, good / bad) have a report of their own (`rating_agreement`). The kappa
functions are pure and take plain counts so they are easy to test.

Only people's labels count: the labels of import pseudo-users (`import:hh`, `import:oasst`,
`import:trl-unpaired`, `User.is_system`) are a dataset's answers, not an annotator's, so agreement, the
leave-one-out majority and the disagreements to review leave them out (they are still exported and trained on).
"""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import combinations, groupby
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import CHOICES, Demonstration, PreferenceLabel, Prompt, Ranking, Rating, Response, Task, User
from db.services.content import prompt_as_text


# ---------------------------------------------------------------- pure statistics
def fleiss_kappa(items: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa for items x categories count rows (raters may differ per item, each >= 2).

    Returns nan when there is nothing to compare, 1.0 when everybody always used one category.
    """
    rows = [list(r) for r in items if sum(r) >= 2]
    if not rows:
        return math.nan
    k = len(rows[0])
    total = sum(sum(r) for r in rows)
    p_j = [sum(r[j] for r in rows) / total for j in range(k)]
    p_i = [(sum(x * x for x in r) - sum(r)) / (sum(r) * (sum(r) - 1)) for r in rows]
    p_bar = sum(p_i) / len(p_i)
    p_e = sum(p * p for p in p_j)
    if math.isclose(p_e, 1.0):
        return 1.0 if math.isclose(p_bar, 1.0) else math.nan
    return (p_bar - p_e) / (1 - p_e)


def cohen_kappa(x: Sequence[Any], y: Sequence[Any]) -> float:
    """Cohen's kappa of two raters over the same items."""
    if len(x) != len(y):
        raise ValueError("both raters must label the same items")
    n = len(x)
    if n == 0:
        return math.nan
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[c] * cy[c] for c in set(cx) | set(cy)) / (n * n)
    if math.isclose(p_e, 1.0):
        return 1.0 if math.isclose(p_o, 1.0) else math.nan
    return (p_o - p_e) / (1 - p_e)


def percent_agreement(groups: Iterable[Sequence[Any]]) -> float:
    """Mean over items of the share of rater pairs that agree."""
    shares = []
    for g in groups:
        pairs = list(combinations(g, 2))
        if pairs:
            shares.append(sum(a == b for a, b in pairs) / len(pairs))
    return sum(shares) / len(shares) if shares else math.nan


def _majority(values: Sequence[Any]) -> Any | None:
    """The unique most common value, or None on a tie (or nothing)."""
    if not values:
        return None
    top = Counter(values).most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return None
    return top[0][0]


# ---------------------------------------------------------------- database reports
def _system_ids(session: Session) -> list[int]:
    """Ids of the import pseudo-users (a handful): their labels are left out of agreement (module doc)."""
    return list(session.scalars(select(User.id).where(User.is_system.is_(True))))


def _people_only(q: Any, user_col: Any, session: Session) -> Any:
    system = _system_ids(session)
    return q.where(user_col.not_in(system)) if system else q


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


def _cohen_from_counts(conf: Counter) -> float:
    """`cohen_kappa` of two raters given the counts of their (x, y) label pairs (same value, same arithmetic)."""
    n = sum(conf.values())
    p_o = sum(k for (x, y), k in conf.items() if x == y) / n
    cx: Counter = Counter()
    cy: Counter = Counter()
    for (x, y), k in conf.items():
        cx[x] += k
        cy[y] += k
    p_e = sum(cx[c] * cy[c] for c in set(cx) | set(cy)) / (n * n)
    if math.isclose(p_e, 1.0):
        return 1.0 if math.isclose(p_o, 1.0) else math.nan
    return (p_o - p_e) / (1 - p_e)


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

