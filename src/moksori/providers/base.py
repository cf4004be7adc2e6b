"""Provider contracts: one small interface per kind of model.

Each kind has exactly one method a provider implements. Streaming kinds (STT, LLM, TTS) return
async iterators; what a provider can do is data (`caps`), not a subclass. Retries, timeouts and
fallbacks live in `moksori.providers.resilience`, never inside a provider.

VAD is the one deliberate exception to "async": it runs on every 32 ms frame of every session,
costs ~0.15 ms, and an await per frame would cost more than the model. So a VAD hands out a
small synchronous per-session stream object instead.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from moksori.audio.frames import Frame

__all__ = [
    "Provider",
    # voice activity
    "VAD", "VADCaps", "VADStream",
    # end of turn
    "TurnDetector", "TurnCaps",
    # speech to text
    "STT", "STTCaps", "STTOptions", "Transcript",
    # the LLM and its messages and events
    "LLM", "LLMCaps", "Role", "Message", "ToolCall", "ToolSpec", "ChatRequest",
    "ChatEvent", "TextDelta", "ToolCallEvent", "Usage", "ChatDone",
    # text to speech
    "TTS", "TTSCaps", "TTSOptions",
    # noise suppression
    "Denoiser", "DenoiserCaps", "DenoiseStream",
]

# --------------------------------------------------------------------------- common


class Provider(abc.ABC):
    """Lifecycle shared by every provider: `load()` once, use many times, `close()`."""

    kind: str = "provider"
    name: str = "unnamed"

    async def load(self) -> None:  # pragma: no cover - default is a no-op
        """Load weights / open connections. Called once before first use."""

    async def close(self) -> None:  # pragma: no cover - default is a no-op
        """Release resources."""

    def describe(self) -> dict[str, Any]:
        caps = getattr(self, "caps", None)
        return {"kind": self.kind, "name": self.name, "caps": caps.__dict__ if caps else {}}


# --------------------------------------------------------------------------- VAD


@dataclass(frozen=True)
class VADCaps:
    sample_rate: int = 16000
    frame_samples: int = 512  # 32 ms at 16 kHz


class VADStream(Protocol):
    def __call__(self, frame: np.ndarray) -> float:
        """One frame of `caps.frame_samples` float32 samples in [-1, 1] -> P(speech)."""
        ...

    def reset(self) -> None: ...


class VAD(Provider):
    kind = "vad"
    caps: VADCaps = VADCaps()

    @abc.abstractmethod
    def stream(self) -> VADStream:
        """A fresh stateful stream for one session."""


# --------------------------------------------------------------------------- end of turn


@dataclass(frozen=True)
class TurnCaps:
    sample_rate: int = 16000
    max_seconds: float = 8.0
    languages: tuple[str, ...] | None = None  # None: language independent


class TurnDetector(Provider):
    kind = "turn"
    caps: TurnCaps = TurnCaps()

    @abc.abstractmethod
    async def complete_probability(self, audio: np.ndarray, *, language: str | None = None) -> float:
        """P(the speaker has finished their turn) given the turn's 16 kHz float32 audio."""


# --------------------------------------------------------------------------- STT


@dataclass(frozen=True)
class STTCaps:
    streaming: bool = False  # emits partial results while audio is still arriving
    languages: tuple[str, ...] = ("en", "ko")
    sample_rate: int = 16000
    detects_language: bool = True
    # local and cheap to call again, honouring STTOptions.prompt: a live turn may be decoded in
    # pieces while it is heard (engine/incremental_stt.py); never for a paid remote API
    incremental: bool = False


@dataclass(frozen=True)
class STTOptions:
    language: str | None = None  # None: detect among `languages`
    languages: tuple[str, ...] = ("en", "ko")
    prompt: str | None = None
    # background work that may be abandoned (the transcribe call then yields nothing) when a live
    # turn's decode is waiting for the same model (`threads.should_yield`): live partials
    preemptible: bool = False


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    final: bool
    audio_seconds: float = 0.0
    no_speech_prob: float = 0.0
    language_prob: float = 1.0


class STT(Provider):
    kind = "stt"
    caps: STTCaps = STTCaps()

    @abc.abstractmethod
    def transcribe(self, audio: AsyncIterable[np.ndarray], opts: STTOptions) -> AsyncIterator[Transcript]:
        """16 kHz float32 chunks in; partial transcripts (if streaming) then one final out."""


async def one_chunk(audio: np.ndarray) -> AsyncIterator[np.ndarray]:
    """Adapter: a whole buffer as a one-item async iterable (for batch use of `transcribe`)."""
    yield audio


# --------------------------------------------------------------------------- LLM

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


@dataclass(frozen=True)
class Message:
    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
            if not self.content:
                d["content"] = None
        if self.tool_call_id:
            d["tool_call_id"] = self.tool_call_id
        if self.name and self.role == "tool":
            d["name"] = self.name
        return d


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"  # auto | none | required | <tool name>
    temperature: float = 0.6
    max_tokens: int = 200


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    call: ToolCall


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class ChatDone:
    finish_reason: str = "stop"  # stop | length | tool_calls


ChatEvent = TextDelta | ToolCallEvent | Usage | ChatDone


@dataclass(frozen=True)
class LLMCaps:
    tools: bool = True
    context_tokens: int = 4096
    languages: tuple[str, ...] = ("en",)


class LLM(Provider):
    kind = "llm"
    caps: LLMCaps = LLMCaps()

    @abc.abstractmethod
    def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        """Stream text deltas and tool calls, then `Usage`, then `ChatDone`."""

    async def prefill(self, request: ChatRequest, upto: str) -> int:
        """Evaluate `request`'s prompt up to the end of `upto` (the start of its last message's
        content) into the model's prompt cache ahead of the real request, as background work.
        Returns the prompt tokens evaluated; 0 where there is no such cache (the default)."""
        return 0

    async def prefill_history(self, request: ChatRequest) -> int:
        """Like `prefill`, up to where the last message's content starts (the history and the
        chat template's header before the user's words). 0 where there is no such cache."""
        return 0


# --------------------------------------------------------------------------- TTS


@dataclass(frozen=True)
class TTSCaps:
    sample_rate: int = 22050
    languages: tuple[str, ...] = ("en",)
    voices: tuple[str, ...] = ()


@dataclass(frozen=True)
class TTSOptions:
    voice: str | None = None
    language: str = "en"
    speed: float = 1.0


class TTS(Provider):
    kind = "tts"
    caps: TTSCaps = TTSCaps()

    @abc.abstractmethod
    def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        """Text in, PCM16 frames (at `caps.sample_rate`) out."""


# --------------------------------------------------------------------------- noise suppression


@dataclass(frozen=True)
class DenoiserCaps:
    model_rate: int = 48000  # the rate the model runs at; other input rates are resampled
    frame_samples: int = 480  # model hop at `model_rate`
    delay_ms: float = 0.0  # what a stream adds to the audio (model look-ahead + buffering)
    input_rates: tuple[int, ...] = (8000, 16000, 24000, 48000)
    realtime_factor: float | None = None  # measured compute per second of audio, if known


class DenoiseStream(Protocol):
    async def process(self, samples: np.ndarray) -> np.ndarray:
        """float32 mono samples at the stream's rate in; as many denoised samples out, delayed by
        `caps.delay_ms` (the first call returns mostly the zeros of that delay)."""
        ...

    def close(self) -> None: ...


class Denoiser(Provider):
    kind = "denoise"
    caps: DenoiserCaps = DenoiserCaps()

    @abc.abstractmethod
    async def stream(self, rate: int) -> DenoiseStream:
        """A fresh stream with its own model state, for one session's audio at `rate` Hz."""
