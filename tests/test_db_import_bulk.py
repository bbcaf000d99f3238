"""The bulk imports (streaming check, batched plain INSERT / COPY) write what a straightforward row-at-a-time
import through the services writes: the same prompts, responses, tasks (with their A/B order), labels and
assignments, with the same ids, on a file with duplicates, chat and multi-turn prompts, rows that diverge early
and repeats that cross a batch boundary. A bad line writes nothing. On SQLite and PostgreSQL."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import PreferenceLabel
from db.services import accounts, content, importers, projects, tasks
from db.services.importers import InvalidRowsError
from db.session import dispose_engines, session_factory
from tests.conftest import fresh_url

KINDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

# Every column but the creation times (the reference stamps each row when it writes it, the bulk path once).
COLUMNS = {
    "prompts": "id, project_id, text, messages, source, meta, content_hash",
    "responses": "id, prompt_id, model_version_id, text, params, sample_index, content_hash",
    "tasks": "id, project_id, kind, prompt_id, response_ids, status, n_submitted, dedup_key, source",
    "preference_labels": "id, task_id, user_id, choice, strength, flags, comment, seconds, updated_at",
    "assignments": "id, task_id, user_id, state, skip_reason",
    "users": "id, username, role, active",
}


def hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


SYSTEM_CHAT = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "name a colour"}]
PREFERENCES = [
    {"chosen": hh("How do I bake bread?", "Knead and bake."), "rejected": hh("How do I bake bread?", "Buy it.")},
    {"chosen": hh("Hi", "Hello!", "Tell a joke", "Why did the chicken..."),  # diverges early: several turns
     "rejected": hh("Hi", "Go away.", "Tell a joke", "No.")},
    {"chosen": hh("Q1", "A1", "Q2", "right"), "rejected": hh("Q1", "A1", "Q2", "wrong")},  # multi-turn prompt
    {"prompt": SYSTEM_CHAT, "chosen": "teal", "rejected": "no", "margin": 2.0},  # TRL, chat prompt, strong
    {"prompt": "Say hi", "chosen": [{"role": "assistant", "content": "hi"}],
     "rejected": [{"role": "assistant", "content": "go away"}], "margin": 0.5},
    {"chosen": hh("How do I bake bread?", "Knead and bake."), "rejected": hh("How do I bake bread?", "Buy it.")},
    {"chosen": hh("How do I bake bread?", "Buy it."), "rejected": hh("How do I bake bread?", "Knead and bake.")},
    {"chosen": hh("How do I bake bread?", "Use a machine."), "rejected": hh("How do I bake bread?", "Buy it.")},
    {"prompt": SYSTEM_CHAT, "chosen": "teal", "rejected": "no", "margin": 2.0},
    {"chosen": hh("Unicode \u2028 é 🍞", "ja\u00a0"), "rejected": hh("Unicode \u2028 é 🍞", "nein\u0085")},
]
PROMPTS = [
    {"prompt": "What is 2 + 2?", "topic": "maths"},
    {"messages": [{"role": "user", "content": "one user turn: stored as text"}]},
    {"messages": [*SYSTEM_CHAT, {"role": "assistant", "content": "an answer, dropped"}]},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}], "id": 7},
    {"turns": ["first MT-Bench turn", "second"], "category": "writing"},
    {"instruction": "Translate", "input": "bonjour"},
    {"prompt": "What is 2 + 2?", "topic": "maths"},
    {"messages": [{"role": "user", "content": "one user turn: stored as text"}]},
    {"prompt": "one user turn: stored as text"},
    {"prompt": "nested meta", "meta": {"a": [1, 2.5, None, "ü"]}},
]


def lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def reference_preferences(s, data: bytes, name: str, project: str, seed: int = 0) -> None:
    """One row at a time through content.add_prompt / add_response and tasks.create_task (the services the
    bulk path must agree with), one label by the import's pseudo-user per task."""
    proj = projects.get_project(s, project)
    fmt, rows = importers.parse_preferences(data.decode(), name)
    who = accounts.system_user(s, f"import:{fmt}")
    rng, src = random.Random(seed), Path(name).name
    for r in rows:
        t, m = importers._stored_prompt(r["messages"])
        prompt, _ = content.add_prompt(s, proj.id, text=t, messages=m, source=src)
        ids = []
        for side in ("chosen", "rejected"):
            turns = r[f"{side}_turns"]
            params = {"source": src, **({"turns": turns} if len(turns) > 1 else {})}
            ids.append(content.add_response(s, prompt.id, r[side], params=params)[0].id)
        task, _ = tasks.create_task(s, proj.id, "compare", prompt.id, ids, rng=rng, source=src)
        if s.scalar(select(PreferenceLabel.id).where(PreferenceLabel.task_id == task.id,
                                                     PreferenceLabel.user_id == who.id)):
            continue
        s.add(PreferenceLabel(task_id=task.id, user_id=who.id, choice="a" if task.response_ids[0] == ids[0] else "b",
                              strength=importers.strength_for_margin(r["margin"]), flags=[], comment=""))
        importers._count_imported_label(s, task, who.id, proj)
        s.flush()


def reference_prompts(s, data: bytes, name: str, project: str, demonstrate: bool = False) -> None:
    proj = projects.get_project(s, project)
    for r in importers.parse_prompts(data.decode(), name):
        prompt, _ = content.add_prompt(s, proj.id, text=r["text"], messages=r["messages"], source=Path(name).name,
                                       meta=r["meta"])
        if demonstrate:
            tasks.create_task(s, proj.id, "demonstrate", prompt.id, source=Path(name).name)


def contents(s) -> dict[str, list[tuple]]:
    s.flush()
    return {t: [tuple(r) for r in s.connection().exec_driver_sql(f"SELECT {cols} FROM {t} ORDER BY id")]
            for t, cols in COLUMNS.items()}


@pytest.fixture
def new_db(request, tmp_path):
    """new_db(): a session on a fresh database of the kind, with project 'p' and one prompt written before."""
    made = []

    def new():
        s = session_factory(fresh_url(request.param, tmp_path))()
        projects.create_project(s, "p")
        content.add_prompt(s, projects.get_project(s, "p").id, text="How do I bake bread?", source="earlier")
        s.commit()
        made.append(s)
        return s

    yield new
    for s in made:
        s.close()
    dispose_engines()


@pytest.mark.parametrize("new_db", KINDS, indirect=True)
@pytest.mark.parametrize("batch", [3, 5000])
def test_bulk_preferences_write_what_the_services_write(new_db, monkeypatch, batch):
    """Batches of 3 put repeats (the same row, the same pair B/A) in later batches than their first row."""
    monkeypatch.setattr(importers, "_INSERT_BATCH", batch)
    fast, ref = new_db(), new_db()
    data = lines(PREFERENCES)
    r = importers.import_preferences(fast, data, "p", filename="prefs.jsonl", seed=3)
    reference_preferences(ref, data, "prefs.jsonl", "p", seed=3)
    assert contents(fast) == contents(ref)
    assert (r.rows, r.added, r.skipped) == (10, 7, 3)
    assert r.details == {"pairs diverging before the last reply (prompt: their shared start)": 1}
    before = contents(fast)
    again = importers.import_preferences(fast, data, "p", filename="prefs.jsonl", seed=3)
    assert (again.added, again.skipped) == (0, 10) and contents(fast) == before  # a re-import adds nothing


@pytest.mark.parametrize("new_db", KINDS, indirect=True)
@pytest.mark.parametrize("batch", [4, 5000])
def test_bulk_prompts_write_what_the_services_write(new_db, monkeypatch, batch):
    monkeypatch.setattr(importers, "_INSERT_BATCH", batch)
    fast, ref = new_db(), new_db()
    data = lines(PROMPTS)
    r = importers.import_prompts(fast, data, "p", filename="prompts.jsonl")
    reference_prompts(ref, data, "prompts.jsonl", "p")
    assert contents(fast) == contents(ref)
    assert (r.rows, r.added, r.skipped) == (10, 7, 3)
    csv = b"prompt,topic\nWhat is 2 + 2?,maths\n\"two\nlines\",\nnew one,x\n"
    importers.import_prompts(fast, csv, "p", filename="more.csv")
    reference_prompts(ref, csv, "more.csv", "p")
    assert contents(fast) == contents(ref)
    more = lines([*PROMPTS, {"prompt": "with a task"}])  # demonstrate tasks: for new and known prompts
    r = importers.import_prompts(fast, more, "p", filename="tasks.jsonl", demonstrate_tasks=True)
    reference_prompts(ref, more, "tasks.jsonl", "p", demonstrate=True)
    assert contents(fast) == contents(ref) and r.details == {"demonstrate tasks": 8}


@pytest.mark.parametrize("new_db", KINDS, indirect=True)
def test_a_bad_line_after_written_batches_writes_nothing(new_db, monkeypatch):
    """The bad line comes after two batches were written: they are rolled back (the savepoint), before the
    caller rolls anything back, and every bad line is listed; with skip_invalid the others import as usual.
    (On PostgreSQL the refused import used ids of the sequences, which no rollback gives back: so the good
    rows are compared on a database that saw no refused import.)"""
    monkeypatch.setattr(importers, "_INSERT_BATCH", 2)
    s = new_db()
    before = contents(s)
    bad = lines(PREFERENCES[:6]) + b"{not json\n" + lines(PREFERENCES[6:]) + b'{"chosen": "x"}\n'
    with pytest.raises(InvalidRowsError) as e:
        importers.import_preferences(s, bad, "p", filename="bad.jsonl")
    assert [(r.line, r.field) for r in e.value.refused] == [(7, None), (12, "rejected")]
    assert e.value.total == 12 and contents(s) == before
    prompts_bad = lines(PROMPTS[:5]) + b'{"prompt": ""}\n' + lines(PROMPTS[5:])
    with pytest.raises(InvalidRowsError, match="bad_prompts.jsonl:6, field .prompt.: must be a non-empty string"):
        importers.import_prompts(s, prompts_bad, "p", filename="bad_prompts.jsonl")
    assert contents(s) == before
    skipping, ref = new_db(), new_db()
    r = importers.import_preferences(skipping, bad, "p", filename="bad.jsonl", skip_invalid=True)
    assert [x.line for x in r.refused] == [7, 12] and r.rows == 10
    reference_preferences(ref, lines(PREFERENCES), "bad.jsonl", "p")
    assert contents(skipping) == contents(ref)


def test_fast_hashes_and_json_are_the_services():
    """The bulk path's own hashing and JSON text agree with content.sha / tasks._dedup_key and json.dumps (what
    SQLAlchemy's JSON type writes) on awkward values."""
    values = [None, {}, [], "é \u2028 🍞", {"b": 1, "a": [1.5, 'q"\\', None, True, -0.0, 1e300]},
              [{"role": "user", "content": "a\nb"}], {"z": {"y": "ü"}, "text": None}]
    for v in values:
        assert importers._json_text(v) == json.dumps(v)
        assert importers._sha(v) == content.sha(v)
    assert importers._prompt_hash(None, SYSTEM_CHAT) == content.prompt_hash(None, SYSTEM_CHAT)
    assert importers._prompt_hash("x", None) == content.prompt_hash("x", None)
    assert importers._sha({"kind": "compare", "prompt": 4, "responses": [2, 9]}) == tasks._dedup_key(
        "compare", 4, [9, 2])


def test_the_streamed_file_has_the_lines_of_the_file_read_whole(tmp_path):
    """_text_stream (the streaming imports) and _read_text (the others) give the same numbered lines: a BOM,
    CRLF, a lone CR, U+2028 / U+0085 inside a string, blank lines, a byte that is not UTF-8, gzip with two
    members and zero padding; from bytes and from a path. A cut gzip file is refused by both."""
    import gzip

    body = ('\ufeff{"prompt": "a\u2028b\u0085c"}\r\n\n  \n{"prompt": "x"}\rstill line 4\n'.encode()
            + b'{"prompt": "\xff"}\n{"prompt": "last"}')
    gz = gzip.compress(body[:20]) + gzip.compress(body[20:]) + b"\x00" * 8
    for data in (body, gz):
        path = tmp_path / "f.jsonl"
        path.write_bytes(data)
        whole = list(importers._jsonl_lines(importers._read_text(data, "f.jsonl")[0]))
        assert [n for n, _ in whole] == [1, 4, 5, 6]
        for source in (data, path):
            stream, _ = importers._text_stream(source, "f.jsonl")
            with stream:
                assert list(importers._jsonl_lines(stream)) == whole
    cut = gzip.compress(body * 50)[:-30]
    with pytest.raises(importers.InputError, match="broken gzip file"):
        importers._read_text(cut, "cut.gz")
    stream, _ = importers._text_stream(cut, "cut.gz")
    with pytest.raises(importers.InputError, match="cut.gz: broken gzip file"):
        list(importers._jsonl_lines(stream))
