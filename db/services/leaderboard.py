"""Human leaderboard of model versions: Bradley-Terry scores from preference labels, with bootstrap intervals.

As Chatbot Arena does: every human judgement between responses of two *different* model versions is a
battle. A compare label is one (a win, a loss, or a tie counted as half a win each; "both bad" is a tie
too: neither was preferred); a ranking of K responses gives its C(K,2) pairs (responses in one rank group
tie). Responses written by people (no model version) and pairs from one version are left out.

Bradley-Terry: P(i beats j) = 1 / (1 + 10 ** ((R_j - R_i) / 400)), R on the Elo scale with mean 1000. The
fit is the maximum of the log-likelihood (ties as half wins) with a weak Gaussian prior on the strengths
(`prior`, in natural log-odds units; 0 = plain maximum likelihood), which keeps an unbeaten version finite.
The 95% interval is the 2.5-97.5 percentile of the scores refitted on `rounds` bootstrap resamples of the
battles (fixed `seed`: the same labels give the same table).

Beside the human score, the reward model's: `rm_judged` is the mean score one reward model gives a version's stored
responses to the project's prompts (``python -m rlhf.evaluate responses``, recorded here by
:func:`record_rm_scores`), so every version (base, SFT, policy) is judged by the same RM on the same prompts the
people voted on; `rm_score` / `rm_win_rate` are a policy's own held-out evaluation against its reference (PPO's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ModelVersion, PreferenceLabel, Prompt, Ranking, Response, Task, utcnow
from db.services.errors import InputError
from db.session import write_transaction

ELO_BASE, ELO_SCALE = 1000.0, 400.0 / math.log(10)  # natural log-odds -> Elo points
DEFAULT_PRIOR = 0.1
DEFAULT_ROUNDS = 200
RM_METRICS = {"rm_score": "eval/score", "rm_reference_score": "eval/reference_score", "rm_win_rate": "eval/win_rate"}
# ModelVersion.metrics key of the RM-judged scores: {project name: {"reward", "score", "responses"[, "accuracy"], "at"}}
RM_JUDGED = "rm_judged"
COLUMNS = ["rank", "version", "kind", "score", "lower", "upper", "rm_judged", "rm_judge", "votes", "wins",
           "win_rate", "parent", "votes_vs_parent", "win_rate_vs_parent", "lineage", *RM_METRICS]


@dataclass
class Leaderboard:
    table: pd.DataFrame  # one row per version with votes, best first (COLUMNS)
    battles: int  # comparisons between two versions that were counted
    head_to_head: pd.DataFrame = field(default_factory=pd.DataFrame)  # version_a, version_b, votes, a_win_rate
    rounds: int = 0
    seed: int = 0


def battles(session: Session, project: str | int | None = None, *, include_rankings: bool = True) -> pd.DataFrame:
    """Every human judgement between two versions' responses: columns a, b (version ids), score (1: a won,
    0: b won, 0.5: tie), source ("compare" | "rank"), label_id."""
    from db.services import projects

    pid = projects.get_project(session, project).id if project is not None else None
    rows: list[tuple[int, int, float, str, int]] = []
    pending: list[tuple[str, int, Any, Any]] = []  # (source, label id, task response ids, choice/ordering)
    q = select(PreferenceLabel.id, PreferenceLabel.choice, Task.response_ids).join(
        Task, Task.id == PreferenceLabel.task_id).where(Task.kind == "compare")
    if pid is not None:
        q = q.where(Task.project_id == pid)
    pending += [("compare", lid, rids, choice) for lid, choice, rids in session.execute(q)]
    if include_rankings:
        q = select(Ranking.id, Ranking.ordering).join(Task, Task.id == Ranking.task_id)
        if pid is not None:
            q = q.where(Task.project_id == pid)
        pending += [("rank", lid, None, ordering) for lid, ordering in session.execute(q)]
    ids: set[int] = set()
    for source, _, rids, what in pending:
        ids.update((rids or []) if source == "compare" else [r for group in what or [] for r in group])
    version_of: dict[int, int | None] = {}
    ids_list = sorted(ids)
    for i in range(0, len(ids_list), 5000):  # stay under the bound-parameter limits
        chunk = ids_list[i:i + 5000]
        version_of.update(session.execute(select(Response.id, Response.model_version_id)
                                          .where(Response.id.in_(chunk))).all())
    for source, lid, rids, what in pending:
        if source == "compare":
            if not rids or len(rids) != 2:
                continue
            va, vb = version_of.get(rids[0]), version_of.get(rids[1])
            if va is None or vb is None or va == vb:
                continue
            rows.append((va, vb, {"a": 1.0, "b": 0.0}.get(what, 0.5), source, lid))
        else:
            groups = [[version_of.get(r) for r in g] for g in what or []]
            for gi, group in enumerate(groups):
                for gj in range(gi, len(groups)):
                    for ia, va in enumerate(group):
                        for vb in (groups[gj][ia + 1:] if gj == gi else groups[gj]):
                            if va is None or vb is None or va == vb:
                                continue
                            rows.append((va, vb, 0.5 if gj == gi else 1.0, source, lid))
    return pd.DataFrame(rows, columns=["a", "b", "score", "source", "label_id"])


def version_responses(session: Session, project: str | int, versions: list[str | int] | None = None
                      ) -> list[dict[str, Any]]:
    """Every stored response of a model version (not a person's) to the project's prompts, by id:
    {version, response_id, response, prompt_id, prompt (text or chat turns)[, answer]}. What
    ``rlhf.evaluate responses`` scores; `versions` (names or ids) narrows it."""
    from db.services import projects, registry

    pid = projects.get_project(session, project).id
    q = (select(Response.id, Response.text, Response.model_version_id, Prompt.id, Prompt.text, Prompt.messages,
                Prompt.meta)
         .join(Prompt, Prompt.id == Response.prompt_id)
         .where(Prompt.project_id == pid, Response.model_version_id.is_not(None)).order_by(Response.id))
    if versions:
        q = q.where(Response.model_version_id.in_([registry.resolve(session, v).id for v in versions]))
    names = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())
    out = []
    for rid, text, vid, prompt_id, ptext, messages, meta in session.execute(q):
        row: dict[str, Any] = {"version": names[vid], "response_id": rid, "response": text, "prompt_id": prompt_id,
                               "prompt": list(messages) if messages else ptext}
        if (meta or {}).get("answer") is not None:
            row["answer"] = str(meta["answer"])
        out.append(row)
    return out


def record_rm_scores(session: Session, project: str | int, reward: str, scores: dict[str, dict[str, Any]]) -> None:
    """Record what reward model `reward` (its name) made of each version's responses in `project`:
    `scores` maps a version name to {"score": mean RM score, "responses": how many[, "accuracy"]}. Replaces
    that project's earlier entry of each version, and drops the project's entries of other versions scored by another
    judge (one judge per project at a time: the numbers must compare)."""
    from db.services import projects, registry

    name = projects.get_project(session, project).name
    with write_transaction(session):
        for version, entry in scores.items():
            if not isinstance(entry.get("score"), int | float) or not isinstance(entry.get("responses"), int):
                raise InputError(f"{version!r}: needs a numeric score and a response count, not {entry!r}",
                                 field="scores")
            mv = registry.resolve(session, version)
            judged = dict((mv.metrics or {}).get(RM_JUDGED) or {})
            judged[name] = {"reward": reward, "at": utcnow().isoformat(),
                            **{k: entry[k] for k in ("score", "responses", "accuracy") if k in entry}}
            mv.metrics = {**(mv.metrics or {}), RM_JUDGED: judged}
        # another judge's numbers for this project are on another scale: they go, so the column never mixes judges
        for mv in session.scalars(select(ModelVersion)):
            judged = (mv.metrics or {}).get(RM_JUDGED)
            if isinstance(judged, dict) and isinstance(judged.get(name), dict) and judged[name].get("reward") != reward:
                mv.metrics = {**mv.metrics, RM_JUDGED: {k: v for k, v in judged.items() if k != name}}
        session.flush()


def _rm_judged(mv: ModelVersion, project: str | None) -> dict[str, Any] | None:
    """The version's RM-judged entry for `project` (None: its newest one, any project)."""
    judged = (mv.metrics or {}).get(RM_JUDGED) or {}
    if not isinstance(judged, dict) or not judged:
        return None
    if project is not None:
        entry = judged.get(project)
    else:
        entry = max(judged.values(), key=lambda e: str(e.get("at", "")) if isinstance(e, dict) else "")
    return entry if isinstance(entry, dict) and isinstance(entry.get("score"), int | float) else None


def fit_bradley_terry(a: np.ndarray, b: np.ndarray, score: np.ndarray, n: int, *, prior: float = DEFAULT_PRIOR,
                      weights: np.ndarray | None = None, iters: int = 100) -> np.ndarray:
    """Strengths (natural log-odds, mean 0) of `n` players from battles a[k] vs b[k] with a's score in [0, 1]
    (ties 0.5): Newton's method on the log-likelihood minus prior/2 * sum(s^2)."""
    w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=float)
    games = np.zeros((n, n))
    wins = np.zeros((n, n))
    np.add.at(games, (a, b), w)
    np.add.at(games, (b, a), w)
    np.add.at(wins, (a, b), w * score)
    np.add.at(wins, (b, a), w * (1.0 - score))
    s = np.zeros(n)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))
        grad = (wins - games * p).sum(1) - prior * s
        c = games * p * (1.0 - p)
        hess = c - np.diag(c.sum(1)) - prior * np.eye(n)  # negative semi-definite
        # pinv: with prior 0 the likelihood does not change when every strength shifts (a singular Hessian)
        step = np.linalg.pinv(-hess) @ grad
        s = np.clip(s + step, -30.0, 30.0)
        s -= s.mean()
        if np.abs(step).max() < 1e-10:
            break
    return s


def to_elo(strength: np.ndarray) -> np.ndarray:
    return ELO_BASE + ELO_SCALE * strength


def leaderboard(session: Session, project: str | int | None = None, *, rounds: int = DEFAULT_ROUNDS, seed: int = 0,
                prior: float = DEFAULT_PRIOR, include_rankings: bool = True) -> Leaderboard:
    """The leaderboard of every version with human votes (see the module docstring)."""
    if rounds < 0:
        raise InputError("rounds must be >= 0", field="rounds")
    if prior < 0:
        raise InputError("prior must be >= 0", field="prior")
    from db.services import projects

    project_name = projects.get_project(session, project).name if project is not None else None
    df = battles(session, project, include_rankings=include_rankings)
    if not len(df):
        return Leaderboard(pd.DataFrame(columns=COLUMNS), 0, rounds=rounds, seed=seed)
    vids = sorted(set(df["a"]) | set(df["b"]))
    index = {v: i for i, v in enumerate(vids)}
    a, b = df["a"].map(index).to_numpy(), df["b"].map(index).to_numpy()
    score = df["score"].to_numpy(dtype=float)
    point = to_elo(fit_bradley_terry(a, b, score, len(vids), prior=prior))
    if rounds:
        rng = np.random.default_rng(seed)
        boot = np.empty((rounds, len(vids)))
        for r in range(rounds):
            # A resample as counts per battle (multinomial): same distribution as drawing rows, faster to fit.
            counts = rng.multinomial(len(df), np.full(len(df), 1.0 / len(df)))
            boot[r] = to_elo(fit_bradley_terry(a, b, score, len(vids), prior=prior, weights=counts))
        lower, upper = np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)
    else:
        lower = upper = np.full(len(vids), np.nan)

    versions = {mv.id: mv for mv in session.scalars(select(ModelVersion))}
    votes = np.bincount(a, minlength=len(vids)) + np.bincount(b, minlength=len(vids))
    wins = np.bincount(a, weights=score, minlength=len(vids)) + np.bincount(b, weights=1 - score, minlength=len(vids))
    rows = []
    for i, vid in enumerate(vids):
        mv = versions[vid]
        parent = versions.get(mv.parent_id) if mv.parent_id else None
        vs_parent = vs_parent_rate = None
        if parent is not None and parent.id in index:
            j = index[parent.id]
            mine = (a == i) & (b == j)
            theirs = (a == j) & (b == i)
            vs_parent = int(mine.sum() + theirs.sum())
            if vs_parent:
                vs_parent_rate = float((score[mine].sum() + (1 - score[theirs]).sum()) / vs_parent)
        chain, seen, cur = [], set(), mv
        while cur is not None and cur.id not in seen:
            chain.append(cur.name)
            seen.add(cur.id)
            cur = versions.get(cur.parent_id) if cur.parent_id else None
        metrics = mv.metrics or {}
        rm = {col: (float(metrics[key]) if isinstance(metrics.get(key), int | float) else None)
              for col, key in RM_METRICS.items()}
        judged = _rm_judged(mv, project_name)
        rows.append({"version": mv.name, "kind": mv.kind, "score": float(point[i]), "lower": float(lower[i]),
                     "upper": float(upper[i]), "rm_judged": float(judged["score"]) if judged else None,
                     "rm_judge": str(judged.get("reward")) if judged else None,
                     "votes": int(votes[i]), "wins": float(wins[i]),
                     "win_rate": float(wins[i] / votes[i]) if votes[i] else None,
                     "parent": parent.name if parent else None, "votes_vs_parent": vs_parent,
                     "win_rate_vs_parent": vs_parent_rate, "lineage": " → ".join(reversed(chain)), **rm})
    table = pd.DataFrame(rows).sort_values(["score", "version"], ascending=[False, True]).reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    table["votes_vs_parent"] = table["votes_vs_parent"].astype("Int64")  # a count, missing without a parent

    h2h = df.assign(a=df["a"].map(lambda v: versions[v].name), b=df["b"].map(lambda v: versions[v].name))
    swap = h2h["a"] > h2h["b"]  # one row per unordered pair
    h2h.loc[swap, ["a", "b"]] = h2h.loc[swap, ["b", "a"]].to_numpy()
    h2h.loc[swap, "score"] = 1 - h2h.loc[swap, "score"]
    head = (h2h.groupby(["a", "b"]).agg(votes=("score", "size"), a_win_rate=("score", "mean")).reset_index()
            .rename(columns={"a": "version_a", "b": "version_b"}))
    return Leaderboard(table[COLUMNS], len(df), head, rounds=rounds, seed=seed)
