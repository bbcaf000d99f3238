"""rlhf.generate: responses stored with params, tasks created with the requested counts, idempotent re-runs."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests import rlhf_helpers as H

PROMPTS = ["say hi", "name a color", "an animal", "weather"]
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a drink"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gen")
    a = H.build_tiny_lm(root / "a", seed=0)
    b = root / "b"
    shutil.copytree(a, b)  # same tokenizer, different weights
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(a, attn_implementation="sdpa")
    import torch

    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.save_pretrained(b)
    return a, b


def _seed(url: str) -> None:
    from db.services import content, projects
    from db.session import session_scope

    H.make_project(url, "g")
    with session_scope(url) as s:
        pid = projects.get_project(s, "g").id
        for p in PROMPTS:
            content.add_prompt(s, pid, text=p)
        content.add_prompt(s, pid, messages=CHAT)
    H.add_demonstrations(url, "g", [("say hi", "hello world")])  # also a few-shot example


def _state(url: str):
    from sqlalchemy import select

    from db.models import Response, Task
    from db.session import session_scope

    with session_scope(url) as s:
        responses = {r.id: (r.prompt_id, r.model_version_id, r.sample_index, r.params)
                     for r in s.scalars(select(Response).where(Response.model_version_id.is_not(None)))}
        tasks = [(t.kind, t.prompt_id, list(t.response_ids)) for t in s.scalars(select(Task).order_by(Task.id))]
    return responses, tasks


def test_generate_compare_across_versions_randomized_and_idempotent(models, sqlite_url):
    from db.services import registry
    from db.session import session_scope
    from rlhf import generate

    a, b = models
    _seed(sqlite_url)
    with session_scope(sqlite_url) as s:
        registry.register_model_version(s, "tiny-a", "base", str(a))
    argv = ["--project", "g", "--models", "tiny-a", str(b), "--num_samples", "2", "--tasks", "compare",
            "--pairs_per_prompt", "3", "--max_new_tokens", "6", "--few_shot", "1", "--temperature", "0.9",
            "--top_p", "0.95", "--database_url", sqlite_url, "--no_progress"]
    first = generate.main(argv)
    n = len(PROMPTS) + 1
    assert first["responses"] == {"generated": n * 2 * 2, "reused": 0}
    assert first["tasks"]["compare"] == {"created": n * 3, "existing": 0}
    responses, tasks = _state(sqlite_url)
    assert len(responses) == n * 4
    assert all(p[3]["temperature"] == 0.9 and p[3]["top_p"] == 0.95 and p[3]["max_new_tokens"] == 6
               for p in responses.values())
    import torch

    auto = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    assert {p[3]["dtype"] for p in responses.values()} == {auto}
    with session_scope(sqlite_url) as s:
        ext = registry.resolve(s, str(b))
        assert ext.kind == "external"
    by_prompt = Counter(pid for kind, pid, _ in tasks if kind == "compare")
    assert set(by_prompt.values()) == {3}
    first_pos = Counter()
    for kind, _pid, rids in tasks:
        if kind != "compare":
            continue
        versions = [responses[r][1] for r in rids]
        assert len(set(versions)) == 2  # always one response of each version
        first_pos[versions[0]] += 1
    assert len(first_pos) == 2  # A/B positions are randomized, not always the same version first
    # base models get plain prompts with few-shot examples; the chat prompt is rendered with the template
    chat_pid = max(pid for _, pid, _ in tasks)
    assert all(p[3]["chat_template"] == (p[0] == chat_pid) for p in responses.values())
    assert any(p[3]["few_shot"] == 1 for p in responses.values())
    # "say hi" has the project's only accepted demonstration: never its own few-shot example, although the
    # export hands the project's prompts over as chat turns (there is a chat prompt) and "say hi" is plain text
    say_hi = min(pid for _, pid, _ in tasks)
    assert {p[3]["few_shot"] for p in responses.values() if p[0] == say_hi} == {0}

    again = generate.main(argv)
    assert again["responses"] == {"generated": 0, "reused": n * 4}
    assert again["tasks"]["compare"] == {"created": 0, "existing": n * 3}
    assert _state(sqlite_url) == (responses, tasks)


def test_generate_rank_and_demonstrate_tasks(models, sqlite_url, capsys):
    from rlhf import generate

    a, _ = models
    _seed(sqlite_url)
    with pytest.raises(SystemExit):
        generate.main(["--project", "g", "--models", str(a), "--num_samples", "2", "--tasks", "rank",
                       "--database_url", sqlite_url])
    assert "K >= 3" in capsys.readouterr().err
    # bfloat16 weights (the CUDA default) also run on CPU: the GPU's generate path, left padding included
    out = generate.main(["--project", "g", "--models", str(a), "--num_samples", "3", "--tasks", "rank,demonstrate",
                         "--max_new_tokens", "5", "--database_url", sqlite_url, "--no_progress", "--dtype", "bfloat16"])
    n = len(PROMPTS) + 1
    responses, _ = _state(sqlite_url)
    assert len(responses) == 3 * n and {p[3]["dtype"] for p in responses.values()} == {"bfloat16"}
    assert out["tasks"]["rank"] == {"created": n, "existing": 0}
    # every prompt but the one with a demonstration gets a demonstrate task (it already had one from seeding)
    _, tasks = _state(sqlite_url)
    assert Counter(k for k, _, _ in tasks) == Counter({"rank": n, "demonstrate": n})
    assert all(len(rids) == 3 for k, _, rids in tasks if k == "rank")
    assert out["tasks"]["demonstrate"]["created"] == n - 1


def test_generate_fits_prompts_and_few_shot_examples_into_the_context(tmp_path, sqlite_url, capsys, caplog):
    """A model of 32 positions: too-long few-shot examples are dropped, a too-long prompt is left-truncated,
    and a --max_new_tokens that cannot fit at all is a clear error."""
    from db.services import content, projects
    from db.session import session_scope
    from rlhf import generate

    short = H.build_tiny_lm(tmp_path / "short", chat=False, n_positions=32)
    long_text = " ".join(H.WORDS)  # > 32 tokens
    H.make_project(sqlite_url, "c")
    H.add_demonstrations(sqlite_url, "c", [("an example", long_text)])  # the only few-shot example: too long
    with session_scope(sqlite_url) as s:
        pid = projects.get_project(s, "c").id
        short_id = content.add_prompt(s, pid, text="say hi")[0].id
        long_id = content.add_prompt(s, pid, text=long_text)[0].id
    with caplog.at_level("WARNING", logger="rlhf.generate"):
        out = generate.main(["--project", "c", "--models", str(short), "--num_samples", "1", "--tasks", "none",
                             "--few_shot", "1", "--max_new_tokens", "8", "--database_url", sqlite_url,
                             "--no_progress"])
    assert out["responses"]["generated"] == 3
    responses, _ = _state(sqlite_url)
    params = {pid_: p for pid_, _v, _k, p in responses.values()}
    assert params[short_id]["few_shot"] == 0 and "prompt_truncated_tokens" not in params[short_id]
    assert params[long_id]["prompt_truncated_tokens"] > 0
    assert "few-shot examples do not fit" in caplog.text and f"prompt {long_id}:" in caplog.text

    with pytest.raises(SystemExit):
        generate.main(["--project", "c", "--models", str(short), "--num_samples", "1", "--tasks", "none",
                       "--max_new_tokens", "40", "--regenerate", "--database_url", sqlite_url, "--no_progress"])
    err = capsys.readouterr().err
    assert "--max_new_tokens 40" in err and "32" in err and "prompt" in err


def test_generate_reruns_create_nothing_new_and_follow_regenerated_samples(models, sqlite_url, caplog):
    """compare + rank from the same pool, run again: no extra tasks (each choice has its own random stream);
    after --regenerate a plain re-run builds on the new samples; changed settings are pointed out."""
    from rlhf import generate

    a, _ = models
    _seed(sqlite_url)
    argv = ["--project", "g", "--models", str(a), "--num_samples", "4", "--tasks", "compare,rank",
            "--pairs_per_prompt", "2", "--rank_size", "3", "--max_new_tokens", "4", "--database_url", sqlite_url,
            "--no_progress", "--seed", "7"]
    argv8 = argv[:-1] + ["8"]  # other samples (same-text samples are stored once)
    n = len(PROMPTS) + 1
    first = generate.main(argv)
    assert first["tasks"] == {"compare": {"created": 2 * n, "existing": 0}, "rank": {"created": n, "existing": 0}}
    again = generate.main(argv)
    assert again["tasks"] == {"compare": {"created": 0, "existing": 2 * n}, "rank": {"created": 0, "existing": n}}
    regen = generate.main(argv8 + ["--regenerate"])
    assert regen["responses"]["generated"] >= 4 * n - 2
    with caplog.at_level("WARNING", logger="rlhf.generate"):
        after = generate.main(argv8 + ["--temperature", "0.5"])
    assert after["responses"] == {"generated": 0, "reused": 4 * n}
    assert after["tasks"]["compare"]["created"] == 0 and after["tasks"]["rank"]["created"] == 0
    assert "pass --regenerate" in caplog.text and "temperature was 1.0 (now 0.5)" in caplog.text


def test_fit_prompt_keeps_bos_and_stop_tokens_merge():
    from types import SimpleNamespace

    from rlhf.generate import _Prompt, fit_prompt
    from rlhf.modeling import stop_token_ids

    class BosTokenizer:  # a Llama-style tokenizer: BOS added to plain text
        bos_token_id = 1

        def __call__(self, text, add_special_tokens=True):
            ids = [100 + i for i in range(len(text.split()))]
            return {"input_ids": ([1] if add_special_tokens else []) + ids}

    ids, _, cut = fit_prompt(BosTokenizer(), _Prompt(1, "a b c d e f", False), False, [], None)
    assert ids == [1, 100, 101, 102, 103, 104, 105] and cut == 0
    ids, _, cut = fit_prompt(BosTokenizer(), _Prompt(1, "a b c d e f", False), False, [], 4)
    assert ids == [1, 103, 104, 105] and cut == 3  # the start of the text is cut, not the BOS

    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[5, 7]))
    assert stop_token_ids(model, SimpleNamespace(eos_token_id=7)) == [5, 7]  # end-of-turn ids are kept
    assert stop_token_ids(model, SimpleNamespace(eos_token_id=9)) == [5, 7, 9]
    model.generation_config.eos_token_id = None
    assert stop_token_ids(model, SimpleNamespace(eos_token_id=9)) == [9]


def test_a_local_directory_is_never_mistaken_for_a_version_of_the_same_name(models, sqlite_url, tmp_path,
                                                                          monkeypatch):
    from db.services import registry
    from db.session import session_scope
    from rlhf.modeling import ensure_registered, resolve_model

    a, b = models
    with session_scope(sqlite_url) as s:
        registry.register_model_version(s, "hf", "base", str(a))  # registered from another folder as "hf"
    shutil.copytree(b, tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    m = resolve_model("hf", sqlite_url)
    assert m.path == str((tmp_path / "hf").resolve()) and m.version_id is None
    with session_scope(sqlite_url) as s:
        mv = ensure_registered(s, m)
        assert mv.path == m.path and mv.name == m.path  # "hf" is taken by the other weights
    assert resolve_model(str(a), sqlite_url).version_name == "hf"  # and that one still resolves by its path
