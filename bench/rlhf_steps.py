"""Training steps/s of rlhf.train_sft and rlhf.train_reward on a tiny preset (prints figures, never pass/fail).

    python bench/rlhf_steps.py [--steps 30] [--preset tiny|small] [--batch 8] [--threads N]

Builds a random-weight GPT-2 and a byte-level BPE tokenizer locally (no hub), writes synthetic SFT and
preference JSONL files, runs each job in-process through its real entry point (``main(argv)``, no database
registration) and reports steps/s and tokens/s measured by the HF Trainer (train_runtime excludes setup).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {"tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2}, "small": {"n_layer": 4, "n_embd": 128, "n_head": 4}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tests import rlhf_helpers as H

    tmp = Path(tempfile.mkdtemp(prefix="rlhf-bench-"))
    os.environ["INSTRUCTLOOP_HOME"] = str(tmp / "runs")
    model = H.build_tiny_lm(tmp / "model", **PRESETS[args.preset])
    pairs = H.polite_pairs(400)
    sft = H.write_jsonl(tmp / "sft.jsonl", [{"prompt": p, "completion": g} for p, g, _ in pairs])
    prefs = H.write_jsonl(tmp / "prefs.jsonl", [{"prompt": p, "chosen": g, "rejected": b} for p, g, b in pairs])
    common = ["--model", str(model), "--no_register", "--max_steps", str(args.steps), "--save_strategy", "no",
              "--per_device_train_batch_size", str(args.batch), "--eval_fraction", "0", "--disable_tqdm", "true",
              "--logging_steps", str(args.steps)]
    from rlhf import train_reward, train_sft

    figures = {"device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
               "preset": args.preset, "batch": args.batch, "steps": args.steps}
    for job, fn, data in (("sft", train_sft.main, sft), ("reward", train_reward.main, prefs)):
        t0 = time.perf_counter()
        out = fn(common + ["--dataset", str(data), "--output_dir", str(tmp / job)])
        wall = time.perf_counter() - t0
        hist = out["trainer"].state.log_history
        summary = next(h for h in reversed(hist) if "train_runtime" in h)
        tokens = max((h.get("num_tokens", 0) for h in hist), default=0)
        figures[job] = {"steps_per_s": round(args.steps / summary["train_runtime"], 2),
                        "tokens_per_s": round(tokens / summary["train_runtime"]) if tokens else None,
                        "train_runtime_s": round(summary["train_runtime"], 2), "job_wall_s": round(wall, 2)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
