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

The classes live in one module per concern and are all re-exported here, so readers write
`from moksori.engine import events as E` and `E.AgentAudio`: `base` (`Event`, the field options),
`session`, `user` (the user's turn), `stages` (stage timings), `reply` (the agent's reply and
the interruption chain), `tools`, `guardrails`, `brain` (the realtime brain's upstream), `call`
(phone calls).
"""

from __future__ import annotations

from .base import Event, optional
from .session import ErrorEvent, SessionClosed, SessionNoiseReduction, SessionStarted, SessionState, SessionWarning
from .user import (UserCommitted, UserIdleTimeout, UserNoise, UserSpeechStarted, UserSpeechStopped, UserTranscript,
                   UserTranscriptDelta, UserTranscriptionFailed, UserTurnEnded)
from .stages import (EotFinished, LlmFinished, LlmFirstToken, LlmStarted, SttFinished, SttStarted, TtsFirstAudio,
                     TtsStarted)
from .reply import (AgentAudio, AgentAudioCleared, AgentAudioDone, AgentAudioStarted, AgentBackchannel,
                    AgentInterrupted, AgentReoffer, AgentReplyHeard, AgentResponseDone, AgentResponseStarted,
                    AgentTextDelta)
from .tools import AgentFunctionCall, AgentToolCall, AgentToolFiller, AgentToolResult
from .guardrails import GuardrailInputRemoved, GuardrailTripped
from .brain import (BrainReconnected, BrainReconnecting, BrainTruncateRejected, BrainUpstreamDropped,
                    BrainUpstreamFailed, BrainUpstreamReady)
from .call import (CallBadMessage, CallCarrierError, CallDtmf, CallEnded, CallFirstAudio, CallHangup, CallStarted,
                   CallTransferred)

CATALOGUE: tuple[type[Event], ...] = (
    SessionStarted, SessionState, SessionClosed, ErrorEvent,
    UserSpeechStarted, UserSpeechStopped, UserTurnEnded, UserNoise, UserTranscript, UserTranscriptDelta,
    UserCommitted, UserIdleTimeout, UserTranscriptionFailed,
    SttStarted, SttFinished, EotFinished, LlmStarted, LlmFirstToken, LlmFinished, TtsStarted, TtsFirstAudio,
    AgentResponseStarted, AgentTextDelta, AgentAudio, AgentAudioStarted, AgentAudioDone, AgentAudioCleared,
    AgentInterrupted, AgentReoffer, AgentResponseDone, AgentReplyHeard, AgentFunctionCall, AgentToolCall, AgentToolResult,
    AgentToolFiller, AgentBackchannel, GuardrailTripped, GuardrailInputRemoved, SessionWarning, SessionNoiseReduction,
    BrainUpstreamReady, BrainUpstreamDropped, BrainReconnecting, BrainReconnected, BrainUpstreamFailed,
    BrainTruncateRejected,
    CallStarted, CallBadMessage, CallDtmf, CallCarrierError, CallFirstAudio, CallHangup, CallTransferred, CallEnded,
)
BY_TYPE: dict[str, type[Event]] = {cls.type: cls for cls in CATALOGUE}

__all__ = [
    "BY_TYPE", "CATALOGUE", "Event", "optional",
    "SessionStarted", "SessionState", "SessionClosed", "ErrorEvent", "SessionWarning", "SessionNoiseReduction",
    "UserSpeechStarted", "UserSpeechStopped", "UserTurnEnded", "UserNoise", "UserTranscript", "UserTranscriptDelta",
    "UserCommitted", "UserIdleTimeout", "UserTranscriptionFailed",
    "SttStarted", "SttFinished", "EotFinished", "LlmStarted", "LlmFirstToken", "LlmFinished", "TtsStarted",
    "TtsFirstAudio",
    "AgentResponseStarted", "AgentTextDelta", "AgentAudio", "AgentAudioStarted", "AgentAudioDone",
    "AgentAudioCleared", "AgentInterrupted", "AgentReoffer", "AgentResponseDone", "AgentReplyHeard",
    "AgentBackchannel",
    "AgentFunctionCall", "AgentToolCall", "AgentToolResult", "AgentToolFiller",
    "GuardrailTripped", "GuardrailInputRemoved",
    "BrainUpstreamReady", "BrainUpstreamDropped", "BrainReconnecting", "BrainReconnected", "BrainUpstreamFailed",
    "BrainTruncateRejected",
    "CallStarted", "CallBadMessage", "CallDtmf", "CallCarrierError", "CallFirstAudio", "CallHangup",
    "CallTransferred", "CallEnded",
]
