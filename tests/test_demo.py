"""`make demo`: the verifiable demo tasks, the demo corpus and model build (cached), and the seeding
(python -m rlhf.demo) on a fresh database with a tiny local model."""
from __future__ import annotations

import json
import random

import pytest
from sqlalchemy import func, select

from db.models import Prompt, Response, Task
from db.services import accounts, export, projects
from db.session import session_scope
from pretrain import tasks


def test_tasks_are_verifiable_and_noise_keeps_the_form():
    rng = random.Random(0)
    for ex in tasks.examples(60, seed=3):
        assert tasks.is_correct(ex.answer, ex.answer + "\nmore text") and tasks.distance(ex.answer, ex.answer) == 0
        wrong = tasks.noisy_answer(ex, rng)
        assert not tasks.is_correct(ex.answer, wrong) and 0 < tasks.distance(ex.answer, wrong) < 1000
        # right form: a number for a number, the same words for a reversal
        assert wrong.isdigit() == ex.answer.isdigit()
        if ex.family == "reverse":
            assert sorted(wrong.split()) == sorted(ex.answer.split())
    assert tasks.distance("46", "44") < tasks.distance("46", "56") < tasks.distance("46", "no idea")
    assert tasks.distance("c b a", "c b x") < tasks.distance("c b a", "a b c") < tasks.distance("c b a", "")
    with pytest.raises(ValueError, match="unknown task family"):
        tasks.examples(3, families=("add", "sort"))


def test_corpus_mixes_tasks_in_but_never_the_project_prompts():
    from pretrain.corpus import demo_corpus, pydoc_topics

    docs = list(demo_corpus(3000, noise=0.3, docs="topics", seed=1, exclude=tasks.reserved()))
    pages = list(pydoc_topics())
    topics = set(pages)
    assert len(docs) == 3000 + len(pages) and topics <= set(docs)
    by_prompt = {e.prompt: e for e in tasks.project_prompts(tasks.RESERVED)}
    task_docs = [d.split("\n", 1) for d in docs if d not in topics]
    assert not {p for p, _ in task_docs} & set(by_prompt)  # the project prompts stay unseen
    # about the noise share is answered wrongly (checked against the verifier)
    add = [(p, a) for p, a in task_docs if "+" in p]
    wrong = sum(str(eval(p.rstrip("="))) != a for p, a in add)
    assert 0.2 < wrong / len(add) < 0.4


def test_demo_prompts_file_is_the_generators():
    from rlhf.demo import PROMPTS, prompt_rows

    rows = [json.loads(x) for x in PROMPTS.read_text().splitlines()]
    assert rows == prompt_rows()  # regenerate with python -m rlhf.demo --write-prompts
    assert {r["task"] for r in rows} == set(tasks.FAMILIES) and {r["prompt"] for r in rows} <= tasks.reserved()


def test_build_demo_model_caches_and_rebuilds_on_other_settings(tmp_path, capsys):
    from pretrain.pipeline import build_demo_model

    small = {"task_docs": 600, "docs": "none"}
    out = build_demo_model(tmp_path / "m", steps=3, vocab_size=300, preset="micro", corpus=small, threads=1)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    first = (tmp_path / "m" / "data" / "train.bin").stat().st_mtime_ns
    assert "[1/3] corpus" in capsys.readouterr().err
    build_demo_model(tmp_path / "m", steps=3, vocab_size=300, preset="micro", corpus=small, threads=1)
    err = capsys.readouterr().err
    assert "[1/3]" not in err and "[2/3]" not in err  # shards and training reused
    assert (tmp_path / "m" / "data" / "train.bin").stat().st_mtime_ns == first
    build_demo_model(tmp_path / "m", steps=3, vocab_size=300, preset="micro", corpus={**small, "task_noise": 0.5},
                     threads=1)
    assert "other settings; rebuilding" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown corpus setting"):
        build_demo_model(tmp_path / "m", corpus={"tasks": 5})


def test_a_stopped_pretraining_exports_nothing_and_the_next_run_finishes_it(tmp_path, capsys):
    """Ctrl-C in make demo's pretraining (train checkpoints and returns) must not export, register or seed a
    half-trained model; a later run trains to the end and exports."""
    from pretrain.pipeline import PretrainingInterrupted, build_demo_model

    small = {"task_docs": 600, "docs": "none"}
    with pytest.raises(PretrainingInterrupted, match="stopped at step 2 of 4"):
        build_demo_model(tmp_path / "m", steps=4, vocab_size=300, preset="micro", corpus=small, threads=1,
                         extra_train_args=["--stop-at-step", "2"])
    assert not (tmp_path / "m" / "hf").exists()
    out = build_demo_model(tmp_path / "m", steps=4, vocab_size=300, preset="micro", corpus=small, threads=1)
    assert (out / "config.json").is_file()
    import torch
    assert torch.load(tmp_path / "m" / "run" / "ckpt.pt", map_location="cpu", weights_only=False)["step"] == 4


def test_demo_bootstrap_seeds_once(empty_db_url, tmp_path):
    from pretrain.pipeline import build_tiny_model
    from rlhf.demo import N_PROMPTS, bootstrap

    model = build_tiny_model(tmp_path / "tiny", train_steps=2)
    first = bootstrap(empty_db_url, model=str(model), quiet=True)
    assert first["prompts"] == N_PROMPTS
    assert first["tasks"]["compare"]["created"] == first["tasks"]["demonstrate"]["created"] == N_PROMPTS
    with session_scope(empty_db_url) as s:
        assert accounts.authenticate(s, "admin", "admin-pass").role == "admin"
        assert accounts.authenticate(s, "annotator", "annotator-pass").role == "annotator"
        pid = projects.get_project(s, "demo").id
        n_tasks = s.scalar(select(func.count()).select_from(Task).where(Task.project_id == pid))
        n_resp = s.scalar(select(func.count()).select_from(Response))
        metas = [p.meta for p in s.scalars(select(Prompt).where(Prompt.project_id == pid))]
        rows = list(export.iter_prompt_rows(s, project="demo"))
    assert n_tasks == 2 * N_PROMPTS and n_resp == 2 * N_PROMPTS
    assert all(m["answer"] and m["task"] in tasks.FAMILIES for m in metas)
    assert len(rows) == N_PROMPTS and all(r["answer"] for r in rows)  # what PPO and evaluate policy read
    again = bootstrap(empty_db_url, model=str(model), quiet=True)  # make demo twice
    assert again["responses"]["generated"] == 0
    with session_scope(empty_db_url) as s:
        assert s.scalar(select(func.count()).select_from(Task)) == n_tasks
