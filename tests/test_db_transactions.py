"""write_transaction composes: services never commit a caller's pending work; several services in one
transaction are all or nothing; a read-only caller still gets a committed submit."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db.models import Assignment, PreferenceLabel, Project
from db.services import assignment, labels, projects
from db.services.errors import InputError
from db.session import session_factory, write_transaction
from tests.db_helpers import make_compare_project, make_users


def _count(url, model) -> int:
    with session_factory(url)() as other:  # another connection sees only committed rows
        return other.scalar(select(func.count()).select_from(model))


def test_a_service_does_not_commit_the_callers_pending_work(db_url):
    s = session_factory(db_url)()
    (u,) = make_users(s, 1)
    pid, _ = make_compare_project(s, n_tasks=1)
    projects.create_project(s, "pending")  # the caller's uncommitted work
    v = assignment.next_task(s, u, pid)
    labels.submit_preference(s, u, v.task_id, "a")
    assert _count(db_url, PreferenceLabel) == 0 and _count(db_url, Project) == 1  # nothing committed yet
    s.rollback()
    assert _count(db_url, PreferenceLabel) == 0 and _count(db_url, Assignment) == 0 and _count(db_url, Project) == 1
    s.close()


def test_services_in_one_write_transaction_are_all_or_nothing(db_url):
    s = session_factory(db_url)()
    u1, u2 = make_users(s, 2)
    pid, _ = make_compare_project(s, n_tasks=2)
    with pytest.raises(RuntimeError), write_transaction(s):
        v = assignment.next_task(s, u1, pid)
        labels.submit_preference(s, u1, v.task_id, "a")
        assert _count(db_url, PreferenceLabel) == 0  # the inner services committed nothing
        raise RuntimeError("the caller fails after both services")
    assert _count(db_url, PreferenceLabel) == 0 and _count(db_url, Assignment) == 0
    with write_transaction(s):
        for u in (u1, u2):
            v = assignment.next_task(s, u, pid)
            labels.submit_preference(s, u, v.task_id, "b")
    assert _count(db_url, PreferenceLabel) == 2
    s.close()


def test_a_failing_service_inside_a_transaction_rolls_back_only_its_own_work(db_url):
    s = session_factory(db_url)()
    (u,) = make_users(s, 1)
    pid, _ = make_compare_project(s, n_tasks=1)
    with write_transaction(s):
        v = assignment.next_task(s, u, pid)
        with pytest.raises(InputError):
            labels.submit_preference(s, u, v.task_id, "c")  # refused: its savepoint is rolled back
        labels.submit_preference(s, u, v.task_id, "a")  # the transaction goes on
    assert _count(db_url, PreferenceLabel) == 1
    s.close()


def test_a_read_only_caller_transaction_still_gets_a_committed_submit(db_url):
    s = session_factory(db_url)()
    (u,) = make_users(s, 1)
    pid, _ = make_compare_project(s, n_tasks=1)
    s.commit()
    assert projects.get_project_by_id(s, pid).labels_per_task == 1  # a read opens a transaction
    v = assignment.next_task(s, u, pid)
    labels.submit_preference(s, u, v.task_id, "a")
    assert _count(db_url, PreferenceLabel) == 1  # committed by the service, as it always was
    s.close()
