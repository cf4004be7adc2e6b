"""What the engine side hands the store's writer: small typed records, one per thing that happened.

Every record is final when it is submitted (an agent reply is recorded when it ends, completed or
interrupted), so the writer only ever inserts, apart from `ReplyHeard` (a client told us later how
much of a reply was heard), `ReplyProgress` (a reply still playing; its `AgentReply` replaces it),
`UserTurnRemoved` (the input guardrail blocked a turn) and `SummaryUpdated`. Times are wall-clock seconds since the epoch
(`time.time()`), not the session clock. Records name their conversation; `ConversationStarted`
must come first for a conversation (the writer keeps submission order).

Nothing here imports the engine: callers map their events onto these records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from moksori.accounting import TurnUsage
from moksori.text.unencodable import encodable_text

__all__ = [
    "ConversationStarted", "UserTurn", "AgentReply", "ToolCallRecord", "ToolResultRecord", "MCPCallRecord",
    "ReplyHeard", "ReplyProgress", "UserTurnRemoved", "ItemDeleted",
    "UsageRecord", "SummaryUpdated", "Record", "storable",
]


@dataclass(frozen=True, slots=True)
class ConversationStarted:
    """A new conversation of `tenant` (see `tenant_id`), for `user` (None: anonymous).

    `user` is the caller-facing user id (`?user=`, `X-Moksori-User`, `--user`); phone numbers
    must already be hashed (`Store.phone_user_id`). `channel` says where it came from:
    realtime | voice-live | browser | phone | cli | text."""

    conversation_id: str
    tenant: str
    user: str | None
    channel: str
    at: float
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class UserTurn:
    """What the user said (final transcript) or typed."""

    conversation_id: str
    item_id: str
    text: str
    at: float  # when the turn ended (final transcript)
    language: str | None = None
    started_at: float | None = None  # when the user started speaking
    audio: bool = True  # spoken (transcript) or typed
    latency: dict[str, float] | None = None  # stage -> ms, e.g. {"stt_ms": 310}
    usage: TurnUsage | None = None  # e.g. the STT seconds of this turn


@dataclass(frozen=True, slots=True)
class AgentReply:
    """A finished reply. `text` is everything generated; `heard_text` what was actually played
    to the user (None: all of it). An interrupted reply has `interrupted=True`."""

    conversation_id: str
    item_id: str
    text: str
    at: float  # when the reply ended
    heard_text: str | None = None
    interrupted: bool = False
    status: str = "completed"  # completed | incomplete | cancelled | failed
    response_id: str | None = None
    language: str | None = None
    started_at: float | None = None  # when the reply started (first audio or text)
    audio: bool = True
    latency: dict[str, float] | None = None  # stage -> ms, e.g. {"llm_first_token_ms": 210, ...}
    usage: TurnUsage | None = None  # LLM tokens, TTS characters/seconds of this reply
    replaces_progress: bool = False  # `ReplyProgress` records of this reply were submitted


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    conversation_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str  # JSON text as the model wrote it
    at: float
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolResultRecord:
    conversation_id: str
    item_id: str
    call_id: str
    output: str
    at: float
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyProgress:
    """A reply still playing: what was heard of it so far (written every second or so, so that a
    session the user reopens elsewhere before this one notices they left already has it). The
    reply's own `AgentReply` replaces it when it ends."""

    conversation_id: str
    item_id: str
    heard_text: str
    at: float
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class MCPCallRecord:
    """A call of an MCP server's tool and its result, one `mcp_call` item (`ok` False: `output`
    says why it failed)."""

    conversation_id: str
    item_id: str
    call_id: str
    server_label: str
    name: str
    arguments: str
    output: str
    at: float
    ok: bool = True
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyHeard:
    """A reply already recorded turned out to be heard only in part (late truncation)."""

    conversation_id: str
    item_id: str
    heard_text: str
    at: float


@dataclass(frozen=True, slots=True)
class UserTurnRemoved:
    """The input guardrail blocked a user turn already recorded: its text becomes `text` (the
    history's placeholder), so the blocked words are not kept."""

    conversation_id: str
    item_id: str
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class ItemDeleted:
    """A client deleted an item from the conversation (Realtime `conversation.item.delete`): it
    goes from the store too, so a later session's history never brings it back. Its usage stays
    (it was spent)."""

    conversation_id: str
    item_id: str
    at: float


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Usage not tied to a stored item (e.g. a summary written by the LLM)."""

    conversation_id: str
    usage: TurnUsage
    at: float
    item_id: str | None = None
    kind: str = "other"


@dataclass(frozen=True, slots=True)
class SummaryUpdated:
    """The running summary of a conversation now covers everything up to `upto_item_id`."""

    conversation_id: str
    summary: str
    upto_item_id: str | None
    at: float
    extra: dict[str, Any] = field(default_factory=dict)


Record = (ConversationStarted | UserTurn | AgentReply | ToolCallRecord | ToolResultRecord | MCPCallRecord | ReplyHeard
          | ReplyProgress | UserTurnRemoved | ItemDeleted | UsageRecord | SummaryUpdated)


def storable(record: Record) -> Record:
    """`record` with text every database and the spool can hold (`text.unencodable`): NULs
    dropped, lone surrogates replaced by U+FFFD. The record itself when its text is clean, as it
    nearly always is."""
    changes = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        clean = _clean(value)
        if clean is not value:
            changes[f.name] = clean
    return dataclasses.replace(record, **changes) if changes else record


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return encodable_text(value)
    if isinstance(value, dict):
        cleaned = {_clean(k): _clean(v) for k, v in value.items()}
        return value if cleaned == value else cleaned
    if isinstance(value, (list, tuple)):
        items = type(value)(_clean(v) for v in value)
        return value if items == value else items
    return value
