"""Rankings, demonstrations, revision policy, history, review."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from db.models import Demonstration, Ranking, utcnow
from db.services import accounts, assignment, content, labels, projects, stats, tasks
from db.services.errors import InputError, ServiceError
from tests.db_helpers import make_compare_project, make_users


def _rank_task(session, pid, k=4):
    pr, _ = content.add_prompt(session, pid, messages=[{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Name a colour."}])
    rids = [content.add_response(session, pr.id, f"colour {i}")[0].id for i in range(k)]
    t, _ = tasks.create_task(session, pid, "rank", pr.id, rids)
    session.commit()
    return t, rids


def test_ranking_with_ties(session):
    (u,) = make_users(session, 1)
    p = projects.create_project(session, "r")
    t, rids = _rank_task(session, p.id)
    v = assignment.next_task(session, u, p.id)
    assert v.kind == "rank" and len(v.responses) == 4 and v.messages[0]["role"] == "system"
    with pytest.raises(InputError, match="every response"):
        labels.submit_ranking(session, u, t.id, [[rids[0]], [rids[1]]])
    with pytest.raises(InputError, match="everything ties"):
        labels.submit_ranking(session, u, t.id, [rids])
    with pytest.raises(InputError, match="flag"):
        labels.submit_ranking(session, u, t.id, [[rids[0]], rids[1:]], flags=["rude"])
    r, created = labels.submit_ranking(session, u, t.id, [[rids[2]], [rids[0], rids[3]], [rids[1]]],
                                       flags=["hallucination"], seconds=12)
    assert created and r.ordering[1] == [rids[0], rids[3]]
    _, again = labels.submit_ranking(session, u, t.id, [[rids[0]], [rids[1], rids[2], rids[3]]])
    assert not again and session.scalar(select(func.count()).select_from(Ranking)) == 1


def test_rank_task_needs_three_responses(session):
    p = projects.create_project(session, "r")
    pr, _ = content.add_prompt(session, p.id, text="x")
    rids = [content.add_response(session, pr.id, f"r{i}")[0].id for i in range(2)]
    with pytest.raises(InputError, match="at least 3"):
        tasks.create_task(session, p.id, "rank", pr.id, rids)


def test_demonstration_validation_review_and_revision(session):
    (u,) = make_users(session, 1)
    admin = accounts.create_user(session, "reviewer", "password-1", role="admin").id  # reviewing is for admins
    p = projects.create_project(session, "d", settings={"min_demonstration_chars": 30})
    content.add_prompt(session, p.id, text="Explain tides.")
    assert tasks.create_demonstrate_tasks(session, p.id) == 1
    assert tasks.create_demonstrate_tasks(session, p.id) == 0  # idempotent
    session.commit()
    v = assignment.next_task(session, u, p.id)
    with pytest.raises(InputError, match="at least 30"):
        labels.submit_demonstration(session, u, v.task_id, "The moon.")
    assert session.scalar(select(func.count()).select_from(Demonstration)) == 0
    text = "Tides are caused by the gravitational pull of the moon and the sun."
    d, created = labels.submit_demonstration(session, u, v.task_id, text, seconds=40)
    assert created and d.status == "submitted"
    d = labels.revise_demonstration(session, u, d.id, text + " Twice a day.")
    assert d.text.endswith("Twice a day.")
    labels.review_demonstration(session, d.id, admin, accept=False, note="too short")
    with pytest.raises(ServiceError, match="rejected"):
        labels.revise_demonstration(session, u, d.id, text)
    assert [x.id for x in labels.list_demonstrations(session, p.id, "rejected")] == [d.id]


def test_revision_window(session):
    (u,) = make_users(session, 1)
    pid, _ = make_compare_project(session, n_tasks=1)
    v = assignment.next_task(session, u, pid)
    t0 = utcnow()
    lab, _ = labels.submit_preference(session, u, v.task_id, "a", strength="slight", now=t0)
    lab = labels.revise_preference(session, u, lab.id, "b", strength="strong", flags=["harmful"],
                                   now=t0 + dt.timedelta(hours=1))
    assert (lab.choice, lab.strength, lab.flags) == ("b", "strong", ["harmful"])
    with pytest.raises(ServiceError, match="24 hours"):
        labels.revise_preference(session, u, lab.id, "a", now=t0 + dt.timedelta(hours=25))
    hist = labels.history(session, u)
    assert hist[0]["choice"] == "b" and hist[0]["task_id"] == v.task_id


def test_bad_choice_and_progress(session):
    u1, u2 = make_users(session, 2)
    pid, _ = make_compare_project(session, n_tasks=3, overlap=2)
    v = assignment.next_task(session, u1, pid)
    with pytest.raises(InputError, match="choice"):
        labels.submit_preference(session, u1, v.task_id, "c")
    with pytest.raises(InputError, match="strength"):
        labels.submit_preference(session, u1, v.task_id, "a", strength="huge")
    labels.submit_preference(session, u1, v.task_id, "tie", strength="strong")
    pr = stats.progress(session, pid)
    assert pr["labels"] == 1 and pr["tasks"] == 3 and pr["labels_today"] == 1
    assert assignment.tasks_left(session, u1, pid) == 2 and assignment.tasks_left(session, u2, pid) == 3
    df = stats.labels_over_time(session, pid)
    assert df["n"].sum() == 1 and list(df.columns) == ["day", "project", "annotator", "kind", "n"]
    assert stats.per_annotator(session, pid).iloc[0]["annotator"] == "ann0"


def test_a_locked_sqlite_database_is_a_clear_message_with_nothing_saved(tmp_path):
    """A write waiting past busy_timeout behind another writer (a long import) gets a ServiceError saying to
    retry, not a raw OperationalError traceback."""
    import sqlite3

    from sqlalchemy import event

    from db.migrate import create_schema
    from db.session import dispose_engines, get_engine, session_scope

    url = f"sqlite:///{tmp_path / 'busy.sqlite3'}"
    create_schema(url)
    get_engine(url).pool.dispose()
    event.listen(get_engine(url), "connect", lambda dbapi_conn, _rec: dbapi_conn.execute("PRAGMA busy_timeout=100"))
    blocker = sqlite3.connect(tmp_path / "busy.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(ServiceError, match="database is busy"), session_scope(url) as s:
            projects.create_project(s, "p")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with session_scope(url) as s:
        assert projects.list_projects(s) == []
    dispose_engines()


def test_a_repeat_submit_returns_the_first_label_even_if_its_input_no_longer_validates(session):
    (u,) = make_users(session, 1)
    p = projects.create_project(session, "d", settings={"min_demonstration_chars": 10})
    pid, (ctid,) = make_compare_project(session, "c", n_tasks=1)
    t, rids = _rank_task(session, pid)
    content.add_prompt(session, p.id, text="Explain tides.")
    tasks.create_demonstrate_tasks(session, p.id)
    session.commit()
    dtid = assignment.next_task(session, u, p.id).task_id
    first_demo, _ = labels.submit_demonstration(session, u, dtid, "The moon pulls the sea.")
    projects.update_project(session, "d", settings={"min_demonstration_chars": 500})
    session.commit()
    again, created = labels.submit_demonstration(session, u, dtid, "The moon pulls the sea.")
    assert (again.id, created) == (first_demo.id, False)

    for tid in (ctid, t.id):
        assignment.next_task(session, u, pid)
    pref, _ = labels.submit_preference(session, u, ctid, "a", strength="clear")
    rank, _ = labels.submit_ranking(session, u, t.id, [[rids[0]], rids[1:]])
    # A retry carrying input that would be refused now (stale page, changed vocabulary) is still the repeat.
    assert labels.submit_preference(session, u, ctid, "maybe", flags=["rude"]) == (pref, False)
    assert labels.submit_ranking(session, u, t.id, [[rids[0]]], flags=["rude"]) == (rank, False)
    assert session.scalar(select(func.count()).select_from(Ranking)) == 1


def test_the_same_demonstration_text_on_a_second_task_of_the_prompt_is_a_clear_error(session):
    from db.models import Task

    (u,) = make_users(session, 1)
    p = projects.create_project(session, "d", settings={"min_demonstration_chars": 5})
    pr, _ = content.add_prompt(session, p.id, text="Explain tides.")
    first, _ = tasks.create_task(session, p.id, "demonstrate", pr.id)
    # A second demonstrate task of the same prompt (e.g. queued again after a rejection).
    second = Task(project_id=p.id, kind="demonstrate", prompt_id=pr.id, response_ids=[], dedup_key="again")
    session.add(second)
    session.commit()
    text = "The moon pulls the sea."
    d1, _ = labels.submit_demonstration(session, u, first.id, text)
    with pytest.raises(InputError, match=f"already wrote exactly this demonstration .*demonstration {d1.id}, "
                                         f"task {first.id}"):
        labels.submit_demonstration(session, u, second.id, "  " + text + "\n")
    assert session.scalar(select(func.count()).select_from(Demonstration)) == 1
    d2, created = labels.submit_demonstration(session, u, second.id, text + " Twice a day.")
    assert created
    with pytest.raises(InputError, match="already wrote exactly this"):
        labels.revise_demonstration(session, u, d2.id, text)
    assert session.get(Demonstration, d2.id).text == text + " Twice a day."
