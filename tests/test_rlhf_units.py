"""rlhf pieces that need no training: data path, formatting, metrics, reward shift, bad input, --help."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from db.services.errors import InputError
from rlhf import data, reward
from rlhf.config import DeviceDefaults
from rlhf.formatting import format_preference_row, format_sft_row, plain_prompt
from tests import rlhf_helpers as H


def test_split_by_prompt_is_deterministic_and_keeps_groups_together():
    rows = [{"prompt": f"p{i % 7}", "chosen": "a", "rejected": f"b{i}"} for i in range(70)]
    train, held = data.split_by_prompt(rows, 0.3)
    assert (train, held) == data.split_by_prompt(list(rows), 0.3)
    assert train and held and len(train) + len(held) == 70
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    # tiny data still gets a held-out prompt, and never an empty train set
    t, h = data.split_by_prompt(rows[:2], 0.01)
    assert len(t) == 1 and len(h) == 1
    t, h = data.split_by_prompt(rows[:1], 0.5)
    assert len(t) == 1 and h == []


def test_formatting_plain_and_chat():
    assert plain_prompt("2+3=") == "2+3=\n" and plain_prompt("x\n") == "x\n"
    chat = format_sft_row({"prompt": "hi", "completion": "hello"}, chat=True)
    assert chat == {"prompt": [{"role": "user", "content": "hi"}],
                    "completion": [{"role": "assistant", "content": "hello"}]}
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    plain = format_preference_row({"prompt": msgs, "chosen": [{"role": "assistant", "content": "yo"}],
                                   "rejected": "no", "group": "g"}, chat=False)
    assert plain == {"prompt": "System: be brief\n\nUser: hi\n", "chosen": "yo", "rejected": "no", "margin": 0.0,
                     "group": "g"}  # a ranking's pairs keep their group (one batch element in training)


def test_pairwise_metrics_ties_count_as_wrong_and_ece():
    m = reward.pairwise_metrics([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 1.0, 0.0])
    assert m["accuracy"] == pytest.approx(0.5)  # the tie (2.0 vs 2.0) is wrong
    assert m["margin"] == pytest.approx((1 + 0 - 0.5 + 3) / 4)
    # confident and always right → ECE ≈ 1 - confidence; confident and always wrong → ECE ≈ confidence
    right = reward.pairwise_metrics([10.0] * 5, [0.0] * 5)
    wrong = reward.pairwise_metrics([0.0] * 5, [10.0] * 5)
    assert right["ece"] < 1e-3 and wrong["ece"] > 0.99


def test_preference_files_trl_hh_and_missing_columns(tmp_path):
    trl = H.write_jsonl(tmp_path / "trl.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1.0},
                                                 {"prompt": "q2", "chosen": "c", "rejected": "d", "tie": "tie"}])
    rows = data.preference_rows_from_file(trl)
    assert rows.rows == [{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1.0}] and rows.dropped == 1
    assert rows.source["sha256"] and rows.snapshot()["dataset"].endswith("trl.jsonl")
    hh = H.write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: hi\n\nAssistant: hello",
                                               "rejected": "\n\nHuman: hi\n\nAssistant: go away"}])
    assert data.preference_rows_from_file(hh).rows == [
        {"prompt": "hi", "chosen": "hello", "rejected": "go away", "margin": 0.0}]
    bad = H.write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "a"}])
    with pytest.raises(InputError, match="rejected"):
        data.preference_rows_from_file(bad)
    sft_bad = H.write_jsonl(tmp_path / "sft_bad.jsonl", [{"prompt": "q", "answer": "a"}])
    with pytest.raises(InputError, match="missing column.*completion"):
        data.sft_rows_from_file(sft_bad)
    msgs = H.write_jsonl(tmp_path / "msgs.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                                {"role": "assistant", "content": "a"}]}])
    assert data.sft_rows_from_file(msgs).rows == [{"prompt": [{"role": "user", "content": "q"}],
                                                   "completion": [{"role": "assistant", "content": "a"}]}]


def test_reward_shift_survives_save_and_load(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = reward_model = __import__("rlhf.modeling", fromlist=["x"]).load_reward_model(str(tiny))
    prompts = [[{"role": "user", "content": "say hi"}], [{"role": "user", "content": "name a color"}]]
    comps = [[{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "red"}]]
    before = reward.score(model, tok, prompts, comps)
    out = reward.normalize(reward_model, tok, prompts, comps)
    assert out["reward_shift_method"] == "final_norm_bias"
    assert out["reward_shift"] == pytest.approx(sum(before) / 2, abs=1e-5)
    model.save_pretrained(tmp_path / "rm")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", attn_implementation="sdpa")
    after = reward.score(again, tok, prompts, comps)
    assert sum(after) / 2 == pytest.approx(0.0, abs=1e-4)
    assert after[0] - after[1] == pytest.approx(before[0] - before[1], abs=1e-4)  # differences unchanged
    assert reward.info(again)["reward_shift"] == pytest.approx(out["reward_shift"])


def test_reward_model_without_pad_token_fails_before_training(tmp_path, sqlite_url, home, capsys):
    nopad = H.build_tiny_lm(tmp_path / "nopad", pad=False)
    f = H.write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 4)
    from rlhf import train_reward

    with pytest.raises(SystemExit) as e:
        train_reward.main(["--model", str(nopad), "--dataset", str(f), "--no_register", "--max_steps", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no pad token" in err and "--add_pad_token" in err
    assert not (home / "train_reward").exists()  # nothing started


def test_empty_project_and_bad_dataset_fail_clearly(tiny, tmp_path, sqlite_url, home, capsys):
    from rlhf import generate, train_reward, train_sft

    H.make_project(sqlite_url, "empty")
    with pytest.raises(SystemExit):
        train_sft.main(["--model", str(tiny), "--project", "empty", "--database_url", sqlite_url])
    assert "project 'empty' has no demonstrations" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_reward.main(["--model", str(tiny), "--project", "empty", "--database_url", sqlite_url])
    assert "no preference labels or rankings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_reward.main(["--model", str(tiny), "--project", "nope", "--database_url", sqlite_url])
    assert "unknown project 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate.main(["--project", "empty", "--models", str(tiny), "--database_url", sqlite_url])
    assert "has no prompts" in capsys.readouterr().err
    bad = H.write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(SystemExit):
        train_reward.main(["--model", str(tiny), "--dataset", str(bad), "--no_register"])
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "prompt" in err
    assert not home.exists()


def test_help_lists_our_and_trl_flags():
    out = subprocess.run([sys.executable, "-m", "rlhf.train_reward", "--help"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    for flag in ("--project", "--dataset", "--resume", "--center_rewards_coefficient", "--learning_rate",
                 "--normalize", "--config"):
        assert flag in out.stdout, flag


def test_config_yaml_device_defaults_and_cli_override(tmp_path):
    from rlhf.config import parse, sft_config_class

    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("project: demo\nmax_steps: 7\nlearning_rate: 0.002\nstatuses: accepted,submitted\n")
    cfg = parse(sft_config_class(), ["--config", str(cfg_file), "--model", "m", "--max_steps", "9"], "p", "d")
    assert (cfg.project, cfg.max_steps, cfg.learning_rate, cfg.statuses) == ("demo", 9, 0.002,
                                                                           "accepted,submitted")
    import torch

    if not torch.cuda.is_available():  # CPU: float32 and no checkpointing, whatever TRL's defaults say
        assert cfg.bf16 is False and cfg.gradient_checkpointing is False
        # bf16 asked for on CPU: CPU autocast, instead of transformers' "doesn't support bf16/gpu" error
        cfg = parse(sft_config_class(), ["--model", "m", "--bf16", "true"], "p", "d")
        assert cfg.bf16 is True and cfg.use_cpu is True


@dataclass
class _Args(DeviceDefaults):
    """The TrainingArguments fields DeviceDefaults reads and writes (transformers 5 names)."""

    fp16: bool = False
    activation_checkpointing: bool | None = None
    dataloader_pin_memory: bool = True
    use_cpu: bool = False


@pytest.mark.parametrize("gpu", [True, False])
def test_device_defaults_follow_the_hardware(monkeypatch, gpu):
    """What a job picks on a bf16 CUDA GPU vs a CPU, decided from the (faked) hardware."""
    from rlhf import config

    monkeypatch.setattr(config, "cuda_available", lambda: gpu)
    monkeypatch.setattr(config, "bf16_available", lambda: gpu)
    a = _Args()
    a._resolve_device_defaults()
    # CPU said explicitly: launchers' processes then form one gloo job (accelerate's MULTI_CPU needs it)
    assert a.bf16 is gpu and a.dataloader_pin_memory is gpu and a.use_cpu is (not gpu)
    assert a.activation_checkpointing is False  # decided per model below
    small, big = torch.nn.Linear(10, 10), torch.nn.Linear(100, 100)  # 110 and 10,100 parameters
    monkeypatch.setattr(config, "CHECKPOINTING_MIN_PARAMS", 1000)
    a.finalize_for_model(small)
    assert a.activation_checkpointing is False
    a.finalize_for_model(big)
    assert a.activation_checkpointing is gpu  # only where activations are the memory problem
    explicit = _Args(activation_checkpointing=False, bf16=False)
    explicit._resolve_device_defaults()
    explicit.finalize_for_model(big)
    assert explicit.activation_checkpointing is False and explicit.bf16 is False  # the user's word wins
    fp16 = _Args(fp16=True)
    fp16._resolve_device_defaults()
    assert fp16.bf16 is False


def test_inference_dtype():
    from db.services.errors import InputError
    from rlhf.modeling import inference_dtype

    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert inference_dtype("auto") == (torch.bfloat16 if gpu_bf16 else torch.float32)
    assert inference_dtype("bfloat16") == torch.bfloat16 and inference_dtype("float32") == torch.float32
    with pytest.raises(InputError, match="unknown dtype 'fp8'"):
        inference_dtype("fp8")


# ------------------------------------------------------------------ run names under several processes

@pytest.mark.parametrize("rank", ["0", "1"])
def test_default_name_is_the_same_on_every_rank(monkeypatch, rank):
    from rlhf import runs

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.delenv("INSTRUCTLOOP_RUN_ID", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "a1b2c3")
    assert runs.default_name("train_sft", "proj", None) == "train_sft-proj-a1b2c3"
    monkeypatch.setenv("INSTRUCTLOOP_RUN_ID", "nightly 7")
    assert runs.default_name("train_sft", "proj", None) == "train_sft-proj-nightly-7"


def test_default_name_without_a_shared_run_id_requires_name(monkeypatch):
    from rlhf import runs

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.delenv("INSTRUCTLOOP_RUN_ID", raising=False)
    for run_id in (None, "none"):  # torchrun's default rendezvous id names no run
        if run_id is None:
            monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
        else:
            monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
        with pytest.raises(InputError, match="--name") as e:
            runs.default_name("train_reward", None, "d.jsonl")
        assert e.value.field == "name"


def test_default_name_single_process_is_timestamped(monkeypatch):
    import re

    from rlhf import runs

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "ignored")
    assert re.fullmatch(r"train_sft-d-\d{8}-\d{6}", runs.default_name("train_sft", None, "x/d.jsonl"))


def test_jobs_started_in_the_same_second_get_their_own_folders(monkeypatch, home):
    from types import SimpleNamespace

    from rlhf import runs

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(runs, "default_name", lambda job, project, dataset: "train_sft-d-20261128-081500")
    cfgs = [SimpleNamespace(name=None, output_dir=None, resume=False, register=False, project=None,
                            dataset="d.jsonl") for _ in range(3)]
    got = [runs.setup_run(c, "train_sft") for c in cfgs]
    assert [n for n, _ in got] == ["train_sft-d-20261128-081500", "train_sft-d-20261128-081500-2",
                                   "train_sft-d-20261128-081500-3"]
    assert len({d for _, d in got}) == 3 and all(d.is_dir() for _, d in got)


# ------------------------------------------------------------------ every flag of every job has help

def _our_fields(cls) -> set[str]:
    import dataclasses

    names = set()
    for c in cls.__mro__:
        if c.__module__.startswith("rlhf") and dataclasses.is_dataclass(c):
            names |= set(getattr(c, "__annotations__", {}))
    return names


def test_every_flag_of_every_rlhf_job_has_help():
    from trl import TrlParser

    from rlhf import evaluate, generate
    from rlhf.config import reward_config_class, sft_config_class

    for cls in (sft_config_class(), reward_config_class(), generate.GenerateArgs):
        ours = _our_fields(cls)
        assert {"model" if cls is not generate.GenerateArgs else "models", "database_url"} <= ours
        parser = TrlParser((cls,))
        seen = set()
        for action in parser._actions:
            if action.dest in ours and f"--{action.dest}" in action.option_strings:
                seen.add(action.dest)
                assert (action.help or "").strip(), f"{cls.__name__} --{action.dest} has no help"
        assert seen == ours, ours - seen
    ap = evaluate.build_parser()
    sub = next(a for a in ap._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for name, p in sub.choices.items():
        flags = [a for a in p._actions if a.dest != "help"]
        assert len(flags) >= 7
        for a in flags:
            assert (a.help or "").strip(), f"evaluate {name} {a.option_strings} has no help"


# ------------------------------------------------------------------ reward scoring past the model's context

def test_score_left_truncates_sequences_longer_than_the_context(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = H.build_tiny_lm(tmp_path / "short", chat=False, n_positions=16)
    tok = AutoTokenizer.from_pretrained(path)
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, attn_implementation="sdpa")
    rm.config.pad_token_id = tok.pad_token_id
    long_prompt = plain_prompt(" ".join(H.WORDS))
    stats: dict[str, int] = {}
    got = reward.score(rm, tok, ["hi\n", long_prompt], ["cat", "the cat"], stats=stats)
    assert stats == {"truncated": 1} and len(got) == 2
    # what is scored is the end of the sequence (completion + EOS), as if the prompt had started later
    ids = reward.encode(tok, long_prompt, "the cat")[-16:]
    import torch

    with torch.no_grad():
        direct = rm(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert got[1] == pytest.approx(direct, abs=1e-5)
    m = reward.evaluate_pairs(rm, tok, [{"prompt": long_prompt, "chosen": "cat", "rejected": "dog"},
                                        {"prompt": "hi\n", "chosen": "cat", "rejected": "dog"}])
    assert m["pairs"] == 2 and m["truncated_pairs"] == 1
    norm = reward.normalize(rm, tok, ["hi\n", long_prompt], ["cat", "the cat"])
    assert norm["normalize_truncated"] == 1 and abs(norm["demo_mean_reward_after"]) < 1e-3


def test_split_groups_a_conversation_by_its_opening_turn_past_a_shared_system_message():
    from rlhf import data

    system = {"role": "system", "content": "You are a helpful assistant."}

    def chat(opening, *more):
        turns = [system, {"role": "user", "content": opening}]
        for m in more:
            turns += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": m}]
        return turns

    rows = [{"prompt": chat(f"question {i}", *(["and then?"] * (i % 3))), "chosen": "a", "rejected": "b"}
            for i in range(60)]
    train, held = data.split_by_prompt(rows, 0.3)
    # one system prompt shared by every row must not put them all on one side
    assert 5 < len(held) < 40 and train
    opening = {id(r): r["prompt"][1]["content"] for r in rows}
    assert not {opening[id(r)] for r in train} & {opening[id(r)] for r in held}
    # branches of one conversation (same opening, more turns) stay together
    branches = [{"prompt": chat("question 7", "b1"), "chosen": "a", "rejected": "b"},
                {"prompt": chat("question 7"), "chosen": "a", "rejected": "b"}]
    assert len({data._split_key(r) for r in branches}) == 1
    assert data.conversation_start("plain") == data.conversation_start([{"role": "user", "content": "plain"}])
