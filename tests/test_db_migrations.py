"""Alembic: upgrade → downgrade → upgrade on SQLite and PostgreSQL; models and migrations agree."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from db.migrate import current_revision, downgrade, head_revision, upgrade
from db.models import Base
from db.session import get_engine


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
