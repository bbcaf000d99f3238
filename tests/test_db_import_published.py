"""Published HH / TRL / OASST files: rows that diverge early keep their shared start as the prompt, unreadable
lines are refused by line and reason (whole file by default, or skipped with skip_invalid), nothing is
half-written and a re-import adds nothing. Runs on SQLite and PostgreSQL (the `session` fixture)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Assignment, PreferenceLabel, Prompt, Ranking, Response, Task
from db.services import content, export, importers, projects
from db.services.errors import InputError
from db.services.importers import InvalidRowsError, split_conversations


def hh(*turns: str) -> str:
    """An HH transcript of alternating Human/Assistant turns."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


LONG_REPLY = "word " * 6000  # ~30 KB: imports whole (truncation is for training, never for the database)
LONG_TURNS = [f"turn {i} " + "x" * 200 for i in range(41)]  # 41 turns: the next one is the assistant's

# (line content, expected outcome): a dict is a good row (its expected prompt turns and responses), a str is
# the field and reason of a refused line. Blank lines are neither.
CASES: list[tuple[object, object]] = [
    ({"chosen": hh("How do I bake bread?", "Knead and bake."), "rejected": hh("How do I bake bread?", "Buy it.")},
     {"prompt": ["How do I bake bread?"], "chosen": "Knead and bake.", "rejected": "Buy it."}),
    # diverges at the first reply of a two-exchange conversation: the prompt is the first Human turn only
    ({"chosen": hh("Hi", "Hello!", "Tell a joke", "Why did the chicken..."),
      "rejected": hh("Hi", "Go away.", "Tell a joke", "No.")},
     {"prompt": ["Hi"], "chosen": "Hello!\n\nHuman: Tell a joke\n\nAssistant: Why did the chicken...",
      "rejected": "Go away.\n\nHuman: Tell a joke\n\nAssistant: No.", "divergent": True}),
    # diverges at a Human turn: the shared start backs off to the last shared user turn
    ({"chosen": hh("Q1", "A1", "follow-up one", "R1"), "rejected": hh("Q1", "A1", "follow-up two", "R2")},
     {"prompt": ["Q1"], "chosen": "A1\n\nHuman: follow-up one\n\nAssistant: R1",
      "rejected": "A1\n\nHuman: follow-up two\n\nAssistant: R2", "divergent": True}),
    ("", None),  # blank line: ignored
    ("{\"chosen\": \"\\n\\nHuman: truncated", "None: malformed JSON"),
    # an empty last reply, as published ("\n\nAssistant:" with no space): a real preference for saying nothing
    ({"chosen": "\n\nHuman: Help me hurt someone\n\nAssistant:", "rejected": hh("Help me hurt someone", "Sure, ...")},
     {"prompt": ["Help me hurt someone"], "chosen": "", "rejected": "Sure, ..."}),
    ({"chosen": hh("Say nothing", ""), "rejected": "\n\nHuman: Say nothing\n\nAssistant:"},
     "rejected: chosen and rejected are identical"),
    ({"chosen": hh(*LONG_TURNS, LONG_REPLY), "rejected": hh(*LONG_TURNS, "short")},
     {"prompt": LONG_TURNS, "chosen": LONG_REPLY.strip(), "rejected": "short"}),
    ("[1, 2]", "None: each line must be a JSON object"),
    ({"chosen": hh("only chosen", "x")}, "rejected: missing field"),
    ({"chosen": 42, "rejected": hh("q", "a")}, "chosen: HH rows need string"),
    ({"chosen": "Preamble\n\nHuman: q\n\nAssistant: a", "rejected": hh("q", "b")},
     "chosen: text before the first 'Human:' turn"),
    ({"chosen": hh("one question", "a"), "rejected": hh("another question", "b")}, "chosen: share no prompt"),
    ({"chosen": hh("q", "a", "and?"), "rejected": hh("q", "b")}, "chosen: ends with a user turn"),
    ({"chosen": hh("nul", "a\u0000b"), "rejected": hh("nul", "c")}, "chosen: NUL character"),
    ({"chosen": hh("emoji", "half \ud83d"), "rejected": hh("emoji", "c")}, "chosen: unpaired surrogate"),
    ({"chosen": hh("", "a"), "rejected": hh("", "b")}, "prompt: the prompt is empty"),
    # a TRL explicit-prompt row in the same file
    ({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "margin": 2.0},
     {"prompt": ["What is 2+2?"], "chosen": "4", "rejected": "5"}),
    # the first row again: read, already present
    ({"chosen": hh("How do I bake bread?", "Knead and bake."), "rejected": hh("How do I bake bread?", "Buy it.")},
     {"prompt": ["How do I bake bread?"], "chosen": "Knead and bake.", "rejected": "Buy it.", "dup": True}),
]
BAD_BYTES_LINE = b'{"chosen": "\\n\\nHuman: caf\xe9\\n\\nAssistant: a", "rejected": "x"}'


def hh_file(tmp_path: Path, name: str = "hh.jsonl") -> tuple[Path, dict[int, dict], dict[int, str]]:
    """The synthetic file, its good rows and refused lines by line number."""
    lines, good, bad = [], {}, {}
    for i, (row, want) in enumerate(CASES, start=1):
        lines.append(row.encode() if isinstance(row, str) else json.dumps(row).encode())
        if isinstance(want, dict):
            good[i] = want
        elif isinstance(want, str):
            bad[i] = want
    lines.append(BAD_BYTES_LINE)
    bad[len(lines)] = "None: not valid UTF-8 (byte 0xe9"
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, good, bad


def counts(session) -> dict[str, int]:
    return {m.__name__: session.scalar(select(func.count()).select_from(m)) or 0
            for m in (Prompt, Response, Task, PreferenceLabel, Assignment)}


def test_synthetic_hh_file_imports_the_right_rows_and_reports_the_others(session, tmp_path):
    projects.create_project(session, "hh")
    session.commit()
    path, good, bad = hh_file(tmp_path)
    n_new = sum(not w.get("dup") for w in good.values())

    # Without skip_invalid: the whole file is refused, the message counts and lists the bad lines.
    with pytest.raises(InvalidRowsError) as e:
        importers.import_preferences(session, path, "hh")
    session.rollback()
    msg = str(e.value)
    assert msg.startswith(f"{path}: {len(bad)} of {len(good) + len(bad)} lines cannot be imported")
    assert "nothing was imported" in msg and "--skip-invalid REPORT.jsonl" in msg
    assert f"import the {len(good)} good rows" in msg
    first = sorted(bad)[:importers.SHOWN_BAD_LINES]
    assert [ln for ln in msg.splitlines() if ln.startswith("  ")][:-1] == [
        f"  {r.located(str(path))}" for r in e.value.refused[:importers.SHOWN_BAD_LINES]]
    assert [r.line for r in e.value.refused][:len(first)] == first
    assert f"... and {len(bad) - importers.SHOWN_BAD_LINES} more" in msg
    assert counts(session) == dict.fromkeys(counts(session), 0)

    # With skip_invalid: every good row, one report entry per bad line with the right reason.
    r = importers.import_preferences(session, path, "hh", skip_invalid=True)
    session.commit()
    assert (r.rows, r.added, r.skipped) == (len(good), n_new, len(good) - n_new)
    assert [x.line for x in r.refused] == sorted(bad)
    for x in r.refused:
        want_field, want_reason = bad[x.line].split(": ", 1)
        assert str(x.field) == want_field and want_reason in x.reason, (x, bad[x.line])
    assert r.details == {"pairs diverging before the last reply (prompt: their shared start)": 2}
    raw_lines = path.read_bytes().split(b"\n")
    report = [json.loads(line) for line in importers.report_lines(str(path), r.refused)]
    assert [(o["line"], o["file"]) for o in report] == [(i, str(path)) for i in sorted(bad)]
    for o in report[:-1]:  # the line as it stands in the file (the last one has its bad byte replaced)
        assert o["text"] == raw_lines[o["line"] - 1].decode()
    assert "caf\ufffd" in report[-1]["text"]

    # The database holds exactly the good rows: prompt, both responses (whole), a task, a label each.
    n = counts(session)
    assert n == {"Prompt": n_new, "Response": 2 * n_new, "Task": n_new, "PreferenceLabel": n_new,
                 "Assignment": n_new}
    pid = projects.get_project(session, "hh").id
    for line, want in good.items():
        prompt = next(p for p in content.list_prompts(session, pid)
                      if [m["content"] for m in content.prompt_messages(p)] == want["prompt"])
        task = session.scalar(select(Task).where(Task.prompt_id == prompt.id))
        label = session.scalar(select(PreferenceLabel).where(PreferenceLabel.task_id == task.id))
        a, b = (session.get(Response, i).text for i in task.response_ids)
        winner, loser = (a, b) if label.choice == "a" else (b, a)
        assert (winner, loser) == (want["chosen"], want["rejected"]), line
    # several-turn responses also keep their turns
    tails = [r.params["turns"] for r in session.scalars(select(Response)) if "turns" in r.params]
    assert len(tails) == 4 and all(t[0]["role"] == t[-1]["role"] == "assistant" for t in tails)

    # An HH export writes the good rows' transcripts back as they were (divergent ones included).
    out = {(o["chosen"], o["rejected"]) for o in export.iter_preference_rows(session, project="hh", fmt="hh")}
    src = {(json.loads(raw_lines[i - 1])["chosen"], json.loads(raw_lines[i - 1])["rejected"])
           for i in good if "prompt" not in json.loads(raw_lines[i - 1])}
    # (up to trailing space: "\n\nAssistant:" with an empty reply comes back as "\n\nAssistant: ")
    assert {(c.rstrip(), rj.rstrip()) for c, rj in src} == {(c.rstrip(), rj.rstrip()) for c, rj in out
                                                             if "2+2" not in c}

    # Re-import: nothing new, the same lines refused.
    again = importers.import_preferences(session, path, "hh", skip_invalid=True)
    session.commit()
    assert (again.added, again.skipped, len(again.refused)) == (0, len(good), len(bad))
    assert counts(session) == n


def test_a_failure_while_writing_leaves_nothing(session, tmp_path, monkeypatch):
    """One transaction: an error after prompts, responses and tasks were written rolls them all back."""
    projects.create_project(session, "hh")
    session.commit()
    path, _, _ = hh_file(tmp_path)
    real, calls = importers._insert_labels, []

    def failing(*a, **kw):  # the last write: prompts, responses and tasks are in by then
        calls.append(1)
        assert counts(session)["Task"] > 0
        real(*a, **kw)
        raise RuntimeError("disk full")

    monkeypatch.setattr(importers, "_insert_labels", failing)
    with pytest.raises(RuntimeError):
        importers.import_preferences(session, path, "hh", skip_invalid=True)
    session.rollback()
    assert len(calls) == 1 and counts(session) == dict.fromkeys(counts(session), 0)


def test_rows_written_by_the_other_services_are_found(session, tmp_path):
    """The bulk writer uses the services' hashes and keys: a prompt imported as a prompt, a response and a
    compare task made one at a time are reused, not doubled."""
    projects.create_project(session, "p")
    pid = projects.get_project(session, "p").id
    p1 = tmp_path / "prompts.jsonl"
    p1.write_text(json.dumps({"prompt": "shared question"}) + "\n"
                  + json.dumps({"messages": [{"role": "system", "content": "terse"},
                                             {"role": "user", "content": "chat question"}]}) + "\n")
    importers.import_prompts(session, p1, "p")
    prompt = next(p for p in content.list_prompts(session, pid) if p.text == "shared question")
    ra, _ = content.add_response(session, prompt.id, "yes")
    rb, _ = content.add_response(session, prompt.id, "no")
    from db.services import tasks
    task, _ = tasks.create_task(session, pid, "compare", prompt.id, [ra.id, rb.id])
    session.commit()
    before = counts(session)
    f = tmp_path / "prefs.jsonl"
    f.write_text(json.dumps({"prompt": "shared question", "chosen": "no", "rejected": "yes"}) + "\n"
                 + json.dumps({"prompt": [{"role": "system", "content": "terse"},
                                          {"role": "user", "content": "chat question"}],
                               "chosen": "a", "rejected": "b"}) + "\n")
    r = importers.import_preferences(session, f, "p")
    session.commit()
    after = counts(session)
    assert r.added == 2 and after["Prompt"] == before["Prompt"] and after["Task"] == before["Task"] + 1
    assert after["Response"] == before["Response"] + 2  # only the chat prompt's two new replies
    label = session.scalar(select(PreferenceLabel).where(PreferenceLabel.task_id == task.id))
    assert session.get(Response, task.response_ids[0 if label.choice == "a" else 1]).text == "no"
    session.refresh(task)
    assert (task.n_submitted, task.status) == (1, "done")


def test_gzip_as_published(session, tmp_path):
    projects.create_project(session, "hh")
    path, good, bad = hh_file(tmp_path)
    gz = tmp_path / "train.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    r = importers.import_preferences(session, gz, "hh", skip_invalid=True)
    assert r.rows == len(good) and len(r.refused) == len(bad)
    broken = tmp_path / "cut.jsonl.gz"
    broken.write_bytes(gz.read_bytes()[:-20])
    with pytest.raises(InputError, match=r"cut.jsonl.gz: broken gzip file"):
        importers.import_preferences(session, broken, "hh", skip_invalid=True)


@pytest.mark.parametrize("chosen,rejected,want", [
    (["u:q", "a:x"], ["u:q", "a:y"], (["u:q"], ["a:x"], ["a:y"])),
    (["s:be nice", "u:q", "a:x"], ["s:be nice", "u:q", "a:y"], (["s:be nice", "u:q"], ["a:x"], ["a:y"])),
    (["u:q", "a:x", "u:r", "a:z1"], ["u:q", "a:x", "u:r", "a:z2"], (["u:q", "a:x", "u:r"], ["a:z1"], ["a:z2"])),
    (["u:q", "a:x"], ["u:q", "a:x", "u:more", "a:y"], (["u:q"], ["a:x"], ["a:x", "u:more", "a:y"])),
    (["u:q", "a:x", "u:r1", "a:z"], ["u:q", "a:x", "u:r2", "a:z"], (["u:q"], ["a:x", "u:r1", "a:z"],
                                                                   ["a:x", "u:r2", "a:z"])),
    (["u:q", "u:q2", "a:x"], ["u:q", "u:q3", "a:y"], "share no prompt"),  # no shared user turn answered on both
    (["u:q1", "a:x"], ["u:q2", "a:x"], "share no prompt"),
    (["u:q", "a:x"], ["u:q", "a:x"], "identical"),
    (["u:q", "a:x", "u:r"], ["u:q", "a:y"], "ends with a user turn"),
])
def test_split_conversations(chosen, rejected, want):
    def turns(xs):
        return [{"role": {"u": "user", "a": "assistant", "s": "system"}[x[0]], "content": x[2:]} for x in xs]

    if isinstance(want, str):
        with pytest.raises(InputError, match=want):
            split_conversations(turns(chosen), turns(rejected))
    else:
        assert split_conversations(turns(chosen), turns(rejected)) == tuple(turns(w) for w in want)


def test_trl_rows_as_published(session, tmp_path):
    """TRL implicit prompt (ultrafeedback style) and explicit prompt with several-turn completions."""
    projects.create_project(session, "trl")
    rows = [
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
         "score_chosen": 8.0, "score_rejected": 3.0},
        {"prompt": [{"role": "user", "content": "plan a trip"}],
         "chosen": [{"role": "assistant", "content": "Where to?"}, {"role": "user", "content": "Rome"},
                    {"role": "assistant", "content": "Go to the Forum."}],
         "rejected": [{"role": "assistant", "content": "Where to?"}, {"role": "user", "content": "Rome"},
                      {"role": "assistant", "content": "No idea."}]},
    ]
    f = tmp_path / "trl.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fmt, parsed = importers.parse_preferences(f.read_text(), str(f))
    assert fmt == "trl" and [(r["chosen"], r["rejected"]) for r in parsed] == [
        ("good", "bad"), ("Go to the Forum.", "No idea.")]
    # the shared turns of the completions join the prompt
    assert [m["content"] for m in parsed[1]["messages"]] == ["plan a trip", "Where to?", "Rome"]
    assert importers.import_preferences(session, f, "trl").added == 2


def test_parse_preferences_contract_for_training(tmp_path):
    """rlhf.data reads files through parse_preferences(text, path): (fmt, rows with messages, chosen, rejected,
    margin); bad lines raise an InputError that counts them."""
    path, good, bad = hh_file(tmp_path)
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    with pytest.raises(InputError, match=rf"{len(bad)} of {len(good) + len(bad)} lines cannot be imported"):
        importers.parse_preferences(text, str(path))
    refused: list = []
    fmt, rows = importers.parse_preferences(text, str(path), refused=refused)
    assert fmt == "hh" and len(rows) == len(good) and len(refused) == len(bad)
    assert all({"messages", "chosen", "rejected", "margin"} <= set(r) for r in rows)
    assert rows[-2]["margin"] == 2.0 and rows[0]["margin"] is None


# ---------------------------------------------------------------------------------------- OASST

def _ranked_prompter_nodes(path: Path) -> int:
    """Counted straight from the file: prompter messages with two or more ranked, undeleted assistant replies."""
    def walk(node):
        if node.get("deleted"):
            return 0
        kids = [r for r in node.get("replies", []) if not r.get("deleted")]
        here = node["role"] == "prompter" and sum(r["role"] == "assistant" and r.get("rank") is not None
                                                  for r in kids) >= 2
        return here + sum(walk(r) for r in kids)
    return sum(walk(json.loads(line)["prompt"]) for line in path.read_text().splitlines() if line.strip())


def test_oasst_fixture_imports_as_published(session, shared_data, tmp_path):
    path = shared_data / "oasst_en_100_tree.jsonl"
    projects.create_project(session, "oa")
    r = importers.import_oasst(session, path, "oa", skip_invalid=True)
    session.commit()
    expected = _ranked_prompter_nodes(path)
    assert expected > 200 and (r.rows, r.refused, r.added) == (100, [], expected)
    assert r.added == r.details["rank tasks"] + r.details["compare tasks"]
    assert counts(session)["Task"] == expected
    n_labels = session.scalar(select(func.count()).select_from(Ranking)) + counts(session)["PreferenceLabel"]
    assert n_labels == expected
    # the ranking recorded is the tree's: best rank first
    rk = session.scalars(select(Ranking).order_by(Ranking.id)).first()
    ranks = [session.get(Response, g[0]).params["oasst_rank"] for g in rk.ordering]
    assert ranks == sorted(ranks)
    # the same file gzip-compressed, as published: already there
    gz = tmp_path / "trees.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    again = importers.import_oasst(session, gz, "oa")
    assert (again.added, again.skipped) == (0, expected)


def test_oasst_bad_trees_refused_whole(session, shared_data, tmp_path):
    lines = (shared_data / "oasst_en_100_tree.jsonl").read_text().splitlines()[:3]
    broken = json.loads(lines[1])
    broken["prompt"]["replies"][0]["rank"] = "first"  # a bad message deep in the tree refuses the tree
    f = tmp_path / "o.jsonl"
    f.write_text("\n".join([lines[0], json.dumps(broken), lines[2], "{not json"]) + "\n")
    projects.create_project(session, "oa")
    session.commit()
    with pytest.raises(InvalidRowsError, match=r"2 of 4 lines cannot be imported"):
        importers.import_oasst(session, f, "oa")
    session.rollback()
    assert counts(session)["Task"] == 0
    r = importers.import_oasst(session, f, "oa", skip_invalid=True)
    assert [(x.line, x.field) for x in r.refused] == [(2, "rank"), (4, None)]
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join([lines[0], lines[2]]) + "\n")
    assert r.added == _ranked_prompter_nodes(good) and counts(session)["Task"] == r.added


def test_prompt_import_skips_invalid_lines(session, tmp_path):
    projects.create_project(session, "p")
    session.commit()
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "one"}\n{"prompt": ""}\n{"prompt": "two", "tag": "a\\u0000"}\n{"prompt": "three"}\n')
    with pytest.raises(InvalidRowsError, match=r"2 of 4 lines"):
        importers.import_prompts(session, f, "p")
    session.rollback()
    r = importers.import_prompts(session, f, "p", skip_invalid=True)
    assert (r.added, [(x.line, x.field) for x in r.refused]) == (2, [(2, "prompt"), (3, "tag")])
    csv = tmp_path / "p.csv"
    csv.write_text('prompt,topic\nfine,a\n"",b\nalso fine,c\n')
    r = importers.import_prompts(session, csv, "p", skip_invalid=True)
    assert r.added == 2 and [(x.line, x.field) for x in r.refused] == [(3, "prompt")]


def test_summary_puts_what_was_added_beside_added_and_counts_refused_lines_in_words():
    from db.services.importers import ImportResult, RefusedLine

    r = ImportResult(file="hh.jsonl", kind="preferences", rows=5, added=5, skipped=0,
                     details={"pairs diverging before the last reply (prompt: their shared start)": 1},
                     refused=[RefusedLine(line=4, field=None, reason="malformed JSON")])
    # the diverging pair was imported, the broken line refused: the details must not read as the refused lines'
    assert r.summary() == ("hh.jsonl: 5 rows read, 5 added (pairs diverging before the last reply (prompt: their "
                           "shared start): 1), 0 already present, 1 line refused")
    r.refused.append(RefusedLine(line=6, field="chosen", reason="missing field"))
    assert r.summary().endswith(", 2 lines refused")
