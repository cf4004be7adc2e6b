"""The store's tables (SQLAlchemy 2). Migrations in `migrations/versions` create exactly these.

Times are float seconds since the epoch (portable between SQLite and PostgreSQL); `usage.day` is
the UTC date as text so per-day sums are a plain GROUP BY on both.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT autoincrement on PostgreSQL, INTEGER PRIMARY KEY (the rowid) on SQLite
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Tenant(Base):
    """An API key, known only by a hash of it (`tenant_id`); `default` when the server has no keys."""

    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Double)


class User(Base):
    __tablename__ = "users"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[float] = mapped_column(Double)
    last_seen_at: Mapped[float] = mapped_column(Double)
    __table_args__ = (UniqueConstraint("tenant_id", "external_id", name="uq_users_tenant_external"),)


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id", ondelete="CASCADE"))
    user_pk: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.pk", ondelete="CASCADE"), nullable=True)
    channel: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary_upto: Mapped[str | None] = mapped_column(String(64), nullable=True)
    __table_args__ = (
        Index("ix_conversations_tenant_user_updated", "tenant_id", "user_pk", "updated_at"),
        Index("ix_conversations_updated", "updated_at"),
    )


class Item(Base):
    """One conversation item: a user turn, an agent reply, a tool call or a tool result."""

    __tablename__ = "items"
    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(String(64), ForeignKey("conversations.id", ondelete="CASCADE"))
    id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))  # message | function_call | function_call_output | mcp_call
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)  # user | assistant | None
    status: Mapped[str] = mapped_column(String(16), default="completed")
    text: Mapped[str] = mapped_column(Text, default="")
    heard_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    audio: Mapped[bool] = mapped_column(Boolean, default=False)
    language: Mapped[str | None] = mapped_column(String(16), nullable=True)
    call_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    arguments: Mapped[str | None] = mapped_column(Text, nullable=True)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    server_label: Mapped[str | None] = mapped_column(String(64), nullable=True)  # mcp_call: the MCP server
    created_at: Mapped[float] = mapped_column(Double)
    started_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    latency: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the process writing an `in_progress` reply (`Store.owner`): a cluster worker's id, or
    # `<instance>/<boot>` of a single server; once that process is known dead, its replies still
    # in progress are finalized (`orphans.py`) and the owner becomes `~` + owner
    owner: Mapped[str | None] = mapped_column(String(160), nullable=True)
    __table_args__ = (
        UniqueConstraint("conversation_id", "id", name="uq_items_conversation_item"),
        Index("ix_items_conversation_seq", "conversation_id", "seq"),
        Index("ix_items_in_progress", "owner", postgresql_where=sql_text("status = 'in_progress'"),
              sqlite_where=sql_text("status = 'in_progress'")),
    )


class UsageRow(Base):
    """Usage of one turn (or of a summary). Survives erasure and retention with the user and
    conversation links cleared, so per-key totals stay right."""

    __tablename__ = "usage"
    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    user_pk: Mapped[int | None] = mapped_column(BigId, nullable=True)
    conversation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    item_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # user | reply | other
    created_at: Mapped[float] = mapped_column(Double)
    day: Mapped[str] = mapped_column(String(10))  # UTC date, YYYY-MM-DD
    llm_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    stt_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    tts_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    input_audio_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_audio_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_audio_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    stt_seconds: Mapped[float] = mapped_column(Double, default=0.0)
    tts_characters: Mapped[int] = mapped_column(BigInteger, default=0)
    tts_seconds: Mapped[float] = mapped_column(Double, default=0.0)
    cost_usd: Mapped[float] = mapped_column(Double, default=0.0)
    # what makes a record's usage row unique (`writes.usage_key`): a record written twice (a batch
    # retried after a lost commit acknowledgement, a spooled queue replayed) adds it once
    dedup_key: Mapped[str | None] = mapped_column(String(40), nullable=True, unique=True)
    __table_args__ = (
        Index("ix_usage_tenant_day", "tenant_id", "day"),
        Index("ix_usage_tenant_user_day", "tenant_id", "user_pk", "day"),
        Index("ix_usage_conversation", "conversation_id"),
    )


def _table(model: type[Base]) -> Table:
    """The model's Table (SQLAlchemy types `__table__` as the wider FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


tenants = _table(Tenant)
users = _table(User)
conversations = _table(Conversation)
items = _table(Item)
usage = _table(UsageRow)
