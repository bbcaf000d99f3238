"""PostgreSQL's one-statement next_task and submit (db/pg_functions.py) against the Python path they replace.

The same scripted day of annotation (every kind, leases that run out, late submits, skips, repeats, bad input,
direct submits without a lease) runs twice on PostgreSQL: once through the functions, once with them dropped
(the services then run their Python path, as on SQLite). Every call's outcome and every row written must be
the same, and the summaries must equal what `summary.rebuild` computes from the labels.
"""
from __future__ import annotations

import datetime as dt
import random

import pytest
from sqlalchemy import select

from db import pg_functions
from db.models import (
    AgreementCount,
    Assignment,
    Demonstration,
    LabelDay,
    LabelSeconds,
    PreferenceLabel,
    ProjectCount,
    Ranking,
    Rating,
    Task,
)
from db.services import accounts, assignment, content, labels, projects, summary, tasks
from db.services.errors import InputError, ServiceError
from db.session import get_engine, session_factory, write_transaction
from tests.conftest import fresh_url

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def _db(tmp_path, *, functions: bool) -> str:
    """A fresh PostgreSQL database, with the functions or without them (the services' Python path)."""
    url = fresh_url("postgresql", tmp_path)
    if not functions:
        with get_engine(url).begin() as conn:
            pg_functions.uninstall(conn)
    return url


def _seed(url: str) -> tuple[int, list[int]]:
    """A project (overlap 3) with compare, rank, rate and demonstrate tasks; two demonstrate tasks share a
    prompt (the same text twice is refused); 5 annotators and an import pseudo-user."""
    rng = random.Random(7)
    with session_factory(url)() as s:
        p = projects.create_project(s, "fn", labels_per_task=3, settings={"min_demonstration_chars": 12})
        users = [accounts.create_user(s, f"u{i}", None).id for i in range(5)]
        for i in range(16):
            pr, _ = content.add_prompt(s, p.id, text=f"prompt {i}")
            kind = ("compare", "rank", "rate", "demonstrate")[i % 4]
            k = {"compare": 2, "rank": 3, "rate": 1, "demonstrate": 0}[kind]
            rids = [content.add_response(s, pr.id, f"answer {j} to {i}", sample_index=j)[0].id for j in range(k)]
            tasks.create_task(s, p.id, kind, pr.id, rids, rng=rng)
            if kind == "demonstrate" and i == 3:  # a second one (create_task dedups): as an earlier import made
                s.add(Task(project_id=p.id, kind=kind, prompt_id=pr.id, response_ids=[], dedup_key="second"))
                s.flush()
                summary.count_change(s, p.id, kind, None, "open")
        s.commit()
        return p.id, users


def _submit(s, rng: random.Random, uid: int, task_id: int, kind: str, rids: list[int], now: dt.datetime,
            bad: bool) -> tuple:
    if kind == "compare":
        choice = "maybe" if bad else rng.choice(["a", "b", "tie", "both_bad"])
        label, created = labels.submit_preference(s, uid, task_id, choice, strength=rng.choice([None, "clear"]),
                                                  flags=rng.choice([[], ["unsafe"]]), comment="ok", seconds=2.5,
                                                  now=now)
        return created, label.choice, label.strength, label.flags, label.comment
    if kind == "rank":
        order = list(rids)
        rng.shuffle(order)
        ordering = [order[:1], order[1:2]] if bad else ([order[:1], order[1:]] if rng.random() < 0.4
                                                         else [[x] for x in order])
        label, created = labels.submit_ranking(s, uid, task_id, ordering, seconds=4.0, now=now)
        return created, label.ordering, label.flags
    if kind == "rate":
        label, created = labels.submit_rating(s, uid, task_id, rng.random() < 0.6,
                                              likert=rng.choice([None, 5]), seconds=1.0, now=now)
        return created, label.good, label.likert, label.response_id
    text = "too short" if bad else rng.choice(["A careful demonstration.", f"Written by {uid}, carefully."])
    label, created = labels.submit_demonstration(s, uid, task_id, text, seconds=9.0, now=now)
    return created, label.text, label.content_hash, label.prompt_id


def _day_of_annotation(url: str, pid: int, users: list[int], steps: int = 260) -> list[tuple]:
    """The scripted calls; returns each one's outcome (a result, or the error's type, message and field)."""
    rng = random.Random(11)
    out: list[tuple] = []
    s = session_factory(url)()
    with s:
        all_tasks = [(t.id, t.kind, list(t.response_ids)) for t in s.scalars(select(Task).order_by(Task.id))]
        s.rollback()
        for step in range(steps):
            now = T0 + dt.timedelta(seconds=20 * step)
            uid = rng.choice(users)
            r = rng.random()
            try:
                if r < 0.12:  # a direct submit (no lease), maybe to a task this user never saw
                    tid, kind, rids = rng.choice(all_tasks)
                    out.append(("direct", tid, _submit(s, rng, uid, tid, kind, rids, now, rng.random() < 0.2)))
                    continue
                kind = rng.choice([None, None, "compare", "rank", "rate", "demonstrate"])
                view = assignment.next_task(s, uid, pid, kind=kind, now=now, lease_minutes=rng.choice([0, 1, 30]))
                if view is None:
                    out.append(("none", uid, kind))
                    continue
                out.append(("next", uid, view.task_id, view.kind, view.project_name, view.prompt_text,
                            view.messages, view.responses, view.assigned_at, view.expires_at))
                rids = [x["id"] for x in view.responses]
                if r < 0.2:
                    assignment.skip_task(s, uid, view.task_id, "no", now=now)
                    out.append(("skipped", view.task_id))
                    continue
                later = now + dt.timedelta(seconds=rng.choice([5, 5, 90]))  # 90 s: past a 1-minute lease
                out.append(("submit", view.task_id, _submit(s, rng, uid, view.task_id, view.kind, rids, later,
                                                            rng.random() < 0.1)))
                if rng.random() < 0.2:  # a repeat, with input that would no longer validate
                    out.append(("repeat", view.task_id, _submit(s, rng, uid, view.task_id, view.kind, rids, later,
                                                                True)))
            except ServiceError as e:  # InputError, NotFound, TaskReassigned...
                out.append((type(e).__name__, str(e), getattr(e, "field", None)))
                s.rollback()
    return out


_ROWS = {Task: ("id", "status", "n_submitted"),
         Assignment: ("task_id", "user_id", "state", "assigned_at", "expires_at", "finished_at", "skip_reason"),
         PreferenceLabel: ("task_id", "user_id", "choice", "strength", "flags", "comment", "seconds", "created_at"),
         Ranking: ("task_id", "user_id", "ordering", "flags", "comment", "seconds", "created_at"),
         Rating: ("task_id", "user_id", "response_id", "good", "likert", "flags", "seconds", "created_at"),
         Demonstration: ("task_id", "user_id", "prompt_id", "text", "content_hash", "status", "seconds",
                         "created_at"),
         LabelDay: ("project_id", "user_id", "kind", "day", "n", "first_at", "last_at"),
         LabelSeconds: ("project_id", "user_id", "kind", "seconds", "n"),
         AgreementCount: ("project_id", "kind", "what", "user_a", "user_b", "x", "y", "n"),
         ProjectCount: ("project_id", "kind", "status", "n")}


def _state(url: str) -> dict[str, list[tuple]]:
    with session_factory(url)() as s:
        return {m.__tablename__: sorted(tuple(repr(getattr(r, c)) for c in cols) for r in s.scalars(select(m))
                                         if getattr(r, "n", 1))
                for m, cols in _ROWS.items()}


def test_the_functions_do_exactly_what_the_python_path_does(tmp_path):
    with_fn, without = _db(tmp_path, functions=True), _db(tmp_path, functions=False)
    runs = {}
    for url in (with_fn, without):
        pid, users = _seed(url)
        calls = pg_functions.CALLS
        runs[url] = _day_of_annotation(url, pid, users), _state(url), pg_functions.CALLS - calls
    (out_fn, state_fn, n_fn), (out_py, state_py, n_py) = runs[with_fn], runs[without]
    # the second run tried once, found no functions and ran the Python path from then on
    assert n_py == 1 and n_fn > 300, (n_py, n_fn)
    # the script reached every case it is meant to compare
    kinds = {o[0] for o in out_fn}
    assert {"next", "submit", "repeat", "direct", "skipped", "none", "InputError", "TaskReassigned",
            "ServiceError"} <= kinds, kinds
    assert {o[3] for o in out_fn if o[0] == "next"} == {"compare", "rank", "rate", "demonstrate"}
    assert any(o[0] == "InputError" and "already wrote exactly this" in o[1] for o in out_fn)
    for i, (a, b) in enumerate(zip(out_fn, out_py, strict=True)):
        assert a == b, f"call {i}: the function gave {a!r}, the Python path {b!r}"
    assert state_fn == state_py
    # and the sums the function kept are the ones the labels give
    with session_factory(with_fn)() as s:
        summary.rebuild(s)
        s.commit()
    assert _state(with_fn) == state_fn


def test_inside_a_callers_transaction_the_services_compose(tmp_path):
    """A caller's open write transaction is joined (the Python path, as a SAVEPOINT): rolling it back removes
    the lease and the label; outside one, each call is its own committed transaction."""
    url = fresh_url("postgresql", tmp_path)
    pid, users = _seed(url)
    s = session_factory(url)()
    calls = pg_functions.CALLS
    with pytest.raises(RuntimeError), write_transaction(s):
        v = assignment.next_task(s, users[0], pid, kind="compare")
        labels.submit_preference(s, users[0], v.task_id, "a")
        raise RuntimeError("the caller fails after both")
    assert pg_functions.CALLS == calls
    assert s.scalar(select(PreferenceLabel.id)) is None and s.scalar(select(Assignment.id)) is None
    s.rollback()
    v = assignment.next_task(s, users[0], pid, kind="compare")
    label, created = labels.submit_preference(s, users[0], v.task_id, "b", strength="strong")
    assert pg_functions.CALLS == calls + 2 and created
    # the returned row is the stored one, attached to the session without a read
    assert (label.choice, label.strength, label.task_id) == ("b", "strong", v.task_id)
    other = session_factory(url)()
    stored = other.get(PreferenceLabel, label.id)
    assert (stored.choice, stored.strength, stored.created_at) == ("b", "strong", label.created_at)
    again, created2 = labels.submit_preference(s, users[0], v.task_id, "nonsense")
    assert not created2 and again.id == label.id
    other.close()
    s.close()


def test_errors_name_what_is_wrong(tmp_path):
    url = fresh_url("postgresql", tmp_path)
    _pid, users = _seed(url)
    s = session_factory(url)()
    rank = s.scalar(select(Task).where(Task.kind == "rank"))
    s.rollback()
    with pytest.raises(InputError) as e:
        labels.submit_ranking(s, users[0], rank.id, [[rank.response_ids[0]], [rank.response_ids[1], 999999]])
    assert e.value.field == "ordering" and "exactly once" in str(e.value)
    with pytest.raises(ServiceError, match="is a rank task, not compare"):
        labels.submit_preference(s, users[0], rank.id, "a")
    with pytest.raises(ServiceError, match="no task 999999"):
        labels.submit_preference(s, users[0], 999999, "a")
    with pytest.raises(ServiceError, match="no project with id 999999"):
        assignment.next_task(s, users[0], 999999)
    # ids no integer column holds: the Python path's message, not a cast error from the server
    with pytest.raises(ServiceError, match=f"no task {2**40}"):
        labels.submit_preference(s, users[0], 2**40, "a")
    with pytest.raises(ServiceError, match=f"no project with id {2**40}"):
        assignment.next_task(s, users[0], 2**40)
    assert s.scalar(select(Ranking.id)) is None  # nothing half-written
    s.close()


def test_the_migration_installs_and_removes_them(tmp_path):
    from sqlalchemy import text

    from db.migrate import downgrade, upgrade

    url = fresh_url("postgresql", tmp_path, create=False)

    def installed() -> set[str]:
        with get_engine(url).connect() as c:
            return {n for n in ("il_next_task", "il_submit", "il_skip", "il_add_agreement", "il_item_counts",
                                "il_group_of")
                    if c.execute(text("SELECT to_regproc(:n)"), {"n": n}).scalar() is not None}

    upgrade(url)
    assert installed() == {"il_next_task", "il_submit", "il_skip", "il_add_agreement", "il_item_counts",
                           "il_group_of"}
    assert downgrade(url, "0008") == "0008"
    assert installed() == set()
    upgrade(url)
    pid, users = _seed(url)
    with session_factory(url)() as s:
        calls = pg_functions.CALLS
        v = assignment.next_task(s, users[0], pid)
        assert v is not None and pg_functions.CALLS == calls + 1


@pytest.mark.parametrize("minimum", ["absent", None, 0, 0.5, 3, 5.7, "7"])
def test_the_demonstration_minimum_reads_the_setting_as_the_python_path_does(tmp_path, minimum):
    """`int(setting or 1)` (a number, a null, a float, text the function leaves to the Python path)."""
    outcomes = []
    for functions in (True, False):
        url = _db(tmp_path, functions=functions)
        with session_factory(url)() as s:
            settings = {} if minimum == "absent" else {"min_demonstration_chars": minimum}
            p = projects.create_project(s, "m", labels_per_task=8)
            p.settings = settings  # as stored, without create_project's defaults
            uids = [accounts.create_user(s, f"m{i}", None).id for i in range(8)]
            pr, _ = content.add_prompt(s, p.id, text="write")
            task, _ = tasks.create_task(s, p.id, "demonstrate", pr.id, [])
            s.commit()
            got = []
            for uid, n in zip(uids, (0, 1, 2, 3, 5, 6, 7, 25), strict=True):
                try:
                    got.append(labels.submit_demonstration(s, uid, task.id, "x" * n)[1])
                except ServiceError as e:
                    got.append(str(e))
                    s.rollback()
            outcomes.append(got)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][-1] is True  # 25 characters pass every minimum here


@pytest.mark.parametrize("path", ["function", "python"])
def test_a_lease_never_turns_the_users_own_submit_back_into_a_lease(tmp_path, path):
    """Two tabs of one annotator: next_task in one picks a task whose snapshot shows the user's lapsed lease,
    while the other tab's late submit holds the task row and commits before the lease is written. The lease
    upsert must leave the 'submitted' row alone (it turned it back into a lease, which freed the slot for a
    label too many); the task is left out like a full one and, as it was the only one, nothing is handed out."""
    import threading
    import time

    from sqlalchemy import text

    url = _db(tmp_path, functions=path == "function")
    with session_factory(url)() as s:
        p = projects.create_project(s, "race", labels_per_task=2)
        uid = accounts.create_user(s, "tabs", None).id
        pr, _ = content.add_prompt(s, p.id, text="which is better?")
        rids = [content.add_response(s, pr.id, f"answer {j}", sample_index=j)[0].id for j in range(2)]
        task, _ = tasks.create_task(s, p.id, "compare", pr.id, rids)
        s.commit()
        pid, tid = p.id, task.id
        assert assignment.next_task(s, uid, pid, lease_minutes=0).task_id == tid  # a lease that lapses at once
        s.commit()
    got: dict[str, object] = {}

    def other_tab() -> None:
        try:
            with session_factory(url)() as s2:
                got["view"] = assignment.next_task(s2, uid, pid)
                s2.commit()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            got["error"] = e

    engine = get_engine(url)
    with engine.connect() as submit, engine.connect() as watch:
        me = submit.execute(text("SELECT pg_backend_pid()")).scalar()
        submit.execute(text("SELECT id FROM tasks WHERE id = :t FOR UPDATE"), {"t": tid})  # the submit's row lock
        th = threading.Thread(target=other_tab, daemon=True)
        th.start()
        deadline = time.monotonic() + 20
        while not watch.execute(text("SELECT count(*) FROM pg_stat_activity WHERE :me = ANY(pg_blocking_pids(pid))"),
                                {"me": me}).scalar():
            assert time.monotonic() < deadline, f"next_task never waited for the task row: {got}"
            watch.rollback()
            time.sleep(0.02)
        submit.execute(text("UPDATE assignments SET state = 'submitted', finished_at = now() "
                            "WHERE task_id = :t AND user_id = :u"), {"t": tid, "u": uid})
        submit.execute(text("UPDATE tasks SET n_submitted = 1 WHERE id = :t"), {"t": tid})
        submit.commit()
        th.join(30)
    assert not th.is_alive()
    if "error" in got:
        raise got["error"]
    assert got["view"] is None
    with session_factory(url)() as s:
        assert s.scalar(select(Assignment.state).where(Assignment.task_id == tid, Assignment.user_id == uid)) \
            == "submitted"


def _skip_script(url: str) -> tuple[list, list, list]:
    """skip_task's cases in one order: each step's outcome, then the assignments and the project counts."""
    with session_factory(url)() as s:
        p = projects.create_project(s, "skips", labels_per_task=2)
        a, b = (accounts.create_user(s, n, None).id for n in ("ann-a", "ann-b"))
        tids = []
        for i in range(2):
            pr, _ = content.add_prompt(s, p.id, text=f"pick one, {i}")
            rids = [content.add_response(s, pr.id, f"r{i}{j}", sample_index=j)[0].id for j in range(2)]
            tids.append(tasks.create_task(s, p.id, "compare", pr.id, rids)[0].id)
        s.commit()
        t1, t2 = tids
        minute = dt.timedelta(minutes=1)
        steps = [
            ("lease a", lambda: assignment.next_task(s, a, p.id, now=T0) and None),
            ("skip spaces", lambda: assignment.skip_task(s, a, t1, "   ", now=T0 + minute)),
            ("skip again", lambda: assignment.skip_task(s, a, t1, "other", now=T0 + 2 * minute)),
            ("never leased", lambda: assignment.skip_task(s, b, t2, "x", now=T0)),
            ("no such task", lambda: assignment.skip_task(s, a, 10**6, "x", now=T0)),
            ("lease b", lambda: assignment.next_task(s, b, p.id, now=T0) and None),
            ("label b", lambda: labels.submit_preference(s, b, t1, "a", now=T0) and None),
            ("skip labelled", lambda: assignment.skip_task(s, b, t1, "late", now=T0)),
            ("lease a t2", lambda: assignment.next_task(s, a, p.id, now=T0) and None),
            ("unstorable", lambda: assignment.skip_task(s, a, t2, "nul\x00", now=T0)),
            ("skip t2", lambda: assignment.skip_task(s, a, t2, "  too long a prompt  ", now=T0)),
        ]
        got = []
        for name, fn in steps:
            try:
                r = fn()
                got.append((name, None if r is None else (r.task_id, r.user_id, r.state, r.assigned_at,
                                                          r.expires_at, r.finished_at, r.skip_reason)))
            except ServiceError as e:
                got.append((name, type(e).__name__, str(e), getattr(e, "field", None)))
                s.rollback()
        s.commit()
        rows = sorted(s.execute(select(Assignment.task_id, Assignment.user_id, Assignment.state,
                                       Assignment.finished_at, Assignment.skip_reason)).all())
        counts = sorted(s.execute(select(ProjectCount.kind, ProjectCount.status, ProjectCount.n)).all())
    return got, rows, counts


def test_skip_gives_the_same_outcomes_on_both_paths(tmp_path):
    """il_skip against skip_task's Python path: a repeat skip, a skip after the label, a task never leased, a task
    that does not exist, a reason of spaces, text that cannot be stored; the returned assignment and the rows."""
    outcomes = []
    for functions in (True, False):
        url = _db(tmp_path, functions=functions)
        outcomes.append(_skip_script(url))
    assert outcomes[0] == outcomes[1]
    got, rows, counts = outcomes[0]
    assert (2, 1, "skipped", T0, "too long a prompt") in rows  # the reason stripped, as given
    state, finished, reason = got[1][1][2], got[1][1][5], got[1][1][6]
    assert (state, finished, reason) == ("skipped", T0 + dt.timedelta(minutes=1), "no reason given")
    assert got[2][1] == got[1][1]  # a repeat changes nothing
    assert [g[1] for g in got if g[0] in ("never leased", "no such task", "skip labelled")] == ["ServiceError"] * 3
    unstorable = {g[0]: g[1:] for g in got}["unstorable"]
    assert (unstorable[0], unstorable[2]) == ("InputError", "skip_reason")
    assert ("skipped", "", 2) in counts
