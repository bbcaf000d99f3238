"""Small builders for db tests."""
from __future__ import annotations

import random

from sqlalchemy.orm import Session

from db.services import accounts, content, projects, registry, tasks


def make_users(session: Session, n: int, prefix: str = "ann") -> list[int]:
    return [accounts.create_user(session, f"{prefix}{i}", "password-1").id for i in range(n)]


def make_compare_project(session: Session, name: str = "p", *, n_tasks: int = 5, overlap: int = 1,
                         seed: int = 0) -> tuple[int, list[int]]:
    """A project with `n_tasks` compare tasks between two model versions. Returns (project id, task ids)."""
    p = projects.create_project(session, name, labels_per_task=overlap)
    m1 = registry.get_or_register(session, "model-a", "base", "/m/a")
    m2 = registry.get_or_register(session, "model-b", "sft", "/m/b")
    rng = random.Random(seed)
    ids = []
    for i in range(n_tasks):
        pr, _ = content.add_prompt(session, p.id, text=f"question {i}?")
        ra, _ = content.add_response(session, pr.id, f"answer {i} from a", model_version_id=m1.id)
        rb, _ = content.add_response(session, pr.id, f"answer {i} from b", model_version_id=m2.id)
        t, _ = tasks.create_task(session, p.id, "compare", pr.id, [ra.id, rb.id], rng=rng)
        ids.append(t.id)
    session.commit()
    return p.id, ids
