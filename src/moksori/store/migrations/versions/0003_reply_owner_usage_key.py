"""the writer of a reply in progress; idempotent usage rows

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

`items.owner`: the process writing an `in_progress` reply, so that another one can finalize it
once that process is known dead (a partial index finds those replies). `usage.dedup_key`: a
record written twice (a retried batch, a spooled queue replayed) adds its usage once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('items', sa.Column('owner', sa.String(length=160), nullable=True))
    op.create_index('ix_items_in_progress', 'items', ['owner'], unique=False,
                    postgresql_where=sa.text("status = 'in_progress'"), sqlite_where=sa.text("status = 'in_progress'"))
    with op.batch_alter_table('usage') as batch:
        batch.add_column(sa.Column('dedup_key', sa.String(length=40), nullable=True))
        batch.create_unique_constraint('uq_usage_dedup_key', ['dedup_key'])


def downgrade() -> None:
    with op.batch_alter_table('usage') as batch:
        batch.drop_constraint('uq_usage_dedup_key', type_='unique')
        batch.drop_column('dedup_key')
    op.drop_index('ix_items_in_progress', table_name='items')
    with op.batch_alter_table('items') as batch:
        batch.drop_column('owner')
