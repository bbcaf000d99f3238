"""Size limits (db.settings.SIZE_LIMITS): prompt, response, demonstration, comment and upload are refused over
their limit with a message naming the limit and its variable, nothing is written, and the limits follow the
environment. Size checks do not depend on the database, so these run on SQLite only."""
from __future__ import annotations

import gzip
import json

import pytest
from sqlalchemy import func, select

from db import settings
from db.models import Assignment, Demonstration, PreferenceLabel, Prompt, Ranking, Rating, Response
from db.services import accounts, assignment, content, importers, labels, projects, tasks
from db.services.errors import InputError
from db.settings import SIZE_LIMITS, size_limit
from tests.db_helpers import make_compare_project, make_users


def count(s, model) -> int:
    return s.scalar(select(func.count()).select_from(model))


@pytest.fixture
def small_limits(monkeypatch):
    """Every limit set low (characters: 50; upload: 1 MB)."""
    for what, (env, _default, _unit) in SIZE_LIMITS.items():
        monkeypatch.setenv(env, "1" if what == "upload" else "50")


def test_defaults_are_documented_and_follow_the_environment(monkeypatch):
    assert {w: size_limit(w) for w in SIZE_LIMITS} == {
        "prompt": 100_000, "response": 100_000, "demonstration": 50_000, "comment": 5_000, "upload": 200}
    monkeypatch.setenv("INSTRUCTLOOP_MAX_COMMENT_CHARS", "7")
    assert size_limit("comment") == 7
    monkeypatch.setenv("INSTRUCTLOOP_MAX_COMMENT_CHARS", "lots")
    with pytest.raises(ValueError, match="INSTRUCTLOOP_MAX_COMMENT_CHARS='lots' must be a whole number"):
        size_limit("comment")


def _project(s):
    pid, task_ids = make_compare_project(s, n_tasks=1)
    (u,) = make_users(s, 1)
    admin = accounts.create_user(s, "boss", "password-1", role="admin").id
    s.commit()
    return pid, task_ids[0], u, admin


def test_each_limit_refuses_with_its_name(sqlite_session, small_limits):
    s = sqlite_session
    pid, compare_id, u, admin = _project(s)
    over, at_limit = "x" * 51, "y" * 50
    prompt, _ = content.add_prompt(s, pid, text="short prompt")
    r3 = [content.add_response(s, prompt.id, f"r{i}")[0].id for i in range(3)]
    rank_id = tasks.create_task(s, pid, "rank", prompt.id, r3)[0].id
    rate_id = tasks.create_task(s, pid, "rate", prompt.id, r3[:1])[0].id
    demo_id = tasks.create_task(s, pid, "demonstrate", prompt.id)[0].id
    s.commit()
    rank_order = [[r3[0]], r3[1:]]
    cases = [  # (limit, call with an oversized value, table that must stay as it was)
        ("prompt", lambda: content.add_prompt(s, pid, text=over), Prompt),
        ("prompt", lambda: content.add_prompt(s, pid, messages=[{"role": "system", "content": "z" * 30},
                                                                 {"role": "user", "content": "w" * 30}]), Prompt),
        ("response", lambda: content.add_response(s, prompt.id, over), Response),
        ("demonstration", lambda: labels.submit_demonstration(s, u, demo_id, over), Demonstration),
        ("comment", lambda: labels.submit_preference(s, u, compare_id, "a", comment=over), PreferenceLabel),
        ("comment", lambda: labels.submit_ranking(s, u, rank_id, rank_order, comment=over), Ranking),
        ("comment", lambda: labels.submit_rating(s, u, rate_id, True, comment=over), Rating),
    ]
    for what, call, model in cases:
        before = count(s, model)
        with pytest.raises(InputError) as e:
            call()
        env = SIZE_LIMITS[what][0]
        assert f"the {what} has" in str(e.value) and "over the limit of 50" in str(e.value) and env in str(e.value)
        s.rollback()
        assert count(s, model) == before, what
    # exactly at the limit is accepted
    content.add_prompt(s, pid, text=at_limit)
    content.add_response(s, prompt.id, at_limit)
    label, _ = labels.submit_preference(s, u, compare_id, "a", comment=at_limit)
    s.commit()
    # a revision and a review note are held to the comment limit too
    with pytest.raises(InputError, match="the comment has 51 characters"):
        labels.revise_preference(s, u, label.id, "b", comment=over)
    d, _ = labels.submit_demonstration(s, u, demo_id, at_limit)
    with pytest.raises(InputError, match="field 'note': the comment has 51"):
        labels.review_demonstration(s, d.id, admin, True, note=over)
    s.rollback()
    assert s.get(Demonstration, d.id).status == "submitted"
    # a skip reason too: the task stays the annotator's, not skipped
    a_view = assignment.next_task(s, u, pid, kind="rank")
    s.commit()
    with pytest.raises(InputError, match="field 'reason': the comment has 51 characters"):
        assignment.skip_task(s, u, a_view.task_id, over)
    s.rollback()
    assert assignment.skip_task(s, u, a_view.task_id, at_limit).skip_reason == at_limit


def test_lease_minutes_follow_the_environment_and_a_bad_value_is_a_message(monkeypatch, sqlite_session):
    s = sqlite_session
    pid, _task_id, u, _admin = _project(s)
    monkeypatch.setenv("INSTRUCTLOOP_LEASE_MINUTES", "7")
    view = assignment.next_task(s, u, pid)
    a = s.scalar(select(Assignment).where(Assignment.task_id == view.task_id))
    assert (a.expires_at - a.assigned_at).total_seconds() == 7 * 60
    assert settings.problems() == []
    monkeypatch.setenv("INSTRUCTLOOP_LEASE_MINUTES", "half an hour")
    assert settings.problems() == [("environment variable INSTRUCTLOOP_LEASE_MINUTES='half an hour' must be a "
                                   "whole number")]
    with pytest.raises(settings.SettingsError, match="INSTRUCTLOOP_LEASE_MINUTES"):
        assignment.next_task(s, u, pid)


def test_upload_and_import_rows(sqlite_session, small_limits, tmp_path):
    s = sqlite_session
    projects.create_project(s, "imp")
    s.commit()
    big = b"".join(json.dumps({"prompt": f"p{i}"}).encode() + b"\n" for i in range(90_000))  # ~1.3 MB
    assert len(big) > 2**20
    with pytest.raises(InputError, match=r"upload: the file has 1\.\d MB, over the upload limit of 1 MB "
                                         r"\(set by INSTRUCTLOOP_MAX_UPLOAD_MB\)"):
        importers.import_prompts(s, big, "imp", filename="upload")
    path = tmp_path / "big.jsonl"
    path.write_bytes(big)
    with pytest.raises(InputError, match="big.jsonl: the file has"):
        importers.import_prompts(s, path, "imp")
    bomb = gzip.compress(b"\n" * (3 * 2**20))  # 3 kB that unpack to 3 MB
    with pytest.raises(InputError, match="unpacks to more than the upload limit of 1 MB"):
        importers.import_prompts(s, bomb, "imp", filename="bomb.jsonl.gz")
    assert count(s, Prompt) == 0
    # an oversized row is refused as a line (with --skip-invalid the rest imports); preference rows too
    lines = [json.dumps({"prompt": "fine"}), json.dumps({"prompt": "q" * 60})]
    r = importers.import_prompts(s, "\n".join(lines).encode(), "imp", filename="p.jsonl", skip_invalid=True)
    assert r.added == 1 and len(r.refused) == 1 and "the prompt has 60 characters" in r.refused[0].reason
    with pytest.raises(InputError, match="prefs.jsonl:1, field 'chosen': the response has 70 characters"):
        importers.import_preferences(s, (json.dumps({"prompt": "hi", "chosen": "c" * 70, "rejected": "no"})
                                         + "\n").encode(), "imp", filename="prefs.jsonl")
    s.rollback()
