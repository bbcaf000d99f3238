"""Alembic from Python: the same revisions `alembic upgrade head` runs, found from the package."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from db.session import get_engine
from db.settings import database_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url or database_url()
    return cfg


def _migration_connection(url: str):
    """A connection for migrations. On SQLite, foreign keys are off while revisions run: a batch migration
    rebuilds a table (copy, drop, rename), and with them on, dropping `tasks` would cascade-delete every label.
    The pragma only takes effect outside a transaction, so it is set before `begin()`."""
    import contextlib

    @contextlib.contextmanager
    def conn_cm():
        engine = get_engine(url)
        with engine.connect() as conn:
            sqlite = engine.dialect.name == "sqlite"
            raw = conn.connection.dbapi_connection if sqlite else None
            if raw is not None:  # on the driver connection: through SQLAlchemy it would run inside BEGIN
                raw.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    yield conn
            finally:
                if raw is not None:
                    raw.execute("PRAGMA foreign_keys=ON")

    return conn_cm()


def _run(action, url: str | None, revision: str) -> str | None:
    """An Alembic command on our migration connection; returns the revision the database is at after it."""
    url = url or database_url()
    cfg = alembic_config(url)
    with _migration_connection(url) as conn:
        cfg.attributes["connection"] = conn
        action(cfg, revision)
    return current_revision(url)


def upgrade(url: str | None = None, revision: str = "head") -> str | None:
    return _run(command.upgrade, url, revision)


def downgrade(url: str | None = None, revision: str = "base") -> str | None:
    return _run(command.downgrade, url, revision)


def create_schema(url: str | None = None) -> str | None:
    """The current schema in one step (metadata.create_all) stamped as head: what tests and benchmarks use
    for a fresh database. Same tables as the revisions (a test checks autogenerate finds no difference)."""
    from db import pg_functions
    from db.models import Base

    url = url or database_url()
    engine = get_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        pg_functions.install(conn)  # what migration 0009 adds beside the tables (PostgreSQL only)
    return _run(command.stamp, url, "head")


def current_revision(url: str | None = None) -> str | None:
    with get_engine(url or database_url()).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def known_revision(rev: str) -> bool:
    """Whether `rev` is one of this code's revisions (else the database is newer than the code)."""
    from alembic.util.exc import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(rev) is not None
    except CommandError:
        return False


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
