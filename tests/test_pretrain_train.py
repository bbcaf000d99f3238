"""Training: loss falls on Shakespeare, bit-identical resume in a new process, DDP under torchrun, CLIs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = next((p for p in (ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
                                ROOT / "shared" / "data" / "tinyshakespeare.txt") if p.is_file()), None)
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SMALL = ["--preset", "micro", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from pretrain.corpus import iter_files, pydoc_topics
    from pretrain.prepare import prepare

    d = tmp_path_factory.mktemp("shards")
    texts = iter_files([str(SHAKESPEARE)], chunk_chars=2000) if SHAKESPEARE else pydoc_topics()
    prepare(d, texts, vocab_size=512, val_fraction=0.05)
    return d


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_loss_falls_on_shakespeare(data_dir, tmp_path):
    assert SHAKESPEARE is not None, "shared/data/tinyshakespeare.txt not found beside the repo"
    from pretrain.train import train

    torch.set_num_threads(2)
    res = train(["--data", str(data_dir), "--out", str(tmp_path / "run"), *SMALL, "--threads", "2",
                 "--max-steps", "200", "--eval-interval", "100", "--batch-size", "16"])
    evals = [m for m in _metrics(tmp_path / "run") if "val_loss" in m]
    assert [m["step"] for m in evals] == [100, 200]
    # uniform over 512 tokens is ln(512) = 6.24; a unigram model is ~5.5 on this data
    assert evals[-1]["val_loss"] < 4.6, evals  # measured 4.17
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert res["step"] == 200 and (tmp_path / "run" / "ckpt.pt").is_file()


@pytest.mark.slow
def test_resume_is_bit_identical(data_dir, tmp_path):
    from pretrain.train import train

    # dropout and grad accumulation on: resume must restore the torch RNG and the batch order exactly
    common = ["--data", str(data_dir), *SMALL, "--max-steps", "12", "--eval-interval", "4",
              "--dropout", "0.1", "--grad-accum", "2", "--batch-size", "4"]
    straight = train(common + ["--out", str(tmp_path / "a")])
    first = train(common + ["--out", str(tmp_path / "b"), "--stop-at-step", "6"])
    assert first["step"] == 6
    # the second half runs in a fresh process, as after a kill
    r = subprocess.run([sys.executable, "-m", "pretrain.train", "--out", str(tmp_path / "b"), "--resume",
                        "--no-progress"], env=ENV, cwd=ROOT, check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 12
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["optimizer"]["state"][0]["exp_avg_sq"].equal(b["optimizer"]["state"][0]["exp_avg_sq"])
    la = [m["loss"] for m in _metrics(tmp_path / "a") if "loss" in m]
    lb = [m["loss"] for m in _metrics(tmp_path / "b") if "loss" in m]
    assert la == lb
    assert straight["step"] == 12


def test_resume_may_change_dtype_but_not_the_model(data_dir, tmp_path):
    """--dtype is a runtime flag: auto -> float32 on CPU resumes (bit-identically); model flags still refuse."""
    from pretrain.train import train

    common = ["--data", str(data_dir), *SMALL, "--max-steps", "3", "--eval-interval", "3", "--batch-size", "2",
              "--n-layer", "1"]
    straight = train(common + ["--out", str(tmp_path / "a")])["model"].state_dict()
    assert train(common + ["--out", str(tmp_path / "b"), "--stop-at-step", "1"])["step"] == 1
    with pytest.raises(ValueError, match="cannot change"):
        train(["--out", str(tmp_path / "b"), "--resume", "--no-progress", "--n-embd", "32"])
    res = train(["--out", str(tmp_path / "b"), "--resume", "--no-progress", "--dtype", "float32"])
    assert res["step"] == 3
    assert all(torch.equal(v, res["model"].state_dict()[k]) for k, v in straight.items())


@pytest.mark.slow
def test_gpu_code_paths_run_on_cpu_compile_bf16_mfu(data_dir, tmp_path):
    """The CUDA recipe (torch.compile + bf16 autocast + MFU) through the same code on CPU: inductor compiles the
    banded-mask model, bf16 tracks float32, the checkpoint stays float32 with plain keys and exports."""
    from pretrain.export import export, load_native
    from pretrain.train import train

    common = ["--data", str(data_dir), *SMALL, "--max-steps", "20", "--eval-interval", "10", "--log-interval", "5",
              "--batch-size", "8", "--attention", "sparse", "--window", "16"]
    fast = train(common + ["--out", str(tmp_path / "fast"), "--compile", "--dtype", "bfloat16",
                           "--peak-tflops", "0.5"])
    train(common + ["--out", str(tmp_path / "ref"), "--dtype", "float32"])
    m_fast, m_ref = _metrics(tmp_path / "fast"), _metrics(tmp_path / "ref")
    assert m_fast[0]["dtype"] == "bfloat16" and m_fast[0]["compile"] is True and m_fast[0]["peak_flops"] == 0.5e12
    assert m_ref[0]["dtype"] == "float32" and m_ref[0]["compile"] is False and m_ref[0]["peak_flops"] is None
    steps = [m for m in m_fast if "loss" in m]
    assert [m["step"] for m in steps] == [5, 10, 15, 20]
    flops_tok = fast["model"].flops_per_token(64)
    for m in steps:  # MFU = achieved FLOP/s over the given peak
        assert m["mfu"] == pytest.approx(m["tok_per_s"] * flops_tok / 0.5e12, rel=1e-3, abs=1e-4)
    assert all("mfu" not in m for m in m_ref)  # no peak known on CPU: no made-up figure
    v_fast = [m["val_loss"] for m in m_fast if "val_loss" in m]
    v_ref = [m["val_loss"] for m in m_ref if "val_loss" in m]
    assert v_fast[-1] < v_fast[0] and abs(v_fast[-1] - v_ref[-1]) < 0.05, (v_fast, v_ref)
    ck = torch.load(tmp_path / "fast" / "ckpt.pt", weights_only=False)
    assert all(v.dtype == torch.float32 and not k.startswith("_orig_mod") for k, v in ck["model"].items())
    # --compile is a runtime flag: a resume may turn it off
    train(["--out", str(tmp_path / "fast"), "--resume", "--no-progress", "--no-compile", "--max-steps", "21"])
    assert [m for m in _metrics(tmp_path / "fast") if m.get("event") == "resume"][-1]["compile"] is False
    native, _ = load_native(tmp_path / "fast")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(export(tmp_path / "fast", tmp_path / "hf"))
    x = torch.randint(0, 500, (1, 40))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits[..., :native.config.vocab_size], native(x)[0], atol=1e-4)


def test_peak_flops_lookup(monkeypatch):
    from pretrain import train as T

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    assert T._peak_flops(torch.device("cuda", 0), None) == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-40GB")
    assert T._peak_flops(torch.device("cuda", 0), None) == 312e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some Future GPU")
    assert T._peak_flops(torch.device("cuda", 0), None) is None  # unknown: no MFU rather than a wrong one
    assert T._peak_flops(torch.device("cuda", 0), 100.0) == 100e12
    assert T._peak_flops(torch.device("cpu"), None) is None


def test_flops_per_token_matches_the_gpt2_124m_figure():
    from pretrain.model import GPT, GPTConfig

    with torch.device("meta"):
        m = GPT(GPTConfig(vocab_size=50304, n_layer=12, n_head=12, n_embd=768, block_size=1024))
    n = m.num_params()  # non-embedding convention: token embeddings (tied head) count, positions do not
    assert n == 123_653_376 + (50304 - 50257) * 768
    assert m.flops_per_token(1024) == 6 * n + 12 * 12 * 768 * 1024  # nanoGPT's / PaLM's estimate
    with torch.device("meta"):
        s = GPT(GPTConfig(vocab_size=50304, n_layer=12, n_head=12, n_embd=768, block_size=1024, attention="sparse",
                          window=256))
    # GPT-3 style: the 6 odd layers are local and attend to at most 256 keys (no q/k/v bias, as GPT-Neo)
    assert s.num_params() == n - 12 * 3 * 768
    assert s.flops_per_token(1024) == 6 * s.num_params() + 12 * 768 * (6 * 1024 + 6 * 256)


@pytest.mark.slow
def test_ddp_two_processes_matches_single(data_dir, tmp_path):
    from pretrain.train import train

    steps = ["--max-steps", "40", "--eval-interval", "20", "--log-interval", "5"]
    # same global batch: 2 ranks x 4 sequences vs 1 process x 8
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "pretrain.train", "--out", str(tmp_path / "ddp")]
    # first half, then --resume under torchrun too (all ranks reload; per-rank RNG states are restored)
    for extra in (["--data", str(data_dir), *SMALL, *steps, "--batch-size", "4", "--stop-at-step", "20",
                   "--peak-tflops", "1"],
                  ["--resume", "--no-progress"]):
        r = subprocess.run(torchrun + extra, env=ENV, cwd=ROOT, check=False, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, (extra[0], r.stderr[:6000])
    train(["--data", str(data_dir), "--out", str(tmp_path / "one"), *SMALL, *steps, "--batch-size", "8"])
    ddp, one = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "one")
    assert ddp[0]["world_size"] == 2 and ddp[0]["tokens_per_step"] == one[0]["tokens_per_step"]
    for m in (x for x in ddp if "loss" in x):  # MFU per accelerator: the job's tokens/s over 2 x one peak
        assert m["mfu"] == pytest.approx(m["tok_per_s"] * ddp[0]["flops_per_token"] / (2 * 1e12), rel=1e-3, abs=1e-4)
    runs = [(m["event"], m["step"], m["backend"]) for m in ddp if m.get("event") in ("start", "resume")]
    assert runs == [("start", 0, "gloo"), ("resume", 20, "gloo")] and one[0]["backend"] is None
    assert [m["step"] for m in ddp if "loss" in m] == [5 * i for i in range(1, 9)]  # nothing lost or repeated
    for ms in (ddp, one):
        ev = [m["val_loss"] for m in ms if "val_loss" in m]
        assert len(ev) == 2 and ev[1] < ev[0]
        tr = [m["loss"] for m in ms if "loss" in m]
        assert tr[-1] < tr[0] - 0.5
    ev_ddp = [m["val_loss"] for m in ddp if "val_loss" in m][-1]
    ev_one = [m["val_loss"] for m in one if "val_loss" in m][-1]
    assert abs(ev_ddp - ev_one) < 0.15, (ev_ddp, ev_one)


def test_every_cli_has_help_and_rejects_bad_input(tmp_path, capsys, monkeypatch):
    import argparse
    import importlib

    undocumented: list[str] = []
    orig = argparse._ActionsContainer.add_argument

    def add_argument(self, *a, **kw):  # every flag must say what it does
        act = orig(self, *a, **kw)
        if not act.help and act.option_strings:
            undocumented.append(act.option_strings[0])
        return act

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", add_argument)

    # in-process (subprocesses would pay the torch/transformers import 7 times); one real CLI run is below
    for mod in ("tokenizer", "prepare", "train", "export", "sample", "evaluate", "pipeline", "corpus"):
        with pytest.raises(SystemExit) as e:
            importlib.import_module(f"pretrain.{mod}").main(["--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and "usage:" in out, mod
        assert not undocumented, (mod, undocumented)
    from pretrain import export, train

    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(tmp_path), "--preset", "huge"])
    assert e.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(tmp_path / "nope")])
    assert "pretrain.prepare" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        export.main(["--ckpt", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "checkpoint not found" in str(e.value.code)
    r = subprocess.run([sys.executable, "-m", "pretrain.train", "--resume", "--out", str(tmp_path)],
                       env=ENV, cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no checkpoint to resume" in r.stderr


def test_export_evaluate_and_tiny_builder(data_dir, tmp_path, sqlite_url, monkeypatch):
    """A few steps, export, reload through Auto classes, evaluate both; the tiny builder for other tests."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pretrain.evaluate import arithmetic_accuracy, validation_loss
    from pretrain.export import export
    from pretrain.pipeline import build_tiny_model
    from pretrain.sample import LM
    from pretrain.train import train

    run = tmp_path / "run"
    train(["--data", str(data_dir), "--out", str(run), *SMALL, "--attention", "sparse", "--max-steps", "4",
           "--eval-interval", "4"])
    hf_dir = export(run, tmp_path / "hf")
    native, hf = LM(run), LM(hf_dir)
    assert type(hf.model).__name__ == "GPTNeoForCausalLM"
    a = validation_loss(native, str(data_dir), 3000)["val_loss"]
    b = validation_loss(hf, str(data_dir), 3000)["val_loss"]
    assert abs(a - b) < 1e-4
    # after 4 steps both score 0 on arithmetic, so compare what they generate token by token instead
    assert native.block_size == hf.block_size == 64
    for prompt in ("ROMEO:", "Q: What is 48 plus 76? A:", "First Citizen:\nBefore we proceed", "the"):
        ids = native.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        a = native.generate(ids, 12, temperature=0.0, stop_at_eos=False)
        b = hf.generate(ids, 12, temperature=0.0, stop_at_eos=False)
        assert a.shape == (1, 12) and torch.equal(a, b), prompt
    assert 0.0 <= arithmetic_accuracy(native, 5, "plus", n=2) <= 1.0  # 5-shot prompts outgrow block_size 64
    # a prompt longer than the context: exactly max_new_tokens tokens come back, the same from both
    long_prompt = " ".join(["To be, or not to be, that is the question:"] * 20)
    assert len(native.tokenizer(long_prompt)["input_ids"]) > native.block_size
    outs = []
    for lm in (native, hf):
        text = lm.complete(long_prompt, 10, temperature=0, stop_at_eos=False)
        ids = lm.generate(lm.tokenizer(long_prompt, add_special_tokens=False, return_tensors="pt")["input_ids"],
                          10, temperature=0.0, stop_at_eos=False)
        assert ids.shape == (1, 10)
        assert text == lm.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)
        outs.append(ids)
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="block_size"):
        hf.complete("ROMEO:", 64)  # would index past the position table

    # --register puts the export in the registry as a 'base' version, with its training config.
    from db.services import registry
    from db.session import session_scope
    from pretrain.export import main as export_main

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    export_main(["--ckpt", str(run), "--out", str(tmp_path / "hf-reg"), "--register", "base-test"])
    with session_scope(sqlite_url) as s:
        mv = registry.resolve(s, "base-test")
        assert (mv.kind, Path(mv.path)) == ("base", (tmp_path / "hf-reg").resolve())

    tiny = build_tiny_model(tmp_path / "tiny", train_steps=2)
    m = AutoModelForCausalLM.from_pretrained(str(tiny))
    tok = AutoTokenizer.from_pretrained(str(tiny))
    assert tok.pad_token_id != tok.eos_token_id and tok.chat_template
    assert m.config.vocab_size >= len(tok)


@pytest.mark.slow
def test_sigkill_then_resume_matches_straight_run(data_dir, tmp_path):
    """A hard kill loses the steps since the last checkpoint; --resume redoes them identically."""
    import signal
    import time

    from pretrain.train import train

    common = ["--data", str(data_dir), *SMALL, "--max-steps", "40", "--eval-interval", "1000",
              "--ckpt-interval", "3", "--batch-size", "4"]
    p = subprocess.Popen([sys.executable, "-m", "pretrain.train", *common, "--out", str(tmp_path / "k")],
                         env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = tmp_path / "k" / "ckpt.pt"
    deadline = time.time() + 120
    while not ck.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = torch.load(ck, weights_only=False)["step"]
    assert killed_at < 40, "the run finished before it could be killed"
    r = subprocess.run([sys.executable, "-m", "pretrain.train", "--out", str(tmp_path / "k"), "--resume",
                        "--no-progress"], env=ENV, cwd=ROOT, check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    straight = train(common + ["--out", str(tmp_path / "s")])["model"].state_dict()
    resumed = torch.load(ck, weights_only=False)
    assert resumed["step"] == 40
    assert all(torch.equal(v, resumed["model"][k]) for k, v in straight.items())
