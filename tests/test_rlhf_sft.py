"""rlhf.train_sft end to end on tiny local models, and rlhf.generate turning the new version into tasks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests import rlhf_helpers as H

DEMOS = [("say hi", "hello world"), ("name a color", "red blue green"), ("an animal", "the quick cat"),
         ("weather", "rain and snow"), ("a drink", "water please")]


def _version(url: str, name: str):
    from db.services import registry
    from db.session import session_scope

    with session_scope(url) as s:
        mv = registry.resolve(s, name)
        parent = registry.resolve(s, mv.parent_id) if mv.parent_id else None
        return mv, parent


def test_sft_from_project_memorizes_masks_prompt_registers_and_feeds_generate(tiny, sqlite_url, home):
    from db.services import tasks as task_svc
    from db.session import session_scope
    from rlhf import generate, train_sft

    H.make_project(sqlite_url, "p")
    demo_ids = H.add_demonstrations(sqlite_url, "p", DEMOS)
    unreviewed = H.add_demonstrations(sqlite_url, "p", [("ignored", "not accepted yet")], accept=False)
    out = train_sft.main(["--model", str(tiny), "--project", "p", "--database_url", sqlite_url, "--name", "sft-a",
                          "--max_steps", "45", "--learning_rate", "5e-3", "--lr_scheduler_type", "constant",
                          "--per_device_train_batch_size", "5", "--eval_fraction", "0", "--logging_steps", "15",
                          "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "1"])
    trainer = out["trainer"]

    # prompt tokens carry no loss: labels are -100 up to the end of the rendered prompt, then the completion
    tok = trainer.processing_class
    ex = trainer.train_dataset[0]
    n_prompt = len(tok.apply_chat_template(ex["prompt"], tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    labels = batch["labels"][0]
    unmasked = (labels != -100).nonzero().flatten().tolist()
    # the loss starts exactly at the first completion token ...
    assert unmasked[0] == n_prompt
    # ... and covers every completion token (everything the template renders after the prompt), contiguously
    n_full = len(tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True,
                                         return_dict=True)["input_ids"])
    assert n_full - n_prompt > len(tok(ex["completion"][0]["content"], add_special_tokens=False)["input_ids"])
    assert unmasked == list(range(n_prompt, n_full))
    assert len(trainer.train_dataset) == len(DEMOS)  # the unaccepted demonstration is not trained on

    # outputs: checkpoint, tokenizer, metrics.jsonl, resolved config; registered with lineage and metrics
    run = Path(out["run_dir"])
    assert run == home / "train_sft" / "sft-a"
    for f in ("model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl", "job_config.yaml"):
        assert (run / f).is_file(), f
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in x for x in lines) and lines[-1]["final"]
    mv, parent = _version(sqlite_url, "sft-a")
    assert mv.kind == "sft" and Path(mv.path) == run.resolve()
    assert parent is not None and parent.kind == "external" and parent.path == str(tiny.resolve())
    assert mv.label_snapshot["ids"] == {"demonstrations": sorted(demo_ids)}
    assert unreviewed[0] not in mv.label_snapshot["ids"]["demonstrations"]
    assert mv.label_snapshot["project"] == "p" and mv.metrics["global_step"] == 45
    assert [x for x in lines if "loss" in x][-1]["loss"] < 0.5

    # the new version reproduces its demonstrations greedily (through rlhf.generate, stored as responses)
    summary = generate.main(["--project", "p", "--models", "sft-a", "--num_samples", "1", "--temperature", "0",
                             "--tasks", "none", "--max_new_tokens", "12", "--database_url", sqlite_url,
                             "--no_progress"])
    assert summary["responses"]["generated"] == len(DEMOS) + 1
    from db.services import content, projects

    with session_scope(sqlite_url) as s:
        pid = projects.get_project(s, "p").id
        got = {p.text: [r.text for r in content.responses_for_prompt(s, p.id) if r.model_version_id == mv.id]
               for p in content.list_prompts(s, pid)}
    for prompt, demo in DEMOS:
        assert got[prompt] == [demo], (prompt, got[prompt])

    # ... and turns into new comparisons against its base model for annotators
    summary = generate.main(["--project", "p", "--models", "sft-a", str(tiny), "--num_samples", "1",
                             "--tasks", "compare", "--max_new_tokens", "6", "--database_url", sqlite_url,
                             "--no_progress"])
    assert summary["tasks"]["compare"]["created"] == len(DEMOS) + 1
    with session_scope(sqlite_url) as s:
        assert task_svc.task_counts(s, pid)["open"] == len(DEMOS) + 1


def test_sft_project_and_exported_file_train_identical_weights(tiny, sqlite_url, home, tmp_path):
    from db.services import export
    from db.session import session_scope
    from rlhf import train_sft

    H.make_project(sqlite_url, "q")
    H.add_demonstrations(sqlite_url, "q", DEMOS)
    f = tmp_path / "sft.jsonl"
    with session_scope(sqlite_url) as s:
        export.export_file(s, "sft", f, project="q", statuses=("accepted",))
    common = ["--model", str(tiny), "--max_steps", "3", "--per_device_train_batch_size", "2", "--no_register",
              "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "7", "--learning_rate", "1e-3"]
    a = train_sft.main(common + ["--project", "q", "--database_url", sqlite_url, "--output_dir",
                                 str(tmp_path / "a")])
    b = train_sft.main(common + ["--dataset", str(f), "--output_dir", str(tmp_path / "b")])
    assert a["metrics"]["train_rows"] == b["metrics"]["train_rows"] > 0
    assert a["metrics"]["train_loss"] == b["metrics"]["train_loss"]
    sa, sb = a["trainer"].model.state_dict(), b["trainer"].model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # and training moved the weights (the comparison is not vacuous)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation="sdpa").state_dict()
    assert not torch.equal(base["transformer.h.0.attn.c_attn.weight"], sa["transformer.h.0.attn.c_attn.weight"])


def test_sft_resume_after_interruption(tiny, sqlite_url, home, tmp_path, capsys):
    from rlhf import train_sft

    f = H.write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "completion": c} for p, c in DEMOS])
    args = ["--model", str(tiny), "--dataset", str(f), "--database_url", sqlite_url, "--name", "sft-r",
            "--per_device_train_batch_size", "2", "--save_steps", "2", "--disable_tqdm", "true"]
    first = train_sft.main(args + ["--max_steps", "2", "--no_register"])  # stands in for a run killed at step 2
    run = Path(first["run_dir"])
    assert (run / "checkpoint-2").is_dir()
    with pytest.raises(SystemExit):  # refusing to silently start over in a folder with checkpoints
        train_sft.main(args + ["--max_steps", "4"])
    assert "--resume" in capsys.readouterr().err
    second = train_sft.main(args + ["--max_steps", "4", "--resume"])
    assert second["metrics"]["global_step"] == 4
    assert second["trainer"].state.global_step == 4 and (run / "checkpoint-4").is_dir()
    mv, _ = _version(sqlite_url, "sft-r")
    assert mv.label_snapshot["dataset"] == str(f.resolve())


@pytest.mark.parametrize("attention", ["dense", "sparse"])  # GPT-2 and GPT-Neo (eager attention) exports
def test_sft_on_pretrain_module_output(attention, sqlite_url, home, tmp_path):
    from pretrain import pipeline
    from rlhf import train_sft

    model_dir = pipeline.build_tiny_model(tmp_path / "pt", texts=H.corpus(60), attention=attention)
    f = H.write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "completion": c} for p, c in DEMOS])
    out = train_sft.main(["--model", str(model_dir), "--dataset", str(f), "--database_url", sqlite_url,
                          "--name", "sft-pt", "--max_steps", "2", "--save_strategy", "no", "--disable_tqdm", "true"])
    assert (Path(out["run_dir"]) / "model.safetensors").is_file()
    mv, parent = _version(sqlite_url, "sft-pt")
    assert mv.kind == "sft" and parent.path == str(Path(model_dir).resolve())


@pytest.mark.slow
def test_sft_under_torchrun_splits_the_data_and_registers_once(tiny, sqlite_url, home, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo on CPU) with no change: the two processes share the rows (half the
    steps per epoch of one process) and one model version is registered."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    rows = [{"prompt": f"{a}+{b}=?", "completion": str(a + b)} for a in range(10, 18) for b in range(10, 14)]
    f = H.write_jsonl(tmp_path / "sums.jsonl", rows)  # 32 rows
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "INSTRUCTLOOP_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "rlhf.train_sft", "--model", str(tiny), "--dataset", str(f), "--database_url",
                        sqlite_url, "--name", "sft-ddp", "--eval_fraction", "0", "--per_device_train_batch_size",
                        "4", "--max_steps", "6", "--save_strategy", "no", "--disable_tqdm", "true"],
                       env=env, cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    run = home / "train_sft" / "sft-ddp"
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    end = [x for x in logs if "train_runtime" in x][-1]
    assert end["epoch"] == pytest.approx(6 / 4)  # 32 rows / (2 processes x 4) = 4 steps per epoch
    mv, _ = _version(sqlite_url, "sft-ddp")
    assert mv.kind == "sft" and (run / "model.safetensors").is_file()
    from sqlalchemy import func, select

    from db.models import ModelVersion
    from db.session import session_scope

    with session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.kind == "sft")) == 1
