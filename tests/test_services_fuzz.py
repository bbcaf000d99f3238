"""Fuzzed service entry points the labeling pages call, on SQLite and PostgreSQL: any input (foreign and unknown
task ids, another annotator's lease, out-of-range choices, bad rankings, huge or odd unicode text) either works
correctly or raises a ServiceError, and a refused call leaves every table exactly as it was.

One database per backend lives through all the examples (labels pile up, tasks fill, leases come and go), so
later calls meet done tasks, skipped tasks and others' labels. FUZZ_EXAMPLES sets the number of examples.
"""
from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from db import settings as db_settings
from db.models import (
    CHOICES,
    FLAGS,
    LIKERT_RANGE,
    STRENGTHS,
    Assignment,
    Base,
    Demonstration,
    PreferenceLabel,
    Project,
    Ranking,
    Rating,
    Task,
)
from db.services import accounts, assignment, content, labels, projects, registry, skips, tasks
from db.services.errors import ServiceError
from db.session import dispose_engines, session_scope
from tests.conftest import fresh_url

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
# no shrinking: each step replays database calls, so shrinking a failure would take minutes; the failing
# example is printed as drawn
# make test replays the same examples every run (a red CI must be reproducible here); FUZZ_RANDOM=1 explores
# new ones, FUZZ_EXAMPLES=N more of them
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                derandomize=os.environ.get("FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KINDS = ("compare", "rank", "demonstrate", "rate")
OVERLAP = 2
CALLS: dict[str, Any] = {"n": 0, "refused": 0, "ops": {}}
SEEDED = ("prompts", "responses", "model_versions")  # written by World.top_up only, and large

ODD = st.sampled_from(["\x00", "\u200b", "\u202e", "\ufeff", "<script>x</script>", "😀", "a\r\nb", "'; DROP TABLE x; --",
                       "%s", "\\", " ", ""])
TEXT = st.one_of(st.text(max_size=30), ODD, st.lists(ODD | st.text(max_size=4), max_size=4).map("".join),
                 st.sampled_from(["a NUL \x00 inside", "zero\u200bwidth joiner", "\u202eevil.exe", "x\ud800y"]))


def _huge(what: str) -> st.SearchStrategy[str]:
    n = db_settings.size_limit(what)
    return st.sampled_from(["x" * n, "y" * (n + 1), "é" * (n + 1)])


JUNK = st.none() | st.integers(-3, 10) | st.booleans() | TEXT | st.floats(allow_nan=True) | st.lists(st.integers(), max_size=2)


class World:
    """A database with two projects, three annotators and an admin, tasks of every kind, topped up as they fill."""

    def __init__(self, url: str) -> None:
        self.url = url
        with session_scope(url) as s:
            self.p1 = projects.create_project(s, "p1", labels_per_task=OVERLAP,
                                              settings={"min_demonstration_chars": 3}).id
            self.p2 = projects.create_project(s, "p2").id
            self.users = [accounts.create_user(s, f"ann{i}", "password-1").id for i in range(3)]
            self.admin = accounts.create_user(s, "boss", "password-1", role="admin").id
            self.models = [registry.get_or_register(s, f"m{i}", "base", f"/m/{i}").id for i in range(3)]
        self.n = 0
        self.top_up()

    def top_up(self) -> None:
        """Keep at least three open tasks of each kind in p1 (and a few in p2, the foreign project)."""
        with session_scope(self.url) as s:
            for pid in (self.p1, self.p2):
                for kind in KINDS:
                    open_ = s.scalar(select(func.count()).select_from(Task).where(
                        Task.project_id == pid, Task.kind == kind, Task.status == "open"))
                    for _ in range(max(0, (3 if pid == self.p1 else 1) - open_)):
                        self.n += 1
                        pr, _ = content.add_prompt(s, pid, text=f"prompt {self.n} \u202e<b>hi</b>")
                        k = {"compare": 2, "rank": 3, "rate": 1, "demonstrate": 0}[kind]
                        rids = [content.add_response(s, pr.id, f"answer {self.n}.{j}",
                                                     model_version_id=self.models[j])[0].id for j in range(k)]
                        tasks.create_task(s, pid, kind, pr.id, rids, rng=random.Random(self.n))

    def ids(self, model: Any) -> list[int]:
        with session_scope(self.url) as s:
            return list(s.scalars(select(model.id).order_by(model.id)))

    def fingerprint(self) -> str:
        """A hash of every row of every table these calls may write (all but the seeded content): equal before
        and after a refused call, or it wrote something."""
        h = hashlib.sha256()
        with session_scope(self.url) as s:
            for table in Base.metadata.sorted_tables:
                if table.name in SEEDED:
                    continue
                rows = s.execute(select(table).order_by(*table.primary_key.columns)).all()
                h.update(f"{table.name}:{sorted(map(repr, rows))}".encode())
        return h.hexdigest()

    def check_invariants(self) -> None:
        """Labels per task = the task's counter = its submitted assignments, never over the overlap."""
        with session_scope(self.url) as s:
            per_task: dict[int, int] = {}
            for model in (PreferenceLabel, Ranking, Rating):
                for tid, n in s.execute(select(model.task_id, func.count()).group_by(model.task_id)):
                    per_task[tid] = per_task.get(tid, 0) + n
            for tid, n in s.execute(select(Demonstration.task_id, func.count()).where(
                    Demonstration.task_id.is_not(None)).group_by(Demonstration.task_id)):
                per_task[tid] = per_task.get(tid, 0) + n
            submitted = dict(s.execute(select(Assignment.task_id, func.count()).where(
                Assignment.state == "submitted").group_by(Assignment.task_id)).all())
            for tid, n_submitted, status, overlap in s.execute(
                    select(Task.id, Task.n_submitted, Task.status, Project.labels_per_task).join(Project)):
                got = per_task.get(tid, 0)
                assert got == n_submitted == submitted.get(tid, 0) <= overlap, (tid, got, n_submitted)
                assert (status == "done") == (got >= overlap), (tid, status, got)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request, tmp_path_factory) -> World:
    w = World(fresh_url(request.param, tmp_path_factory.mktemp("fuzz")))
    yield w
    dispose_engines()
    ops = ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(CALLS["ops"].items()))
    print(f"\n{request.param}: {CALLS['n']} fuzzed calls, {CALLS['refused']} refused with a ServiceError "
          f"(per call: worked/refused: {ops})")
    CALLS.update(n=0, refused=0, ops={})


# ------------------------------------------------------------------------------------------- the calls

@st.composite
def task_id(draw: Any, w: World, kind: str | None) -> int:
    """Mostly an open task of the kind the call is about (so that valid calls succeed and fill tasks), else any
    task (another kind, the foreign project, done ones) or an id no task has."""
    ids = w.ids(Task)
    with session_scope(w.url) as s:
        fitting = list(s.scalars(select(Task.id).where(Task.kind == kind, Task.status == "open"))) if kind else []
    # Every draw's bounds are fixed: which ids exist depends on the database (PostgreSQL sequences are not
    # rolled back between examples), and Hypothesis refuses a strategy whose bounds vary on replay.
    # The same draws, in the same order, whatever the state.
    pick, k, odd = draw(st.integers(0, 9)), draw(st.integers(0, 2**16)), draw(st.integers(0, 10))
    if pick < 6 and fitting:
        return fitting[k % len(fitting)]
    if pick < 8:
        return ids[k % len(ids)]
    return max(ids) + 1 + odd if odd < 5 else [-2, -1, 0, 2**31, 2**63 - 1, 10**30][odd - 5]


@st.composite
def label_id(draw: Any, w: World, model: Any) -> int:
    ids = w.ids(model)
    k, other = draw(st.integers(0, 2**16)), draw(st.integers(-2, 10**6))  # fixed draws, as in task_id
    return ids[k % len(ids)] if ids and k % 2 else other


@st.composite
def ordering(draw: Any, w: World, tid: int, sane: bool) -> Any:
    with session_scope(w.url) as s:
        t = s.get(Task, tid) if 1 <= tid < 2**31 else None
        rids = list(t.response_ids or []) if t is not None else []
    good = draw(st.permutations(rids)) if rids else []
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(good) - 1)), max_size=len(good))))
    groups = [good[a:b] for a, b in zip([0, *cuts], [*cuts, len(good)]) if good[a:b]]
    bad = st.one_of(st.just([[r] for r in rids] + [[rids[0]]] if rids else [[1]]),  # a response twice
                    st.just([[r] for r in rids[:-1]]),  # one left out
                    st.just([rids]), st.just([[]] + [[r] for r in rids]),  # all tied / an empty group
                    st.lists(st.lists(st.integers(-1, 10**4) | JUNK, max_size=3), max_size=4), JUNK)
    return groups if sane else draw(st.just(groups) | bad)


@st.composite
def call(draw: Any, w: World) -> tuple[str, Any]:
    """(description, function of a session) for one UI-reachable service call with fuzzed arguments."""
    sane = draw(st.integers(0, 2)) < 2  # two calls in three: plausible arguments (with odd text), else anything
    user = draw(st.sampled_from(w.users + [w.admin]))
    comment = draw(TEXT if sane else TEXT | _huge("comment"))
    flags = draw(st.lists(st.sampled_from(FLAGS), max_size=2) if sane else
                 st.lists(st.sampled_from([*FLAGS, "nope", ""]), max_size=3) | st.none() | JUNK)
    op = draw(st.sampled_from([
        "next", "next", "open", "holds", "left", "skip", "release", "undo_skip", "skipped", "history", "review",
        "revise_pref", "revise_rank", "revise_demo", "revise_rate", *["pref", "rank", "demo", "rate"] * 3]))
    tid = draw(task_id(w, {"pref": "compare", "rank": "rank", "demo": "demonstrate", "rate": "rate",
                           "skip": "rank", "undo_skip": "rank"}.get(op)))
    project = draw(st.sampled_from([w.p1, w.p2, 0, 999]))
    kind = draw(st.sampled_from([*KINDS, None, "bogus"]))
    if op == "next":
        return op, lambda s: assignment.next_task(s, user, project, kind=kind)
    if op == "open":
        return op, lambda s: assignment.open_task(s, user, tid)
    if op == "holds":
        return op, lambda s: assignment.holds(s, user, tid)
    if op == "left":
        return op, lambda s: assignment.tasks_left(s, user, project, kind=kind)
    if op == "skip":
        return op, lambda s: assignment.skip_task(s, user, tid, comment)
    if op == "release":
        return op, lambda s: assignment.release_task(s, user, tid)
    if op == "undo_skip":
        return op, lambda s: skips.undo_skip(s, user, tid)
    if op == "skipped":
        return op, lambda s: skips.skipped_tasks(s, user, project_id=project)
    if op == "history":
        return op, lambda s: labels.history(s, user, project_id=project)
    if op in ("pref", "revise_pref"):
        choice = draw(st.sampled_from(CHOICES) if sane else st.sampled_from(CHOICES) | TEXT | JUNK)
        strength = draw(st.sampled_from([*STRENGTHS, None]) if sane else st.sampled_from(STRENGTHS) | TEXT | JUNK)
        if op == "pref":
            def pref(s: Any) -> None:
                label, created = labels.submit_preference(s, user, tid, choice, strength=strength, flags=flags,
                                                          comment=comment, seconds=1.0)
                if created:  # stored as given
                    assert (label.task_id, label.user_id, label.choice, label.comment) == (tid, user, choice, comment)
                    assert label.strength == (strength if choice in ("a", "b") else None)
            return op, pref
        lid = draw(label_id(w, PreferenceLabel))
        return op, lambda s: labels.revise_preference(s, user, lid, choice, strength=strength, flags=flags,
                                                      comment=comment)
    if op in ("rank", "revise_rank"):
        if op == "rank":
            order = draw(ordering(w, tid, sane))
            return op, lambda s: labels.submit_ranking(s, user, tid, order, flags=flags, comment=comment)
        lid = draw(label_id(w, Ranking))
        with session_scope(w.url) as s:
            r = s.get(Ranking, lid) if 1 <= lid < 2**31 else None
            of = r.task_id if r is not None else tid
        order = draw(ordering(w, of, sane))
        return op, lambda s: labels.revise_ranking(s, user, lid, order, flags=flags)
    if op in ("demo", "revise_demo"):
        body = draw(st.sampled_from(["the same answer", "the same answer  "]) | TEXT.map("my answer: ".__add__)
                    if sane else TEXT | _huge("demonstration"))
        if op == "demo":
            def demo(s: Any) -> None:
                d, created = labels.submit_demonstration(s, user, tid, body, seconds=2.0)
                if created:
                    assert (d.task_id, d.user_id, d.text) == (tid, user, body.strip())
            return op, demo
        lid = draw(label_id(w, Demonstration))
        return op, lambda s: labels.revise_demonstration(s, user, lid, body)
    if op in ("rate", "revise_rate"):
        good = draw(st.booleans() if sane else st.booleans() | JUNK)
        likert = draw(st.none() | st.integers(*LIKERT_RANGE) if sane else st.integers(-1, 9) | JUNK)
        if op == "rate":
            def rate(s: Any) -> None:
                r, created = labels.submit_rating(s, user, tid, good, likert=likert, flags=flags, comment=comment)
                if created:
                    assert (r.task_id, r.user_id, r.good, r.likert, r.comment) == (tid, user, good, likert, comment)
            return op, rate
        lid = draw(label_id(w, Rating))
        return op, lambda s: labels.revise_rating(s, user, lid, good, likert=likert, flags=flags, comment=comment)
    lid = draw(label_id(w, Demonstration))
    accept = draw(st.booleans())
    return op, lambda s: labels.review_demonstration(s, lid, user, accept, note=comment)


def _run(w: World, what: str, fn: Any) -> None:
    CALLS["n"] += 1
    tally = CALLS["ops"].setdefault(what, [0, 0])
    before = w.fingerprint()
    try:
        with session_scope(w.url) as s:  # what labeling_ui.common.db() does: one unit of work per action
            fn(s)
        tally[0] += 1
    except ServiceError as e:
        CALLS["refused"] += 1
        tally[1] += 1
        assert str(e).strip(), f"{what}: an empty message"
        assert w.fingerprint() == before, f"{what} was refused ({e}) but wrote to the database"
        return
    w.check_invariants()


@FUZZ
@given(data=st.data())
def test_ui_service_calls_fuzz(world, data):
    world.top_up()
    for _ in range(data.draw(st.integers(1, 4))):
        what, fn = data.draw(call(world))
        _run(world, what, fn)

