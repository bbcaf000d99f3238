"""Agreement statistics: known textbook values and the database report."""
from __future__ import annotations

import datetime as dt
import math

import pytest

from db.services import accounts, agreement, content, labels, projects, tasks
from db.services.assignment import next_task


def test_fleiss_kappa_wikipedia_example():
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert agreement.fleiss_kappa(table) == pytest.approx(0.210, abs=1e-3)


def test_cohen_kappa_wikipedia_example():
    x = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    y = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert agreement.cohen_kappa(x, y) == pytest.approx(0.4)
    assert agreement.cohen_kappa(["a", "a"], ["a", "a"]) == 1.0
    assert math.isnan(agreement.cohen_kappa([], []))


def test_percent_agreement_and_majority():
    assert agreement.percent_agreement([["a", "a", "b"], ["a", "a"]]) == pytest.approx((1 / 3 + 1) / 2)
    assert agreement._majority(["a", "b"]) is None
    assert agreement._majority(["a", "b", "a"]) == "a"


def test_report_on_database(sqlite_session):
    s = sqlite_session
    p = projects.create_project(s, "agree", labels_per_task=3)
    users = [accounts.create_user(s, f"u{i}", "password123") for i in range(3)]
    task_ids = []
    for i in range(4):
        pr, _ = content.add_prompt(s, p.id, text=f"prompt {i}")
        r1, _ = content.add_response(s, pr.id, "one")
        r2, _ = content.add_response(s, pr.id, "two")
        t, _ = tasks.create_task(s, p.id, "compare", pr.id, [r1.id, r2.id], shuffle=False)
        task_ids.append(t.id)
    s.commit()
    # u0 and u1 always agree; u2 disagrees on tasks 0 and 1.
    votes = {0: ["a", "a", "b"], 1: ["b", "b", "a"], 2: ["a", "a", "a"], 3: ["tie", "tie", "tie"]}
    for ti, choices in votes.items():
        for u, c in zip(users, choices):
            labels.submit_preference(s, u.id, task_ids[ti], c, strength="clear" if c in "ab" else None,
                                     seconds=10.0 + u.id)
    rep = agreement.preference_agreement(s, p.id)
    assert rep["n_tasks"] == 4 and rep["n_labels"] == 12
    assert rep["percent_agreement"] == pytest.approx((1 / 3 + 1 / 3 + 1 + 1) / 4)
    per = rep["per_annotator"].set_index("annotator")
    assert per.loc["u0", "agrees_with_majority"] == 1.0
    assert per.loc["u2", "agrees_with_majority"] == 0.5
    pairs = rep["pairs"].set_index(["annotator_a", "annotator_b"])
    assert pairs.loc[("u0", "u1"), "cohen_kappa"] == pytest.approx(1.0)
    dis = agreement.disagreements(s, p.id)
    assert sorted(dis["task_id"]) == sorted(task_ids[:2])
    speed = agreement.annotator_speed(s, p.id).set_index("annotator")
    assert speed.loc["u0", "median_seconds"] == pytest.approx(10.0 + users[0].id)
    from db.models import utcnow
    from db.services import stats

    assert stats.label_counts(s, p.id, user_id=users[0].id) == {"today": 4, "total": 4}
    assert stats.label_counts(s, p.id) == {"today": 12, "total": 12}
    assert stats.label_counts(s, p.id, now=utcnow() + dt.timedelta(days=1)) == {"today": 0, "total": 12}
    assert next_task(s, users[0].id, p.id) is None


def test_rankings_count_as_pairwise_items(sqlite_session):
    """Two annotators rank the same 3 responses: 3 pair items; they agree on 2 of them."""
    from db.services import accounts, agreement, content, labels, projects, tasks

    s = sqlite_session
    p = projects.create_project(s, "r", labels_per_task=2)
    pr, _ = content.add_prompt(s, p.id, text="rank these")
    r1, r2, r3 = (content.add_response(s, pr.id, f"resp {i}")[0].id for i in range(3))
    t, _ = tasks.create_task(s, p.id, "rank", pr.id, [r1, r2, r3])
    u1 = accounts.create_user(s, "ann1", "password-1").id
    u2 = accounts.create_user(s, "ann2", "password-1").id
    s.commit()
    labels.submit_ranking(s, u1, t.id, [[r1], [r2], [r3]])
    labels.submit_ranking(s, u2, t.id, [[r1], [r3], [r2]])
    rep = agreement.preference_agreement(s, p.id)
    assert rep["n_tasks"] == 3 and rep["n_labels"] == 6
    assert abs(rep["percent_agreement"] - 2 / 3) < 1e-9
    assert dict(zip(rep["per_annotator"]["annotator"], rep["per_annotator"]["labels"])) == {"ann1": 1, "ann2": 1}
    assert agreement.preference_agreement(s, p.id, include_rankings=False)["n_tasks"] == 0


def test_a_project_with_compare_and_rank_labels_by_the_same_annotators(sqlite_session):
    """Compare tasks and ranking pairs are items of one report: two annotators who did both share both kinds
    (the report once failed sorting task ids beside ranking-pair keys)."""
    s = sqlite_session
    p = projects.create_project(s, "mixed", labels_per_task=2)
    pr, _ = content.add_prompt(s, p.id, text="judge these")
    r1, r2, r3 = (content.add_response(s, pr.id, f"resp {i}")[0].id for i in range(3))
    compare, _ = tasks.create_task(s, p.id, "compare", pr.id, [r1, r2], shuffle=False)
    rank, _ = tasks.create_task(s, p.id, "rank", pr.id, [r1, r2, r3])
    u1, u2 = (accounts.create_user(s, f"ann{i}", "password-1").id for i in (1, 2))
    s.commit()
    for u, choice in ((u1, "a"), (u2, "a")):
        labels.submit_preference(s, u, compare.id, choice, strength="clear")
    labels.submit_ranking(s, u1, rank.id, [[r1], [r2], [r3]])
    labels.submit_ranking(s, u2, rank.id, [[r1], [r3], [r2]])  # disagrees on (r2, r3) only
    rep = agreement.preference_agreement(s, p.id)
    assert rep["n_tasks"] == 4 and rep["n_labels"] == 8  # the compare task + 3 ranking pairs
    pair = rep["pairs"].set_index(["annotator_a", "annotator_b"]).loc[("ann1", "ann2")]
    assert pair["shared_tasks"] == 4 and pair["percent_agreement"] == 0.75
    per = rep["per_annotator"].set_index("annotator")
    assert per.loc["ann1", "compared"] == 4 and per.loc["ann1", "agrees_with_majority"] == 0.75


def test_imported_labels_are_not_an_annotator_in_agreement(session):
    """Labels imported with `db import preferences` / `ratings` belong to pseudo-users (import:trl,
    import:trl-unpaired): a dataset's answers, left out of agreement, Cohen pairs and disagreements."""
    import json

    from db.services import importers
    s = session
    projects.create_project(s, "imp", labels_per_task=2)
    s.commit()
    prefs = "".join(json.dumps({"prompt": f"q{i}?", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(3))
    importers.import_preferences(s, prefs.encode(), "imp", filename="p.jsonl", fmt="trl")
    rated = "".join(json.dumps({"prompt": f"r{i}?", "completion": "ok", "label": True}) + "\n" for i in range(3))
    importers.import_ratings(s, rated.encode(), "imp", filename="r.jsonl")
    s.commit()
    pid = projects.get_project(s, "imp").id
    (ann,) = [accounts.create_user(s, "ann", "password123").id]
    s.commit()
    for kind in ("compare", "rate"):
        while (view := next_task(s, ann, pid, kind=kind)) is not None:
            s.commit()
            if kind == "compare":  # always the other response than the import's: every task a disagreement
                labels.submit_preference(s, ann, view.task_id, "b", strength="clear")
            else:
                labels.submit_rating(s, ann, view.task_id, False)
            s.commit()
    pref, rate = agreement.preference_agreement(s, pid), agreement.rating_agreement(s, pid)
    for rep in (pref, rate):
        assert rep["n_tasks"] == 0 and len(rep["pairs"]) == 0
        assert list(rep["per_annotator"]["annotator"]) == ["ann"] and list(rep["per_annotator"]["labels"]) == [3]
    assert len(agreement.disagreements(s, pid)) == 0 and len(rate["disagreements"]) == 0


def test_agreement_page_with_ratings_only(sqlite_url, monkeypatch):
    """Only ratings: the top says it covers compare / rank (not "no one has labelled anything"), the ratings
    tables speak words, and their Cohen table is a plain table."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from db.session import session_scope
    from labeling_ui.seed import seed

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    info = seed(sqlite_url, n_compare=0, n_rank=0, n_demonstrate=0, create_tables=False)
    pid = info["project_id"]
    with session_scope(sqlite_url) as s:
        projects.update_project(s, "demo", labels_per_task=2)
        for i in range(3):
            pr, _ = content.add_prompt(s, pid, text=f"rate me {i}")
            r, _ = content.add_response(s, pr.id, f"answer {i}")
            tasks.create_task(s, pid, "rate", pr.id, [r.id])
    for who, verdicts in ((info["alice_id"], [True, True, False]), (info["bob_id"], [True, False, False])):
        for good in verdicts:
            with session_scope(sqlite_url) as s:
                view = next_task(s, who, pid, kind="rate")
            with session_scope(sqlite_url) as s:
                labels.submit_rating(s, who, view.task_id, good)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "labeling_ui" / "views" / "agreement.py"),
                           default_timeout=60)
    at.session_state["user"] = {"id": info["admin_id"], "username": "admin", "display_name": "admin",
                                "role": "admin"}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (banner,) = [i.value for i in at.info]
    assert "No compare / rank agreement figures yet" in banner and "anything here" not in banner
    assert "Ratings of single responses have their own figures below" in banner
    assert "None yet (no compare task has two labels)." in [c.value for c in at.caption]
    assert any("Ratings (good / bad" in m.value for m in at.markdown)
    shown = [str(c) for df in at.dataframe for c in df.value.columns]
    assert shown and not [c for c in shown if "_" in c], shown  # no snake_case column
    (pairs,) = at.table  # plain: never cut off
    assert list(pairs.value.columns) == ["other annotator", "shared items", "agreement", "Cohen's kappa"]
    assert list(pairs.value["agreement"]) == ["67%"]
