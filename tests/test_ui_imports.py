"""Admin Imports page (AppTest): bad lines refuse the file and are listed; 'Skip invalid rows' imports the good
ones and offers the report of the refused lines for download, as `python -m db import --skip-invalid` does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from db.models import Job, PreferenceLabel, Task
from db.session import session_scope
from labeling_ui.seed import seed
from labeling_ui.text import JOINER

APP = str(Path(__file__).resolve().parents[1] / "labeling_ui" / "app.py")
GOOD = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}"}
        for i in range(3)]
FILE = ("\n".join([json.dumps(GOOD[0]), '{"chosen": "broken', json.dumps(GOOD[1]), "[1]", json.dumps(GOOD[2]),
                   '{"chosen": "<b>no rejected</b>"}']) + "\n").encode()


@pytest.fixture
def admin(sqlite_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    info = seed(sqlite_url, n_compare=1, n_rank=0, n_demonstrate=0, create_tables=False)
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["user"] = {"id": info["admin_id"], "username": "admin", "display_name": "admin", "role": "admin"}
    at.run()
    at.switch_page("views/imports.py").run()
    at.radio(key="imp_kind").set_value("preferences").run()
    at.file_uploader(key="imp_file").upload("hh.jsonl", FILE, "application/jsonl").run()
    return at, sqlite_url


def labels(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(PreferenceLabel))


def report_data(at: AppTest) -> list[dict]:
    """The refused lines offered for download (the button's file is the page's kept report)."""
    (dl,) = at.get("download_button")
    report = at.session_state["imp_report"]
    assert dl.label == f"Download the report of {report['count']} refused line{'s' if report['count'] != 1 else ''}"
    return [json.loads(line) for line in report["data"].decode().splitlines()]


def test_bad_lines_refuse_the_file_and_are_listed(admin):
    at, url = admin
    before = labels(url)
    at.button(key="imp_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (err,) = [e.value.replace(JOINER, "") for e in at.error]
    assert "3 of 6 lines of hh.jsonl cannot be imported, so nothing was imported" in err
    # in words, not `hh.jsonl:6, field 'rejected': missing field`
    assert "Line 2: malformed JSON" in err and "Line 6: the “rejected” field is missing." in err
    assert "field '" not in err and "hh.jsonl:" not in err
    assert "Skip invalid rows" in err and "3 good rows" in err and "--skip-invalid" not in err
    assert labels(url) == before
    assert [o["line"] for o in report_data(at)] == [2, 4, 6]


def test_skip_invalid_rows_imports_the_good_ones_and_offers_the_report(admin):
    at, url = admin
    before = labels(url)
    at.checkbox(key="imp_skip").check().run()
    at.button(key="imp_go").click().run()
    assert not at.exception and not at.error
    assert "3 rows read, 3 added, 0 already present, 3 lines refused" in at.success[0].value
    assert "3 lines of hh.jsonl were refused" in at.warning[0].value
    assert labels(url) == before + 3
    # the toast says 3 new *what*, and the page says what the pairs are for and whether annotators see them
    assert [t.value for t in at.toast] == ["Imported 3 new preference pairs"]
    panel = "\n".join(m.value for m in at.get("markdown"))
    assert "#### What happens next" in panel and "added 3 preference pairs to" in panel
    assert "**Reward model (preferences)** job on the Jobs page" in panel and "Annotators see none of them" in panel
    assert any("rlhf.train_reward --model" in c.value for c in at.code)
    rows = report_data(at)
    assert [(o["line"], o["field"]) for o in rows] == [(2, None), (4, None), (6, "rejected")]
    assert rows[2]["text"] == '{"chosen": "<b>no rejected</b>"}'
    at.button(key="imp_go").click().run()  # again: nothing new
    assert "0 added, 3 already present" in at.success[0].value and labels(url) == before + 3


PROMPTS = ("\n".join(json.dumps({"prompt": f"What is {i} + {i}?"}) for i in range(3)) + "\n").encode()


def test_a_prompt_import_says_what_happens_next_and_makes_tasks_or_a_generate_job(admin):
    at, url = admin
    at.radio(key="imp_kind").set_value("prompts").run()
    at.file_uploader(key="imp_file").upload("new.jsonl", PROMPTS, "application/jsonl").run()
    at.button(key="imp_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    page = "\n".join(m.value for m in at.markdown)
    assert "What happens next" in page and "annotators see nothing yet" in page
    with session_scope(url) as s:
        before = s.scalar(select(func.count()).select_from(Task).where(Task.kind == "demonstrate"))
    at.button(key="imp_next_demo").click().run()
    assert "3 demonstrate tasks created" in at.success[0].value
    with session_scope(url) as s:  # one per prompt of this file, nothing for the project's other prompts
        assert s.scalar(select(func.count()).select_from(Task).where(Task.kind == "demonstrate")) == before + 3
    assert at.button(key="imp_next_demo").disabled
    # compare or rank tasks from a chosen version: a generate job for the worker, and the same as a command
    at.selectbox(key="imp_next_model").set_value("base-v1").run()
    at.segmented_control(key="imp_next_kind").set_value("rank").run()
    assert "python -m rlhf.generate --project demo --models base-v1 --num_samples 4 --tasks rank" in at.code[0].value
    at.button(key="imp_next_gen").click().run()
    assert not at.exception and "queued" in at.success[0].value
    with session_scope(url) as s:
        (job,) = s.scalars(select(Job)).all()
        assert (job.kind, job.state, job.args) == ("generate", "queued", {
            "project": "demo", "models": ["base-v1"], "num_samples": 4, "tasks": "rank"})


def test_bad_setting_is_a_message_not_a_traceback(sqlite_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("INSTRUCTLOOP_MAX_PROMPT_CHARS", "abc")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    (err,) = [e.value for e in at.error]
    assert "INSTRUCTLOOP_MAX_PROMPT_CHARS='abc' must be a whole number" in err


def test_a_ratings_import_says_what_the_ratings_are_for(admin):
    at, _ = admin
    at.radio(key="imp_kind").set_value("ratings").run()
    row = {"prompt": "2+2?", "completion": "4", "label": True}
    at.file_uploader(key="imp_file").upload("kto.jsonl", (json.dumps(row) + "\n").encode(), "application/jsonl").run()
    at.button(key="imp_go").click().run()
    assert not at.exception and not at.error
    assert [t.value for t in at.toast] == ["Imported 1 new rating"]
    panel = "\n".join(m.value for m in at.get("markdown"))
    assert "added 1 rating to" in panel and "*From good/bad ratings* ticked" in panel
    assert any("rlhf.train_reward --from_ratings" in c.value for c in at.code)
