"""What a client writes itself through the Conversations API: a new conversation (with its user
and first messages), messages added to one, its metadata replaced, an item deleted.

Live sessions write through the batched writer (`writer.py`), off the audio path; these are a
client's requests, answered once committed, in one transaction each (a dead database is the
caller's 503, not a queue). The rows are the writer's (`writes.start_conversations`,
`writes.message_row`), so a later session of the user loads seeded items (`Store.load_history`)
exactly as it loads recorded ones. Every function takes the tenant: another tenant's
conversation is not found. Nothing here imports the engine.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from moksori.store.models import conversations, items
from moksori.store.records import ConversationStarted
from moksori.store.writes import message_row, start_conversations
from moksori.text.unencodable import encodable_text

__all__ = ["NewMessage", "API_CHANNEL", "new_conversation_id", "new_item_id", "create_conversation", "add_messages",
           "replace_metadata", "delete_item"]

API_CHANNEL = "api"  # the channel of a conversation a client created


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message a client adds. `incomplete`: an assistant reply the user heard only part of
    (`text` is that part), as a recorded interrupted reply."""

    role: Literal["user", "assistant", "system"]
    text: str
    incomplete: bool = False


def new_conversation_id() -> str:
    return f"conv_{secrets.token_hex(12)}"


def new_item_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def _clean(metadata: dict[str, str]) -> dict[str, str]:
    """Metadata every database takes (`text.unencodable`: NULs dropped, lone surrogates replaced)."""
    return {encodable_text(k): encodable_text(v) for k, v in metadata.items()}


async def _owned(conn: AsyncConnection, tenant: str, conversation_id: str) -> bool:
    """The conversation is the tenant's; its row stays locked until the transaction ends
    (PostgreSQL), so a delete cannot slip between this check and the writes after it."""
    q = select(conversations.c.id).where(conversations.c.id == conversation_id, conversations.c.tenant_id == tenant)
    return (await conn.execute(q.with_for_update())).scalar() is not None


async def _insert(conn: AsyncConnection, conversation_id: str, messages: Sequence[NewMessage], at: float) -> list[str]:
    """One statement per row: the rows get their `seq` (the history's order) in the given order."""
    ids = []
    for m in messages:
        item_id = new_item_id()
        await conn.execute(items.insert().values(**message_row(
            conversation_id, item_id, m.role, encodable_text(m.text), at,
            status="incomplete" if m.incomplete else "completed")))
        ids.append(item_id)
    return ids


async def _touch(conn: AsyncConnection, conversation_id: str, at: float) -> None:
    await conn.execute(update(conversations).where(conversations.c.id == conversation_id,
                                                   conversations.c.updated_at < at).values(updated_at=at))


async def create_conversation(conn: AsyncConnection, dialect: str, *, tenant: str, user: str | None,
                              metadata: dict[str, str], messages: Sequence[NewMessage], at: float) -> str:
    """A new conversation of `tenant` (of `user`, created if new), with `messages`; its id."""
    conversation_id = new_conversation_id()
    await start_conversations(conn, dialect, [ConversationStarted(conversation_id, tenant, user, API_CHANNEL, at,
                                                                  _clean(metadata) or None)])
    await _insert(conn, conversation_id, messages, at)
    return conversation_id


async def add_messages(conn: AsyncConnection, *, tenant: str, conversation_id: str,
                       messages: Sequence[NewMessage], at: float) -> list[str] | None:
    """The new items' ids, in order; None if the conversation is not the tenant's."""
    if not await _owned(conn, tenant, conversation_id):
        return None
    ids = await _insert(conn, conversation_id, messages, at)
    await _touch(conn, conversation_id, at)
    return ids


async def replace_metadata(conn: AsyncConnection, *, tenant: str, conversation_id: str, metadata: dict[str, str],
                           at: float) -> bool:
    """The conversation's metadata becomes `metadata` (user and channel are columns, kept)."""
    values: dict[str, Any] = {"metadata": _clean(metadata) or None}
    done = await conn.execute(update(conversations).where(conversations.c.id == conversation_id,
                                                          conversations.c.tenant_id == tenant).values(**values))
    if not done.rowcount:
        return False
    await _touch(conn, conversation_id, at)
    return True


async def delete_item(conn: AsyncConnection, *, tenant: str, conversation_id: str, item_id: str,
                      at: float) -> Literal["deleted", "no_conversation", "no_item"]:
    """Delete one item (any type). Its usage rows stay: it was spent."""
    if not await _owned(conn, tenant, conversation_id):
        return "no_conversation"
    done = await conn.execute(delete(items).where(items.c.conversation_id == conversation_id, items.c.id == item_id))
    if not done.rowcount:
        return "no_item"
    await _touch(conn, conversation_id, at)
    return "deleted"
