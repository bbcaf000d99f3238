"""rlhf.train_reward and rlhf.evaluate on programmatic preferences with tiny local models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import rlhf_helpers as H

# One budget for the learnable and the shuffled run: the difference must come from the labels.
BUDGET = ["--max_steps", "40", "--learning_rate", "1e-3", "--per_device_train_batch_size", "16",
          "--logging_steps", "20", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0"]


def test_reward_from_project_learns_registers_normalizes_and_evaluates(tiny, sqlite_url, home, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from db.services import export, registry
    from db.session import session_scope
    from rlhf import evaluate, reward, train_reward
    from rlhf.formatting import format_sft_row

    H.make_project(sqlite_url, "rm")
    pref_ids = H.add_preferences(sqlite_url, "rm", H.polite_pairs(150, seed=1))
    rank_id = H.add_ranking(sqlite_url, "rm", "rank these", ["please sit", "sit", "go away now"])
    demos = [("say hi", "hello please"), ("name a color", "red blue"), ("weather", "rain please today")]
    H.add_demonstrations(sqlite_url, "rm", demos)
    with session_scope(sqlite_url) as s:
        registry.register_model_version(s, "base-tiny", "base", str(tiny))

    out = train_reward.main(["--model", "base-tiny", "--project", "rm", "--database_url", sqlite_url,
                             "--name", "rm-a", "--eval_fraction", "0.3", *BUDGET])
    m = out["metrics"]
    assert m["eval_pairs"] >= 30 and m["train_pairs"] + m["eval_pairs"] == 150 + 3  # ranking → 3 pairs
    assert m["eval_accuracy"] >= 0.9, m
    assert m["eval_margin"] > 0 and 0 <= m["eval_ece"] <= 1
    assert m["reward_shift_method"] == "final_norm_bias"

    run = Path(out["run_dir"])
    for f in ("model.safetensors", "tokenizer.json", "metrics.jsonl", "job_config.yaml"):
        assert (run / f).is_file(), f
    with session_scope(sqlite_url) as s:
        mv = registry.resolve(s, "rm-a")
        assert mv.kind == "reward" and registry.resolve(s, mv.parent_id).name == "base-tiny"
        assert mv.label_snapshot["ids"] == {"preference_labels": sorted(pref_ids), "rankings": [rank_id]}
        assert mv.metrics["eval_accuracy"] == m["eval_accuracy"] and "eval_ece" in mv.metrics
        # the truncation rule and its counts travel with the version
        assert mv.config["max_length"] == 256 and mv.config["train_pairs_too_long"] == 0
        assert mv.metrics["train_pairs_truncated"] == 0 and mv.metrics["train_rankings"] == m["train_rankings"]

    # reloaded with plain AutoModelForSequenceClassification, demonstrations score mean 0
    tok = AutoTokenizer.from_pretrained(run)
    rm = AutoModelForSequenceClassification.from_pretrained(run, attn_implementation="sdpa")
    rows = [format_sft_row({"prompt": p, "completion": c}, chat=True) for p, c in demos]
    scores = reward.score(rm, tok, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert abs(sum(scores) / len(scores)) < 1e-3
    assert reward.info(rm)["chat_template"] is True

    # any preference file, any reward model: the exported file scores like the held-out set
    f = tmp_path / "prefs.jsonl"
    with session_scope(sqlite_url) as s:
        export.export_file(s, "preferences", f, project="rm")
    res = evaluate.main(["reward", "--model", str(run), "--dataset", str(f), "--out", str(tmp_path / "m.json")])
    assert res["pairs"] == 153 and res["accuracy"] >= 0.9
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] == res["accuracy"]


def test_reward_on_shuffled_labels_stays_near_chance(tiny, home, tmp_path):
    from rlhf import train_reward

    rows = [{"prompt": p, "chosen": g, "rejected": b} for p, g, b in H.polite_pairs(150, seed=1,
                                                                                    shuffle_labels=True)]
    f = H.write_jsonl(tmp_path / "shuffled.jsonl", rows)
    out = train_reward.main(["--model", str(tiny), "--dataset", str(f), "--no_register", "--eval_fraction", "0.3",
                             "--output_dir", str(tmp_path / "rm-shuffled"), *BUDGET])
    m = out["metrics"]
    assert m["eval_pairs"] >= 30
    assert 0.25 <= m["eval_accuracy"] <= 0.75, m


def test_reward_with_bf16_autocast_learns_and_saves_float32(tiny, home, tmp_path):
    """The CUDA default (bf16 mixed precision) runs the same job on CPU through CPU autocast."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf import train_reward

    rows = [{"prompt": p, "chosen": g, "rejected": b} for p, g, b in H.polite_pairs(150, seed=1)]
    f = H.write_jsonl(tmp_path / "polite.jsonl", rows)
    out = train_reward.main(["--model", str(tiny), "--dataset", str(f), "--no_register", "--eval_fraction", "0.3",
                             "--output_dir", str(tmp_path / "rm-bf16"), *BUDGET, "--bf16", "true"])
    assert out["trainer"].accelerator.mixed_precision == "bf16"
    assert out["metrics"]["eval_accuracy"] >= 0.9, out["metrics"]
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm-bf16")
    assert {p.dtype for p in saved.parameters()} == {torch.float32}  # master weights stay float32


def _polite_rankings(url: str, project: str, n: int) -> None:
    """Rankings of 4: the more 'please', the better (a property the model can learn)."""
    import random

    rng = random.Random(5)
    for i in range(n):
        words = [rng.choice(H.WORDS) for _ in range(rng.randint(3, 5))]
        replies = []
        for k in range(4):
            w = list(words)
            for _ in range(k):
                w.insert(rng.randint(0, len(w)), "please")
            replies.append(" ".join(w))
        H.add_ranking(url, project, f"ranked request {i}: {rng.choice(H.WORDS)}", replies[::-1])


def test_reward_from_rankings_trains_each_ranking_as_one_row(tiny, sqlite_url, home, tmp_path):
    import torch

    from db.services import export
    from db.session import session_scope
    from rlhf import train_reward

    H.make_project(sqlite_url, "rk")
    _polite_rankings(sqlite_url, "rk", 60)
    budget = [a if a != "16" else "4" for a in BUDGET]  # 4 rankings (16 responses, 24 pairs) per batch
    out = train_reward.main(["--model", str(tiny), "--project", "rk", "--database_url", sqlite_url, "--name", "rk-g",
                             "--eval_fraction", "0.25", *budget])
    m = out["metrics"]
    assert m["train_pairs"] == 6 * m["train_rankings"] and m["train_rankings"] >= 30
    assert m["eval_accuracy"] >= 0.9, m
    trainer = out["trainer"]
    assert type(trainer).__name__ == "RankingRewardTrainer"
    assert len(trainer.train_dataset) == m["train_rankings"]
    sizes = {}
    for batch in trainer.get_train_dataloader():  # whole rankings: 4 responses and 6 pairs each, 4 per batch
        rows = batch["pair_row"].unique(return_counts=True)[1]
        assert set(rows.tolist()) == {6} and len(rows) <= 4
        assert batch["input_ids"].shape[0] == 4 * len(rows)  # each response scored once, not once per pair
        sizes[len(rows)] = sizes.get(len(rows), 0) + 1
    assert sizes.get(4, 0) >= 7
    # the exported file carries the same groups: same training either way
    with session_scope(sqlite_url) as s:
        f = tmp_path / "rk.jsonl"
        export.export_file(s, "preferences", f, project="rk")
    rows = [json.loads(x) for x in f.read_text().splitlines()]
    assert len({r["group"] for r in rows}) == 60 and len(rows) == 360
    from_file = train_reward.main(["--model", str(tiny), "--dataset", str(f), "--no_register", "--eval_fraction",
                                   "0.25", "--output_dir", str(tmp_path / "rm-file"), *budget])
    a, b = trainer.model.state_dict(), from_file["trainer"].model.state_dict()
    da, db_ = trainer.train_dataset, from_file["trainer"].train_dataset
    assert da.column_names == db_.column_names
    for col in da.column_names:
        assert da[col] == db_[col], col
    assert m["train_loss"] == from_file["metrics"]["train_loss"], (m, from_file["metrics"])
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    flat = train_reward.main(["--model", str(tiny), "--dataset", str(f), "--no_register", "--no_group_rankings",
                              "--output_dir", str(tmp_path / "rm-flat"), "--eval_fraction", "0.25", *budget])
    assert flat["metrics"]["train_rankings"] == flat["metrics"]["train_pairs"]
    assert {len(x) for x in flat["trainer"].train_dataset["pairs"]} == {1}
    assert not all(torch.equal(a[k], flat["trainer"].model.state_dict()[k]) for k in a)


def test_reward_from_hh_file_with_added_pad_token(tmp_path, home):
    from rlhf import train_reward

    nopad = H.build_tiny_lm(tmp_path / "nopad", pad=False, chat=False)
    rows = [{"chosen": f"\n\nHuman: {p}\n\nAssistant: {g}", "rejected": f"\n\nHuman: {p}\n\nAssistant: {b}"}
            for p, g, b in H.polite_pairs(12)]
    f = H.write_jsonl(tmp_path / "hh.jsonl", rows)
    out = train_reward.main(["--model", str(nopad), "--dataset", str(f), "--no_register", "--add_pad_token",
                             "--max_steps", "2", "--save_strategy", "no", "--disable_tqdm", "true",
                             "--output_dir", str(tmp_path / "rm-hh")])
    tok = out["trainer"].processing_class
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    assert out["metrics"]["train_pairs"] + out["metrics"]["eval_pairs"] == 12


def test_reward_with_held_out_pair_and_demonstration_longer_than_the_context(tmp_path, home):
    """Rows longer than the model's context: prompts cut from the left and counted; a pair whose response alone
    does not fit is left out and counted; the model is saved and the metrics say so."""
    from transformers import AutoModelForSequenceClassification

    from rlhf import evaluate, train_reward

    short = H.build_tiny_lm(tmp_path / "short", chat=False, n_positions=32)
    long_text = " ".join(H.WORDS * 2)  # far more than 32 tokens
    train = H.write_jsonl(tmp_path / "train.jsonl", [{"prompt": p, "chosen": g, "rejected": b}
                                                     for p, g, b in H.polite_pairs(12)])
    held = [{"prompt": p, "chosen": g, "rejected": b} for p, g, b in H.polite_pairs(4, seed=3)]
    held.append({"prompt": long_text, "chosen": "please sit", "rejected": "sit"})
    held.append({"prompt": "hi", "chosen": long_text, "rejected": "sit"})
    ev = H.write_jsonl(tmp_path / "eval.jsonl", held)
    demos = H.write_jsonl(tmp_path / "demos.jsonl", [{"prompt": "say hi", "completion": "hello please"},
                                                    {"prompt": long_text, "completion": "ok please"}])
    out = train_reward.main(["--model", str(short), "--dataset", str(train), "--eval_dataset", str(ev),
                             "--normalize_dataset", str(demos), "--no_register", "--max_steps", "2",
                             "--save_strategy", "no", "--disable_tqdm", "true",
                             "--output_dir", str(tmp_path / "rm-long")])
    m = out["metrics"]
    assert m["max_length"] == 32  # the default: the model's context
    assert m["eval_pairs"] == 6 and m["eval_pairs_too_long"] == 1 and m["eval_pairs_truncated"] == 1
    assert m["eval_pairs_scored"] == 5 and m["eval_truncated_pairs"] == 1
    assert len(out["trainer"].eval_dataset) == 5 and m["eval_accuracy"] is not None
    assert m["normalized_on"] == 2 and m["normalize_truncated"] == 1
    run = Path(out["run_dir"])
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["final"] and final["eval_pairs_too_long"] == 1 and final["normalize_truncated"] == 1
    rm = AutoModelForSequenceClassification.from_pretrained(run, attn_implementation="sdpa")
    assert rm.config.instructloop["normalized_on"] == 2  # the normalized model is the one saved
    assert rm.config.instructloop["max_length"] == 32

    res = evaluate.main(["reward", "--model", str(run), "--dataset", str(ev)])
    assert res["pairs"] == 5 and res["truncated_pairs"] == 1 and res["pairs_too_long"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("procs", [1, 2])
def test_ranking_reward_stop_resume_and_torchrun(procs, tiny, sqlite_url, home, tmp_path):
    """Stopped mid-epoch by --stop_at_step (in epoch 1 on one process, in epoch 2 on two) and resumed: the ranking
    batches replay exactly, so the weights equal a straight run's; under torchrun the two processes split the
    groups (fewer steps per epoch) and the version is registered once."""
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file
    from sqlalchemy import func, select

    from db.models import ModelVersion
    from db.session import session_scope

    root = Path(__file__).resolve().parents[1]
    H.make_project(sqlite_url, "rr")
    _polite_rankings(sqlite_url, "rr", 9)  # 5 batches of 2 rankings: 5 steps/epoch on 1 process, 3 on 2
    launch = [sys.executable, "-m", "rlhf.train_reward"] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rlhf.train_reward"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "INSTRUCTLOOP_HOME": str(home)}
    common = ["--model", str(tiny), "--project", "rr", "--database_url", sqlite_url, "--eval_fraction", "0",
              "--per_device_train_batch_size", "2", "--max_steps", "7", "--save_steps", "100", "--learning_rate",
              "1e-3", "--disable_tqdm", "true", "--seed", "0", "--no_normalize"]

    def job(*extra: str) -> None:
        r = subprocess.run(launch + common + list(extra), env=env, cwd=root, capture_output=True, text=True,
                           timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-4000:]

    job("--name", "straight", "--output_dir", str(tmp_path / "a"))
    job("--name", "sliced", "--output_dir", str(tmp_path / "b"), "--stop_at_step", "4")
    assert (tmp_path / "b" / "checkpoint-4").is_dir() and not (tmp_path / "b" / "model.safetensors").exists()
    job("--name", "sliced", "--output_dir", str(tmp_path / "b"), "--resume")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    logs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logs if "train_runtime" in r][-1]  # the trainer's own end-of-training line
    assert last["epoch"] == pytest.approx(7 / (5 if procs == 1 else 3))  # 2 processes: each reads half
    with session_scope(sqlite_url) as s:
        names = dict(s.execute(select(ModelVersion.name, func.count()).group_by(ModelVersion.name)).all())
    assert names.get("straight") == 1 and names.get("sliced") == 1
