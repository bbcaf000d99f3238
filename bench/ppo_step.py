"""Seconds per PPO update and its split (rollout, scoring, learning) on CPU, tiny models.

    python bench/ppo_step.py [--updates 10] [--threads 2]

Shape (the issue's): 4-layer / 128-wide GPT-2 policy, reference, reward and value models, 4 prompts per update,
32 response tokens (no early EOS: every response is full length), 1 PPO epoch. Printed beside it, in the same
run and on the same models: the same update with sampling that does not use the KV cache (every new token
re-reads the whole prefix), which is what rollouts cost without it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(out: Path):
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )

    from tests import rlhf_helpers as H

    tok = H.build_tokenizer(out, H.corpus(), vocab_size=400)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=128, n_layer=4, n_head=4,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    policy, ref = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    rm = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1).eval()
    value = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1)
    for m in (rm, value):
        m.config.pad_token_id = tok.pad_token_id
    return tok, policy, ref, rm, value


def run(updates: int, use_cache: bool, tmp: Path) -> list[dict[str, float]]:
    from rlhf import reward, sampling
    from rlhf.ppo_config import PPOConfig
    from rlhf.ppo_trainer import PPOTrainer
    from tests import rlhf_helpers as H

    tok, policy, ref, rm, value = build(tmp / ("m-cache" if use_cache else "m-nocache"))
    never_stop = [len(tok) + 10]  # an id never sampled: all 32 tokens every time, as in the reference shape
    prompts = [tok(t)["input_ids"][:24] for t in H.corpus(64, seed=3)]
    args = PPOConfig(output_dir=str(tmp / "ppo"), per_device_train_batch_size=4, num_mini_batches=1, num_ppo_epochs=1,
                     max_new_tokens=32, max_steps=updates + 2, use_cpu=True, report_to="none", save_steps=0,
                     learning_rate=1e-5, seed=0)

    def score(q, qm, r, rmask):
        import torch

        return reward.score_ids(rm, torch.cat([q, r], 1), torch.cat([qm, rmask], 1))

    tr = PPOTrainer(args, policy, ref, score, tok, prompts, value_model=value, stop_ids=never_stop)
    if not use_cache:
        orig = sampling.generation_config

        def no_cache(*a, **kw):
            gc = orig(*a, **kw)
            gc.use_cache = False
            return gc

        sampling.generation_config = no_cache
    try:
        tr.train()
    finally:
        if not use_cache:
            sampling.generation_config = orig
    return tr.history[2:]  # the first two warm up allocators and kernels


def summary(hist: list[dict[str, float]]) -> dict[str, float]:
    parts = {k: statistics.median(h[f"time/{k}"] for h in hist) for k in ("rollout", "score", "learn")}
    parts["total"] = statistics.median(h["time/rollout"] + h["time/score"] + h["time/learn"] for h in hist)
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=10, help="timed PPO updates (after 2 warm-up updates)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest for models this small: threading costs more than it saves)")
    a = ap.parse_args()
    import os

    import torch

    os.environ.setdefault("INSTRUCTLOOP_NO_PROGRESS", "1")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        ours = summary(run(a.updates, True, Path(d)))
        base = summary(run(a.updates, False, Path(d)))
    print(f"PPO update, 4L/128d GPT-2 x4 models, 4 prompts x 32 tokens, 1 epoch, {a.threads} threads "
          f"(median of {a.updates})")
    print(f"{'':24}{'total s':>9}{'rollout':>9}{'score':>9}{'learn':>9}")
    for label, s in (("ours (KV cache)", ours), ("without KV cache", base)):
        print(f"{label:24}{s['total']:9.3f}{s['rollout']:9.3f}{s['score']:9.3f}{s['learn']:9.3f}")
    print(f"ratio ours / without cache: {ours['total'] / base['total']:.2f}x")
    print(f"against TRL 1.12 PPOTrainer on this shape (0.5-0.9 s/update, measured on this machine kind, stated in "
          f"the issue): {ours['total'] / 0.9:.2f}x-{ours['total'] / 0.5:.2f}x (bar: <= 0.7x)")


if __name__ == "__main__":
    main()
