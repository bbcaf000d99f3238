"""A database with a row in every table, built through the services (migration and backup tests).

`every_table_rows` reads every table of the live schema, so a test can assert that none is empty: a table
added later without a row here fails those tests instead of slipping through untested.
"""
from __future__ import annotations

import datetime as dt
import random
from typing import Any

from sqlalchemy import MetaData, select

from db.models import Job
from db.services import accounts, assignment, audit, content, labels, projects, registry, sessions, tasks
from db.session import get_engine, session_factory


def cheap_hashes(monkeypatch) -> None:
    """scrypt at a test cost (n = 2**8, not 2**14) for tests that hash many passwords. Stored hashes carry their
    parameters, so verification runs the same code."""
    monkeypatch.setattr(accounts, "_SCRYPT", {"n": 2**8, "r": 8, "p": 1})


def populate(url: str) -> None:
    """Users (admin, annotators, a deactivated one), a session, a project with compare/rank/demonstrate/rate
    tasks, labels of each kind, a live lease, a reviewed demonstration, a job, failed sign-ins, audit entries."""
    rng = random.Random(0)
    with session_factory(url)() as s:
        admin = accounts.create_user(s, "admin", "password-admin", role="admin")
        ann = [accounts.create_user(s, f"ann{i}", "password-1").id for i in range(3)]
        accounts.create_user(s, "gone", "password-1")
        accounts.set_active(s, "gone", False, actor_id=admin.id)
        s.commit()
        sessions.create_session(s, ann[0], dt.timedelta(days=1))
        p = projects.create_project(s, "every-table", labels_per_task=2, guidelines="be kind")
        m1 = registry.get_or_register(s, "base-v1", "base", "/m/base")
        m2 = registry.get_or_register(s, "sft-v1", "sft", "/m/sft", parent="base-v1")
        made: dict[str, list[int]] = {"compare": [], "rank": [], "demonstrate": [], "rate": []}
        for i in range(4):
            pr, _ = content.add_prompt(s, p.id, text=f"question {i}: 2+{i}?", meta={"i": i})
            rs = [content.add_response(s, pr.id, f"answer {i}.{k}", model_version_id=(m1, m2)[k % 2].id,
                                       sample_index=k)[0].id for k in range(3)]
            made["compare"].append(tasks.create_task(s, p.id, "compare", pr.id, rs[:2], rng=rng)[0].id)
            made["rank"].append(tasks.create_task(s, p.id, "rank", pr.id, rs, rng=rng)[0].id)
            made["rate"].append(tasks.create_task(s, p.id, "rate", pr.id, rs[:1], rng=rng)[0].id)
            made["demonstrate"].append(tasks.create_task(s, p.id, "demonstrate", pr.id)[0].id)
        s.add(Job(kind="generate", args={"model": "sft-v1", "project": "every-table"}, created_by=admin.id,
                  progress_text="queued by the test"))
        s.commit()
        for u in ann[:2]:
            labels.submit_preference(s, u, made["compare"][0], "a", strength="clear", comment="A is right")
            t = tasks.get_task(s, made["rank"][0])
            labels.submit_ranking(s, u, t.id, [[t.response_ids[0]], t.response_ids[1:]])
            labels.submit_rating(s, u, made["rate"][0], True, likert=6, seconds=8.5)
        demo, _ = labels.submit_demonstration(s, ann[0], made["demonstrate"][0], "The answer is 2, because 2 + 0 = 2.")
        labels.review_demonstration(s, demo.id, admin.id, True, "good")
        labels.revise_preference(s, ann[0], _first_pref(s, ann[0]), "b", strength="slight")
        assignment.next_task(s, ann[2], p.id, kind="compare")  # a live lease
        s.commit()
        accounts.sign_in(s, "ann1", "wrong password", client="10.0.0.9")
        audit.record(s, "export", actor_id=admin.id, target="preferences", details={"rows": 1})
        s.commit()


def _first_pref(s, user_id: int) -> int:
    from db.models import PreferenceLabel
    return s.scalar(select(PreferenceLabel.id).where(PreferenceLabel.user_id == user_id).order_by(
        PreferenceLabel.id))


def every_table_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """{table: its rows as dicts, in primary-key order} for every table of the live schema but alembic's."""
    md = MetaData()
    engine = get_engine(url)
    md.reflect(engine)
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for name, table in md.tables.items():
            if name == "alembic_version":
                continue
            order = list(table.primary_key.columns) or list(table.columns)
            out[name] = [dict(r._mapping) for r in conn.execute(select(table).order_by(*order))]
    return out
