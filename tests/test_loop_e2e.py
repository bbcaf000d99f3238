"""The closed loop end to end (rlhf/loop.py), the product's most important test:

    pretrain tiny -> generate -> simulated labels -> SFT -> reward -> PPO -> generate again -> simulated labels

every model stage a job in the jobs table run by the real worker as its own process, every label through the
labeling services. Each stage must move what it is for (rlhf.loop.check): SFT accuracy above the base model's,
the reward model's held-out pairwise accuracy >= 0.9, PPO's held-out RM score and task accuracy above SFT's with
KL under the target, and the human (simulated) leaderboard ranking PPO above base with non-overlapping 95%
intervals, with the reward model's score of every version's responses beside it. A failure names the stage and its
numbers, then prints the whole table.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from db.models import Job
from db.session import session_scope
from rlhf.loop import LoopConfig, check, format_table, run_loop


@pytest.mark.slow
def test_each_stage_of_the_loop_moves_what_it_is_for(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTLOOP_HOME", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'loop.sqlite3'}"
    res = run_loop(url, tmp_path / "runs", LoopConfig())
    table = format_table(res)
    print(table)
    fails = check(res)
    assert not fails, "the loop did not learn:\n  " + "\n  ".join(fails) + "\n" + table
    with session_scope(url) as s:  # all through the jobs table and the worker, in the loop's order
        done = [(j.kind, j.state) for j in s.scalars(select(Job).order_by(Job.id))]
    assert done == [(k, "succeeded") for k in ("pretrain", "generate", "train_sft", "train_reward", "train_ppo",
                                                "generate", "evaluate")], done
