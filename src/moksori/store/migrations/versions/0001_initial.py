"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-12-02

Tenants (API keys, hashed), users, conversations, items and per-turn usage.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tenants',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenants'))
    )
    op.create_table('usage',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('user_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('conversation_id', sa.String(length=64), nullable=True),
    sa.Column('item_id', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('llm_model', sa.String(length=128), nullable=True),
    sa.Column('stt_model', sa.String(length=128), nullable=True),
    sa.Column('tts_model', sa.String(length=128), nullable=True),
    sa.Column('input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cached_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('input_audio_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cached_audio_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_audio_tokens', sa.BigInteger(), nullable=False),
    sa.Column('stt_seconds', sa.Double(), nullable=False),
    sa.Column('tts_characters', sa.BigInteger(), nullable=False),
    sa.Column('tts_seconds', sa.Double(), nullable=False),
    sa.Column('cost_usd', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_usage'))
    )
    op.create_index('ix_usage_conversation', 'usage', ['conversation_id'], unique=False)
    op.create_index('ix_usage_tenant_day', 'usage', ['tenant_id', 'day'], unique=False)
    op.create_index('ix_usage_tenant_user_day', 'usage', ['tenant_id', 'user_pk', 'day'], unique=False)

    op.create_table('users',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('last_seen_at', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_users_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_users')),
    sa.UniqueConstraint('tenant_id', 'external_id', name='uq_users_tenant_external')
    )
    op.create_table('conversations',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('user_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('summary', sa.Text(), nullable=True),
    sa.Column('summary_upto', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_conversations_tenant_id_tenants'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_pk'], ['users.pk'], name=op.f('fk_conversations_user_pk_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conversations'))
    )
    op.create_index('ix_conversations_tenant_user_updated', 'conversations', ['tenant_id', 'user_pk', 'updated_at'], unique=False)
    op.create_index('ix_conversations_updated', 'conversations', ['updated_at'], unique=False)

    op.create_table('items',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('conversation_id', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('heard_text', sa.Text(), nullable=True),
    sa.Column('interrupted', sa.Boolean(), nullable=False),
    sa.Column('audio', sa.Boolean(), nullable=False),
    sa.Column('language', sa.String(length=16), nullable=True),
    sa.Column('call_id', sa.String(length=128), nullable=True),
    sa.Column('name', sa.String(length=128), nullable=True),
    sa.Column('arguments', sa.Text(), nullable=True),
    sa.Column('output', sa.Text(), nullable=True),
    sa.Column('response_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('started_at', sa.Double(), nullable=True),
    sa.Column('latency', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], name=op.f('fk_items_conversation_id_conversations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_items')),
    sa.UniqueConstraint('conversation_id', 'id', name='uq_items_conversation_item')
    )
    op.create_index('ix_items_conversation_seq', 'items', ['conversation_id', 'seq'], unique=False)



def downgrade() -> None:
    op.drop_index('ix_items_conversation_seq', table_name='items')

    op.drop_table('items')
    op.drop_index('ix_conversations_updated', table_name='conversations')
    op.drop_index('ix_conversations_tenant_user_updated', table_name='conversations')

    op.drop_table('conversations')
    op.drop_table('users')
    op.drop_index('ix_usage_tenant_user_day', table_name='usage')
    op.drop_index('ix_usage_tenant_day', table_name='usage')
    op.drop_index('ix_usage_conversation', table_name='usage')

    op.drop_table('usage')
    op.drop_table('tenants')
