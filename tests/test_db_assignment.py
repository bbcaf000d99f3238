"""next_task: exact overlap, atomic under concurrency, leases expire, skip, idempotent submit."""
from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from db.models import Assignment, PreferenceLabel, Task, utcnow
from db.services import assignment, labels
from db.services.errors import ServiceError
from db.session import session_factory
from tests.db_helpers import make_compare_project, make_users, run_threads


def _label_everything(session, users, pid):
    """Each user labels until nothing is left; returns Counter of task ids labelled."""
    seen = Counter()
    for uid in users:
        while (v := assignment.next_task(session, uid, pid)) is not None:
            labels.submit_preference(session, uid, v.task_id, "a", strength="clear")
            seen[v.task_id] += 1
    return seen


@pytest.mark.parametrize("overlap", [1, 3])
def test_overlap_is_exact(session, overlap):
    users = make_users(session, 4)
    pid, task_ids = make_compare_project(session, n_tasks=6, overlap=overlap)
    seen = _label_everything(session, users, pid)
    assert sorted(seen) == sorted(task_ids)
    assert set(seen.values()) == {overlap}
    assert session.scalar(select(func.count()).select_from(PreferenceLabel)) == 6 * overlap
    assert {t.status for t in session.scalars(select(Task))} == {"done"}


def test_prefers_tasks_closest_to_completion(session):
    u1, u2 = make_users(session, 2)
    pid, task_ids = make_compare_project(session, n_tasks=4, overlap=2)
    v = assignment.next_task(session, u1, pid)
    assert v.task_id == task_ids[0]  # oldest first when none is started
    labels.submit_preference(session, u1, task_ids[0], "b")
    assert assignment.next_task(session, u2, pid).task_id == task_ids[0]  # one label away from done


def test_same_task_again_while_lease_is_live(session):
    (u,) = make_users(session, 1)
    pid, _ = make_compare_project(session, n_tasks=3)
    assert assignment.next_task(session, u, pid).task_id == assignment.next_task(session, u, pid).task_id


def test_lease_expiry_returns_task_to_pool(session):
    u1, u2 = make_users(session, 2)
    pid, (tid,) = make_compare_project(session, n_tasks=1)
    t0 = utcnow()
    assert assignment.next_task(session, u1, pid, now=t0).task_id == tid
    assert assignment.next_task(session, u2, pid, now=t0 + dt.timedelta(minutes=5)) is None
    later = t0 + dt.timedelta(minutes=31)
    assert assignment.next_task(session, u2, pid, now=later).task_id == tid
    assert assignment.expire_leases(session, now=later) == 1  # u1's lease


def _one_label_task(session, overlap=1):
    users = make_users(session, 3)
    pid, (tid,) = make_compare_project(session, n_tasks=1, overlap=overlap)
    return users, pid, tid


def _label_count(session, tid):
    return session.scalar(select(func.count()).select_from(PreferenceLabel).where(PreferenceLabel.task_id == tid))


def test_late_submit_is_kept_while_its_slot_was_not_given_to_anyone(session):
    (u1, u2, _), pid, tid = _one_label_task(session)
    t0 = utcnow()
    assignment.next_task(session, u1, pid, now=t0)
    later = t0 + dt.timedelta(hours=2)
    _, created = labels.submit_preference(session, u1, tid, "a", now=later)
    assert created and _label_count(session, tid) == 1
    assert (session.get(Task, tid).status, assignment.next_task(session, u2, pid, now=later)) == ("done", None)


@pytest.mark.parametrize("how", ["leased", "submitted", "released then leased"])
def test_late_submit_after_the_slot_was_reassigned_is_refused_and_overlap_stays_exact(session, how):
    from db.services.labels import TaskReassigned

    (u1, u2, _), pid, tid = _one_label_task(session)
    t0 = utcnow()
    assignment.next_task(session, u1, pid, now=t0)
    later = t0 + dt.timedelta(minutes=31)
    if how == "released then leased":
        assignment.release_task(session, u1, tid)
    assert assignment.next_task(session, u2, pid, now=later).task_id == tid
    if how == "submitted":
        labels.submit_preference(session, u2, tid, "b", now=later)
    with pytest.raises(TaskReassigned, match=f"task {tid} was reassigned: your lease ran out at .* NOT saved"):
        labels.submit_preference(session, u1, tid, "a", now=later)
    assert _label_count(session, tid) == (1 if how == "submitted" else 0)
    if how != "submitted":
        labels.submit_preference(session, u2, tid, "b", now=later)
    task = session.get(Task, tid)
    assert (task.n_submitted, task.status, _label_count(session, tid)) == (1, "done", 1)
    states = dict(session.execute(select(Assignment.user_id, Assignment.state)).all())
    assert states[u2] == "submitted" and states[u1] != "submitted"


def test_late_submit_with_overlap_two_takes_a_free_slot_but_not_a_leased_one(session):
    from db.services.labels import TaskReassigned

    (u1, u2, u3), pid, tid = _one_label_task(session, overlap=2)
    t0 = utcnow()
    for u in (u1, u2):
        assignment.next_task(session, u, pid, now=t0)
    later = t0 + dt.timedelta(minutes=31)  # both leases ran out; u3 takes one of the two slots
    assert assignment.next_task(session, u3, pid, now=later).task_id == tid
    assert labels.submit_preference(session, u1, tid, "a", now=later)[1]  # the other slot was still free
    with pytest.raises(TaskReassigned):
        labels.submit_preference(session, u2, tid, "a", now=later)
    labels.submit_preference(session, u3, tid, "b", now=later)
    assert (session.get(Task, tid).n_submitted, _label_count(session, tid)) == (2, 2)


def test_a_submit_beyond_a_lowered_overlap_is_refused(session):
    from db.models import Project
    from db.services import projects

    (u1, u2, _), pid, tid = _one_label_task(session, overlap=2)
    assignment.next_task(session, u1, pid)
    assignment.next_task(session, u2, pid)
    labels.submit_preference(session, u1, tid, "a")
    projects.update_project(session, session.get(Project, pid).name, labels_per_task=1)
    session.commit()
    with pytest.raises(ServiceError, match=f"task {tid} already has all its labels \\(1\\)"):
        labels.submit_preference(session, u2, tid, "b")
    assert _label_count(session, tid) == 1


def test_skip_gives_task_to_someone_else(session):
    u1, u2 = make_users(session, 2)
    pid, (tid,) = make_compare_project(session, n_tasks=1)
    assignment.next_task(session, u1, pid)
    a = assignment.skip_task(session, u1, tid, "I cannot judge code")
    assert a.state == "skipped" and a.skip_reason == "I cannot judge code"
    assert assignment.next_task(session, u1, pid) is None
    assert assignment.next_task(session, u2, pid).task_id == tid
    with pytest.raises(ServiceError):
        labels.submit_preference(session, u1, tid, "a")


def test_double_submit_records_one_label(session):
    (u,) = make_users(session, 1)
    pid, _ = make_compare_project(session, n_tasks=2)
    v = assignment.next_task(session, u, pid)
    l1, c1 = labels.submit_preference(session, u, v.task_id, "a", strength="strong", seconds=3.5)
    l2, c2 = labels.submit_preference(session, u, v.task_id, "b")
    assert (c1, c2) == (True, False) and l1.id == l2.id
    assert session.scalar(select(func.count()).select_from(PreferenceLabel)) == 1
    assert session.get(Task, v.task_id).n_submitted == 1


@pytest.mark.parametrize("overlap", [1, 3])
def test_concurrent_next_task_never_hands_a_slot_twice(db_url, overlap):
    s = session_factory(db_url)()
    users = make_users(s, 8)
    pid, task_ids = make_compare_project(s, n_tasks=5, overlap=overlap)
    s.close()

    def worker(uid: int) -> list[int]:
        with session_factory(db_url)() as sess:
            mine = []
            while (v := assignment.next_task(sess, uid, pid)) is not None:
                labels.submit_preference(sess, uid, v.task_id, "a")
                mine.append(v.task_id)
            return mine

    got = run_threads(worker, users)
    counts = Counter(t for mine in got.values() for t in mine)
    assert counts == {t: overlap for t in task_ids}
    for mine in got.values():
        assert len(mine) == len(set(mine))  # never the same task twice to one user
    s = session_factory(db_url)()
    assert s.scalar(select(func.count()).select_from(PreferenceLabel)) == 5 * overlap
    # The counters next_task orders by stay exact under concurrent submits.
    assert {(t.n_submitted, t.status) for t in s.scalars(select(Task))} == {(overlap, "done")}
    assert s.scalar(select(func.count()).select_from(Assignment).where(Assignment.state == "submitted")) == 5 * overlap
    s.close()


def test_concurrent_leases_without_submit(db_url):
    """8 annotators lease at once on 3 single-slot tasks: exactly 3 get one, each a different task."""
    s = session_factory(db_url)()
    users = make_users(s, 8)
    pid, task_ids = make_compare_project(s, n_tasks=3, overlap=1)
    s.close()

    def worker(uid: int) -> int | None:
        with session_factory(db_url)() as sess:
            v = assignment.next_task(sess, uid, pid)
            return v.task_id if v else None

    got = run_threads(worker, users).values()
    taken = [g for g in got if g is not None]
    assert sorted(taken) == sorted(task_ids)


def test_changing_the_overlap_reopens_or_closes_tasks(session):
    from db.models import Project
    from db.services import projects

    users = make_users(session, 3)
    pid, task_ids = make_compare_project(session, n_tasks=3, overlap=1)
    _label_everything(session, users[:1], pid)
    assert {t.status for t in session.scalars(select(Task))} == {"done"}
    name = session.get(Project, pid).name
    projects.update_project(session, name, labels_per_task=2)
    session.commit()
    assert {t.status for t in session.scalars(select(Task))} == {"open"}  # each wants a second label now
    seen = _label_everything(session, users[1:], pid)
    assert seen == Counter({t: 1 for t in task_ids})  # one more label each, from another annotator
    assert {t.status for t in session.scalars(select(Task))} == {"done"}
    projects.update_project(session, name, labels_per_task=3)
    projects.update_project(session, name, labels_per_task=2)  # back down: nothing left open
    assert {t.status for t in session.scalars(select(Task))} == {"done"}
    assert assignment.next_task(session, users[2], pid) is None


def test_next_task_waits_for_a_task_another_transaction_holds_instead_of_saying_none_left(db_url):
    """The only open task is locked for a moment by someone else's claim or submit: that is not "no tasks
    left" (PostgreSQL's SKIP LOCKED alone would say so); next_task waits and hands it out."""
    from db.session import write_transaction

    s = session_factory(db_url)()
    _u1, u2 = make_users(s, 2)
    pid, (tid,) = make_compare_project(s, n_tasks=1, overlap=2)
    s.commit()
    holder = session_factory(db_url)()
    hold = write_transaction(holder)
    hold.__enter__()
    holder.get(Task, tid, with_for_update=True)  # row lock (PostgreSQL) / write lock (SQLite)
    release = threading.Timer(0.3, hold.__exit__, args=(None, None, None))
    release.start()
    try:
        v = assignment.next_task(s, u2, pid)
    finally:
        release.join()
        holder.close()
    assert v is not None and v.task_id == tid
    s.close()


def test_postgresql_next_task_unlocks_a_candidate_it_found_full_at_once(tmp_path, monkeypatch):
    """A candidate can fill up between the candidate query's snapshot and the row lock; next_task then takes
    the next task and must not keep the full one locked for the rest of the caller's transaction."""
    from sqlalchemy import text

    from db.session import get_engine, write_transaction
    from tests.conftest import fresh_url

    url = fresh_url("postgresql", tmp_path)
    s = session_factory(url)()
    (u,) = make_users(s, 1)
    pid, (t1, t2) = make_compare_project(s, n_tasks=2)
    real = assignment._lease  # the lease upsert recounts t1's slots under the lock: t1 "filled up" meanwhile
    monkeypatch.setattr(assignment, "_lease",
                        lambda sess, tid, *a: None if tid == t1 else real(sess, tid, *a))
    with write_transaction(s):  # the caller's transaction stays open after next_task returns
        assert assignment.next_task(s, u, pid).task_id == t2
        with get_engine(url).connect() as other:
            locked = other.execute(text("SELECT id FROM tasks WHERE id = :t FOR UPDATE NOWAIT"), {"t": t1}).all()
            assert locked == [(t1,)]
            other.rollback()
    s.close()


def test_a_submit_reads_the_clock_after_waiting_for_the_lock(db_url):
    """u1 holds a live lease and submits while another transaction holds the task: meanwhile u2's lease lapses
    and u3 takes the other slot. u1's submit must judge u2's lease by the time it gets the lock (lapsed), not by
    the time it started waiting (when u2's lease still looked live), or u1's promised slot is refused."""
    from db.session import write_transaction

    s = session_factory(db_url)()
    u1, u2, u3 = make_users(s, 3)
    pid, (tid,) = make_compare_project(s, n_tasks=1, overlap=2)
    assignment.next_task(s, u1, pid)
    holder = session_factory(db_url)()
    with write_transaction(holder):
        holder.get(Task, tid, with_for_update=True)  # the row lock (PostgreSQL) / write lock (SQLite)
        waiting = run_threads_later(lambda: labels.submit_preference(session_factory(db_url)(), u1, tid, "a"))
        time.sleep(0.3)  # u1's submit has started and waits for the lock
        assignment.next_task(holder, u2, pid, lease_minutes=0)  # a lease that lapses at once
        assignment.next_task(holder, u3, pid)
        labels.submit_preference(holder, u3, tid, "b")
    _label, created = waiting()
    assert created and s.get(Task, tid, populate_existing=True).n_submitted == 2
    holder.close()
    s.close()


def run_threads_later(fn):
    """Start fn in a thread now; the returned function joins it and returns its result (or re-raises)."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(60)
        assert not t.is_alive(), "still waiting after 60 s"
        if "error" in box:
            raise box["error"]
        return box["result"]
    return join
