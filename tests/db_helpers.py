"""Small builders for db tests."""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.orm import Session

from db.services import accounts, content, projects, registry, tasks

T = TypeVar("T")


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


def run_threads(target: Callable[[int], T], args: Sequence[int], *, timeout: float = 120) -> dict[int, T]:
    """Run `target(arg)` in one thread per arg, all released at once; returns {arg: result}.

    A worker's exception is re-raised here (the first, with the others attached as notes) and a worker still
    running after `timeout` fails the test: a thread that dies or hangs must not pass for one that finished.
    """
    barrier = threading.Barrier(len(args))
    results: dict[int, T] = {}
    errors: list[tuple[int, BaseException]] = []

    def run(arg: int) -> None:
        try:
            barrier.wait()
            results[arg] = target(arg)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread below
            errors.append((arg, e))

    threads = [threading.Thread(target=run, args=(a,), daemon=True) for a in args]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [a for a, t in zip(args, threads) if t.is_alive()]
    if errors:
        arg, first = errors[0]
        for other_arg, other in errors[1:]:
            first.add_note(f"also failed in worker {other_arg}: {other!r}")
        raise AssertionError(f"worker {arg} failed: {first!r}") from first
    assert not hung, f"workers {hung} still running after {timeout} s"
    return results
