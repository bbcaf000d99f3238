"""PostgreSQL il_next_task: the task's responses read by id (CREATE OR REPLACE of db/pg_functions.py)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

The view's responses were joined against json_array_elements(response_ids), which the generic plan ran as a scan
of every response on each next_task (~3.5 ms at 3,400 responses, growing with the table); `= ANY(ids)` reads
them through the primary key. Same results, so the downgrade leaves the functions as they are.
"""
from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0010'
down_revision: str | Sequence[str] | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    from db import pg_functions  # here, not at import: alembic loads every revision to walk them

    pg_functions.install(op.get_bind())


def downgrade() -> None:
    """Downgrade schema: nothing (the replaced SQL gave the same rows)."""
