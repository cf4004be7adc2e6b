"""Conversation history and usage: SQLite by default, PostgreSQL by URL (`MOKSORI_STORE_URL`).

The engine never imports this package. Phase-2 wiring maps a session's events onto the typed
records of `moksori.store.records` and hands them to `Store.submit` (batched, off the audio
loop), and loads `Store.load_history` into a session's memory when it starts. What a client
writes itself through the Conversations API (a conversation, messages) is `edits.py`: one
transaction each, answered once committed.
"""

from moksori.store.edits import API_CHANNEL, NewMessage
from moksori.store.identity import DEFAULT_TENANT, phone_user_id, tenant_id, valid_user_id
from moksori.store.records import (
    AgentReply,
    ConversationStarted,
    ItemDeleted,
    MCPCallRecord,
    Record,
    ReplyHeard,
    ReplyProgress,
    SummaryUpdated,
    ToolCallRecord,
    ToolResultRecord,
    UsageRecord,
    UserTurn,
    UserTurnRemoved,
)
from moksori.store.store import ConversationInfo, History, Store, StoredItem, UnknownCursor, UsageBucket
from moksori.store.writer import StoreWriter, WriterStats

__all__ = [
    "Store", "StoreWriter", "WriterStats", "History", "StoredItem", "ConversationInfo", "UsageBucket",
    "UnknownCursor",
    "ConversationStarted", "UserTurn", "AgentReply", "ToolCallRecord", "ToolResultRecord", "MCPCallRecord",
    "ReplyHeard", "ReplyProgress", "UserTurnRemoved", "ItemDeleted", "UsageRecord", "SummaryUpdated", "Record", "tenant_id",
    "phone_user_id", "valid_user_id", "DEFAULT_TENANT", "NewMessage", "API_CHANNEL",
]
