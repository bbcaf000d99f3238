"""Reward model on human rankings: OpenAssistant trees, split by tree, held-out pairwise accuracy with a 95%
bootstrap interval (trees resampled: the pairs of one tree are not independent).

    python bench/reward_oasst.py                                  # the `small` base (or --base DIR), our defaults
    python bench/reward_oasst.py --base runs/pretrain/small/hf --learning_rate 1e-4 --num_train_epochs 2
    python bench/reward_oasst.py --quick_base --sweep             # the grid the defaults were chosen from

Every run is ``python -m rlhf.train_reward --dataset <trees>`` (the OASST file as published: each prompter
message with ranked replies is one ranking, equal ranks left out; rlhf/data.py) on a fixed seed, on CPU unless
a GPU is there. Prints one line per run: the settings, the train loss of the first and last logged steps (ln 2
= 0.693 is chance), held-out accuracy [95% interval], held-out pairs scored, and how many pairs were truncated
(prompt cut from the left) or left out (a response alone longer than the context) in training and evaluation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the read-only fixtures sit beside the repository (../shared), or inside it on some CI clones
DATA = next((p for p in (ROOT.parent / "shared" / "data" / "oasst_en_100_tree.jsonl",
                         ROOT / "shared" / "data" / "oasst_en_100_tree.jsonl") if p.is_file()),
            ROOT.parent / "shared" / "data" / "oasst_en_100_tree.jsonl")
HOME = Path(os.environ.get("INSTRUCTLOOP_HOME", ROOT / "runs"))
# (learning rate, epochs, warmup ratio): from TRL's 1e-4 up, and 1-3 epochs (InstructGPT: one)
SWEEP = [(1e-4, 2, 0.1), (3e-4, 2, 0.1), (1e-3, 2, 0.1), (3e-3, 2, 0.1), (1e-3, 1, 0.1), (1e-3, 3, 0.1),
         (1e-3, 2, 0.0)]


def default_base() -> str | None:
    """`python -m pretrain.pipeline --preset small`'s export, else the demo model's."""
    for p in (HOME / "pretrain" / "small-dense" / "hf", HOME / "pretrain" / "demo-dense" / "hf"):
        if p.is_dir():
            return str(p)
    return None


def run_one(base: str, data: Path, out_dir: Path, *, lr: float | None, epochs: float | None,
            warmup: float | None, batch: int, max_length: int | None, eval_fraction: float, seed: int,
            extra: list[str]) -> dict[str, Any]:
    from rlhf import data as rdata
    from rlhf import train_reward
    from rlhf.formatting import format_preference_row

    argv = ["--model", base, "--dataset", str(data), "--no_register", "--no_normalize", "--eval_fraction",
            str(eval_fraction), "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none",
            "--logging_steps", "5", "--seed", str(seed), "--per_device_train_batch_size", str(batch),
            "--output_dir", str(out_dir)]
    for flag, v in (("--learning_rate", lr), ("--num_train_epochs", epochs), ("--warmup_steps", warmup),
                    ("--max_length", max_length)):
        if v is not None:
            argv += [flag, str(v)]
    t0 = time.time()
    res = train_reward.main(argv + extra)
    seconds = time.time() - t0
    m, trainer = res["metrics"], res["trainer"]
    logged = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in logged if "loss" in x and "eval_loss" not in x]
    rows = rdata.preference_rows_from_file(data).rows
    _, held = rdata.split_by_prompt([format_preference_row(r, False) for r in rows], eval_fraction)
    return {"lr": trainer.args.learning_rate, "epochs": trainer.args.num_train_epochs,
            "warmup": trainer.args.warmup_steps, "steps": m["global_step"], "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "train_loss": m["train_loss"],
            "accuracy": m["eval_accuracy"], "ci": (m["eval_accuracy_low"], m["eval_accuracy_high"]),
            "held_pairs": m["eval_pairs_scored"], "held_trees": len({r["split_key"] for r in held}),
            "eval_left_out": m["eval_pairs_too_long"],
            "train_pairs": m["train_pairs"], "train_rankings": m["train_rankings"],
            "train_truncated": m.get("train_pairs_truncated", 0), "train_too_long": m.get("train_pairs_too_long", 0),
            "eval_truncated": m.get("eval_pairs_truncated", 0), "max_length": m["max_length"], "seconds": seconds}


def fmt(r: dict[str, Any]) -> str:
    return (f"lr {r['lr']:.0e} epochs {r['epochs']:g} warmup {r['warmup']:g} steps {r['steps']:3d} | loss "
            f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} (mean {r['train_loss']:.3f}, ln2 {math.log(2):.3f}) | "
            f"held-out acc {r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] on {r['held_pairs']} pairs / "
            f"{r['held_trees']} trees | train {r['train_pairs']} pairs in {r['train_rankings']} rankings, "
            f"truncated {r['train_truncated']}, left out {r['train_too_long']}; eval truncated "
            f"{r['eval_truncated']}, left out {r['eval_left_out']} | max_length {r['max_length']} | "
            f"{r['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="starting model (HF directory); default: the `small` base "
                    "($INSTRUCTLOOP_HOME/pretrain/small-dense/hf), else the demo's (.../demo-dense/hf)")
    ap.add_argument("--quick_base", action="store_true", help="build the quick base tests/test_reward_oasst.py "
                    "uses (tokenizer on the trees, random 2-layer GPT-2, sinusoidal positions, 512 context)")
    ap.add_argument("--data", type=Path, default=DATA, help="OpenAssistant *_tree.jsonl")
    ap.add_argument("--eval_fraction", type=float, default=0.2, help="share of trees held out")
    ap.add_argument("--learning_rate", type=float, default=None, help="default: rlhf.train_reward's")
    ap.add_argument("--num_train_epochs", type=float, default=None, help="default: rlhf.train_reward's")
    ap.add_argument("--warmup_steps", type=float, default=None, help="warmup: steps, or a share of them when < 1 "
                    "(default: rlhf.train_reward's)")
    ap.add_argument("--batch", type=int, default=8, help="rankings per batch")
    ap.add_argument("--max_length", type=int, default=None, help="default: the model's context")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable on a shared machine)")
    ap.add_argument("--sweep", action="store_true", help=f"run the grid {SWEEP} (lr, epochs, warmup share of the steps)")
    ap.add_argument("extra", nargs="*", help="more rlhf.train_reward flags, after --")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    base = args.base or (None if args.quick_base else default_base())
    if base is None and args.quick_base:
        from tests.rlhf_helpers import build_oasst_quick_base

        base = str(build_oasst_quick_base(tempfile.mkdtemp(prefix="oasst-quick-base-"), args.data, n_positions=512))
    if base is None:
        ap.error("no base model: pass --base DIR (python -m pretrain.pipeline --preset small builds one) or "
                 "--quick_base")
    print(f"base {base}; data {args.data}; eval_fraction {args.eval_fraction}; seed {args.seed}; "
          f"torch threads {args.threads}", flush=True)
    grid = SWEEP if args.sweep else [(args.learning_rate, args.num_train_epochs, args.warmup_steps)]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (lr, ep, wu) in enumerate(grid):
            r = run_one(base, args.data, Path(tmp) / f"run{i}", lr=lr, epochs=ep, warmup=wu, batch=args.batch,
                        max_length=args.max_length, eval_fraction=args.eval_fraction, seed=args.seed,
                        extra=args.extra)
            print(fmt(r), flush=True)
            out.append(r)
    return out


if __name__ == "__main__":
    import os

    os.environ.setdefault("INSTRUCTLOOP_HOME", tempfile.mkdtemp(prefix="reward-oasst-"))
    main()
