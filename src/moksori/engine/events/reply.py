"""The agent's reply: its lifecycle, text and audio, the interruption chain, backchannels."""

from __future__ import annotations

from moksori.accounting import TurnUsage
from moksori.audio.frames import Frame
from moksori.providers.base import ToolCall, Usage

from .base import Event, _event, optional


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
    reason: str  # turn_detected | client_cancelled | client_truncated (a truncate of a reply in progress)
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
class AgentReplyHeard(Event):
    """A client's late truncate of a message item of a finished reply that had several
    (`engine/reply_parts.py`): `text` is what the listener heard of the whole reply now, the
    reply being `item_id` (its first message item, as `agent.response_done` named it);
    `part_item_id` is the item the client truncated."""

    type = "agent.reply_heard"
    item_id: str
    part_item_id: str
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
