"""32 simulated annotators at once (threads, and separately processes) on SQLite and PostgreSQL: no label lost
or duplicated, every task ends with exactly labels_per_task labels from different annotators, no lease left.

The same simulation at full size, with figures, is bench/annotators_load.py.
"""
from __future__ import annotations

from collections import Counter

import pytest

from bench.annotators_load import Behaviour, check, run_annotators, seed

ANNOTATORS = 32
# Higher shares than the benchmark's so that every behaviour happens even in a small run.
BEHAVIOUR = Behaviour(skip=0.1, double_submit=0.1, late_submit=0.1, abandon=0.05)


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_32_annotators_lose_and_duplicate_nothing_and_overlap_is_exact(db_url, mode):
    pid, users = seed(db_url, n_tasks=40, n_users=ANNOTATORS, overlap=2)
    results, _wall = run_annotators(db_url, pid, users, mode, BEHAVIOUR, timeout=120)
    problems = check(db_url, pid, results)
    assert problems == dict.fromkeys(problems, 0)
    assert sum(len(r.created) for r in results) == 40 * 2
    done = sum((r.counts for r in results), Counter())
    assert done["skipped"] and done["double_submits"] and done["abandoned"]
    assert done["late_kept"] + done["late_refused"] > 0
