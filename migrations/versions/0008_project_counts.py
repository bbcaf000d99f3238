"""project counts for the Dashboard (tasks by kind and status, prompts, skips), counted from the tables

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

Counting a project's tasks and prompts read all of them (1M rows each on PostgreSQL, twice per Dashboard view);
counting its skips read every assignment on SQLite.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('project_counts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_project_counts_project_id_projects'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_project_counts')),
    sa.UniqueConstraint('project_id', 'kind', 'status', name=op.f('uq_project_counts_project_id_kind_status'))
    )
    from db.services import summary  # here, not at import: alembic loads every revision to walk them

    summary.rebuild(Session(bind=op.get_bind()), labels=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('project_counts')
