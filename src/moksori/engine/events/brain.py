"""The realtime brain's upstream connection: ready, dropped, reconnecting, reconnected, failed, a
refused truncate."""

from __future__ import annotations

from .base import Event, _event


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
