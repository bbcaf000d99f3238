"""Shared fixtures: a fresh database per test on SQLite and on the real PostgreSQL server.

`make test` starts a throwaway PostgreSQL on a loopback port and sets TEST_DATABASE_URL.
Without a server the PostgreSQL tests fail (never skip).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from db.migrate import create_schema
from db.session import dispose_engines, session_factory

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.exists():  # CI clones may place shared/ beside or inside the repo
    SHARED_DATA = Path(__file__).resolve().parents[1] / "shared" / "data"

PG_URL = os.environ.get("TEST_DATABASE_URL", "")


def pytest_report_header(config):
    return f"postgres: {PG_URL or 'not configured'}; shared data: {SHARED_DATA}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    # The fixtures are part of the test suite's contract (DESIGN.md §9): missing data is a failure.
    if not SHARED_DATA.exists():
        pytest.fail(f"shared test data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA




def _pg_fresh_url() -> str:
    """A fresh PostgreSQL schema for one test (tables created, search_path pinned to it)."""
    if not PG_URL:
        # Every service runs on PostgreSQL too: without a server that is a failure, never a skip.
        pytest.fail("no PostgreSQL: run `make test` (starts one), or set TEST_DATABASE_URL")
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def fresh_url(kind: str, tmp_path: Path, *, create: bool = True) -> str:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / ('t_' + uuid.uuid4().hex[:8] + '.sqlite3')}"
    else:
        url = _pg_fresh_url()
    if create:
        create_schema(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """URL of a fresh, fully created database (SQLite and PostgreSQL)."""
    url = fresh_url(request.param, tmp_path)
    yield url
    dispose_engines()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_db_url(request, tmp_path) -> str:
    """URL of an empty database (for migration tests)."""
    url = fresh_url(request.param, tmp_path, create=False)
    yield url
    dispose_engines()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = fresh_url("sqlite", tmp_path)
    yield url
    dispose_engines()


@pytest.fixture
def session(db_url):
    s = session_factory(db_url)()
    yield s
    s.close()


@pytest.fixture
def sqlite_session(sqlite_url):
    s = session_factory(sqlite_url)()
    yield s
    s.close()


# ------------------------------------------------------------------ rlhf jobs

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A random-weight tiny GPT-2 causal LM + tokenizer, built once per test module (no hub)."""
    from tests import rlhf_helpers as H

    return H.build_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """INSTRUCTLOOP_HOME (run folders) inside the test's temp dir."""
    monkeypatch.setenv("INSTRUCTLOOP_HOME", str(tmp_path / "runs"))
    return tmp_path / "runs"
