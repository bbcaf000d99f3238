"""Alembic environment: the URL comes from the same settings as `db/`."""
from __future__ import annotations

from alembic import context

from db.models import Base
from db.session import get_engine
from db.settings import database_url

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # An explicit URL (tests, `python -m db upgrade --url`) wins over DATABASE_URL.
    return config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or database_url()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        with get_engine(_url()).connect() as connection:
            _run(connection)
    else:
        _run(connection)


def _run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
