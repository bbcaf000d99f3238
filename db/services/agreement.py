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
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations, groupby
from typing import Any

import pandas as pd
from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from db.models import AgreementCount, LabelDay, PreferenceLabel, Prompt, Rating, Response, Task, User
from db.services.content import prompt_as_text
from db.services.stats import nth_value, seconds_multisets


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


def _labels_per_person(session: Session, project_id: int | None, kinds: Sequence[str]) -> Counter:
    """{annotator: their labels of `kinds`} (people only), from the LabelDay summary."""
    names = dict(session.execute(select(User.id, User.username)).all())
    q = (select(LabelDay.user_id, func.sum(LabelDay.n)).join(User, User.id == LabelDay.user_id)
         .where(User.is_system.is_(False), LabelDay.kind.in_(kinds)).group_by(LabelDay.user_id))
    if project_id is not None:
        q = q.where(LabelDay.project_id == project_id)
    return Counter({names[u]: int(n) for u, n in session.execute(q) if n})


def _summed(session: Session, project_id: int | None, kinds: Sequence[str]
            ) -> tuple[Counter, dict[tuple[str, str], Counter], Counter, Counter]:
    """The report's sums over the items of `kinds` (db.services.summary keeps them per project and kind):
    (items per category-count profile, per annotator pair (by name) the counts of their (x, y) labels,
    items compared with a leave-one-out majority per annotator, agreements with it)."""
    names = dict(session.execute(select(User.id, User.username)).all())
    c = AgreementCount
    q = (select(c.what, c.user_a, c.user_b, c.x, c.y, func.sum(c.n)).where(c.kind.in_(kinds))
         .group_by(c.what, c.user_a, c.user_b, c.x, c.y))
    if project_id is not None:
        q = q.where(c.project_id == project_id)
    profiles: Counter = Counter()
    confusion: dict[tuple[str, str], Counter] = defaultdict(Counter)
    compared: Counter = Counter()
    agree: Counter = Counter()
    for what, a, b, x, y, n in session.execute(q):
        if not n:
            continue
        if what == "profile":
            profiles[tuple(int(k) for k in x.split(","))] += int(n)
        elif what == "pair":
            na, nb = names[a], names[b]
            if na > nb:  # stored by user id; the report orders a pair by name
                na, nb, x, y = nb, na, y, x
            confusion[(na, nb)][(x, y)] += int(n)
        elif what == "compared":
            compared[names[a]] += int(n)
        else:
            agree[names[a]] += int(n)
    return profiles, confusion, compared, agree


def preference_agreement(session: Session, project_id: int | None = None, *,
                         min_shared: int = 1, include_rankings: bool = True) -> dict[str, Any]:
    """Agreement report on compare tasks with several labels.

    Items are compare tasks and, with `include_rankings`, the response pairs of rank tasks.
    Returns {"n_tasks" (items), "n_labels", "percent_agreement", "fleiss_kappa",
    "pairs": DataFrame[annotator_a, annotator_b, shared_tasks, percent_agreement, cohen_kappa],
    "per_annotator": DataFrame[annotator, labels, compared, agrees_with_majority]}.
    Majority is leave-one-out (the other annotators' majority), tasks where it ties are left out.
    """
    # From the sums db.services.summary keeps at each label write: reading every label took ~50 s at 1M.
    kinds = ["compare", "rank"] if include_rankings else ["compare"]
    counts = _labels_per_person(session, project_id, kinds)  # labels (rankings, not pairs) per annotator
    return _report(*_summed(session, project_id, kinds), counts, min_shared)


def _profile_stats(profiles: Counter) -> tuple[float, float]:
    """(percent agreement, Fleiss' kappa) of items given as {category counts: how many items}: the values
    `percent_agreement` and `fleiss_kappa` give for the items one by one (up to float rounding)."""
    rows = {p: k for p, k in profiles.items() if sum(p) >= 2 and k}
    if not rows:
        return math.nan, math.nan
    n_items = sum(rows.values())
    share = sum(k * sum(x * (x - 1) for x in p) / (sum(p) * (sum(p) - 1)) for p, k in rows.items()) / n_items
    total = sum(k * sum(p) for p, k in rows.items())
    width = len(next(iter(rows)))
    p_j = [sum(k * p[j] for p, k in rows.items()) / total for j in range(width)]
    p_bar = sum(k * (sum(x * x for x in p) - sum(p)) / (sum(p) * (sum(p) - 1)) for p, k in rows.items()) / n_items
    p_e = sum(p * p for p in p_j)
    if math.isclose(p_e, 1.0):
        return share, (1.0 if math.isclose(p_bar, 1.0) else math.nan)
    return share, (p_bar - p_e) / (1 - p_e)


def _report(profiles: Counter, confusion: dict[tuple[str, str], Counter], compared: Counter, agree: Counter,
            counts: Counter, min_shared: int) -> dict[str, Any]:
    """The agreement report (see `preference_agreement`) from its sums (see `_summed`)."""
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
    share, kappa = _profile_stats(profiles)
    return {
        "n_tasks": sum(profiles.values()),
        "n_labels": sum(k * sum(p) for p, k in profiles.items()),
        "percent_agreement": share,
        "fleiss_kappa": kappa,
        "pairs": pd.DataFrame(pair_rows, columns=["annotator_a", "annotator_b", "shared_tasks",
                                                  "percent_agreement", "cohen_kappa"]),
        "per_annotator": pd.DataFrame(ann_rows, columns=["annotator", "labels", "compared",
                                                         "agrees_with_majority"]),
    }


def rating_agreement(session: Session, project_id: int | None = None, *, min_shared: int = 1) -> dict[str, Any]:
    """Agreement on rate tasks with several ratings (good / bad), in `preference_agreement`'s shape, plus
    "disagreements": DataFrame[task_id, prompt, response, labels, majority, comments] of the split tasks.
    The optional Likert scores are not compared (few annotators give them)."""
    rep = _report(*_summed(session, project_id, ["rate"]), _labels_per_person(session, project_id, ["rate"]),
                  min_shared)
    # The split tasks found by the database; only their ratings are read.
    people = (select(Rating.task_id).join(User, User.id == Rating.user_id).join(Task, Task.id == Rating.task_id)
              .where(User.is_system.is_(False)))
    if project_id is not None:
        people = people.where(Task.project_id == project_id)
    split = list(session.scalars(people.group_by(Rating.task_id).having(func.count(distinct(Rating.good)) > 1)
                                 .order_by(Rating.task_id)))
    by_task: dict[int, list[tuple[str, str]]] = defaultdict(list)
    comments: dict[int, list[str]] = defaultdict(list)
    for lo in range(0, len(split), 500):
        q = (select(Rating.task_id, Rating.good, Rating.comment, User.username).join(User, User.id == Rating.user_id)
             .where(User.is_system.is_(False), Rating.task_id.in_(split[lo:lo + 500]))
             .order_by(Rating.task_id, Rating.id))
        for task_id, good, comment, username in session.execute(q):
            by_task[task_id].append((username, "good" if good else "bad"))
            if comment:
                comments[task_id].append(f"{username}: {comment}")
    rows = []
    for task_id, v in by_task.items():
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
    # From the multiset of times db.services.summary keeps (LabelSeconds), not every label.
    names = dict(session.execute(select(User.id, User.username)).all())
    rows = []
    for (u, kind), xs in sorted(((names[uid], kind), xs) for (uid, kind), xs
                                in seconds_multisets(session, project_id, by_kind=True).items()):
        n = sum(c for _, c in xs)
        median = nth_value(xs, n // 2) if n % 2 else (nth_value(xs, n // 2 - 1) + nth_value(xs, n // 2)) / 2
        rows.append({"annotator": u, "kind": kind, "labels": n, "median_seconds": median,
                     "p90_seconds": nth_value(xs, min(n - 1, math.ceil(0.9 * n) - 1))})
    return pd.DataFrame(rows, columns=["annotator", "kind", "labels", "median_seconds", "p90_seconds"])
