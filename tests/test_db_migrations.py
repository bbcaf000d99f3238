"""Alembic: upgrade → downgrade → upgrade on SQLite and PostgreSQL; models and migrations agree; a database
full of data (every table populated) keeps every row through each revision's downgrade and the upgrade back."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from db.migrate import alembic_config, current_revision, downgrade, head_revision, upgrade
from db.models import Base
from db.session import get_engine
from tests.populated import cheap_hashes, every_table_rows, populate


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch):
    cheap_hashes(monkeypatch)

# The tables each revision creates, so its downgrade drops them (and their rows) and nothing else. A new
# revision must be listed here, or test_downgrade_keeps_every_row fails.
CREATES = {
    "0002": {"ui_sessions"},
    "0003": set(),  # an index
    "0004": {"jobs"},
    "0005": {"ratings"},
    "0006": {"audit_log", "sign_in_failures"},
    "0007": {"label_days", "label_seconds", "agreement_counts"},
    "0008": {"project_counts"},
    "0009": set(),  # PostgreSQL functions (tests/test_pg_functions.py checks they come and go)
    "0010": set(),  # il_next_task replaced
}


def _tables(url: str) -> set[str]:
    return set(inspect(get_engine(url)).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade(empty_db_url):
    assert _tables(empty_db_url) == set()
    assert upgrade(empty_db_url) == head_revision()
    assert _tables(empty_db_url) == set(Base.metadata.tables)
    assert downgrade(empty_db_url, "base") is None
    assert _tables(empty_db_url) == set()
    assert upgrade(empty_db_url) == head_revision()
    assert current_revision(empty_db_url) == head_revision()


def test_autogenerate_finds_no_difference(empty_db_url):
    upgrade(empty_db_url)
    with get_engine(empty_db_url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations differ; write an Alembic revision: {diff}"


def test_one_head():
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"migrations have {len(heads)} heads {heads}: give the newest the right down_revision"


def test_downgrade_keeps_every_row(empty_db_url):
    """Each revision's downgrade, newest first down to the initial schema, keeps every row of every table that
    exists below it (batch rebuilds on SQLite included), and drops only the tables the revision created; the
    upgrade back to head keeps them all again."""
    url = empty_db_url
    upgrade(url)
    populate(url)
    full = every_table_rows(url)
    assert set(full) == set(Base.metadata.tables)
    empty = sorted(t for t, rows in full.items() if not rows)
    assert not empty, f"tests/populated.py leaves {empty} empty: give every table a row"

    script = ScriptDirectory.from_config(alembic_config())
    steps = [(r.revision, r.down_revision) for r in script.walk_revisions() if r.down_revision is not None]
    assert {rev for rev, _ in steps} == set(CREATES), "list every revision's tables in CREATES"
    expected = dict(full)
    for rev, down in steps:  # newest first
        assert downgrade(url, down) == down
        for t in CREATES[rev]:
            expected.pop(t)
        now = every_table_rows(url)
        assert set(now) == set(expected), f"downgrade of {rev} dropped {set(expected) - set(now)}"
        for table, rows in expected.items():
            assert now[table] == rows, f"downgrade of {rev} changed the rows of {table}"

    assert upgrade(url) == head_revision()
    back = every_table_rows(url)
    for table, rows in expected.items():  # what the initial schema holds survived the whole way down and up
        assert back[table] == rows, f"the upgrade back to head changed the rows of {table}"

