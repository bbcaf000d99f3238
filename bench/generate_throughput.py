"""Generation throughput: the batched, left-padded, KV-cached sampler that `rlhf.generate` and PPO rollouts use
(`rlhf.sampling.sample`) against a plain `model.generate` loop over the same prompts one at a time.

    python bench/generate_throughput.py [--prompts 32] [--new_tokens 64] [--batch 1 8 32] [--models tiny gpt2-124m]
    python bench/generate_throughput.py --models gpt2-124m --profile     # + where the time goes

Random-weight GPT-2 models built locally (no hub): `tiny` (4 layers, 128 wide) and `gpt2-124m` (12 layers, 768
wide, 50k vocabulary). Every response is exactly --new_tokens long (a stop id that is never sampled), so
tokens/s compare like for like. Each figure is given per wall second and per CPU second of this process (the
second does not depend on how busy a shared machine is; the ratios use it). Also timed, for the tiny model: a whole `python -m rlhf.generate` run (database
writes, task creation) at batch 8, to show what the job adds around the sampler.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4, "vocab_size": None},
          "gpt2-124m": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257}}


def build(name: str, out: Path):
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tests import rlhf_helpers as H

    H.build_tokenizer(out, H.corpus(), vocab_size=400)
    tok = AutoTokenizer.from_pretrained(out)
    shape = dict(SHAPES[name])
    vocab = shape.pop("vocab_size") or len(tok)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=max(vocab, len(tok)), n_positions=512, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **shape)
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(out)
    return tok, model


def prompts(tok, n: int) -> list[list[int]]:
    from tests import rlhf_helpers as H

    return [tok(t)["input_ids"][:32] for t in H.corpus(n, seed=7)[:n]]


def ours(model, tok, ps: list[list[int]], batch: int, new: int) -> float:
    import torch

    from rlhf.sampling import SamplingParams, left_pad, sample

    never = [model.config.vocab_size + 1]
    params = SamplingParams(temperature=1.0, max_new_tokens=new)
    torch.manual_seed(0)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(ps), batch):
        q, m = left_pad(ps[i:i + batch], tok.pad_token_id)
        out = sample(model, q, m, params, never, tok.pad_token_id, return_logprobs=False)
        assert out.response_ids.shape[1] == new
    return len(ps) * new / (time.perf_counter() - t0), len(ps) * new / (time.process_time() - c0)


def naive(model, tok, ps: list[list[int]], new: int) -> float:
    import torch

    never = model.config.vocab_size + 1
    torch.manual_seed(0)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for p in ps:
            ids = torch.tensor([p])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 min_new_tokens=new, do_sample=True, top_k=0, eos_token_id=never,
                                 pad_token_id=tok.pad_token_id)
            assert out.shape[1] - ids.shape[1] == new
    return len(ps) * new / (time.perf_counter() - t0), len(ps) * new / (time.process_time() - c0)


def whole_job(path: Path, n: int, new: int) -> float:
    """tokens/s of a full `rlhf.generate` run (sampling + responses + tasks in SQLite)."""
    from db.migrate import create_schema
    from db.services import content, projects
    from db.session import session_scope
    from rlhf import generate

    url = f"sqlite:///{path / 'gen.sqlite3'}"
    create_schema(url)
    with session_scope(url) as s:
        p = projects.create_project(s, "bench")
        for i in range(n):
            content.add_prompt(s, p.id, text=f"prompt {i}: the cat and the dog")
    t0, c0 = time.perf_counter(), time.process_time()
    summary = generate.main(["--project", "bench", "--models", str(path), "--num_samples", "2", "--max_new_tokens",
                             str(new), "--batch_size", "8", "--database_url", url, "--no_progress"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = summary["responses"]["generated"] * new  # an upper bound on tokens (some stop early)
    return tokens / wall, tokens / cpu


def profile(model, tok, ps: list[list[int]], batch: int, new: int) -> None:
    """Where one batched run's time goes: the model's forward passes vs the rest of generate (sampling, logits
    processing, cache bookkeeping), then the heaviest torch ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    spent = [0.0]
    forward = model.forward

    def timed(*args, **kw):
        t0 = time.process_time()
        try:
            return forward(*args, **kw)
        finally:
            spent[0] += time.process_time() - t0
    some = ps[:max(batch, 8)]
    model.forward = timed
    try:
        c0 = time.process_time()
        ours(model, tok, some, batch, new)
        total = time.process_time() - c0
    finally:
        model.forward = forward
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        ours(model, tok, some, batch, new)
    print(f"\n  batch {batch}: {total:.2f} CPU s for {len(some) * new} tokens; model forward {spent[0] / total:.0%}, "
          f"the rest of generate {1 - spent[0] / total:.0%}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32, help="prompts per measurement")
    ap.add_argument("--new_tokens", type=int, default=64, help="tokens sampled per prompt")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes of the batched sampler")
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="model shapes")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--profile", action="store_true",
                    help="also show where the time goes at the smallest and largest batch (forward share, top ops)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    os.environ.setdefault("INSTRUCTLOOP_NO_PROGRESS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            tok, model = build(name, Path(d) / name)
            ps = prompts(tok, a.prompts)
            ours(model, tok, ps[:2], 2, 4)  # warm-up
            base = naive(model, tok, ps, a.new_tokens)
            for b in a.batch:
                rows.append((name, f"sampler, batch {b}", ours(model, tok, ps, b, a.new_tokens), base))
            rows.append((name, "plain generate, one at a time", base, base))
            if name == "tiny":
                rows.append((name, "python -m rlhf.generate, batch 8", whole_job(Path(d) / name, a.prompts,
                                                                             a.new_tokens), base))
            if a.profile:
                print(f"{name}: where the time goes")
                for b in sorted({min(a.batch), max(a.batch)}):
                    profile(model, tok, ps, b, a.new_tokens)
    print(f"\n{a.prompts} prompts x {a.new_tokens} new tokens, CPU, {a.threads} threads")
    print(f"{'model':11}{'how':36}{'tokens/s':>10}{'tokens/CPU-s':>14}{'vs plain (CPU)':>16}")
    for name, how, (tps, cps), (_, base_cps) in rows:
        print(f"{name:11}{how:36}{tps:10.0f}{cps:14.0f}{cps / base_cps:15.2f}x")


if __name__ == "__main__":
    main()
