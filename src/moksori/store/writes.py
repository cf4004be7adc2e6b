"""One batch of records → one transaction. Inserts are idempotent (a batch retried after a lost
commit acknowledgement, or a spooled queue replayed at the next start, changes nothing): conflicts
on natural keys are ignored, and usage rows carry a key made from their record (`usage_key`).

A reply in progress (`ReplyProgress`) is stamped with the writing process (`owner`), so that its
row can be finalized once that process is known dead (`orphans.py`). The reply's own ending
(`AgentReply`) still lands on a row finalized meanwhile by mistake (a worker cut off from Redis
but alive): the finalizer marks such rows `~` + owner, and the owner's own ending wins."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Insert, Table, and_, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from moksori.accounting import TurnUsage
from moksori.store.models import conversations, items, tenants, usage, users
from moksori.store.records import (
    AgentReply,
    ConversationStarted,
    ItemDeleted,
    MCPCallRecord,
    Record,
    ReplyHeard,
    ReplyProgress,
    UserTurnRemoved,
    SummaryUpdated,
    ToolCallRecord,
    ToolResultRecord,
    UsageRecord,
    UserTurn,
)

Pricer = Callable[[TurnUsage], float]


def insert_ignore(dialect: str, table: Table, keys: Sequence[str]) -> Insert:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=list(keys))
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys))


def utc_day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


_ITEM_DEFAULTS: dict[str, Any] = {
    "role": None, "status": "completed", "text": "", "heard_text": None, "interrupted": False, "audio": False,
    "language": None, "call_id": None, "name": None, "arguments": None, "output": None, "response_id": None,
    "server_label": None, "started_at": None, "latency": None, "owner": None,
}

SWEPT = "~"  # owner prefix of a reply in progress that another process finalized (`orphans.py`)


def message_row(conversation_id: str, item_id: str, role: str, text: str, at: float, *,
                status: str = "completed") -> dict[str, Any]:
    """A typed message's row (the Conversations API's items): not audio, no latency; an
    `incomplete` assistant message is an interrupted reply whose text is what was heard."""
    return {**_ITEM_DEFAULTS, "type": "message", "role": role, "text": text, "status": status,
            "interrupted": status == "incomplete", "conversation_id": conversation_id, "id": item_id,
            "created_at": at}


def item_row(rec: Record) -> dict[str, Any] | None:
    row: dict[str, Any]
    if isinstance(rec, UserTurn):
        row = {"type": "message", "role": "user", "text": rec.text, "language": rec.language, "audio": rec.audio,
               "started_at": rec.started_at, "latency": rec.latency}
    elif isinstance(rec, AgentReply):
        status = "completed" if rec.status == "completed" and not rec.interrupted else "incomplete"
        row = {"type": "message", "role": "assistant", "text": rec.text, "heard_text": rec.heard_text,
               "interrupted": rec.interrupted, "status": status, "response_id": rec.response_id,
               "language": rec.language, "audio": rec.audio, "started_at": rec.started_at, "latency": rec.latency}
    elif isinstance(rec, ReplyProgress):
        row = {"type": "message", "role": "assistant", "text": rec.heard_text, "heard_text": rec.heard_text,
               "status": "in_progress", "response_id": rec.response_id, "audio": True}
    elif isinstance(rec, ToolCallRecord):
        row = {"type": "function_call", "call_id": rec.call_id, "name": rec.name, "arguments": rec.arguments,
               "response_id": rec.response_id}
    elif isinstance(rec, ToolResultRecord):
        row = {"type": "function_call_output", "call_id": rec.call_id, "output": rec.output, "name": rec.name}
    elif isinstance(rec, MCPCallRecord):
        row = {"type": "mcp_call", "role": "assistant", "call_id": rec.call_id, "name": rec.name,
               "arguments": rec.arguments, "output": rec.output, "server_label": rec.server_label,
               "status": "completed" if rec.ok else "failed", "response_id": rec.response_id}
    else:
        return None
    return {**_ITEM_DEFAULTS, **row, "conversation_id": rec.conversation_id, "id": rec.item_id, "created_at": rec.at}


def _usage_of(rec: Record) -> tuple[TurnUsage, str, str | None] | None:
    if isinstance(rec, UserTurn) and rec.usage is not None:
        return rec.usage, "user", rec.item_id
    if isinstance(rec, AgentReply) and rec.usage is not None:
        return rec.usage, "reply", rec.item_id
    if isinstance(rec, UsageRecord):
        return rec.usage, rec.kind[:16], rec.item_id
    return None


def usage_key(rec: Record, kind: str, item_id: str | None) -> str:
    """What makes a record's usage row unique: its item (one usage row per turn and kind), else
    the record itself (its conversation, kind and time)."""
    ident = f"{rec.conversation_id}\x00{kind}\x00{item_id}"
    if isinstance(rec, UsageRecord):
        ident += f"\x00{rec.at!r}"
    return hashlib.sha1(ident.encode("utf-8")).hexdigest()


async def write_batch(engine: AsyncEngine, records: Sequence[Record], *, pricer: Pricer | None = None,
                      owner: str | None = None) -> None:
    """`owner`: this process (`Store.owner`), stamped on the replies it has in progress."""
    dialect = engine.dialect.name
    async with engine.begin() as conn:
        await _write(conn, dialect, records, pricer, owner)


def _row_of(rec: Record, owner: str | None) -> dict[str, Any] | None:
    row = item_row(rec)
    if row is not None and isinstance(rec, ReplyProgress):
        row["owner"] = owner
    return row


async def _write(conn: AsyncConnection, dialect: str, records: Sequence[Record], pricer: Pricer | None,
                 owner: str | None = None) -> None:
    starts = [r for r in records if isinstance(r, ConversationStarted)]
    if starts:
        await start_conversations(conn, dialect, starts)

    rows = [row for row in (_row_of(r, owner) for r in records) if row is not None]
    if rows:
        await conn.execute(insert_ignore(dialect, items, ("conversation_id", "id")), rows)

    for rec in records:
        # a reply still in progress in the database: its next progress, or the reply as it ended
        # (which also lands on the row if another process finalized it while this one lived)
        if isinstance(rec, ReplyProgress) or (isinstance(rec, AgentReply) and rec.replaces_progress):
            row = _row_of(rec, owner)
            assert row is not None
            changes = {k: v for k, v in row.items() if k not in ("conversation_id", "id")}
            live = items.c.status == "in_progress"
            if isinstance(rec, AgentReply) and owner is not None:
                live = or_(live, items.c.owner == SWEPT + owner)
            await conn.execute(update(items).where(items.c.conversation_id == rec.conversation_id,
                                                   items.c.id == rec.item_id, live)
                               .values(**changes))
        if isinstance(rec, ReplyHeard):
            await conn.execute(update(items).where(items.c.conversation_id == rec.conversation_id,
                                                   items.c.id == rec.item_id)
                               .values(heard_text=rec.heard_text, interrupted=True, status="incomplete"))
        elif isinstance(rec, UserTurnRemoved):
            await conn.execute(update(items).where(items.c.conversation_id == rec.conversation_id,
                                                   items.c.id == rec.item_id).values(text=rec.text))
        elif isinstance(rec, ItemDeleted):  # after its insert, in this batch or an earlier one
            await conn.execute(delete(items).where(items.c.conversation_id == rec.conversation_id,
                                                   items.c.id == rec.item_id))
        elif isinstance(rec, SummaryUpdated):
            await conn.execute(update(conversations).where(conversations.c.id == rec.conversation_id)
                               .values(summary=rec.summary, summary_upto=rec.upto_item_id))

    used = [(r, found) for r in records if (found := _usage_of(r)) is not None]
    if used:
        conv_ids = sorted({r.conversation_id for r, _ in used})
        owners = {row.id: (row.tenant_id, row.user_pk) for row in (await conn.execute(
            select(conversations.c.id, conversations.c.tenant_id, conversations.c.user_pk)
            .where(conversations.c.id.in_(conv_ids)))).all()}
        usage_rows = []
        for rec, (u, kind, item_id) in used:
            conv_owner = owners.get(rec.conversation_id)
            if conv_owner is None:
                continue  # the conversation is gone (deleted or erased meanwhile)
            usage_rows.append({
                "tenant_id": conv_owner[0], "user_pk": conv_owner[1], "conversation_id": rec.conversation_id,
                "item_id": item_id, "kind": kind, "created_at": rec.at, "day": utc_day(rec.at),
                "llm_model": u.llm_model, "stt_model": u.stt_model, "tts_model": u.tts_model,
                "input_tokens": u.input_tokens, "cached_tokens": u.cached_tokens, "output_tokens": u.output_tokens,
                "input_audio_tokens": u.input_audio_tokens, "cached_audio_tokens": u.cached_audio_tokens,
                "output_audio_tokens": u.output_audio_tokens, "stt_seconds": float(u.stt_seconds),
                "tts_characters": u.tts_characters, "tts_seconds": float(u.tts_seconds),
                "cost_usd": float(pricer(u)) if pricer is not None else 0.0,
                "dedup_key": usage_key(rec, kind, item_id),
            })
        if usage_rows:
            await conn.execute(insert_ignore(dialect, usage, ("dedup_key",)), usage_rows)

    touched: dict[str, float] = {}
    for rec in records:
        if not isinstance(rec, ConversationStarted):
            touched[rec.conversation_id] = max(touched.get(rec.conversation_id, 0.0), rec.at)
    if touched:  # one executemany, not one round trip per conversation
        await conn.execute(update(conversations).where(conversations.c.id == bindparam("b_id"),
                                                       conversations.c.updated_at < bindparam("b_at"))
                           .values(updated_at=bindparam("b_at")),
                           [{"b_id": c, "b_at": at} for c, at in sorted(touched.items())])


async def start_conversations(conn: AsyncConnection, dialect: str, starts: list[ConversationStarted]) -> None:
    """The conversations, their tenants and users (created as needed; a user's `last_seen_at`
    moves to the newest start). Idempotent."""
    tenant_rows: dict[str, dict[str, Any]] = {r.tenant: {"id": r.tenant, "created_at": r.at} for r in starts}
    await conn.execute(insert_ignore(dialect, tenants, ("id",)), sorted(tenant_rows.values(), key=lambda r: r["id"]))
    seen: dict[tuple[str, str], float] = {}
    for r in starts:
        if r.user:
            key = (r.tenant, r.user)
            seen[key] = max(seen.get(key, 0.0), r.at)
    pks: dict[tuple[str, str], int] = {}
    if seen:
        keys = sorted(seen)
        await conn.execute(insert_ignore(dialect, users, ("tenant_id", "external_id")),
                           [{"tenant_id": t, "external_id": u, "created_at": seen[(t, u)],
                             "last_seen_at": seen[(t, u)]} for t, u in keys])
        cond = or_(*[and_(users.c.tenant_id == t, users.c.external_id == u) for t, u in keys])
        for row in (await conn.execute(select(users.c.pk, users.c.tenant_id, users.c.external_id).where(cond))).all():
            pks[(row.tenant_id, row.external_id)] = row.pk
        await conn.execute(update(users).where(users.c.pk == bindparam("b_pk"), users.c.last_seen_at < bindparam("b_at"))
                           .values(last_seen_at=bindparam("b_at")),
                           [{"b_pk": pks[key], "b_at": at} for key, at in sorted(seen.items())])
    await conn.execute(insert_ignore(dialect, conversations, ("id",)), [
        {"id": r.conversation_id, "tenant_id": r.tenant, "user_pk": pks.get((r.tenant, r.user)) if r.user else None,
         "channel": r.channel[:32], "created_at": r.at, "updated_at": r.at, "metadata": r.metadata,
         "summary": None, "summary_upto": None}
        for r in starts])
