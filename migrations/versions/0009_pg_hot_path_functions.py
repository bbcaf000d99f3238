"""PostgreSQL functions for next_task and submit (db/pg_functions.py): one statement per annotator call

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

32 annotators were capped by the client's round trips and CPU (~15 statements per next_task + submit); the
functions run the same transaction inside the server. SQLite: nothing to do (its services run in Python).
"""
from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: str | Sequence[str] | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    from db import pg_functions  # here, not at import: alembic loads every revision to walk them

    pg_functions.install(op.get_bind())


def downgrade() -> None:
    """Downgrade schema."""
    from db import pg_functions

    pg_functions.uninstall(op.get_bind())
