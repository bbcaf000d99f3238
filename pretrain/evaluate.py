"""Evaluate a checkpoint or exported HF model: validation loss / perplexity and GPT-3's 2-digit arithmetic.

    python -m pretrain.evaluate --model runs/pretrain/tiny-dense --data runs/data/pydocs
    python -m pretrain.evaluate --model runs/hf/tiny-dense --shots 0 1 5 --n 200
    python -m pretrain.evaluate --compare dense sparse fixed --data runs/data/pydocs --out runs/compare \
        --preset tiny --max-steps 300                     # any further flags go to every pretrain.train run

``--compare`` trains one run per attention pattern with the same preset, seed, batches and steps (so the same
tokens and parameter count, up to GPT-Neo's missing q/k/v bias on sparse) and scores each on the same
validation windows; the table also gives each pattern's FLOPs per token and training wall time.

Arithmetic follows GPT-3 (Brown et al. 2020, 3.9.1): "Q: What is 48 plus 76? A: 124", two-digit operands,
addition and subtraction; k solved examples precede the question (zero-, one-, few-shot). The answer is
scored by greedy generation: the first integer generated after "A:" must equal the result. A prompt longer
than the context window minus the 6 generated tokens keeps its last tokens (the earliest demos are cut).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pretrain.sample import LM

OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b}
_INT = re.compile(r"\s*(-?\d+)")


def arithmetic_items(n: int, op: str, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(f"{seed}-{op}")
    return [(f"Q: What is {a} {op} {b}? A:", OPS[op](a, b))
            for a, b in ((rng.randint(10, 99), rng.randint(10, 99)) for _ in range(n))]


def arithmetic_accuracy(lm: LM, shots: int, op: str = "plus", n: int = 100, seed: int = 0) -> float:
    """Fraction of ``n`` questions answered exactly with ``shots`` solved examples in the prompt."""
    items = arithmetic_items(n, op, seed)
    demos = arithmetic_items(max(shots, 1) * 4 + n, op, seed + 1)
    correct = 0
    for i, (q, ans) in enumerate(items):
        ctx = "".join(f"{dq} {da}\n" for dq, da in demos[i:i + shots])  # different demos per question
        ids = lm.tokenizer(ctx + q, add_special_tokens=False, return_tensors="pt")["input_ids"]
        new = lm.generate(ids, max_new_tokens=6, temperature=0.0)  # only the new tokens
        text = lm.tokenizer.decode(new[0].tolist(), skip_special_tokens=True)
        m = _INT.match(text)
        correct += bool(m and int(m.group(1)) == ans)
    return correct / max(1, n)


@torch.no_grad()
def validation_loss(lm: LM, data_dir: str, max_tokens: int = 200_000, split: str = "val") -> dict:
    """Mean next-token loss over consecutive non-overlapping windows of the split (up to max_tokens)."""
    from pretrain.data import load_split

    arr = load_split(data_dir, split)
    t = lm.block_size
    n_win = max(0, min(len(arr), max_tokens) - 1) // t
    if n_win == 0:
        raise ValueError(f"{split} split too small ({len(arr)} tokens) for block size {t}")
    total, count = 0.0, 0
    for w in range(0, n_win, 8):  # 8 windows per forward pass
        rows = [np.asarray(arr[i * t:i * t + t + 1], dtype=np.int64) for i in range(w, min(w + 8, n_win))]
        b = torch.from_numpy(np.stack(rows))
        logits = lm.logits(b[:, :-1]).float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                 b[:, 1:].reshape(-1).to(logits.device), reduction="sum")
        total += float(loss)
        count += b[:, 1:].numel()
    mean = total / count
    return {f"{split}_loss": mean, f"{split}_ppl": math.exp(mean), f"{split}_tokens": count}


def compare_attention(data_dir: str | Path, out_dir: str | Path, patterns: list[str], train_args: list[str],
                      seeds: list[int] | None = None, max_tokens: int = 200_000, device: str = "cpu") -> list[dict]:
    """Train and score one run per (pattern, seed); ``train_args`` go to every ``pretrain.train`` run."""
    from pretrain.train import train

    rows = []
    for seed in seeds or [None]:
        for pat in patterns:
            run = Path(out_dir) / (pat if seed is None else f"{pat}-s{seed}")
            argv = ["--data", str(data_dir), "--out", str(run), "--attention", pat, "--device", device,
                    "--overwrite", *train_args]
            t0 = time.perf_counter()
            res = train(argv + (["--seed", str(seed)] if seed is not None else []))
            train_s = time.perf_counter() - t0
            model = res["model"]
            ev = validation_loss(LM(run, device), str(data_dir), max_tokens)
            rows.append({"attention": pat, "seed": seed, "params": model.num_params(),
                         "flops_per_token": model.flops_per_token(), "steps": res["step"],
                         "train_s": round(train_s, 1), **ev})
    return rows


def _compare_table(rows: list[dict]) -> str:
    head = (f"{'attention':9s} {'seed':>5s} {'params':>8s} {'MFLOP/tok':>9s} {'steps':>5s} {'train s':>7s} "
            f"{'val loss':>8s} {'val ppl':>8s}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['attention']:9s} {r['seed'] if r['seed'] is not None else '-':>5} {r['params']:8,d} "
                     f"{r['flops_per_token'] / 1e6:9.2f} {r['steps']:5d} {r['train_s']:7.1f} "
                     f"{r['val_loss']:8.4f} {r['val_ppl']:8.2f}")
    if len({r["seed"] for r in rows}) > 1:  # mean over seeds per pattern
        for pat in dict.fromkeys(r["attention"] for r in rows):
            vals = [r["val_loss"] for r in rows if r["attention"] == pat]
            lines.append(f"{pat:9s} {'mean':>5s} {'':8s} {'':9s} {'':5s} {'':7s} {sum(vals) / len(vals):8.4f} "
                         f"(spread {max(vals) - min(vals):.4f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    # no abbreviations: with --compare, every flag this parser does not know goes to pretrain.train
    ap = argparse.ArgumentParser(prog="python -m pretrain.evaluate", description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="run folder / ckpt.pt of pretrain.train, or an exported HF dir")
    ap.add_argument("--compare", nargs="+", metavar="ATTENTION", default=None,
                    help="instead of --model: train one run per attention pattern (dense sparse fixed) on --data "
                         "at the same steps and batches, and print their validation losses; unknown flags are "
                         "passed to pretrain.train")
    ap.add_argument("--out", default=None, help="with --compare: folder for the runs (default "
                                                "$INSTRUCTLOOP_HOME/pretrain/compare)")
    ap.add_argument("--seeds", type=int, nargs="*", default=None,
                    help="with --compare: train every pattern once per seed (the spread says what is noise; "
                         "--seed is the arithmetic questions' seed)")
    ap.add_argument("--data", default=None, help="prepared data directory for the validation loss (optional)")
    ap.add_argument("--max-tokens", type=int, default=200_000, help="validation tokens to score (default 200k)")
    ap.add_argument("--shots", type=int, nargs="*", default=[0, 1, 5],
                    help="numbers of solved examples before each question (default 0 1 5)")
    ap.add_argument("--ops", nargs="*", default=["plus", "minus"], choices=sorted(OPS),
                    help="arithmetic operations (default plus minus)")
    ap.add_argument("--n", type=int, default=100, help="questions per (operation, shots) setting (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the question sample (default 0)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args, train_args = ap.parse_known_args(argv)
    if args.compare:
        if not args.data:
            ap.error("--compare needs --data")
        out = args.out or Path(os.environ.get("INSTRUCTLOOP_HOME", "runs")) / "pretrain" / "compare"
        try:
            rows = compare_attention(args.data, out, args.compare, train_args, args.seeds, args.max_tokens,
                                     args.device)
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f"error: {e}")
        print(json.dumps(rows) if args.json else _compare_table(rows))
        return
    if train_args:
        ap.error(f"unrecognized arguments: {' '.join(train_args)}")
    if not args.model:
        ap.error("--model is required (or --compare)")
    try:
        lm = LM(args.model, args.device)
        res: dict = {}
        if args.data:
            res.update(validation_loss(lm, args.data, args.max_tokens))
        for op in args.ops:
            for k in args.shots:
                res[f"arith_{op}_{k}shot"] = arithmetic_accuracy(lm, k, op, args.n, args.seed)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")


if __name__ == "__main__":
    main()
