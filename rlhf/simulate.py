"""A simulated annotator for verifiable prompts (prompts whose metadata has an ``answer``, e.g. the demo's).

It labels through the same ``db`` services the labeling pages call (``assignment.next_task``,
``labels.submit_preference`` / ``submit_demonstration``; an admin's ``review_demonstration``):

- compare: the correct response wins (strength ``strong``); both wrong: the closer one (``pretrain.tasks.distance``,
  ``slight``), ``both_bad`` when neither is closer; both right: ``tie``;
- demonstrate: the correct answer;
- a ``noise`` share of votes is replaced by a random choice (a careless or mistaken annotator).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from db.services import accounts, assignment, export, labels, projects
from db.session import session_scope
from pretrain.tasks import distance, is_correct


def judge(answer: str, a: str, b: str) -> tuple[str, str | None]:
    """(choice, strength) of a careful annotator comparing responses `a` and `b` to a prompt with `answer`."""
    ca, cb = is_correct(answer, a), is_correct(answer, b)
    if ca and cb:
        return "tie", None
    if ca != cb:
        return ("a" if ca else "b"), "strong"
    da, db_ = distance(answer, a), distance(answer, b)
    if da == db_:
        return "both_bad", None
    return ("a" if da < db_ else "b"), "slight"


@dataclass
class SimulatedAnnotator:
    url: str
    username: str
    project: str
    noise: float = 0.0
    seed: int = 0
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if not 0 <= self.noise <= 1:
            raise ValueError(f"noise must be in [0, 1], not {self.noise}")
        self.rng = random.Random(self.seed)
        with session_scope(self.url) as s:
            self.user_id = accounts.get_user(s, self.username).id
            self.project_id = projects.get_project(s, self.project).id
            self.answers = {r["prompt_id"]: r["answer"] for r in export.iter_prompt_rows(s, project=self.project)
                            if "answer" in r}

    def label(self, kind: str, limit: int | None = None) -> int:
        """Label `kind` tasks (compare | demonstrate) until none is left for this annotator (or `limit`)."""
        done = 0
        while limit is None or done < limit:
            with session_scope(self.url) as s:
                view = assignment.next_task(s, self.user_id, self.project_id, kind=kind)
                if view is None:
                    break
                answer = self.answers.get(view.prompt_id)
                if answer is None:
                    assignment.skip_task(s, self.user_id, view.task_id, "no answer key")
                    self.counts["skipped"] += 1
                    continue
                if kind == "demonstrate":
                    labels.submit_demonstration(s, self.user_id, view.task_id, answer)
                else:
                    a, b = (r["text"] for r in view.responses)
                    choice, strength = judge(answer, a, b)
                    if self.rng.random() < self.noise:
                        choice = self.rng.choice(["a", "b", "tie", "both_bad"])
                        strength = "slight" if choice in ("a", "b") else None
                        self.counts["noisy"] += 1
                    labels.submit_preference(s, self.user_id, view.task_id, choice, strength=strength)
                    self.counts[choice] += 1
            done += 1
        self.counts[kind] += done
        return done


def accept_demonstrations(url: str, project: str, reviewer: str) -> int:
    """An admin accepts every submitted demonstration of the project (the Review page's Accept)."""
    with session_scope(url) as s:
        rid = accounts.get_user(s, reviewer).id
        pid = projects.get_project(s, project).id
        n = 0
        while pending := labels.list_demonstrations(s, pid, status="submitted"):
            for d in pending:
                labels.review_demonstration(s, d.id, rid, True)
            n += len(pending)
        return n
