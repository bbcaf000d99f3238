"""One short pass over every CUDA path of pretrain/ and rlhf/, for a session that is lent a GPU machine.

CI has no GPU, so the tests run these paths on CPU (bf16 autocast, torch.compile, MFU arithmetic, device
defaults faked); this script is the part only a GPU can show. On the lent machine (its image has torch,
transformers, accelerate, tokenizers; trl, datasets, SQLAlchemy and alembic travel as wheels):

    scripts/gpu_wheels.sh                    # here, once: py3.12 wheels the GPU image lacks, into .whl/
    # device run, carry [".whl"], from the repo root:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out $OUT

Steps, each printed as PASS/FAIL with its figures (JSON summary in OUT/gpu_check.json; exit 1 if any fails):
  env      torch / CUDA / device / bf16 support
  prepare  the CPython docs corpus -> shards (vocab 4096)
  dense    tiny preset, bf16 autocast (auto) + --compile: loss falls, MFU in (0, 1), checkpoint float32
  sparse   tiny preset, banded attention, bf16: loss falls; GPT-Neo export matches native logits on CUDA
  nccl     torchrun --nproc_per_node 1: NCCL backend, stop at 20 then --resume to 40 with nothing lost
  bench    bench/pretrain_throughput.py: tok/s and MFU for tiny and gpt2-124m against the naive GPT
  rlhf     project in SQLite -> train_sft / train_reward --project on CUDA with bf16 chosen by default ->
           registered versions -> generate (bf16 weights) turns the SFT version into new comparisons
About 5 minutes on an H100 (most of it torch.compile and the 124M benchmark).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS: list[dict] = []
# --rehearse: the same steps on CPU (bf16 and the MFU peak asked for explicitly, gloo instead of NCCL), to
# check this script itself on a machine without a GPU; it proves nothing about CUDA.
REHEARSE = False


def step(name: str):
    """Run one check; record PASS/FAIL with its figures instead of stopping the whole script."""
    def wrap(fn):
        def run(*a, **kw):
            t = time.time()
            try:
                figures = fn(*a, **kw) or {}
                rec = {"step": name, "ok": True, **figures}
            except Exception as e:  # noqa: BLE001 - every failure is reported, the other steps still run
                traceback.print_exc()
                rec = {"step": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
            rec["seconds"] = round(time.time() - t, 1)
            RESULTS.append(rec)
            print(("PASS " if rec["ok"] else "FAIL ") + json.dumps(rec), flush=True)
            return rec
        return run
    return wrap


def sh(cmd: list[str], timeout: int, env: dict | None = None) -> str:
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                       timeout=timeout, check=False)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd[:6])}... exited {r.returncode}: {r.stderr[-3000:]}")
    return r.stdout


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@step("env")
def check_env() -> dict:
    import torch

    if REHEARSE:
        return {"torch": torch.__version__, "device": "cpu (rehearsal)", "python": sys.version.split()[0]}
    assert torch.cuda.is_available(), "no CUDA device visible"
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0),
            "bf16": torch.cuda.is_bf16_supported(), "python": sys.version.split()[0]}



def dev() -> str:
    return "cpu" if REHEARSE else "cuda"


def cpu_flags(*flags: str) -> list[str]:
    """What a CPU rehearsal must ask for explicitly that CUDA picks by default."""
    return list(flags) if REHEARSE else []


@step("prepare")
def check_prepare(work: Path) -> dict:
    sh([sys.executable, "-m", "pretrain.prepare", "--out", str(work / "data"), "--vocab-size", "4096"], 600)
    meta = json.loads((work / "data" / "meta.json").read_text())
    return {k: meta[k] for k in meta if k in ("vocab_size", "train_tokens", "val_tokens")}


def _train(work: Path, name: str, extra: list[str]) -> list[dict]:
    sh([sys.executable, "-m", "pretrain.train", "--data", str(work / "data"), "--out", str(work / name),
        "--preset", "tiny", "--max-steps", "150", "--eval-interval", "75", "--log-interval", "25", "--no-progress",
        *extra], 900)
    return metrics(work / name)


@step("dense")
def check_dense(work: Path) -> dict:
    import torch

    ms = _train(work, "dense", ["--compile", *cpu_flags("--dtype", "bfloat16", "--peak-tflops", "1")])
    start, steps = ms[0], [m for m in ms if "loss" in m]
    assert start["dtype"] == "bfloat16" and start["compile"] and start["device"].startswith(dev()), start
    assert start["peak_flops"], "no peak FLOP/s known for this GPU: add it to PEAK_TFLOPS"
    assert all(0 < m["mfu"] < 1 for m in steps), [m.get("mfu") for m in steps]
    ev = [m["val_loss"] for m in ms if "val_loss" in m]
    assert ev[-1] < ev[0], ev
    ck = torch.load(work / "dense" / "ckpt.pt", map_location="cpu", weights_only=False)
    assert all(v.dtype == torch.float32 and not k.startswith("_orig_mod") for k, v in ck["model"].items())
    return {"val_loss": ev, "tok_per_s": steps[-1]["tok_per_s"], "mfu": steps[-1]["mfu"]}


@step("sparse")
def check_sparse(work: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from pretrain.export import export, load_native

    ms = _train(work, "sparse", ["--attention", "sparse", *cpu_flags("--dtype", "bfloat16")])
    ev = [m["val_loss"] for m in ms if "val_loss" in m]
    assert ms[0]["dtype"] == "bfloat16" and ev[-1] < ev[0], (ms[0], ev)
    native, _ = load_native(work / "sparse", device=dev())
    hf = AutoModelForCausalLM.from_pretrained(export(work / "sparse", work / "sparse-hf")).to(dev()).eval()
    x = torch.randint(0, 4000, (2, native.config.block_size), device=dev())
    with torch.no_grad():
        diff = (hf(x).logits[..., :native.config.vocab_size].float() - native(x)[0].float()).abs().max().item()
    assert diff < 1e-3, diff  # float32 on CUDA (TF32 matmuls may be on): looser than CPU's 1e-4
    return {"val_loss": ev, "tok_per_s": [m for m in ms if "loss" in m][-1]["tok_per_s"], "export_max_diff": diff}


@step("nccl")
def check_nccl(work: Path) -> dict:
    run = work / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                "-m", "pretrain.train", "--out", str(run)]
    sh(torchrun + ["--data", str(work / "data"), "--preset", "tiny", "--max-steps", "40", "--eval-interval", "20",
                   "--log-interval", "5", "--no-progress", "--stop-at-step", "20"], 600)
    sh(torchrun + ["--resume", "--no-progress"], 600)
    ms = metrics(run)
    starts = [m for m in ms if m.get("event") in ("start", "resume")]
    assert [m["event"] for m in starts] == ["start", "resume"], starts
    backend = "gloo" if REHEARSE else "nccl"
    assert all(m["backend"] == backend and m["world_size"] == 1 for m in starts), starts
    assert [m["step"] for m in ms if "loss" in m] == list(range(5, 45, 5))
    return {"backend": starts[0]["backend"], "val_loss": [m["val_loss"] for m in ms if "val_loss" in m]}


@step("bench")
def check_bench(out: Path) -> dict:
    shapes = ["tiny"] if REHEARSE else ["tiny", "gpt2-124m"]
    text = sh([sys.executable, "bench/pretrain_throughput.py", "--shapes", *shapes, "--seconds", "4",
               "--rounds", "3"], 900)
    (out / "pretrain_throughput.txt").write_text(text)
    print(text)
    return {"table": text.splitlines()[1:]}


@step("rlhf")
def check_rlhf(work: Path) -> dict:
    os.environ["INSTRUCTLOOP_HOME"] = str(work / "runs")
    from db import migrate
    from db.services import stats  # noqa: F401 - the module `python -m db stats` reads
    from db.session import session_scope
    from rlhf import generate, train_reward, train_sft
    from tests import rlhf_helpers as H

    url = f"sqlite:///{work / 'gpu.sqlite3'}"
    migrate.upgrade(url)
    tiny = H.build_tiny_lm(work / "tiny-lm", n_layer=4, n_embd=256, n_head=4)
    H.make_project(url, "g")
    H.add_demonstrations(url, "g", [(f"{a}+{b}=?", str(a + b)) for a in range(10, 20) for b in range(10, 14)])
    H.add_preferences(url, "g", H.polite_pairs(200, seed=1))
    common = ["--project", "g", "--database_url", url, "--disable_tqdm", "true", "--save_strategy", "no",
              *cpu_flags("--bf16", "true")]
    sft = train_sft.main(["--model", str(tiny), "--name", "sft-gpu", "--max_steps", "60", "--learning_rate", "2e-3",
                          *common])
    rm = train_reward.main(["--model", str(tiny), "--name", "rm-gpu", "--max_steps", "60", "--learning_rate", "1e-3",
                            "--per_device_train_batch_size", "16", *common])
    for out in (sft, rm):
        tr = out["trainer"]
        assert tr.args.bf16 and tr.accelerator.mixed_precision == "bf16", "bf16 was not chosen on CUDA"
        assert next(tr.model.parameters()).device.type == dev()
    assert rm["metrics"]["eval_accuracy"] >= 0.9, rm["metrics"]
    g = generate.main(["--project", "g", "--models", "sft-gpu", "--num_samples", "2", "--tasks", "compare",
                       "--max_new_tokens", "8", "--database_url", url, "--no_progress", "--limit_prompts", "20",
                       *cpu_flags("--dtype", "bfloat16")])
    assert g["tasks"]["compare"]["created"] == 20, g
    from sqlalchemy import select

    from db.models import Response

    with session_scope(url) as s:
        dtypes = {r.params.get("dtype") for r in s.scalars(select(Response).where(Response.model_version_id.is_not(None)))}
    assert dtypes == {"bfloat16"}, dtypes
    stats_out = sh([sys.executable, "-m", "db", "stats", "--project", "g"], 300, {"DATABASE_URL": url})
    assert "sft-gpu" in stats_out and "rm-gpu" in stats_out, stats_out[-2000:]
    return {"sft_train_loss": round(sft["metrics"]["train_loss"], 4), "reward_eval_accuracy":
            rm["metrics"]["eval_accuracy"], "compare_tasks": g["tasks"]["compare"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check", help="where the JSON summary and the "
                    "benchmark table go (default $OUT, else ./gpu-check)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only these steps (env, prepare, dense, sparse, nccl, bench, rlhf); prepare is "
                         "added when a pretrain step needs it")
    ap.add_argument("--rehearse", action="store_true",
                    help="run the steps on CPU to check this script (bf16/MFU asked for explicitly, gloo); proves "
                         "nothing about CUDA")
    args = ap.parse_args(argv)
    global REHEARSE
    REHEARSE = args.rehearse
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ["env", "prepare", "dense", "sparse", "nccl", "bench", "rlhf"])
    if only & {"dense", "sparse", "nccl"}:
        only.add("prepare")
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ['PYTHONPATH']}"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        env = check_env()
        if not env["ok"]:
            only &= {"env"}
        if "prepare" in only and not check_prepare(work)["ok"]:
            only -= {"dense", "sparse", "nccl"}
        for name, fn, arg in (("dense", check_dense, work), ("sparse", check_sparse, work),
                              ("nccl", check_nccl, work), ("bench", check_bench, out), ("rlhf", check_rlhf, work)):
            if name in only:
                fn(arg)
    (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2))
    bad = [r["step"] for r in RESULTS if not r["ok"]]
    print(f"\n{len(RESULTS) - len(bad)}/{len(RESULTS)} checks passed" + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
