"""Good/bad ratings of single responses (rate tasks) end to end: services on SQLite and PostgreSQL, the Rate
page (AppTest) -> database -> TRL unpaired export -> datasets -> KTOTrainer, the pointwise reward model and PPO
on it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Prompt, Rating, Response, Task
from db.services import (
    accounts,
    agreement,
    assignment,
    audit,
    content,
    export,
    importers,
    labels,
    projects,
    tasks,
)
from db.services.errors import InputError
from tests import rlhf_helpers as H

APP = str(Path(__file__).resolve().parents[1] / "labeling_ui" / "app.py")


def _n(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def _rate_project(session, name: str = "r", overlap: int = 1, n: int = 3) -> tuple[int, list[int]]:
    p = projects.create_project(session, name, labels_per_task=overlap)
    ids = []
    for i in range(n):
        pr, _ = content.add_prompt(session, p.id, text=f"question {i}?")
        r, _ = content.add_response(session, pr.id, f"answer {i}")
        ids.append(tasks.create_task(session, p.id, "rate", pr.id, [r.id])[0].id)
    session.commit()
    return p.id, ids


# ------------------------------------------------------------------------------ import (both databases)

def test_import_ratings_refuses_bad_lines_located_and_imports_nothing(session, tmp_path):
    projects.create_project(session, "imp")
    session.commit()
    f = tmp_path / "ratings.jsonl"
    f.write_text("\n".join([
        json.dumps({"prompt": "2+2?", "completion": "4", "label": True}),
        json.dumps({"prompt": "2+2?", "completion": "5", "label": "false"}),  # a string, not a boolean
        json.dumps({"prompt": "3+3?", "label": False}),  # no completion
        json.dumps({"prompt": [{"role": "user", "content": "hi"}],
                    "completion": [{"role": "assistant", "content": "hello"}], "label": False}),
        json.dumps({"prompt": "2+2?", "completion": "4", "label": False}),  # line 1 again, the other way
    ]) + "\n")
    with pytest.raises(importers.InvalidRowsError) as e:
        importers.import_ratings(session, f, "imp")
    msg = str(e.value)
    assert f"{f}:2, field 'label': must be true or false" in msg and f"{f}:3, field 'completion'" in msg, msg
    session.rollback()
    assert (_n(session, Prompt), _n(session, Response), _n(session, Task), _n(session, Rating)) == (0, 0, 0, 0)

    r = importers.import_ratings(session, f, "imp", skip_invalid=True)
    session.commit()
    assert (r.added, r.skipped, [x.line for x in r.refused]) == (2, 1, [2, 3])
    assert r.details == {"good": 1, "bad": 1, "repeats with the other label (the first one is kept)": 1}
    again = importers.import_ratings(session, f, "imp", skip_invalid=True)
    session.commit()
    assert (again.added, again.skipped, _n(session, Rating), _n(session, Task)) == (0, 3, 2, 2)
    rows = list(export.iter_rating_rows(session, project="imp"))
    assert rows == [{"prompt": "2+2?", "completion": "4", "label": True},
                    {"prompt": "hi", "completion": "hello", "label": False}]


def test_db_cli_import_and_export_ratings(sqlite_url, tmp_path, capsys):
    from db.cli import main

    assert main(["--url", sqlite_url, "projects", "create", "c", "--labels-per-task", "2"]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": "c", "label": true}\n{"prompt": "p", "completion": "d", '
                   '"label": 0}\n')
    assert main(["--url", sqlite_url, "import", "ratings", str(bad), "--project", "c"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2, field 'label': must be true or false, not 0" in err and "nothing was imported" in err
    report = tmp_path / "refused.jsonl"
    assert main(["--url", sqlite_url, "import", "ratings", str(bad), "--project", "c", "--skip-invalid",
                 str(report)]) == 0
    assert [json.loads(x)["line"] for x in report.read_text().splitlines()] == [2]
    out = tmp_path / "r.jsonl"
    assert main(["--url", sqlite_url, "export", "ratings", "--project", "c", "--aggregate", "all", "-o",
                 str(out)]) == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == [{"prompt": "p", "completion": "c",
                                                                      "label": True}]
    assert json.loads(Path(f"{out}.manifest.json").read_text())["labels"]["ratings"]["count"] == 1


def test_import_page_takes_ratings(sqlite_url, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from db.session import session_scope
    from labeling_ui.seed import seed

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    info = seed(sqlite_url, n_compare=0, n_rank=0, n_demonstrate=0, create_tables=False)
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["user"] = {"id": info["admin_id"], "username": "admin", "display_name": "admin", "role": "admin"}
    at.run()
    at.switch_page("views/imports.py").run()
    at.radio(key="imp_kind").set_value("ratings").run()
    data = (json.dumps({"prompt": "q", "completion": "a", "label": True}) + "\n"
            + json.dumps({"prompt": "q", "completion": "b", "label": "no"}) + "\n").encode()
    at.file_uploader(key="imp_file").upload("rated.jsonl", data, "application/jsonl").run()
    at.button(key="imp_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("label" in e.value and "Nothing was imported" in e.value for e in at.error), [e.value for e in at.error]
    at.checkbox(key="imp_skip").check().run()
    at.button(key="imp_go").click().run()
    assert any("1 added" in m.value for m in at.success), [m.value for m in at.success]
    with session_scope(sqlite_url) as s:
        assert [(r.good, r.task.kind) for r in s.scalars(select(Rating))] == [(True, "rate")]


# ------------------------------------------------------------------ labels, export, agreement (both databases)

def test_ratings_submit_revise_export_pairs_and_agreement(session):
    pid, tids = _rate_project(session, overlap=2, n=3)
    u = [accounts.create_user(session, f"ann{i}", "password-1").id for i in range(2)]
    session.commit()
    with pytest.raises(InputError, match="good must be true or false"):
        labels.submit_rating(session, u[0], tids[0], "yes")
    with pytest.raises(InputError, match="from 1 to 7"):
        labels.submit_rating(session, u[0], tids[0], True, likert=8)
    session.rollback()
    verdicts = {tids[0]: (True, True), tids[1]: (True, False), tids[2]: (False, False)}
    for user, k in zip(u, (0, 1)):
        for _ in tids:
            view = assignment.next_task(session, user, pid, kind="rate")
            session.commit()
            assert view.kind == "rate" and len(view.responses) == 1
            _, created = labels.submit_rating(session, user, view.task_id, verdicts[view.task_id][k], likert=4,
                                              flags=["other"], comment="c", seconds=1.5)
            session.commit()
            assert created
    assert assignment.next_task(session, u[0], pid, kind="rate") is None
    again, created = labels.submit_rating(session, u[0], tids[0], False)  # a double submit keeps the first
    assert not created and again.good is True and again.likert == 4

    rep = agreement.rating_agreement(session, pid)
    # 3 items, one split: percent agreement 2/3; Fleiss: p_e = (3/6)^2 + (3/6)^2 = .5 -> (2/3 - .5) / .5 = 1/3
    assert rep["n_tasks"] == 3 and math.isclose(rep["percent_agreement"], 2 / 3)
    assert math.isclose(rep["fleiss_kappa"], 1 / 3)
    # Cohen: ann0 says good 2/3, ann1 1/3 of the time: p_e = 2/9 + 2/9 -> (2/3 - 4/9) / (5/9) = 0.4
    assert math.isclose(rep["pairs"].iloc[0]["cohen_kappa"], 0.4)
    assert list(rep["disagreements"]["task_id"]) == [tids[1]]

    by = lambda agg: [(r["prompt"], r["label"]) for r in export.iter_rating_rows(session, project="r",
                                                                                  aggregate=agg)]
    assert by("majority") == by("unanimous") == [("question 0?", True), ("question 2?", False)]
    assert by("all") == [("question 0?", True)] * 2 + [("question 1?", True), ("question 1?", False)] + \
        [("question 2?", False)] * 2

    # revising: ann1 now finds answer 1 good too; the split is gone
    mine = next(r for r in labels.history(session, u[1]) if r["task_id"] == tids[1])
    assert mine["kind"] == "rate" and mine["good"] is False and mine["likert"] == 4
    labels.revise_rating(session, u[1], mine["id"], True, likert=6, flags=[], comment="on second thought")
    session.commit()
    (entry,) = [e for e in audit.entries(session, action="label.revise") if e["target"] == f"rating {mine['id']}"]
    assert entry["details"]["before"] == {"good": False, "likert": 4, "flags": ["other"]}  # old -> new
    assert (entry["details"]["good"], entry["details"]["likert"], entry["details"]["flags"]) == (True, 6, [])
    assert [r["label"] for r in export.iter_rating_rows(session, project="r")] == [True, True, False]

    # a good and a bad rating of the same prompt make a preference pair only when asked
    p = session.get(Task, tids[2]).prompt_id
    r_good, _ = content.add_response(session, p, "a better answer 2")
    t4, _ = tasks.create_task(session, pid, "rate", p, [r_good.id])
    session.commit()
    labels.submit_rating(session, u[0], t4.id, True)
    session.commit()
    assert list(export.iter_preference_rows(session, project="r")) == []
    pairs = list(export.iter_preference_rows(session, project="r", pair_ratings=True))
    assert pairs == [{"prompt": "question 2?", "chosen": "a better answer 2", "rejected": "answer 2",
                      "margin": 0.0, "group": f"ratings-prompt-{p}"}]


# ------------------------------------------------------------------ the Rate page -> export -> KTO (SQLite)

def test_rate_page_to_export_to_kto(tiny, sqlite_url, home, tmp_path, monkeypatch):
    from datasets import load_dataset
    from streamlit.testing.v1 import AppTest

    from db.services import registry
    from db.session import session_scope
    from labeling_ui.seed import seed
    from rlhf import train_kto

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    info = seed(sqlite_url, n_compare=0, n_rank=0, n_demonstrate=0, create_tables=False)
    triples = H.polite_pairs(6, seed=3)
    with session_scope(sqlite_url) as s:
        for prompt, good, bad in triples:
            pr, _ = content.add_prompt(s, info["project_id"], text=prompt)
            for text in (good, bad):
                r, _ = content.add_response(s, pr.id, text)
                tasks.create_task(s, info["project_id"], "rate", pr.id, [r.id])
        registry.register_model_version(s, "base-tiny", "base", str(tiny))

    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["user"] = {"id": info["alice_id"], "username": "alice", "display_name": "alice",
                                "role": "annotator"}
    at.run()
    at.switch_page("views/rate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    view = at.session_state[f"task:rate:{info['project_id']}"]
    tid, shown = view.task_id, view.responses[0]["text"]
    submit = at.button(key=f"rate_submit_{tid}")
    submit.click().run()
    assert any("Pick one first" in w.value for w in at.warning)
    good = "please" in shown
    at.button(key=f"btn_{'good' if good else 'bad'}_{tid}").click().run()
    assert at.button(key=f"btn_{'good' if good else 'bad'}_{tid}").proto.shortcut == ("1" if good else "2")
    at.button_group(key=f"rate_likert_{tid}").set_value(6).run()
    at.pills(key=f"rate_flags_{tid}").set_value(["hallucination"]).run()
    at.text_input(key=f"rate_comment_{tid}").input("checked").run()
    at.button(key=f"rate_submit_{tid}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    held = at.session_state[f"task:rate:{info['project_id']}"].task_id
    assert held != tid  # the next task is on screen
    # one response on screen: the skip reason names one; the rating counts on Rate, not on Compare
    at.button(key=f"rate_skip_{held}").click().run()
    reasons = [b.label for b in at.button if b.key and b.key.startswith("rate_skipwhy_")]
    assert "The response is broken or empty" in reasons and not any("Responses" in r for r in reasons)
    assert any("**1** done today" in c.value for c in at.caption)
    at.switch_page("views/compare.py").run()
    assert any("**0** done today" in c.value and "compare tasks left" in c.value for c in at.caption)
    at.switch_page("views/rate.py").run()
    with session_scope(sqlite_url) as s:
        (lab,) = s.scalars(select(Rating)).all()
        assert (lab.task_id, lab.user_id, lab.good, lab.likert, lab.flags, lab.comment) == \
            (tid, info["alice_id"], good, 6, ["hallucination"], "checked")
        assert lab.seconds is not None
        # the rest through the service, by the rule (good iff it says please)
        assignment.release_task(s, info["alice_id"], held)
        for t in s.scalars(select(Task).where(Task.kind == "rate", Task.id != tid)):
            text = s.get(Response, t.response_ids[0]).text
            labels.submit_rating(s, info["bob_id"], t.id, "please" in text)

    # the agreement page has a ratings section (its figures are checked in the services test above)
    adm = AppTest.from_file(str(Path(APP).parent / "views" / "agreement.py"), default_timeout=60)
    adm.session_state["user"] = {"id": info["admin_id"], "username": "admin", "display_name": "admin",
                                 "role": "admin"}
    adm.run()
    assert not adm.exception, [e.value for e in adm.exception]
    assert any("Ratings (good / bad" in m.value for m in adm.markdown)

    # My history shows the rating; revising it there changes it
    at.switch_page("views/history.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key=f"hist_good_{lab.id}").value is good
    at.radio(key=f"hist_good_{lab.id}").set_value(not good)  # inside the form: sent with its submit
    at.button[[b.label for b in at.button].index("Save revision")].click().run()
    assert not at.exception, [e.value for e in at.exception]
    with session_scope(sqlite_url) as s:
        assert s.get(Rating, lab.id).good is (not good) and s.get(Rating, lab.id).updated_at is not None
        labels.revise_rating(s, info["alice_id"], lab.id, good, likert=6)

    out = tmp_path / "ratings.jsonl"
    with session_scope(sqlite_url) as s:
        m = export.export_file(s, "ratings", out, project="demo")
    assert m["rows"] == 12 and m["labels"]["ratings"]["count"] == 12
    ds = load_dataset("json", data_files=str(out), split="train")
    assert set(ds.column_names) == {"prompt", "completion", "label"} and ds.features["label"].dtype == "bool"
    assert sum(ds["label"]) == 6

    res = train_kto.main(["--model", "base-tiny", "--project", "demo", "--database_url", sqlite_url,
                          "--name", "kto-a", "--max_steps", "2", "--per_device_train_batch_size", "4",
                          "--learning_rate", "1e-4", "--eval_fraction", "0", "--save_strategy", "no",
                          "--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none"])
    assert res["metrics"]["global_step"] == 2 and math.isfinite(res["metrics"]["train_loss"])
    run = Path(res["run_dir"])
    assert (run / "model.safetensors").is_file() and (run / "metrics.jsonl").is_file()
    with session_scope(sqlite_url) as s:
        mv = registry.resolve(s, "kto-a")
        assert mv.kind == "policy" and registry.resolve(s, mv.parent_id).name == "base-tiny"
        assert mv.config["algorithm"] == "kto" and mv.label_snapshot["label_table"] == "ratings"
        assert mv.label_snapshot["ids"]["ratings"] == sorted(s.scalars(select(Rating.id)))


def test_generate_creates_one_rate_task_per_response_once(tiny, sqlite_url):
    from db.session import session_scope
    from rlhf import generate

    H.make_project(sqlite_url, "g")
    with session_scope(sqlite_url) as s:
        for text in ("say hi", "name a color"):
            content.add_prompt(s, projects.get_project(s, "g").id, text=text)
    argv = ["--project", "g", "--models", str(tiny), "--num_samples", "2", "--tasks", "rate", "--max_new_tokens",
            "4", "--database_url", sqlite_url, "--no_progress"]
    first = generate.main(argv)
    with session_scope(sqlite_url) as s:
        rate = s.scalars(select(Task).where(Task.kind == "rate")).all()
        n_responses = _n(s, Response)
        assert all(len(t.response_ids) == 1 for t in rate)
        assert len({t.response_ids[0] for t in rate}) == len(rate) == n_responses  # distinct samples may repeat
    assert first["tasks"]["rate"] == {"created": len(rate), "existing": 0}
    again = generate.main(argv)
    assert again["tasks"]["rate"] == {"created": 0, "existing": len(rate)}


def test_kto_refuses_a_batch_of_one_and_a_label_that_is_not_a_boolean(tiny, home, tmp_path):
    from rlhf import train_kto

    f = H.write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "completion": "c", "label": True}] * 3)
    with pytest.raises(SystemExit):
        train_kto.main(["--model", str(tiny), "--dataset", str(f), "--no_register",
                        "--per_device_train_batch_size", "1"])
    bad = H.write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c", "label": True},
                                                 {"prompt": "p", "completion": "d", "label": 1}])
    with pytest.raises(InputError, match="bad.jsonl:2, field 'label': must be true or false"):
        from rlhf.ratings import rating_rows_from_file

        rating_rows_from_file(bad)
    assert not (home / "train_kto").exists() or not any((home / "train_kto").iterdir())

    # a prompt longer than the model's 256 positions is cut from the left, not dropped (TRL would drop it)
    long_prompt = "tell me " + " ".join(H.WORDS * 12)
    rows = [{"prompt": long_prompt, "completion": "sit please", "label": True}] + \
        [{"prompt": f"say {w}", "completion": w, "label": i % 2 == 0} for i, w in enumerate(H.WORDS[:7])]
    f = H.write_jsonl(tmp_path / "long.jsonl", rows)
    res = train_kto.main(["--model", str(tiny), "--dataset", str(f), "--no_register", "--max_steps", "1",
                          "--per_device_train_batch_size", "8", "--eval_fraction", "0", "--save_strategy", "no",
                          "--disable_tqdm", "true", "--report_to", "none"])
    m = res["metrics"]
    assert (m["train_rows"], m["train_rows_truncated"], m["train_rows_too_long"], m["max_length"]) == (8, 1, 0, 256)
    assert math.isfinite(m["train_loss"])
    # what the collator hands the model: the prompt's end and the whole completion (and KL completion)
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    collate = train_kto.left_truncating_collator(DataCollatorForUnpairedPreference(pad_token_id=0, max_length=8),
                                                 8, bos_id=None)
    batch = collate([{"prompt_ids": list(range(100, 120)), "completion_ids": [1, 2, 3], "KL_completion_ids": [4, 5],
                      "label": True}])
    assert batch["input_ids"][0].tolist() == [115, 116, 117, 118, 119, 1, 2, 3]
    assert batch["KL_input_ids"][0].tolist()[:7] == [115, 116, 117, 118, 119, 4, 5]


# ------------------------------------------------------------------ pointwise reward model

def test_pointwise_reward_from_ratings_learns_the_rule_and_scores_like_a_reward_model(tiny, home, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf import evaluate, reward, train_reward
    from rlhf.formatting import format_sft_row
    from rlhf.modeling import ModelRef, require_reward_model

    rows = []
    for prompt, good, bad in H.polite_pairs(150, seed=1):  # good iff the reply says "please"
        rows += [{"prompt": prompt, "completion": good, "label": True},
                 {"prompt": prompt, "completion": bad, "label": False}]
    long_prompt = "tell me " + " ".join(H.WORDS * 12)  # longer than the tiny model's 256 positions
    rows += [{"prompt": long_prompt, "completion": "sit please", "label": True},
             {"prompt": long_prompt + " again", "completion": "sit", "label": False}]
    f = H.write_jsonl(tmp_path / "ratings.jsonl", rows)
    out = train_reward.main(["--from_ratings", "--model", str(tiny), "--dataset", str(f), "--no_register",
                             "--eval_fraction", "0.3", "--max_steps", "40",
                             "--per_device_train_batch_size", "16", "--logging_steps", "20", "--save_strategy",
                             "no", "--disable_tqdm", "true", "--seed", "0", "--report_to", "none"])
    m = out["metrics"]
    assert out["trainer"].args.learning_rate == 1e-3  # the size-dependent default (--help), as the pairwise RM's
    assert m["objective"] == "pointwise_bce" and m["eval_rows"] >= 60
    assert m["train_rows"] + m["eval_rows"] == 302 and m["max_length"] == 256
    # the long prompts were cut from the left (their responses kept), not dropped
    assert m["train_rows_truncated"] + m["eval_rows_truncated"] == 2 and m["train_rows_too_long"] == 0
    assert m["eval_accuracy"] >= 0.9, m
    assert m["eval_mean_score_good"] > 0 > m["eval_mean_score_bad"] and m["eval_auc"] >= 0.9
    assert "reward_shift" not in m  # no demonstrations: the natural zero (p = 0.5) is kept

    # a plain one-logit sequence classifier: what PPO's RewardScorer and rlhf.evaluate load
    run = Path(out["run_dir"])
    require_reward_model(ModelRef(str(run), str(run)))
    rm = AutoModelForSequenceClassification.from_pretrained(run)
    tok = AutoTokenizer.from_pretrained(run)
    assert rm.config.num_labels == 1 and reward.info(rm)["objective"] == "pointwise_bce"
    rows = [format_sft_row({"prompt": "request 7: sun tree", "completion": c}, chat=True)
            for c in ("please sit down", "sit down")]
    good_score, bad_score = reward.score(rm, tok, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert good_score > 0 > bad_score, (good_score, bad_score)  # an absolute scale, not only an order
    pairs = H.write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": g, "rejected": b}
                                                     for p, g, b in H.polite_pairs(40, seed=9)])
    res = evaluate.main(["reward", "--model", str(run), "--dataset", str(pairs), "--out", str(tmp_path / "m.json")])
    assert res["accuracy"] >= 0.9, res


def test_kto_help_says_how_it_truncates_and_what_the_flags_do():
    from rlhf.config import kto_config_class, parse

    with pytest.raises(SystemExit):
        parse(kto_config_class(), ["--aggregate", "most"], "rlhf.train_kto", "")  # choices are enforced by argparse
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        parse(kto_config_class(), ["--help"], "rlhf.train_kto", "")
    text = " ".join(buf.getvalue().split())
    assert "truncated from the right" not in text and "cut from the left" in text
    assert "--aggregate {majority,all,unanimous}" in text
    assert "--no_balance, --no-balance Keep --desirable_weight and --undesirable_weight as given" in text


def test_agreement_page_shows_the_rating_figures(sqlite_url, monkeypatch):
    """Two annotators rate three responses, one split: the page shows the service's figures (2/3, Fleiss 1/3,
    Cohen 0.40; worked out in test_ratings_submit_revise_export_pairs_and_agreement)."""
    from streamlit.testing.v1 import AppTest

    from db.session import session_scope
    from labeling_ui.seed import seed

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    info = seed(sqlite_url, n_compare=0, n_rank=0, n_demonstrate=0, create_tables=False)
    with session_scope(sqlite_url) as s:
        projects.update_project(s, "demo", labels_per_task=2, actor_id=info["admin_id"])
        tids = []
        for i in range(3):
            pr, _ = content.add_prompt(s, info["project_id"], text=f"rate me {i}")
            r, _ = content.add_response(s, pr.id, f"reply {i}")
            tids.append(tasks.create_task(s, info["project_id"], "rate", pr.id, [r.id])[0].id)
        for user, verdicts in ((info["alice_id"], (True, True, False)), (info["bob_id"], (True, False, False))):
            for tid, good in zip(tids, verdicts):
                labels.submit_rating(s, user, tid, good)
    adm = AppTest.from_file(str(Path(APP).parent / "views" / "agreement.py"), default_timeout=60)
    adm.session_state["user"] = {"id": info["admin_id"], "username": "admin", "display_name": "admin",
                                 "role": "admin"}
    adm.run()
    assert not adm.exception, [e.value for e in adm.exception]
    shown = [(m.label, m.value) for m in adm.metric]
    for want in (("Rated responses with ≥ 2 ratings", "3"), ("Ratings on them", "6"),
                 ("Percent agreement", "67%"), ("Fleiss' kappa", "0.33")):
        assert want in shown, (want, shown)
    (cohen,) = [t.value for t in adm.table if "Cohen's kappa" in " ".join(map(str, t.value.columns))]
    assert list(cohen["Cohen's kappa"]) == ["0.40"], cohen


def test_ppo_trains_on_a_registered_pointwise_reward_model(tiny, sqlite_url, home, tmp_path):
    """train_reward --from_ratings --project registers a reward version (parent, rating ids); train_ppo takes it
    by name as its reward model and value initialisation, and scores as rlhf.evaluate scores with it."""
    from db.services import registry
    from db.session import session_scope
    from rlhf import evaluate, train_ppo, train_reward

    H.make_project(sqlite_url, "pw")
    rows = []
    for prompt, good, bad in H.polite_pairs(40, seed=4):
        rows += [{"prompt": prompt, "completion": good, "label": True},
                 {"prompt": prompt, "completion": bad, "label": False}]
    f = H.write_jsonl(tmp_path / "ratings.jsonl", rows)
    with session_scope(sqlite_url) as s:
        assert importers.import_ratings(s, f, "pw").added == 80
        registry.register_model_version(s, "base-tiny", "base", str(tiny))
    rm = train_reward.main(["--from_ratings", "--model", "base-tiny", "--project", "pw", "--name", "rm-pw",
                            "--database_url", sqlite_url, "--max_steps", "10", "--learning_rate", "1e-3",
                            "--per_device_train_batch_size", "16", "--save_strategy", "no", "--disable_tqdm", "true",
                            "--seed", "0", "--report_to", "none"])
    assert rm["metrics"]["objective"] == "pointwise_bce"
    with session_scope(sqlite_url) as s:
        mv = registry.resolve(s, "rm-pw")
        assert mv.kind == "reward" and registry.resolve(s, mv.parent_id).name == "base-tiny"
        assert mv.config["objective"] == "pointwise_bce" and mv.label_snapshot["label_table"] == "ratings"
        assert mv.label_snapshot["ids"]["ratings"] == sorted(s.scalars(select(Rating.id)))

    ppo = train_ppo.main(["--model", "base-tiny", "--reward_model", "rm-pw", "--project", "pw", "--name", "ppo-pw",
                          "--database_url", sqlite_url, "--max_steps", "2", "--per_device_train_batch_size", "8",
                          "--num_mini_batches", "2", "--max_new_tokens", "8", "--seed", "0"])
    m = ppo["metrics"]
    assert m["global_step"] == 2 and m["held_out_prompts"] > 0
    for k in ("objective/scores", "objective/kl", "loss/value", "eval/score", "eval/reference_score"):
        assert math.isfinite(m[k]), (k, m)
    assert (Path(ppo["run_dir"]) / "value" / "config.json").is_file()  # the value model, from the reward model
    with session_scope(sqlite_url) as s:
        pv = registry.resolve(s, "ppo-pw")
        assert pv.kind == "policy" and pv.config["reward_model"]["name"] == "rm-pw"
        assert pv.config["value_init"]["name"] == "rm-pw"
    # the reference's held-out samples repeat under the same seed: PPO scored them as evaluate does
    res = evaluate.main(["policy", "--model", "base-tiny", "--reference", "base-tiny", "--reward", "rm-pw",
                         "--project", "pw", "--database_url", sqlite_url, "--max_new_tokens", "8"])
    assert res["prompts"] == m["held_out_prompts"]
    assert res["reference_score"] == pytest.approx(m["eval/reference_score"], abs=1e-4), (res, m)
