"""The Dashboard and Agreement services read summaries (db.services.summary) kept at each label write: on a
project with every kind of label, revisions, skips and imports, each gives what the services that read every
label gave (tests/stats_reference.py, the code before the summaries); `rebuild` (migration 0007's backfill)
finds the same sums as the writes kept; an upgrade of a populated database to 0007 backfills them."""
from __future__ import annotations

import datetime as dt
import json
import math
import random
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select

from db.migrate import downgrade, upgrade
from db.models import (
    AgreementCount,
    LabelDay,
    LabelSeconds,
    PreferenceLabel,
    ProjectCount,
    Ranking,
    Rating,
    Task,
    User,
    utcnow,
)
from db.services import (
    accounts,
    agreement,
    assignment,
    content,
    importers,
    labels,
    projects,
    skips,
    stats,
    summary,
    tasks,
)
from db.session import session_factory
from tests import stats_reference as ref
from tests.populated import cheap_hashes, populate

SECONDS = [None, 5.0, 7.5, 7.5, 12.0, 30.25]


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch):
    cheap_hashes(monkeypatch)


def _imports(s, admin_id: int) -> None:
    """Labels by import pseudo-users (TRL preferences, TRL ratings, OASST rankings): counted on the Dashboard,
    left out of agreement."""
    prefs = "\n".join(json.dumps({"prompt": f"imported question {i}?", "chosen": f"good answer {i}",
                                  "rejected": f"bad answer {i}"}) for i in range(6))
    importers.import_preferences(s, prefs.encode(), "mix", filename="prefs.jsonl", actor_id=admin_id)
    rates = "\n".join(json.dumps({"prompt": f"rated question {i}?", "completion": f"reply {i}", "label": i % 3 > 0})
                      for i in range(6))
    importers.import_ratings(s, rates.encode(), "mix", filename="rates.jsonl", actor_id=admin_id)
    s.commit()


def _oasst(s, shared_data, admin_id: int) -> None:
    lines = (shared_data / "oasst_en_100_tree.jsonl").read_text().splitlines()[:2]
    importers.import_oasst(s, "\n".join(lines).encode(), "mix", filename="oasst.jsonl", actor_id=admin_id)
    s.commit()


def build(s, shared_data=None) -> dict[str, Any]:
    """Two projects; compare (2 responses), rank (3), rate and demonstrate tasks; 1-3 labels each by five
    annotators over seven days with repeated and missing times; revisions of each kind; skips; imports."""
    rng = random.Random(11)
    admin = accounts.create_user(s, "admin", "password-admin", role="admin")
    # names out of id order, so a pair stored by id is shown by name
    people = [accounts.create_user(s, name, "password-1").id for name in ("zoe", "amy", "kim", "bob", "lee")]
    mix = projects.create_project(s, "mix", labels_per_task=3)
    other = projects.create_project(s, "other", labels_per_task=2)
    s.commit()
    _imports(s, admin.id)
    if shared_data is not None:
        _oasst(s, shared_data, admin.id)
    for proj in (mix, other):
        for i in range(8):
            pr, _ = content.add_prompt(s, proj.id, text=f"{proj.name} question {i}")
            rs = [content.add_response(s, pr.id, f"answer {i}.{k}")[0].id for k in range(3)]
            tasks.create_task(s, proj.id, "compare", pr.id, rs[:2], rng=rng)
            tasks.create_task(s, proj.id, "rank", pr.id, rs, rng=rng)
            tasks.create_task(s, proj.id, "rate", pr.id, rs[:1], rng=rng)
            if i < 3:
                tasks.create_task(s, proj.id, "demonstrate", pr.id)
    s.commit()
    start = utcnow() - dt.timedelta(days=6)
    written: list[tuple[str, int, int, dt.datetime]] = []  # kind, user, label id, when
    every = list(s.scalars(select(Task).order_by(Task.id)))
    for t in every:
        room = (mix if t.project_id == mix.id else other).labels_per_task - t.n_submitted
        for u in rng.sample(people, rng.randint(1, max(1, room)))[:room]:
            when = None if rng.random() < 0.15 else start + dt.timedelta(minutes=rng.randrange(6 * 24 * 60))
            sec = rng.choice(SECONDS)
            if t.kind == "compare":
                c = rng.choice(["a", "a", "b", "tie", "both_bad"])
                lab, _ = labels.submit_preference(s, u, t.id, c, strength="clear" if c in "ab" else None,
                                                  comment=rng.choice(["", "close"]), seconds=sec, now=when)
            elif t.kind == "rank":
                order = list(t.response_ids)
                rng.shuffle(order)
                groups = [[order[0]], order[1:]] if rng.random() < 0.3 else [[r] for r in order]
                lab, _ = labels.submit_ranking(s, u, t.id, groups, seconds=sec, now=when)
            elif t.kind == "rate":
                lab, _ = labels.submit_rating(s, u, t.id, rng.random() < 0.6, comment=rng.choice(["", "meh"]),
                                              seconds=sec, now=when)
            else:
                lab, _ = labels.submit_demonstration(s, u, t.id, f"A careful answer number {t.id} by {u}.",
                                                     seconds=sec, now=when)
            written.append((t.kind, u, lab.id, lab.created_at))
    for kind, u, lid, when in written:
        if rng.random() > 0.3:
            continue
        later = when + dt.timedelta(hours=1)
        if kind == "compare":
            labels.revise_preference(s, u, lid, rng.choice(["a", "b", "tie"]), strength=None, now=later)
        elif kind == "rank":
            r = s.get(Ranking, lid)
            labels.revise_ranking(s, u, lid, [[x] for x in reversed([x for g in r.ordering for x in g])], now=later)
        elif kind == "rate":
            labels.revise_rating(s, u, lid, not s.get(Rating, lid).good, now=later)
    skipped = []
    for u in people[:3]:  # skips: leased, then given back; one taken back
        v = assignment.next_task(s, u, mix.id, kind="compare")
        if v is not None:
            assignment.skip_task(s, u, v.task_id, "unsure")
            skipped.append((u, v.task_id))
    assert len(skipped) >= 2
    skips.undo_skip(s, *skipped[0])
    assignment.next_task(s, people[4], other.id)  # a live lease
    s.commit()
    return {"projects": [mix.id, other.id], "people": people}


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False,
                                  check_exact=False, rtol=1e-12)


def _report_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        if isinstance(v, pd.DataFrame):
            _frames_equal(got[k], v)
        elif isinstance(v, float) and math.isnan(v):
            assert math.isnan(got[k]), k
        else:  # sums of the same shares in another order: equal up to float rounding
            assert got[k] == pytest.approx(v, rel=1e-12), k


def check_pages(s, project_ids: list[int], people: list[int]) -> None:
    """Every Dashboard / Agreement / labeling-page service equals the reference, per project and overall."""
    for pid in project_ids:
        assert stats.progress(s, pid) == ref.progress(s, pid)
        for u in people:
            assert stats.progress(s, pid, user_id=u) == ref.progress(s, pid, user_id=u)
            for kind in (None, "compare", "rank", "rate", "demonstrate"):
                assert stats.label_counts(s, pid, user_id=u, kind=kind) == ref.label_counts(s, pid, user_id=u,
                                                                                          kind=kind)
        for now in (utcnow() - dt.timedelta(days=3), utcnow()):
            assert stats.label_counts(s, pid, now=now) == ref.label_counts(s, pid, now=now)
        for include in (True, False):
            _report_equal(agreement.preference_agreement(s, pid, include_rankings=include),
                          ref.preference_agreement(s, pid, include_rankings=include))
        _report_equal(agreement.preference_agreement(s, pid, min_shared=3), ref.preference_agreement(s, pid,
                                                                                                      min_shared=3))
        _report_equal(agreement.rating_agreement(s, pid), ref.rating_agreement(s, pid))
        _frames_equal(agreement.disagreements(s, pid), ref.disagreements(s, pid))
    for pid in (*project_ids, None):
        _frames_equal(stats.labels_over_time(s, pid), ref.labels_over_time(s, pid))
        _frames_equal(stats.per_annotator(s, pid), ref.per_annotator(s, pid))
        _frames_equal(agreement.annotator_speed(s, pid), ref.annotator_speed(s, pid))
    _report_equal(agreement.preference_agreement(s), ref.preference_agreement(s))
    _report_equal(agreement.rating_agreement(s), ref.rating_agreement(s))
    _frames_equal(stats.per_project(s), ref.per_project(s))


def summary_rows(s) -> dict[str, list[tuple]]:
    """The summaries' contents without ids or empty counters, in a fixed order."""
    cols = {LabelDay: ("project_id", "user_id", "kind", "day", "n", "first_at", "last_at"),
            LabelSeconds: ("project_id", "user_id", "kind", "seconds", "n"),
            AgreementCount: ("project_id", "kind", "what", "user_a", "user_b", "x", "y", "n"),
            ProjectCount: ("project_id", "kind", "status", "n")}
    return {m.__tablename__: sorted(tuple(getattr(r, c) for c in cs) for r in s.scalars(select(m)) if r.n)
            for m, cs in cols.items()}


def test_pages_equal_the_label_scans(session, shared_data):
    made = build(session, shared_data)
    s = session
    # the scenario has what it claims: revisions, skips, imports, splits, times
    assert s.scalar(select(PreferenceLabel.id).where(PreferenceLabel.updated_at.is_not(None)))
    assert stats.progress(s, made["projects"][0])["skipped"] > 0
    rep = ref.preference_agreement(s, made["projects"][0])
    assert rep["n_tasks"] > 10 and 0 < rep["percent_agreement"] < 1
    assert len(ref.rating_agreement(s, made["projects"][0])["disagreements"]) > 0
    assert any(name.startswith("import:") for name in ref.per_annotator(s)["annotator"])
    assert ref.annotator_speed(s)["labels"].sum() > 20
    check_pages(s, made["projects"], made["people"])
    # and the backfill computes exactly the sums the writes kept
    kept = summary_rows(s)
    assert all(kept.values())
    summary.rebuild(s)
    s.commit()
    assert summary_rows(s) == kept
    check_pages(s, made["projects"], made["people"])


def test_a_new_label_moves_every_page(sqlite_session):
    """A sum that is not updated at a write shows here (same data, one more label and one revision)."""
    s = sqlite_session
    made = build(s)
    pid = made["projects"][1]
    before = agreement.preference_agreement(s, pid)
    t = s.scalar(select(Task).where(Task.project_id == pid, Task.kind == "compare", Task.n_submitted == 1))
    who = next(u for u in made["people"] if not s.scalar(select(PreferenceLabel.id).where(
        PreferenceLabel.task_id == t.id, PreferenceLabel.user_id == u)))
    lab, _ = labels.submit_preference(s, who, t.id, "both_bad", seconds=99.0)
    after = agreement.preference_agreement(s, pid)
    assert after["n_tasks"] == before["n_tasks"] + 1
    assert stats.per_annotator(s, pid)["median_seconds"].max() >= ref.per_annotator(s, pid)["median_seconds"].max()
    labels.revise_preference(s, who, lab.id, "a", strength="slight")
    s.commit()
    check_pages(s, made["projects"], made["people"])
    # a new overlap re-decides which tasks are done (a bulk UPDATE): the counts follow
    done = stats.progress(s, pid)["tasks_by_state"].get("done", 0)
    projects.update_project(s, "other", labels_per_task=1)
    s.commit()
    assert stats.progress(s, pid)["tasks_by_state"]["done"] > done
    check_pages(s, made["projects"], made["people"])


def test_upgrade_backfills_a_populated_database(empty_db_url):
    """A database with labels written before 0007 (here: populated at head, then taken down to 0006, which drops
    the summaries) gets them back from the labels on the upgrade, the same as the writes had kept them."""
    url = empty_db_url
    upgrade(url)
    populate(url)
    with session_factory(url)() as s:
        kept = summary_rows(s)
        assert all(kept.values())
    assert downgrade(url, "0006") == "0006"
    upgrade(url)
    with session_factory(url)() as s:
        assert summary_rows(s) == kept
        pid = projects.get_project(s, "every-table").id
        check_pages(s, [pid], list(s.scalars(select(User.id))))


def test_summaries_stay_exact_under_concurrent_annotators(db_url):
    """16 annotators submitting, skipping and double-submitting at once (threads): the sums the writes kept are
    the ones the labels give (a lost update or a deadlock between counter rows shows here)."""
    from bench.annotators_load import Behaviour, run_annotators, seed

    pid, users = seed(db_url, n_tasks=30, n_users=16, overlap=3)
    run_annotators(db_url, pid, users, "threads", Behaviour(skip=0.1, double_submit=0.1), timeout=120)
    with session_factory(db_url)() as s:
        kept = summary_rows(s)
        assert kept["agreement_counts"] and kept["project_counts"]
        summary.rebuild(s)
        assert summary_rows(s) == kept
        s.rollback()
