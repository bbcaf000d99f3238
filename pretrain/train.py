"""Train the GPT of ``pretrain.model`` on prepared token shards.

    python -m pretrain.train --data runs/data/pydocs --preset tiny --out runs/pretrain/tiny
    python -m pretrain.train --out runs/pretrain/tiny --resume            # continue a killed/stopped run
    torchrun --nproc_per_node 2 -m pretrain.train --data ... --preset tiny  # DDP (gloo on CPU, nccl on CUDA)

Model and optimisation settings come from ``--preset`` and every flag given explicitly overrides it.
Batches are a pure function of (seed, step, micro-step, rank) and the checkpoint holds model, optimizer,
step and all RNG states, so ``--resume`` continues bit-identically on CPU. The run folder gets
``config.json``, ``metrics.jsonl`` (one JSON object per log/eval line), ``ckpt.pt`` and a copy of the tokenizer.
SIGINT/SIGTERM finish the current step, write a checkpoint and exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pretrain.data import batch_rng, get_batch, load_split, read_meta
from pretrain.model import ATTENTIONS, GPT, GPTConfig

# Model + optimisation presets. Anything not listed falls back to DEFAULTS.
PRESETS: dict[str, dict] = {
    # 2 CPU cores: ~0.8M non-embedding params, a few minutes for a visible drop in loss.
    "tiny": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "window": 32,
             "fixed_block": 32, "fixed_summary": 4,
             "batch_size": 16, "grad_accum": 1, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 30,
             "max_steps": 600, "weight_decay": 0.1, "eval_interval": 100, "eval_iters": 10},
    # for tests and smoke runs: seconds on CPU
    "micro": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "window": 16,
              "fixed_block": 16, "fixed_summary": 2,
              "batch_size": 8, "grad_accum": 1, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 10,
              "max_steps": 100, "weight_decay": 0.1, "eval_interval": 50, "eval_iters": 4},
    # issue 10's base for reward models on human data: 512-token context (a human preference pair fits), 4.7M
    # non-embedding params. Measured on 2 loaded CPU cores (fp32, vocab 8192, 512 tokens): 6x256 ~800 tok/s,
    # 8x256 ~300, 6x384 ~200; so 6x256, 600 steps of 8x512 tokens (2.5M tokens: 19.6 min of training at ~2,100 tok/s on 2 quiet cores). On a
    # GPU raise --steps / --batch-size.
    "small": {"n_layer": 6, "n_head": 4, "n_embd": 256, "block_size": 512, "window": 128,
              "fixed_block": 64, "fixed_summary": 8,
              "batch_size": 8, "grad_accum": 1, "lr": 1.5e-3, "min_lr": 1.5e-4, "warmup_steps": 50,
              "max_steps": 600, "weight_decay": 0.1, "eval_interval": 200, "eval_iters": 10},
    # GPT-2 small; batch 12 x 40 accumulation x 1024 tokens ~ 0.5M tokens per step as in the paper.
    "gpt2-124m": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "window": 256,
                  "fixed_block": 128, "fixed_summary": 8,
                  "batch_size": 12, "grad_accum": 40, "lr": 6e-4, "min_lr": 6e-5, "warmup_steps": 2000,
                  "max_steps": 600000, "weight_decay": 0.1, "eval_interval": 1000, "eval_iters": 100},
}
DEFAULTS = {"attention": "dense", "local_layers": None, "dropout": 0.0, "bias": True, "beta1": 0.9,
            "beta2": 0.95, "grad_clip": 1.0, "log_interval": 10, "ckpt_interval": None, "seed": 1337}
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "attention", "window", "fixed_block", "fixed_summary",
              "local_layers", "dropout", "bias")
# Settings that may differ between a run and its --resume. Most do not touch the math; two do, on purpose:
# - max_steps is where the cosine schedule ends (lr_at), so resuming with another value changes the learning
#   rate of every remaining step: the result is NOT what a straight run of either length would give (only an
#   unchanged max_steps resumes exactly);
# - dtype is the autocast precision. Weights and optimizer state are kept and saved in float32, so switching
#   is safe, but bit-identical only when the effective dtype is unchanged (e.g. auto -> float32 on CPU).
RUNTIME_KEYS = ("stop_at_step", "device", "compile", "no_progress", "threads", "log_interval", "eval_interval",
                "eval_iters", "ckpt_interval", "peak_tflops", "max_steps", "dtype")

# Dense bf16 peak FLOP/s for MFU, matched by substring of the CUDA device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40": 181.0, "A10": 125.0, "L4": 121.0,
               "4090": 165.0, "3090": 71.0, "V100": 125.0, "T4": 65.0}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pretrain.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    io = ap.add_argument_group("input / output")
    io.add_argument("--data", help="prepared data directory (train.bin, val.bin, meta.json, tokenizer/); "
                                   "required unless --resume")
    io.add_argument("--out", help="run folder; default $INSTRUCTLOOP_HOME/pretrain/<preset>-<attention> "
                                  "(INSTRUCTLOOP_HOME defaults to ./runs)")
    io.add_argument("--preset", default=None, choices=sorted(PRESETS),
                    help="model + optimisation preset (default tiny); explicit flags override it")
    io.add_argument("--resume", action="store_true",
                    help="continue from OUT/ckpt.pt with its saved settings (only runtime flags, --max-steps "
                         "and --dtype may change)")
    io.add_argument("--overwrite", action="store_true", help="delete an existing run folder and start afresh")
    m = ap.add_argument_group("model")
    m.add_argument("--n-layer", type=int, help="transformer blocks")
    m.add_argument("--n-head", type=int, help="attention heads per block")
    m.add_argument("--n-embd", type=int, help="residual width")
    m.add_argument("--block-size", type=int, help="context length in tokens")
    m.add_argument("--attention", choices=list(ATTENTIONS),
                   help="dense: every layer causal; sparse: GPT-3 style, odd layers banded-local; fixed: odd layers "
                        "use the Sparse Transformer's fixed pattern (own block + earlier blocks' summary positions; "
                        "trains, samples and evaluates natively, no HF export) (default dense)")
    m.add_argument("--window", type=int, help="keys seen by a banded (sparse) layer, including the query itself")
    m.add_argument("--fixed-block", type=int, help="positions per block of a fixed layer (the paper's stride)")
    m.add_argument("--fixed-summary", type=int,
                   help="summary positions at the end of each block that later blocks read (the paper's c)")
    m.add_argument("--local-layers", type=lambda s: [int(x) for x in s.split(",") if x != ""],
                   help="comma-separated indices of the sparse layers in sparse/fixed mode (default: odd layers)")
    m.add_argument("--dropout", type=float, help="dropout probability (default 0: none, faster)")
    m.add_argument("--bias", type=lambda s: s.lower() in ("1", "true", "yes"),
                   help="biases in LayerNorm/MLP/out-proj: true|false (default true, as GPT-2)")
    o = ap.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, help="sequences per micro-batch per process")
    o.add_argument("--grad-accum", type=int, help="micro-batches accumulated per optimizer step (per process)")
    o.add_argument("--max-steps", type=int, help="optimizer steps in total; the cosine schedule ends here. May be changed on "
                                                 "--resume, but that reshapes the remaining learning-rate schedule")
    o.add_argument("--lr", type=float, help="peak learning rate")
    o.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine decay")
    o.add_argument("--warmup-steps", type=int, help="linear warmup steps")
    o.add_argument("--weight-decay", type=float, help="AdamW weight decay on >=2-D tensors (matrices, embeddings)")
    o.add_argument("--beta1", type=float, help="AdamW beta1 (default 0.9)")
    o.add_argument("--beta2", type=float, help="AdamW beta2 (default 0.95)")
    o.add_argument("--grad-clip", type=float, help="clip the global gradient norm; 0 disables (default 1.0)")
    o.add_argument("--seed", type=int, help="seed of model init and of batch sampling (default 1337)")
    r = ap.add_argument_group("runtime")
    r.add_argument("--eval-interval", type=int, help="evaluate train/val loss every N steps (and at the end)")
    r.add_argument("--eval-iters", type=int, help="batches per eval estimate (fixed batches: comparable)")
    r.add_argument("--log-interval", type=int, help="write a metrics line every N steps (default 10)")
    r.add_argument("--ckpt-interval", type=int,
                   help="write ckpt.pt every N steps (default: at each eval) and always at the end")
    r.add_argument("--stop-at-step", type=int,
                   help="checkpoint and exit after this step, as if killed there (for tests / time slicing)")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    r.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default=None,
                   help="autocast dtype: auto = bfloat16 on CUDA, float32 on CPU. May be changed on "
                        "--resume (weights stay float32); a different effective dtype is not bit-identical")
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (worth it on CUDA; minutes to compile on CPU); --no-compile turns "
                        "it off again on --resume")
    r.add_argument("--threads", type=int, help="torch.set_num_threads for CPU runs (default: torch's choice)")
    r.add_argument("--peak-tflops", type=float,
                   help="accelerator peak TFLOP/s for the MFU figure (default: looked up from the GPU name)")
    r.add_argument("--no-progress", action="store_true", default=None, help="no tqdm progress bar")
    return ap


def resolve(args: argparse.Namespace) -> dict:
    """Preset values, then DEFAULTS, then every flag given explicitly."""
    preset = args.preset or "tiny"
    cfg = {**DEFAULTS, **PRESETS[preset], "preset": preset}
    for k, v in vars(args).items():
        if v is not None and k not in ("resume", "overwrite"):
            cfg[k] = v
    cfg.setdefault("dtype", "auto")
    return cfg


def lr_at(step: int, c: dict) -> float:
    """Linear warmup then cosine decay to min_lr at max_steps."""
    if step < c["warmup_steps"]:
        return c["lr"] * (step + 1) / (c["warmup_steps"] + 1)
    if step >= c["max_steps"]:
        return c["min_lr"]
    ratio = (step - c["warmup_steps"]) / max(1, c["max_steps"] - c["warmup_steps"])
    return c["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c["lr"] - c["min_lr"])


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tf in PEAK_TFLOPS.items():
        if key in name:
            return tf * 1e12
    return None


def _drop_rows_after(path: Path, step: int) -> None:
    """On resume, forget what a killed run logged after its checkpoint (the resumed run logs those steps
    again), and a line the kill cut short, so metrics.jsonl reads as one run."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def default_out(cfg: dict) -> Path:
    home = Path(os.environ.get("INSTRUCTLOOP_HOME", "runs"))
    return home / "pretrain" / f"{cfg['preset']}-{cfg.get('attention', 'dense')}"


@torch.no_grad()
def estimate_loss(model, data: dict, c: dict, device, autocast, rank: int, world: int) -> dict[str, float]:
    """Mean loss over ``eval_iters`` fixed batches per split, averaged over DDP ranks."""
    model.eval()
    out = {}
    for split, arr in data.items():
        losses = torch.zeros(c["eval_iters"])
        for k in range(c["eval_iters"]):
            x, y = get_batch(arr, c["batch_size"], c["block_size"],
                             batch_rng(c["seed"], k, 0, rank, "eval-" + split), device)
            with autocast:
                _, loss = model(x, y)
            losses[k] = loss.item()
        m = losses.mean().to(device)
        if world > 1:
            torch.distributed.all_reduce(m)
            m /= world
        out[split] = float(m)
    model.train()
    return out


def train_step(model: torch.nn.Module, raw: torch.nn.Module, opt: torch.optim.Optimizer, train_data: np.ndarray,
               c: dict, step: int, lr: float, device: torch.device,
               autocast: contextlib.AbstractContextManager, rank: int = 0, ddp: bool = False) -> torch.Tensor:
    """One optimizer step of :func:`train`, data loading included (``bench/pretrain_throughput.py`` times this
    very function): ``grad_accum`` micro-batches, clip, AdamW. ``model`` may be the DDP/compiled wrapper of
    ``raw``. Returns the step's mean loss as a tensor (no device sync)."""
    for g in opt.param_groups:
        g["lr"] = lr
    accum = c["grad_accum"]
    loss_acc = None
    for micro in range(accum):
        x, y = get_batch(train_data, c["batch_size"], c["block_size"],
                         batch_rng(c["seed"], step, micro, rank, "train"), device)
        # All-reduce gradients only on the last micro-batch.
        sync = contextlib.nullcontext() if not ddp or micro == accum - 1 else model.no_sync()
        with sync:
            with autocast:
                _, loss = model(x, y)
                if accum > 1:  # one op less per step in the common single-micro-batch case
                    loss = loss / accum
            loss.backward()
        loss_acc = loss.detach() if loss_acc is None else loss_acc + loss.detach()
    if c["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(raw.parameters(), c["grad_clip"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_acc


def train(argv: list[str] | None = None) -> dict:
    """Run training as the CLI would; returns a summary (run dir, steps, last losses)."""
    args = build_parser().parse_args(argv)
    # Under torchrun (even --nproc_per_node 1) use the process group and DDP, as the launch asked for.
    ddp = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    master = rank == 0

    # ---- settings: fresh (preset + flags) or from the checkpoint (+ runtime flags) ----
    ckpt = None
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out RUN_DIR")
        cp = Path(args.out) / "ckpt.pt"
        if not cp.is_file():
            raise FileNotFoundError(f"no checkpoint to resume at {cp}")
        ckpt = torch.load(cp, map_location="cpu", weights_only=False)
        c = dict(ckpt["train_config"])
        for k in RUNTIME_KEYS:
            v = getattr(args, k, None)
            if v is not None:
                c[k] = v
        c["stop_at_step"] = args.stop_at_step  # a stale stop from the killed run must not stop us again
        changed = [k for k, v in vars(args).items()
                   if v is not None and k not in RUNTIME_KEYS and k not in ("resume", "out", "overwrite")
                   and c.get(k) != v]
        if changed:
            raise ValueError(f"--resume keeps the run's settings; cannot change {changed}")
        run_dir = Path(args.out)
    else:
        c = resolve(args)
        if not c.get("data"):
            raise ValueError("--data is required (a directory written by `python -m pretrain.prepare`)")
        run_dir = Path(args.out) if args.out else default_out(c)
        if (run_dir / "ckpt.pt").exists() and master:
            if not args.overwrite:
                raise ValueError(f"{run_dir} already has a checkpoint: use --resume or --overwrite")
            shutil.rmtree(run_dir)
    c["out"] = str(run_dir)
    data_dir = Path(c["data"])
    meta = read_meta(data_dir)
    if c["n_embd"] % c["n_head"]:
        raise ValueError(f"n_embd {c['n_embd']} not divisible by n_head {c['n_head']}")

    # ---- devices / processes ----
    if ddp:
        backend = "nccl" if torch.cuda.is_available() and c.get("device", "cuda") != "cpu" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    dev_name = c.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev_name == "cuda" and ddp:
        dev_name = f"cuda:{local_rank}"
    device = torch.device(dev_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if c.get("threads"):
        torch.set_num_threads(c["threads"])
    dtype = c.get("dtype", "auto")
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())

    # ---- model / optimizer ----
    # Vocabulary rounded up to a multiple of 64: faster matmuls, and HF accepts rows beyond the tokenizer.
    vocab = ckpt["model_config"]["vocab_size"] if ckpt else (meta["vocab_size"] + 63) // 64 * 64
    # checkpoints from before a model key existed lack it: the GPTConfig default is what they ran with
    mcfg = GPTConfig(vocab_size=vocab, **{k: c[k] for k in MODEL_KEYS if k in c})
    torch.manual_seed(c["seed"])  # the same initial weights on every rank
    model = GPT(mcfg).to(device)
    torch.manual_seed(c["seed"] + rank)  # but each rank its own dropout masks (resume restores per-rank states)
    opt = model.configure_optimizer(c["weight_decay"], c["lr"], (c["beta1"], c["beta2"]), device.type)
    step = 0
    best_val = float("inf")
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        best_val = ckpt.get("best_val_loss", best_val)
        rng = ckpt["rng"]
        _set_rng_state(rng[rank] if isinstance(rng, list) and rank < len(rng) else
                       rng[0] if isinstance(rng, list) else rng)
    raw = model
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if c.get("compile"):  # compile the DDP module, so gradient all-reduces overlap the compiled backward
        model = torch.compile(model)

    train_data = load_split(data_dir, "train")
    val_data = load_split(data_dir, "val")
    eval_sets = {"train": train_data, **({"val": val_data} if len(val_data) >= c["block_size"] + 1 else {})}

    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        tok_src = data_dir / meta.get("tokenizer", "tokenizer")
        if tok_src.is_dir() and not (run_dir / "tokenizer").exists():
            shutil.copytree(tok_src, run_dir / "tokenizer")
        (run_dir / "config.json").write_text(json.dumps(
            {"train_config": c, "model_config": mcfg.to_dict(), "data_meta": meta}, indent=2, default=str))
    # a resumed run appends; a fresh one starts a new file (a crashed earlier attempt must not mix in)
    if ckpt and master:
        _drop_rows_after(run_dir / "metrics.jsonl", step)
    metrics_f = (run_dir / "metrics.jsonl").open("a" if ckpt else "w") if master else None

    def log(rec: dict) -> None:
        if metrics_f:
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()

    stop_requested = {"flag": False}

    def _on_signal(signum, frame):  # finish the step, checkpoint, exit
        stop_requested["flag"] = True

    old_handlers = {}
    with contextlib.suppress(ValueError):  # signal only works in the main thread
        for s in (signal.SIGINT, signal.SIGTERM):
            old_handlers[s] = signal.signal(s, _on_signal)

    def save() -> None:
        states = _rng_state()
        if ddp:
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, states)
            states = gathered
        if not master:
            return
        ck = {"model": raw.state_dict(), "optimizer": opt.state_dict(), "step": step, "rng": states,
              "model_config": mcfg.to_dict(), "train_config": c, "best_val_loss": best_val,
              "data": {"sampler": "numpy default_rng([seed, step, micro, rank])", "seed": c["seed"],
                       "next_step": step, "tokens_seen": step * tokens_per_step, "data_dir": str(data_dir)}}
        tmp = run_dir / "ckpt.pt.tmp"
        torch.save(ck, tmp)
        os.replace(tmp, run_dir / "ckpt.pt")  # atomic: a kill during save leaves the old checkpoint

    tokens_per_step = c["batch_size"] * c["block_size"] * c["grad_accum"] * world
    flops_tok = raw.flops_per_token(c["block_size"])
    peak = _peak_flops(device, c.get("peak_tflops"))
    ckpt_interval = c.get("ckpt_interval") or c["eval_interval"]
    pbar = None
    if master and not c.get("no_progress"):
        from tqdm import tqdm

        pbar = tqdm(total=c["max_steps"], initial=step, desc="pretrain", dynamic_ncols=True)
    if master:  # what this process runs on; a resumed run may differ (runtime flags, another machine)
        log({"event": "start" if step == 0 else "resume", "step": step, "params": raw.num_params(),
             "tokens_per_step": tokens_per_step, "device": str(device), "dtype": dtype, "world_size": world,
             "compile": bool(c.get("compile")), "backend": torch.distributed.get_backend() if ddp else None,
             "flops_per_token": flops_tok, "peak_flops": peak})

    last = {"loss": None, "val_loss": None, "train_loss": None}
    t_last = time.perf_counter()
    steps_since = 0
    try:
        while step < c["max_steps"]:
            lr = lr_at(step, c)
            loss_acc = train_step(model, raw, opt, train_data, c, step, lr, device, autocast, rank, ddp)
            step += 1
            steps_since += 1
            if pbar:
                pbar.update(1)

            if step % c["log_interval"] == 0 or step == c["max_steps"]:
                if ddp:
                    torch.distributed.all_reduce(loss_acc)
                    loss_acc /= world
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t_last
                tps = steps_since * tokens_per_step / dt
                rec = {"step": step, "loss": round(float(loss_acc), 5), "lr": lr, "tok_per_s": round(tps, 1),
                       "time": time.time()}
                if peak:  # tps is the whole job's; peak is one accelerator's
                    rec["mfu"] = round(tps * flops_tok / (peak * world), 4)
                last["loss"] = rec["loss"]
                log(rec)
                if pbar:
                    pbar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{tps:,.0f}",
                                     **({"mfu": f"{rec['mfu']:.1%}"} if peak else {}))
                t_last, steps_since = time.perf_counter(), 0

            if step % c["eval_interval"] == 0 or step == c["max_steps"]:
                ev = estimate_loss(model, eval_sets, c, device, autocast, rank, world)
                last["train_loss"] = ev["train"]
                last["val_loss"] = ev.get("val")
                if "val" in ev:
                    best_val = min(best_val, ev["val"])
                log({"step": step, "eval_train_loss": ev["train"], "val_loss": ev.get("val"),
                     "val_ppl": math.exp(ev["val"]) if "val" in ev else None})
                if pbar:
                    pbar.write(f"step {step}: train {ev['train']:.4f}"
                               + (f" val {ev['val']:.4f}" if "val" in ev else ""))
                t_last = time.perf_counter()  # eval time does not count towards throughput

            stop = c.get("stop_at_step") is not None and step >= c["stop_at_step"]
            if ddp:  # every rank must agree to stop, or the others hang in the next all-reduce
                f = torch.tensor([float(stop_requested["flag"])], device=device)
                torch.distributed.all_reduce(f)
                stop_requested["flag"] = bool(f.item())
            if step % ckpt_interval == 0 or step == c["max_steps"] or stop or stop_requested["flag"]:
                save()
            if stop or stop_requested["flag"]:
                log({"event": "stopped", "step": step})
                break
    finally:
        if pbar:
            pbar.close()
        if metrics_f:
            metrics_f.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if ddp:
            # Drop the DDP wrapper (its reducer holds gloo work objects) before the process group goes, and
            # leave together: otherwise a rank can abort at exit ("terminate called without an active exception").
            model = None
            import gc

            gc.collect()
            with contextlib.suppress(Exception):
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    return {"run_dir": str(run_dir), "step": step, "model": raw, **last}


def main(argv: list[str] | None = None) -> None:
    try:
        res = train(argv)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in res.items() if k != "model"}))


if __name__ == "__main__":
    main()
