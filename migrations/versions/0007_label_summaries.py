"""label summaries for the Dashboard and Agreement pages (label_days, label_seconds, agreement_counts), built from
the labels already there; an index on assignments (state, expires_at) for the lease and skip counts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

The backfill is db.services.summary.rebuild, the same code that keeps them at each label write, so an upgraded
database shows the same pages at once (it reads every label once: about a minute at 1M labels).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('label_days',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('first_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_label_days_project_id_projects'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_label_days_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_label_days')),
    sa.UniqueConstraint('project_id', 'user_id', 'kind', 'day', name=op.f('uq_label_days_project_id_user_id_kind_day'))
    )
    with op.batch_alter_table('label_days', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_label_days_user_id'), ['user_id'], unique=False)

    op.create_table('label_seconds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_label_seconds_project_id_projects'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_label_seconds_user_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_label_seconds')),
    sa.UniqueConstraint('project_id', 'user_id', 'kind', 'seconds',
                        name=op.f('uq_label_seconds_project_id_user_id_kind_seconds'))
    )
    with op.batch_alter_table('label_seconds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_label_seconds_user_id'), ['user_id'], unique=False)

    op.create_table('agreement_counts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('what', sa.String(length=10), nullable=False),
    sa.Column('user_a', sa.Integer(), nullable=False),
    sa.Column('user_b', sa.Integer(), nullable=False),
    sa.Column('x', sa.String(length=60), nullable=False),
    sa.Column('y', sa.String(length=20), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_agreement_counts_project_id_projects'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agreement_counts')),
    sa.UniqueConstraint('project_id', 'kind', 'what', 'user_a', 'user_b', 'x', 'y',
                        name=op.f('uq_agreement_counts_project_id_kind_what_user_a_user_b_x_y'))
    )
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.create_index('ix_assignments_state_expires', ['state', 'expires_at'], unique=False)

    from db.services import summary  # here, not at import: alembic loads every revision to walk them

    summary.rebuild(Session(bind=op.get_bind()), counts=False)  # project_counts come with 0008


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.drop_index('ix_assignments_state_expires')
    op.drop_table('agreement_counts')
    with op.batch_alter_table('label_seconds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_label_seconds_user_id'))
    op.drop_table('label_seconds')
    with op.batch_alter_table('label_days', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_label_days_user_id'))
    op.drop_table('label_days')
