"""Scriptable fake providers for testing turn-taking and session logic (not model quality).

Use these with `run_virtual` to test an agent's logic in milliseconds. Tests of the real
components (models, servers, clients) must use the real things instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence

import numpy as np

from moksori.audio.frames import Frame
from moksori.providers.base import (
    LLM,
    STT,
    TTS,
    VAD,
    ChatDone,
    ChatEvent,
    ChatRequest,
    LLMCaps,
    STTCaps,
    STTOptions,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    Transcript,
    TTSCaps,
    TTSOptions,
    TurnCaps,
    TurnDetector,
    Usage,
    VADCaps,
    VADStream,
)
from moksori.providers.registry import Stack
from moksori.settings import Settings


class EnergyVAD(VAD):
    """P(speech) from frame energy: a loud tone is "speech", near-silence is not."""

    name = "energy"
    caps = VADCaps()

    def __init__(self, threshold_rms: float = 0.02) -> None:
        self.threshold = threshold_rms

    def stream(self) -> VADStream:
        threshold = self.threshold

        class _S:
            def __call__(self, frame: np.ndarray) -> float:
                f = frame.astype(np.float32, copy=False)
                rms = (float(np.dot(f, f)) / len(f)) ** 0.5 if len(f) else 0.0
                return 0.95 if rms >= threshold else 0.02

            def reset(self) -> None:
                pass

        return _S()


class FixedTurn(TurnDetector):
    name = "fixed-turn"
    caps = TurnCaps()

    def __init__(self, probability: float = 0.9, delay_s: float = 0.0) -> None:
        self.probability = probability
        self.delay_s = delay_s
        self.calls = 0

    async def complete_probability(self, audio: np.ndarray, *, language: str | None = None) -> float:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.probability


class ScriptedSTT(STT):
    """Returns `script[i]` for the i-th call (or `by_duration(seconds)`), after `delay_s`."""

    name = "scripted-stt"
    caps = STTCaps()

    def __init__(self, script: Sequence[str] = (), *, delay_s: float = 0.05, language: str = "en",
                 by_duration: Callable[[float], str] | None = None) -> None:
        self.script = list(script)
        self.delay_s = delay_s
        self.language = language
        self.by_duration = by_duration
        self.calls: list[float] = []

    async def transcribe(self, audio: AsyncIterable[np.ndarray], opts: STTOptions) -> AsyncIterator[Transcript]:
        buf = [a async for a in audio]
        seconds = sum(len(a) for a in buf) / 16000
        self.calls.append(seconds)
        await asyncio.sleep(self.delay_s)
        if self.by_duration is not None:
            text = self.by_duration(seconds)
        else:
            text = self.script[min(len(self.calls) - 1, len(self.script) - 1)] if self.script else ""
        yield Transcript(text, opts.language or self.language, True, seconds)


class ScriptedLLM(LLM):
    """Streams `reply(request)` word by word, `token_delay_s` apart; can emit tool calls."""

    name = "scripted-llm"
    caps = LLMCaps()

    def __init__(self, reply: str | Callable[[ChatRequest], str] = "Sure. Here is a short answer for you.",
                 *, token_delay_s: float = 0.02, first_token_s: float = 0.05,
                 tool_call: Callable[[ChatRequest], ToolCall | None] | None = None) -> None:
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.first_token_s = first_token_s
        self.tool_call = tool_call
        self.requests: list[ChatRequest] = []
        self.cancelled = 0

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        self.requests.append(request)
        finished = False
        try:
            await asyncio.sleep(self.first_token_s)
            call = self.tool_call(request) if self.tool_call else None
            if call is not None:
                yield ToolCallEvent(call)
                yield ChatDone("tool_calls")
                finished = True
                return
            text = self.reply(request) if callable(self.reply) else self.reply
            words = text.split(" ")
            for i, w in enumerate(words):
                yield TextDelta(w if i == 0 else " " + w)
                await asyncio.sleep(self.token_delay_s)
            yield Usage(input_tokens=10 * len(request.messages), output_tokens=len(words))
            yield ChatDone("stop")
            finished = True
        finally:
            if not finished:
                self.cancelled += 1


class ToneTTS(TTS):
    """A 440 Hz tone, `seconds_per_char` long per character, after `delay_s`."""

    name = "tone-tts"

    def __init__(self, *, rate: int = 16000, seconds_per_char: float = 0.06, delay_s: float = 0.03,
                 amplitude: float = 0.3) -> None:
        self.rate = rate
        self.seconds_per_char = seconds_per_char
        self.delay_s = delay_s
        self.amplitude = amplitude
        self.texts: list[str] = []
        self.caps = TTSCaps(sample_rate=rate, languages=("en", "ko"), voices=("tone",))

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        self.texts.append(text)
        await asyncio.sleep(self.delay_s)
        n = int(len(text) * self.seconds_per_char * self.rate)
        t = np.arange(n) / self.rate
        yield Frame.from_float(self.amplitude * np.sin(2 * np.pi * 440 * t), self.rate)


def fake_stack(*, stt: STT | None = None, llm: LLM | None = None, tts: TTS | None = None,
               turn: TurnDetector | None = None, vad: VAD | None = None) -> Stack:
    return Stack(vad=vad or EnergyVAD(), stt=stt or ScriptedSTT(["hello there."]),
                 llm=llm or ScriptedLLM(), tts=tts or ToneTTS(), turn=turn if turn is not None else FixedTurn(),
                 settings=Settings())


def tone(seconds: float, *, rate: int = 16000, freq: float = 220.0, amplitude: float = 0.3) -> Frame:
    """Synthetic "speech" for EnergyVAD-driven logic tests."""
    t = np.arange(int(seconds * rate)) / rate
    return Frame.from_float(amplitude * np.sin(2 * np.pi * freq * t), rate)


def quiet(seconds: float, *, rate: int = 16000) -> Frame:
    return Frame.silence(seconds, rate)
