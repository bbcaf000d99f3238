"""Every training job killed (SIGKILL) after a checkpoint and `--resume`d ends where an uninterrupted run ends:
the same weights, the same training curve in metrics.jsonl and the same final metrics (PPO: tests/test_rlhf_ppo.py).

Each test runs the straight run in this process, the killed run as a subprocess killed as soon as its first
checkpoint is complete (wherever it is then, even inside writing the next one), and the resume in this process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests import rlhf_helpers as H

ROOT = Path(__file__).resolve().parents[1]
# rows that time the run, not what it learned
VOLATILE = ("time", "tok_per_s", "mfu", "train_runtime", "train_samples_per_second", "train_steps_per_second",
            "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "event", "params", "device",
            "backend", "compile", "dtype", "world_size", "tokens_per_step", "flops_per_token", "peak_flops")


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "INSTRUCTLOOP_HOME": str(home)}


def _kill_when(cmd: list[str], ready: Callable[[], bool], home: Path) -> None:
    """Start `cmd` and SIGKILL it the moment `ready()` holds; fail if it ended first."""
    proc = subprocess.Popen(cmd, env=_env(home), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 180
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-3000:]}"


def _curve(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows
            if not r.get("final") and r.get("event") not in ("start", "resume")]


def _final(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows if r.get("final")][-1]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def _complete_hf_checkpoint(run: Path) -> bool:
    """An HF checkpoint whose trainer_state.json (written last) is whole."""
    for st in run.glob("checkpoint-*/trainer_state.json"):
        try:
            json.loads(st.read_text())
            return True
        except (OSError, ValueError):
            continue
    return False


def test_pretrain_killed_and_resumed_matches_a_straight_run(tmp_path):
    from pretrain.prepare import prepare
    from pretrain.train import train

    data = tmp_path / "shards"
    prepare(data, H.corpus(400), vocab_size=300, val_fraction=0.1)
    # dropout and gradient accumulation on: the RNG state and the batch position must both come back
    common = ["--data", str(data), "--preset", "micro", "--threads", "1", "--no-progress", "--max-steps", "30",
              "--batch-size", "4", "--grad-accum", "2", "--dropout", "0.1", "--eval-interval", "10",
              "--ckpt-interval", "4", "--log-interval", "1"]
    straight = train(common + ["--out", str(tmp_path / "s")])
    killed = tmp_path / "k"
    _kill_when([sys.executable, "-m", "pretrain.train", *common, "--out", str(killed)],
               lambda: (killed / "ckpt.pt").is_file(), tmp_path)
    resumed = train(["--out", str(killed), "--resume", "--no-progress"])
    assert resumed["step"] == 30
    _same_weights(straight["model"].state_dict(), torch.load(killed / "ckpt.pt", weights_only=False)["model"])
    assert {k: resumed[k] for k in ("loss", "train_loss", "val_loss")} == \
        {k: straight[k] for k in ("loss", "train_loss", "val_loss")}
    assert _curve(killed) == _curve(tmp_path / "s") and len(_curve(killed)) == 33  # 30 steps + 3 evals


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    rows = [{"prompt": f"say {w}", "completion": f"{w} {w} please"} for w in H.WORDS[:14]]
    return H.write_jsonl(tmp_path_factory.mktemp("sft") / "d.jsonl", rows)


HF_COMMON = ["--per_device_train_batch_size", "2", "--max_steps", "10", "--save_steps", "3", "--logging_steps",
             "1", "--learning_rate", "1e-3", "--seed", "3", "--disable_tqdm", "true", "--no_register",
             "--eval_fraction", "0.2", "--report_to", "none"]


def _hf_job(module: str, main: Callable[[list[str]], dict], args: list[str], home: Path) -> None:
    from safetensors.torch import load_file

    main(args + ["--name", "straight"])
    killed = home / module.rsplit(".", 1)[-1] / "killed"
    _kill_when([sys.executable, "-m", module, *args, "--name", "killed"], lambda: _complete_hf_checkpoint(killed), home)
    resumed = main(args + ["--name", "killed", "--resume"])
    assert resumed["metrics"]["global_step"] == 10
    straight = home / module.rsplit(".", 1)[-1] / "straight"
    _same_weights(load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors"))
    assert _curve(killed) == _curve(straight)
    a, b = _final(straight), _final(killed)
    assert a.keys() == b.keys() and "eval_loss" in a
    # the mean training loss is summed in another order across the kill: equal to rounding
    assert {k: pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for k, v in a.items()} == b


def test_sft_killed_and_resumed_matches_a_straight_run(tiny, sft_data, home):
    from rlhf import train_sft

    _hf_job("rlhf.train_sft", train_sft.main, ["--model", str(tiny), "--dataset", str(sft_data), *HF_COMMON], home)


def test_reward_killed_and_resumed_matches_a_straight_run(tiny, tmp_path, home):
    from rlhf import train_reward

    rows = [{"prompt": f"say {w}", "chosen": f"{w} please", "rejected": f"{w} no"} for w in H.WORDS[:14]]
    f = H.write_jsonl(tmp_path / "prefs.jsonl", rows)
    _hf_job("rlhf.train_reward", train_reward.main,
            ["--model", str(tiny), "--dataset", str(f), "--no_normalize", *HF_COMMON], home)
