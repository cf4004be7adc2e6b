"""The user's turn: speech, noise, transcripts (final and live), the commit to memory, the idle timeout."""

from __future__ import annotations

from .base import Event, _event, optional


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
class UserTranscriptionFailed(Event):
    """The words of a user item's audio could not be had (its STT failed): the item stays in the
    conversation without them, and no `user.transcript` follows. `content_indexes`: its audio
    parts without words (a client's item may have several parts)."""

    type = "user.transcription_failed"
    item_id: str
    content_indexes: tuple[int, ...]
    code: str
    message: str
    retryable: bool
    text: str = optional(default="")  # the item's words from its other parts (typed text), kept and stored


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
