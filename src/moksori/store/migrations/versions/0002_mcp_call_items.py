"""mcp_call items

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

A call of an MCP server's tool is one `mcp_call` item (as the Realtime and Conversations APIs show
it): the item keeps its server's label.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('items', sa.Column('server_label', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('items') as batch:
        batch.drop_column('server_label')
