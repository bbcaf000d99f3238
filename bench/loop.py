"""The end-to-end loop (rlhf/loop.py) at a larger size than the test: prints the per-stage table and wall time.

    python bench/loop.py                      # bigger than tests/test_loop_e2e.py (minutes on 2 CPU cores)
    python bench/loop.py --scale test         # the test's sizes
    python bench/loop.py --json out.json      # also write every number
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.loop import LoopConfig, check, format_table, run_loop

BIG = {"prompts": 300, "pretrain_steps": 800, "task_docs": 30000, "sft_steps": 80, "reward_steps": 400,
       "ppo_steps": 30}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["big", "test"], default="big", help="sizes: big (default) or the test's")
    ap.add_argument("--noise", type=float, default=None, help="share of noisy votes (default: the config's)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each job (default 2)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write every number as JSON here")
    a = ap.parse_args()
    cfg = LoopConfig() if a.scale == "test" else replace(LoopConfig(), **BIG)
    cfg = replace(cfg, threads=a.threads, **({"noise": a.noise} if a.noise is not None else {}))
    work = Path(a.dir or tempfile.mkdtemp(prefix="instructloop-loop-"))
    os.environ["INSTRUCTLOOP_HOME"] = str(work / "runs")
    res = run_loop(f"sqlite:///{work / 'loop.sqlite3'}", work / "runs", cfg)
    print(format_table(res))
    fails = check(res)
    print("checks: " + ("all met" if not fails else "NOT met:\n  " + "\n  ".join(fails)))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    return 1 if fails else 0  # a run whose checks fail is no figure to quote


if __name__ == "__main__":
    raise SystemExit(main())
