"""The catalogue of everything a session publishes: one frozen dataclass per event.

Every event has `t`, seconds on the session clock. Readers `match` on the classes:

    match ev:
        case UserSpeechStarted(item_id=item_id): ...
        case AgentAudio(response_id=rid, frame=frame): ...

Timeline events (turns, transcripts, the response lifecycle, stage timings, errors) are what
`/metrics`, the web UI's latency bars, `converse --timeline` and the benchmarks read. Stream
events (`timeline = False`: audio chunks, text deltas, partial transcripts) travel the same bus
but are not written to timelines.

`to_json()` is the public wire shape (`converse --timeline`, the Realtime `moksori.event`
messages, the telephony debug timeline): `{"type", "t", <fields in declaration order>}`. It is
pinned byte for byte by `tests/test_event_catalogue.py`: add fields at the end of a class, never
rename or reorder them. Field options: `optional()` leaves a field out of the JSON while it
holds its default; `_wire("name")` renames it on the wire; the audio `frame` is never written.

The table in docs/ARCHITECTURE.md lists every event with its publisher and readers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, dataclass_transform

from moksori.accounting import TurnUsage
from moksori.audio.frames import Frame
from moksori.providers.base import ToolCall, Usage

_T = TypeVar("_T")


def optional(*, default: Any = None) -> Any:
    """A field left out of the JSON while it holds `default` (payloads that vary by source)."""
    return field(default=default, metadata={"omit_if": default})


def _wire(name: str) -> Any:
    """A field with another name on the wire (`from` is a Python keyword)."""
    return field(metadata={"wire": name})


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(field, optional, _wire))
def _event(cls: type[_T]) -> type[_T]:
    """Every event is a frozen, slotted dataclass with keyword-only fields."""
    return dataclass(frozen=True, slots=True, kw_only=True)(cls)


@_event
class Event:
    """Base of every engine event. `type` is the wire name; `t` is session time in seconds."""

    type: ClassVar[str] = ""
    timeline: ClassVar[bool] = True
    t: float

    @property
    def is_timeline(self) -> bool:
        return self.timeline

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "t": round(self.t, 4)}
        for name, wire, omit, omit_if in _wire_fields(type(self)):
            value = getattr(self, name)
            if omit and value == omit_if:
                continue
            out[wire] = _plain(value)
        return out


_FIELDS: dict[type[Event], tuple[tuple[str, str, bool, Any], ...]] = {}


def _wire_fields(cls: type[Event]) -> tuple[tuple[str, str, bool, Any], ...]:
    """(name, wire name, may be omitted, omitted when equal to) per field, in order."""
    out = _FIELDS.get(cls)
    if out is None:
        out = _FIELDS[cls] = tuple(
            (f.name, f.metadata.get("wire", f.name), "omit_if" in f.metadata, f.metadata.get("omit_if"))
            for f in dataclasses.fields(cls) if f.name not in ("t", "frame"))
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    return v


# ====================================================================== session


@_event
class SessionStarted(Event):
    type = "session.started"
    session_id: str
    stack: Mapping[str, str]  # provider kind -> provider name


@_event
class SessionState(Event):
    """idle | user_speaking | user_paused | thinking | speaking."""

    type = "session.state"
    state: str
    previous: str


@_event
class SessionClosed(Event):
    type = "session.closed"


@_event
class ErrorEvent(Event):
    """A failure that cost one turn or one reply; the session goes on."""

    type = "error"
    code: str
    message: str
    retryable: bool
    turn_id: int | None = optional(default=None)  # a failed speculation (STT, end-of-turn model)
    response_id: str | None = optional(default=None)  # a failed reply (LLM, TTS)


# ====================================================================== the user's turn


@_event
class UserSpeechStarted(Event):
    """Speech confirmed (t = the first voiced frame). May be followed by a barge-in."""

    type = "user.speech_started"
    turn_id: int
    item_id: str


@_event
class UserSpeechStopped(Event):
    """Published when the turn ends; t = the end of the last voiced frame."""

    type = "user.speech_stopped"
    turn_id: int
    item_id: str


@_event
class UserTurnEnded(Event):
    """reason: model | text | max_pause | silence | max_length | commit | idle_timeout."""

    type = "user.turn_ended"
    turn_id: int
    item_id: str
    reason: str
    silence_ms: int | None = optional(default=None)  # not for a manual commit


@_event
class UserNoise(Event):
    """A blip too short to be speech (a click, a cough while the agent talks)."""

    type = "user.noise"
    onset: float


@_event
class UserTranscript(Event):
    """The final words of a user item: from speech (`turn_id`, `audio_s`) or typed (`typed`)."""

    type = "user.transcript"
    turn_id: int | None = optional(default=None)
    item_id: str
    text: str
    language: str
    final: bool = True
    audio_s: float | None = optional(default=None)
    typed: bool = optional(default=False)


@_event
class UserTranscriptDelta(Event):
    """A live partial transcript while the user speaks: the whole hypothesis so far."""

    type = "user.transcript_delta"
    timeline = False
    turn_id: int
    item_id: str | None
    text: str
    language: str
    final: bool = False


@_event
class UserCommitted(Event):
    """The user item is in memory, after `previous_item_id`."""

    type = "user.committed"
    turn_id: int
    item_id: str
    previous_item_id: str | None


@_event
class UserIdleTimeout(Event):
    """`idle_timeout_ms` passed after the agent's audio ended with no user speech since
    `idle_since`; an empty user turn follows (`user.turn_ended`, reason idle_timeout)."""

    type = "user.idle_timeout"
    turn_id: int
    item_id: str
    idle_since: float


# ====================================================================== stage timings


@_event
class SttStarted(Event):
    type = "stt.started"
    turn_id: int
    item_id: str
    audio_s: float


@_event
class SttFinished(Event):
    type = "stt.finished"
    turn_id: int
    item_id: str
    text: str
    language: str


@_event
class EotFinished(Event):
    """The end-of-turn model's verdict on a pause (semantic mode)."""

    type = "eot.finished"
    turn_id: int
    item_id: str
    probability: float
    text_cue: str


@_event
class LlmStarted(Event):
    type = "llm.started"
    response_id: str
    item_id: str
    messages: int


@_event
class LlmFirstToken(Event):
    type = "llm.first_token"
    response_id: str
    item_id: str


@_event
class LlmFinished(Event):
    type = "llm.finished"
    response_id: str
    item_id: str
    input_tokens: int
    output_tokens: int


@_event
class TtsStarted(Event):
    """The first clause went to TTS."""

    type = "tts.started"
    response_id: str
    item_id: str
    text: str


@_event
class TtsFirstAudio(Event):
    type = "tts.first_audio"
    response_id: str
    item_id: str
    samples: int


# ====================================================================== the agent's reply


@_event
class AgentResponseStarted(Event):
    type = "agent.response_started"
    response_id: str
    item_id: str
    turn_id: int | None  # None: asked for by the client, not by a user turn
    modalities: tuple[str, ...]


@_event
class AgentTextDelta(Event):
    type = "agent.text_delta"
    timeline = False
    response_id: str
    item_id: str
    delta: str


@_event
class AgentAudio(Event):
    """One paced chunk of reply audio, `offset` samples into the reply, heard at `play_at`."""

    type = "agent.audio"
    timeline = False
    response_id: str
    item_id: str
    frame: Frame
    offset: int
    play_at: float


@_event
class AgentAudioStarted(Event):
    type = "agent.audio_started"
    response_id: str
    item_id: str


@_event
class AgentAudioDone(Event):
    type = "agent.audio_done"
    response_id: str
    item_id: str
    samples: int


@_event
class AgentAudioCleared(Event):
    """Step 1 of an interruption: transports drop the reply audio still queued at the client."""

    type = "agent.audio_cleared"
    response_ids: tuple[str, ...]


@_event
class AgentInterrupted(Event):
    """Step 2: what the listener heard of a cut reply. `onset` and `reaction_ms` are set when
    user speech caused it (a barge-in), None for a client cancel or a stale reply dropped."""

    type = "agent.interrupted"
    response_id: str
    item_id: str
    reason: str  # turn_detected | client_cancelled
    heard_ms: int
    text: str
    onset: float | None
    reaction_ms: int | None


@_event
class AgentReoffer(Event):
    """The interruption was a noise with no words: the unheard rest is said again."""

    type = "agent.reoffer"
    turn_id: int
    text: str


@_event
class AgentResponseDone(Event):
    """The end of every reply (step 3 of an interruption: status cancelled, interrupted).
    `text` is what the listener heard; `generated_text` everything the LLM wrote."""

    type = "agent.response_done"
    response_id: str
    item_id: str
    turn_id: int | None
    text: str
    generated_text: str
    interrupted: bool
    status: str  # completed | cancelled | failed
    reason: str | None
    language: str
    function_calls: tuple[ToolCall, ...]
    usage: Usage
    modalities: tuple[str, ...]
    in_conversation: bool
    # a speech-to-speech upstream's own count (text, audio and cached tokens, its model): set
    # when the realtime brain answered; `usage` then holds its text tokens
    upstream_usage: TurnUsage | None = optional(default=None)


@_event
class AgentFunctionCall(Event):
    """A call of a client tool: the reply ends and the client runs it."""

    type = "agent.function_call"
    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str
    call_item_id: str


@_event
class AgentToolCall(Event):
    """A server-side tool is about to run."""

    type = "agent.tool_call"
    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str
    # an MCP tool's call (`Tool.mcp_server`): the id of its `mcp_call` item, and the server
    mcp_item_id: str | None = optional(default=None)
    server_label: str | None = optional(default=None)


@_event
class AgentToolResult(Event):
    type = "agent.tool_result"
    response_id: str
    item_id: str
    call_id: str
    name: str
    output: str
    ok: bool = optional(default=True)  # False: the tool failed, timed out or was unavailable
    error_kind: str | None = optional(default=None)  # timeout | unavailable | failed | bad_arguments | ...


@_event
class AgentToolFiller(Event):
    """A server-side tool is slow: the agent says a short filler while it runs."""

    type = "agent.tool_filler"
    response_id: str
    call_id: str
    name: str
    text: str


@_event
class AgentBackchannel(Event):
    """A short acknowledgment ("mm-hmm", "네") in a mid-thought pause of the user: played as an
    out-of-band reply (`response_id`) that never ends the turn and never enters the history."""

    type = "agent.backchannel"
    turn_id: int
    response_id: str
    text: str
    language: str


@_event
class GuardrailTripped(Event):
    """An input or output guardrail blocked or rewrote text (`moksori.guardrails`). `reason`
    says what kind of rule matched, never the matched text."""

    type = "guardrail.tripped"
    stage: str  # input | output
    action: str  # block | rewrite
    policy: str  # terms | patterns | mask | pii | moderation
    reason: str
    language: str
    categories: tuple[str, ...] = ()
    turn_id: int | None = optional(default=None)
    response_id: str | None = optional(default=None)


@_event
class GuardrailInputRemoved(Event):
    """A user turn the input guardrail blocked is removed from the conversation: the items'
    text is now `memory.BLOCKED_TEXT`, so no later turn sends it to the LLM, and the store's
    copy is replaced too."""

    type = "guardrail.input_removed"
    item_ids: tuple[str, ...]
    turn_id: int | None = optional(default=None)
    response_id: str | None = optional(default=None)


@_event
class SessionWarning(Event):
    """Something the session was asked for is not available (e.g. noise reduction): it goes on
    without it. Realtime clients get it as a `warning` event."""

    type = "session.warning"
    code: str
    message: str


@_event
class SessionNoiseReduction(Event):
    """Noise suppression is now applied to (or removed from) the input audio."""

    type = "session.noise_reduction"
    mode: str  # off | near_field | far_field
    model: str | None = optional(default=None)
    delay_ms: float | None = optional(default=None)


# ====================================================================== the realtime brain's upstream


@_event
class BrainUpstreamReady(Event):
    """The speech-to-speech upstream is connected and configured (first connection)."""

    type = "brain.upstream_ready"
    model: str | None
    flavor: str
    turn_detection: str  # server_vad | semantic_vad | manual (Moksori commits)


@_event
class BrainUpstreamDropped(Event):
    """The upstream connection ended (a drop, a timeout, its time limit, or a planned rotation).
    `in_response`: a reply was being generated. A reconnect follows unless it gave up."""

    type = "brain.upstream_dropped"
    reason: str
    detail: str
    age_s: float
    in_response: bool
    planned: bool


@_event
class BrainReconnecting(Event):
    type = "brain.reconnecting"
    attempt: int
    delay_s: float


@_event
class BrainReconnected(Event):
    """A new upstream connection is configured and re-seeded with the conversation."""

    type = "brain.reconnected"
    attempt: int
    gap_s: float
    reseeded: int
    replayed_audio_ms: int
    resumed: bool


@_event
class BrainUpstreamFailed(Event):
    """The upstream is gone for good (a refused key, or every reconnect failed): no more replies."""

    type = "brain.upstream_failed"
    reason: str
    detail: str


@_event
class BrainTruncateRejected(Event):
    """The upstream refused to cut an item at what was heard; the session repairs its copy and
    goes on."""

    type = "brain.truncate_rejected"
    item_id: str
    heard_ms: int
    code: str | None
    message: str


# ====================================================================== phone calls (published by moksori.telephony)


@_event
class CallStarted(Event):
    type = "call.started"
    carrier: str
    call_id: str
    stream_id: str
    from_number: str | None = _wire("from")
    to_number: str | None = _wire("to")
    encoding: str
    rate: int


@_event
class CallBadMessage(Event):
    type = "call.bad_message"
    reason: str
    count: int


@_event
class CallDtmf(Event):
    type = "call.dtmf"
    digit: str
    digits: str  # the last 64 keys pressed


@_event
class CallCarrierError(Event):
    type = "call.carrier_error"
    code: str
    message: str


@_event
class CallFirstAudio(Event):
    type = "call.first_audio"
    after_start_ms: int


@_event
class CallHangup(Event):
    type = "call.hangup"
    by: str
    via: str  # rest | stream


@_event
class CallTransferred(Event):
    type = "call.transferred"
    to: str


@_event
class CallEnded(Event):
    type = "call.ended"
    reason: str


CATALOGUE: tuple[type[Event], ...] = (
    SessionStarted, SessionState, SessionClosed, ErrorEvent,
    UserSpeechStarted, UserSpeechStopped, UserTurnEnded, UserNoise, UserTranscript, UserTranscriptDelta,
    UserCommitted, UserIdleTimeout,
    SttStarted, SttFinished, EotFinished, LlmStarted, LlmFirstToken, LlmFinished, TtsStarted, TtsFirstAudio,
    AgentResponseStarted, AgentTextDelta, AgentAudio, AgentAudioStarted, AgentAudioDone, AgentAudioCleared,
    AgentInterrupted, AgentReoffer, AgentResponseDone, AgentFunctionCall, AgentToolCall, AgentToolResult,
    AgentToolFiller, AgentBackchannel, GuardrailTripped, GuardrailInputRemoved, SessionWarning, SessionNoiseReduction,
    BrainUpstreamReady, BrainUpstreamDropped, BrainReconnecting, BrainReconnected, BrainUpstreamFailed,
    BrainTruncateRejected,
    CallStarted, CallBadMessage, CallDtmf, CallCarrierError, CallFirstAudio, CallHangup, CallTransferred, CallEnded,
)
BY_TYPE: dict[str, type[Event]] = {cls.type: cls for cls in CATALOGUE}
