"""PostgreSQL functions (CREATE OR REPLACE of db/pg_functions.py): next_task reads responses by id and never
writes a lease over the user's own label or skip; skip_task as one statement (il_skip)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

- The view's responses were joined against json_array_elements(response_ids), which the generic plan ran as a
  scan of every response on each next_task (~3.5 ms at 3,400 responses, growing with the table); `= ANY(ids)`
  reads them through the primary key.
- The lease upsert's DO UPDATE had no state guard: a submit or skip of the same user (another tab) committed
  after the candidate query's snapshot was turned back into a lease (tests/test_pg_functions.py shows it).
- il_skip: skip_task was the one annotator call still ~5 statements with the task row locked across round trips
  (p50 ~250 ms with 32 annotator processes on 2 cores).

The downgrade drops il_skip (skip_task then runs its Python path) and leaves the others as they are: the 0009
SQL is not kept apart, and the old lease race is nothing to go back to.
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
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS il_skip")
