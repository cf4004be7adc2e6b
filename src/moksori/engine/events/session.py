"""The session's own events: started, state, warnings, noise reduction, closed, and the error that
cost one turn or one reply."""

from __future__ import annotations

from collections.abc import Mapping

from .base import Event, _event, optional


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
