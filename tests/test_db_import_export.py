"""Imports (prompts, TRL/HH preferences, OASST trees), exports (TRL, HH, SFT, raw) and their round trip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import PreferenceLabel, Prompt, Ranking, Response, Task
from db.services import assignment, export, importers, labels, projects, tasks
from db.services.errors import InputError
from tests.db_helpers import make_compare_project, make_users

TRL_ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "margin": 1.0},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon", "margin": 2.0},
    {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
     "chosen": [{"role": "assistant", "content": "Hello."}],
     "rejected": [{"role": "assistant", "content": "Greetings, dear human, how do you do?"}]},
]
HH_ROWS = [
    {"chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast; knead; bake.",
     "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Buy it."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell a joke\n\nAssistant: Why did the chicken...",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell a joke\n\nAssistant: No."},
]


def _write(tmp_path: Path, name: str, rows) -> Path:
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_import_prompts_jsonl_csv_and_reimport(session, tmp_path, shared_data):
    projects.create_project(session, "p")
    r = importers.import_prompts(session, shared_data / "mt_bench_questions.jsonl", "p")
    assert (r.rows, r.added, r.skipped) == (80, 80, 0)
    r = importers.import_prompts(session, shared_data / "alpaca_seed_tasks.jsonl", "p")
    assert r.added == 175
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,topic\nWhat is love?,philosophy\n\"Multi, with comma\",misc\n", encoding="utf-8")
    assert importers.import_prompts(session, csv, "p").added == 2
    chat = _write(tmp_path, "chat.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                         {"role": "assistant", "content": "b"},
                                                         {"role": "user", "content": "c"}]}])
    assert importers.import_prompts(session, chat, "p").added == 1
    session.commit()
    again = importers.import_prompts(session, shared_data / "mt_bench_questions.jsonl", "p")
    assert (again.added, again.skipped) == (0, 80)
    assert _count(session, Prompt) == 80 + 175 + 2 + 1


@pytest.mark.parametrize("content,fname,match", [
    (b'{"prompt": "ok"}\n{"prompt": "broken\n', "bad.jsonl", r"bad.jsonl:2: malformed JSON"),
    (b'{"prompt": "ok"}\n{"text": "no prompt"}\n', "bad.jsonl", r"bad.jsonl:2, field 'prompt'"),
    (b'{"prompt": "ok"}\n{"prompt": ""}\n', "bad.jsonl", r"bad.jsonl:2, field 'prompt'"),
    ('{"prompt": "caf\u00e9"}\n'.encode("latin-1"), "latin.jsonl", r"latin.jsonl:1: not valid UTF-8"),
    (b"question\nhello\n", "bad.csv", r"bad.csv:1, field 'prompt': CSV needs a 'prompt' column"),
    (b'{"messages": [{"role": "robot", "content": "x"}]}\n', "bad.jsonl", r"field 'messages\[0\].role'"),
])
def test_bad_prompt_files_import_nothing(session, tmp_path, content, fname, match):
    projects.create_project(session, "p")
    session.commit()
    f = tmp_path / fname
    f.write_bytes(content)
    with pytest.raises(InputError, match=match):
        importers.import_prompts(session, f, "p")
    session.rollback()
    assert _count(session, Prompt) == 0


def test_unknown_project(session, tmp_path):
    f = _write(tmp_path, "x.jsonl", [{"prompt": "a"}])
    with pytest.raises(Exception, match="unknown project 'ghost'"):
        importers.import_prompts(session, f, "ghost")


def test_preferences_round_trip_trl(session, tmp_path):
    projects.create_project(session, "prefs")
    src = _write(tmp_path, "trl.jsonl", TRL_ROWS)
    r = importers.import_preferences(session, src, "prefs")
    assert r.added == 3 and r.kind == "preferences (trl)"
    session.commit()
    assert importers.import_preferences(session, src, "prefs").added == 0  # re-import adds nothing
    rows = list(export.iter_preference_rows(session, project="prefs"))
    # The project has a chat prompt, so rows are conversational; chosen always wins, whatever A/B was.
    got = {(json.dumps(r["prompt"]), r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}
    want = set()
    for row in TRL_ROWS:
        prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        ch = row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][0]["content"]
        rj = row["rejected"] if isinstance(row["rejected"], str) else row["rejected"][0]["content"]
        want.add((json.dumps(prompt), ch, rj))
    assert got == want
    plain = list(export.iter_preference_rows(session, project="prefs", conversational="never"))
    assert {r["prompt"] for r in plain} >= {"What is 2+2?", "Capital of France?"}
    margins = {r["prompt"]: r["margin"] for r in plain}
    assert margins["What is 2+2?"] == 1.0 and margins["Capital of France?"] == 2.0
    # a project of text prompts only: "auto" stays plain text (a text prompt's messages column holds JSON
    # null, which must not count as a chat)
    projects.create_project(session, "plain")
    text_only = [r for r in TRL_ROWS if isinstance(r["prompt"], str)]
    importers.import_preferences(session, _write(tmp_path, "plain.jsonl", text_only), "plain")
    session.commit()
    auto = list(export.iter_preference_rows(session, project="plain"))
    assert auto and all(isinstance(r["prompt"], str) and isinstance(r["chosen"], str) for r in auto)


def test_hh_round_trip(session, tmp_path):
    projects.create_project(session, "hh")
    src = _write(tmp_path, "hh.jsonl", HH_ROWS)
    assert importers.import_preferences(session, src, "hh", fmt="hh").added == 2
    out = [{"chosen": r["chosen"], "rejected": r["rejected"]}
           for r in export.iter_preference_rows(session, project="hh", fmt="hh")]
    assert sorted(out, key=str) == sorted(HH_ROWS, key=str)


@pytest.mark.parametrize("rows,match", [
    ([{"prompt": "x", "chosen": "a"}], r"trl.jsonl:2, field 'rejected': missing field"),
    ([{"prompt": "x", "chosen": "a", "rejected": "a"}], r"identical"),
    ([{"prompt": "x", "chosen": "a", "rejected": "b", "margin": "big"}], r"field 'margin'"),
    ([{"chosen": "no turns", "rejected": "\n\nHuman: x\n\nAssistant: y"}], r"trl.jsonl:2, field 'chosen'"),
])
def test_bad_preference_files(session, tmp_path, rows, match):
    projects.create_project(session, "p")
    session.commit()
    with pytest.raises(InputError, match=match):
        importers.import_preferences(session, _write(tmp_path, "trl.jsonl", [TRL_ROWS[0]] + rows), "p")
    session.rollback()
    assert _count(session, PreferenceLabel) == 0 and _count(session, Task) == 0


def test_oasst_rankings_expand_to_pairs(session, shared_data):
    projects.create_project(session, "oa")
    r = importers.import_oasst(session, shared_data / "oasst_en_100_tree.jsonl", "oa")
    assert r.added == _count(session, Ranking) + _count(session, PreferenceLabel) > 100
    ranking = session.scalars(select(Ranking).order_by(Ranking.id)).first()
    task = session.get(Task, ranking.task_id)
    k = len(task.response_ids)
    rows = [x for x in export.iter_preference_rows(session, project="oa") if x.get("group") == f"task-{task.id}"]
    n_tied = sum(len(g) * (len(g) - 1) // 2 for g in ranking.ordering)
    assert len(rows) == k * (k - 1) // 2 - n_tied
    # A reply in the top group is never the rejected side of a pair.
    top_texts = {session.get(Response, i).text for i in ranking.ordering[0]}
    assert all(x["rejected"][0]["content"] not in top_texts for x in rows)
    assert sum(x["chosen"][0]["content"] in top_texts for x in rows) >= k - len(ranking.ordering[0])


def test_aggregation_and_ties(session):
    u = make_users(session, 3)
    pid, (tid,) = make_compare_project(session, n_tasks=1, overlap=3)
    for uid, choice in zip(u, ["a", "a", "b"]):
        assignment.next_task(session, uid, pid)
        labels.submit_preference(session, uid, tid, choice, strength="clear")
    task = session.get(Task, tid)
    maj = list(export.iter_preference_rows(session, project="p", conversational="never"))
    assert len(maj) == 1 and maj[0]["chosen"].startswith("answer 0 from")
    assert maj[0]["chosen"] == session.get(Response, task.response_ids[0]).text
    assert len(list(export.iter_preference_rows(session, project="p", aggregate="all"))) == 3
    assert list(export.iter_preference_rows(session, project="p", aggregate="unanimous")) == []
    assert list(export.iter_preference_rows(session, project="p", min_agreement=0.7)) == []
    assert len(list(export.iter_preference_rows(session, project="p", annotator="ann2"))) == 1


def test_ties_left_out_unless_asked(session):
    (u,) = make_users(session, 1)
    pid, (tid,) = make_compare_project(session, n_tasks=1)
    assignment.next_task(session, u, pid)
    labels.submit_preference(session, u, tid, "tie")
    assert list(export.iter_preference_rows(session, project="p")) == []
    rows = list(export.iter_preference_rows(session, project="p", include_ties=True))
    assert len(rows) == 1 and rows[0]["tie"] == "tie" and rows[0]["margin"] == 0.0


def test_model_version_filter_and_raw(session):
    (u,) = make_users(session, 1)
    pid, tids = make_compare_project(session, n_tasks=2)
    for _ in tids:
        v = assignment.next_task(session, u, pid)
        labels.submit_preference(session, u, v.task_id, "b", flags=["hallucination"], seconds=4.0)
    raw = list(export.iter_raw_rows(session, project="p"))
    assert len(raw) == 2 and raw[0]["annotator"].startswith("ann-") and raw[0]["annotator"] != "ann0"
    assert {m["model_version"] for m in raw[0]["responses"]} == {"model-a", "model-b"}
    assert raw[0]["flags"] == ["hallucination"] and raw[0]["seconds"] == 4.0
    assert len(list(export.iter_preference_rows(session, project="p", model_version="model-a"))) == 2
    with pytest.raises(InputError, match="unknown model version"):
        list(export.iter_preference_rows(session, project="p", model_version="nope"))


def test_exports_load_with_datasets_and_have_trl_columns(session, tmp_path, shared_data):
    import datasets

    projects.create_project(session, "p")
    importers.import_preferences(session, _write(tmp_path, "trl.jsonl", TRL_ROWS[:2]), "p")
    importers.import_oasst(session, shared_data / "oasst_en_100_tree.jsonl", "p")
    (u,) = make_users(session, 1)
    importers.import_prompts(session, shared_data / "alpaca_seed_tasks.jsonl", "p")
    tasks.create_demonstrate_tasks(session, projects.get_project(session, "p").id)
    session.commit()
    for _ in range(3):
        v = assignment.next_task(session, u, projects.get_project(session, "p").id, kind="demonstrate")
        labels.submit_demonstration(session, u, v.task_id, "A careful, complete and friendly answer.")
    m = export.export_file(session, "preferences", tmp_path / "prefs.jsonl", project="p")
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "prefs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected", "margin"} <= set(ds.column_names) and len(ds) == m["rows"] > 300
    manifest = json.loads((tmp_path / "prefs.jsonl.manifest.json").read_text())
    assert manifest["schema_revision"] is None or isinstance(manifest["schema_revision"], str)
    assert manifest["labels"]["rankings"]["count"] > 0 and manifest["filters"]["project"] == "p"
    for fmt, cols in (("prompt_completion", {"prompt", "completion"}), ("messages", {"messages"})):
        out = tmp_path / f"sft-{fmt}.jsonl"
        m = export.export_file(session, "sft", out, project="p", fmt=fmt)
        ds = datasets.load_dataset("json", data_files=str(out), split="train")
        assert set(ds.column_names) == cols and len(ds) == m["rows"] == 3
    mt = datasets.load_dataset("json", data_files=str(tmp_path / "sft-messages.jsonl"), split="train")
    assert mt[0]["messages"][-1]["role"] == "assistant"
    # TRL recognises the formats it trains on.
    from trl.data_utils import is_conversational
    assert is_conversational(ds[0])


@pytest.mark.parametrize("rows,match", [
    ([{"instruction": "x", "instances": ["a"]}], r"field 'instances'"),
    ([{"instruction": "x", "input": 5}], r"field 'input'"),
])
def test_malformed_prompt_fields_are_located(session, tmp_path, rows, match):
    projects.create_project(session, "p")
    with pytest.raises(InputError, match=match):
        importers.import_prompts(session, _write(tmp_path, "a.jsonl", rows), "p")


@pytest.mark.parametrize("margin", [True, float("nan"), float("inf")])
def test_margin_must_be_a_finite_number(session, tmp_path, margin):
    projects.create_project(session, "p")
    row = {"prompt": "x", "chosen": "a", "rejected": "b", "margin": margin}
    with pytest.raises(InputError, match="field 'margin'"):
        importers.import_preferences(session, _write(tmp_path, "m.jsonl", [row]), "p")


def test_export_import_export_keeps_strengths_and_refuses_tie_rows(session, tmp_path):
    """A label without strength exports margin 0.0 and comes back without strength; tie rows (--include-ties)
    are refused with their line, nothing imported; a U+2028 inside a string survives the round trip."""
    projects.create_project(session, "src")
    rows = [{"prompt": "q1\u2028more", "chosen": "a1", "rejected": "b1", "margin": 0.0},
            {"prompt": "q2", "chosen": "a2", "rejected": "b2", "margin": 2.0}]
    f = tmp_path / "src.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    importers.import_preferences(session, f, "src")
    session.commit()
    out = tmp_path / "out.jsonl"
    export.export_file(session, "preferences", out, project="src", conversational="never")
    projects.create_project(session, "dst")
    importers.import_preferences(session, out, "dst")
    session.commit()
    again = {r["prompt"]: r["margin"] for r in export.iter_preference_rows(session, project="dst",
                                                                          conversational="never")}
    assert again == {"q1\u2028more": 0.0, "q2": 2.0}
    tie = {"prompt": "q3", "chosen": "x", "rejected": "y", "margin": 0.0, "tie": "tie"}
    projects.create_project(session, "ties")
    with pytest.raises(InputError, match=r"t\.jsonl:2, field 'tie'"):
        importers.import_preferences(session, _write(tmp_path, "t.jsonl", rows[1:] + [tie]), "ties")


def _tree(**reply_overrides):
    replies = [{"role": "assistant", "text": f"reply {i}", "rank": i} for i in range(3)]
    replies[1].update(reply_overrides)
    return {"message_tree_id": "t", "prompt": {"role": "prompter", "text": "q?", "replies": replies}}


@pytest.mark.parametrize("override,field", [({"rank": "x"}, "rank"), ({"role": ["x"]}, "role"),
                                            ({"text": 5}, "text")])
def test_malformed_oasst_trees_are_located(session, tmp_path, override, field):
    projects.create_project(session, "p")
    with pytest.raises(InputError, match=rf"o.jsonl:1, field '{field}'"):
        importers.import_oasst(session, _write(tmp_path, "o.jsonl", [_tree(**override)]), "p")


def test_imported_labels_take_their_slot(session, tmp_path):
    """Overlap 2 and one imported label: exactly one more annotator gets the task."""
    projects.create_project(session, "p", labels_per_task=2)
    importers.import_preferences(session, _write(tmp_path, "one.jsonl", [TRL_ROWS[0]]), "p")
    session.commit()
    u1, u2 = make_users(session, 2)
    pid = projects.get_project(session, "p").id
    v = assignment.next_task(session, u1, pid)
    assert v is not None and assignment.next_task(session, u2, pid) is None
    labels.submit_preference(session, u1, v.task_id, "a")
    task = session.get(Task, v.task_id)
    assert (task.n_submitted, task.status) == (2, "done")


def test_majority_means_more_than_half(session):
    u = make_users(session, 3)
    pid, (tid,) = make_compare_project(session, n_tasks=1, overlap=3)
    for uid, choice in zip(u, ["a", "b", "tie"]):
        assignment.next_task(session, uid, pid)
        labels.submit_preference(session, uid, tid, choice)
    assert list(export.iter_preference_rows(session, project="p")) == []


def test_date_filters_compare_in_utc(session):
    (u,) = make_users(session, 1)
    pid, (tid,) = make_compare_project(session, n_tasks=1)
    import datetime as dt
    t = dt.datetime(2026, 5, 1, 6, 0, tzinfo=dt.UTC)
    assignment.next_task(session, u, pid, now=t)
    labels.submit_preference(session, u, tid, "a", now=t)
    # 10:30+05:00 is 05:30 UTC: the 06:00 UTC label is after it.
    assert len(list(export.iter_preference_rows(session, project="p", since="2026-05-01T10:30+05:00"))) == 1
    assert list(export.iter_preference_rows(session, project="p", since="2026-05-01T11:30+05:00")) == []
    assert len(list(export.iter_preference_rows(session, project="p", until=dt.date(2026, 5, 2)))) == 1
