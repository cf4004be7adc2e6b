"""Typed events of the upstream client: what the speech-to-speech model did, in the client's terms.

Every event is a frozen dataclass with `t` (the client's clock, seconds; `loop.time()` unless a
clock is injected) and `conn` (1 for the first connection, +1 after each reconnect).

Item ids are the upstream's (they survive a reconnect: re-seeded items keep their ids).
`previous_item_id` is the item the event's item follows *in the conversation*, taken from the
client's ordered view when the event is emitted, so a user transcript that arrives after the
agent's reply started still says where it belongs (before that reply).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from moksori.accounting import TurnUsage
from moksori.audio.frames import Frame

__all__ = [
    "UpstreamEvent", "SessionReady", "ItemAdded", "SpeechStarted", "SpeechStopped", "InputCommitted",
    "UserTranscriptDelta", "UserTranscript", "ResponseStarted", "AudioDelta", "AssistantTranscriptDelta",
    "AssistantTranscript", "FunctionCall", "ResponseDone", "ItemTruncated", "TruncateRejected", "UpstreamError",
    "UpstreamDropped", "Reconnecting", "Reconnected", "UpstreamFailed", "ItemRetrieved", "ResponseAbandoned",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamEvent:
    t: float
    conn: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionReady(UpstreamEvent):
    """The session is configured (`session.updated` to our `session.update`). `reconnected` is
    False for the first connection."""

    session: dict[str, Any]
    reconnected: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemAdded(UpstreamEvent):
    """An item entered the upstream conversation (`conversation.item.added`/`created`)."""

    item_id: str
    role: str | None  # user | assistant | system; None for function calls and outputs
    kind: str  # message | function_call | function_call_output
    previous_item_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStarted(UpstreamEvent):
    """Upstream VAD heard speech start, `audio_start_ms` into this connection's input audio."""

    item_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStopped(UpstreamEvent):
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class InputCommitted(UpstreamEvent):
    """The input buffer became user item `item_id` (by upstream VAD or our `commit()`)."""

    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class UserTranscriptDelta(UpstreamEvent):
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UserTranscript(UpstreamEvent):
    """The upstream's transcription of a user item (final). `failed`: transcription failed
    (`text` is then empty, `error` says why and `code` is the upstream's error code, if it gave
    one). `usage` is the wire object as sent, if any."""

    item_id: str
    previous_item_id: str | None
    text: str
    failed: bool = False
    error: str | None = None
    code: str | None = None
    usage: dict[str, Any] | None = None
    content_index: int = 0  # the audio part of the item (a client's item may have several)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseStarted(UpstreamEvent):
    response_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioDelta(UpstreamEvent):
    """Reply audio as PCM16 at the session's output rate (G.711 is decoded to 8 kHz PCM16).
    `item_audio_ms`: audio of this item received so far, this delta included."""

    response_id: str
    item_id: str
    frame: Frame
    item_audio_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantTranscriptDelta(UpstreamEvent):
    response_id: str
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantTranscript(UpstreamEvent):
    """The whole text of an assistant message item (audio transcript or text output)."""

    response_id: str
    item_id: str
    previous_item_id: str | None
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCall(UpstreamEvent):
    """The model called a tool. Answer with `add_function_output(call_id, output)` and then
    `create_response()`."""

    response_id: str
    item_id: str
    previous_item_id: str | None
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseDone(UpstreamEvent):
    """A response ended. `status`: completed | cancelled | incomplete | failed. `synthetic`:
    the upstream never said so; the connection was lost mid-response (`reason="upstream_lost"`).
    `status="incomplete", reason="text_limit"`: the client ended it itself, as it sent more text
    than `protocol.MAX_RESPONSE_TEXT_CHARS` (it was cancelled upstream; no usage).
    `usage` is the upstream's count (text, audio and cached tokens) for pricing, or None."""

    response_id: str
    status: str
    reason: str | None
    item_ids: tuple[str, ...]
    usage: TurnUsage | None
    synthetic: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseAbandoned(UpstreamEvent):
    """The client stopped asking for a reply the upstream keeps failing to give: it was asked for
    again after a drop `protocol.MAX_RESUMES` times, and that was cut or never answered too.
    Emitted at the drop, before `UpstreamDropped`; the next connection asks for nothing.
    `cut`: a response of it was in progress (it already ended: `ResponseDone(synthetic=True)`).
    `asked`: a `response.create` of ours was never started (the reply waiting for it fails)."""

    cut: bool
    asked: bool
    resumes: int
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemTruncated(UpstreamEvent):
    """The upstream confirmed a truncation (`audio_end_ms` is what was sent, after clamping)."""

    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TruncateRejected(UpstreamEvent):
    """The upstream refused a truncate anyway. Nothing depends on it: the session goes on, and
    the client keeps `audio_end_ms` as what was heard for its own history and re-seeding."""

    item_id: str
    audio_end_ms: int
    code: str | None
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamError(UpstreamEvent):
    """An `error` event that is not about a truncate. `client_event`: the type of our event it
    answers, when the upstream echoed its id."""

    code: str | None
    message: str
    param: str | None = None
    client_event: str | None = None
    item_id: str | None = None  # the item a refused `conversation.item.create` was to add


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamDropped(UpstreamEvent):
    """The connection ended. `reason`: closed | error | connect_failed | first_event_timeout |
    response_timeout | idle_timeout | keepalive_timeout | time_limit | rotation (planned, at a quiet
    moment). `in_response`: a reply was being generated. `age_s`: how long the connection lived."""

    reason: str
    detail: str
    age_s: float
    in_response: bool
    planned: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnecting(UpstreamEvent):
    attempt: int
    delay_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnected(UpstreamEvent):
    """A new connection is configured and re-seeded. `gap_s`: from the drop to now.
    `reseeded`: items replayed (text, or audio for an unanswered user turn); `replayed_audio_ms`:
    input audio sent again (speech in progress at the drop, and audio sent while down);
    `resumed`: a response was asked for to answer what the drop interrupted."""

    attempt: int
    gap_s: float
    reseeded: int
    reseeded_chars: int
    replayed_audio_ms: int
    resumed: bool
    reseed_errors: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamFailed(UpstreamEvent):
    """Gave up (a permanent error such as a rejected key, or too many failed tries). Last event."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemRetrieved(UpstreamEvent):
    item: dict[str, Any]


Kind = Literal["message", "function_call", "function_call_output"]
