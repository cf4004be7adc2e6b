"""Fixed phrases a phone call says (greeting, goodbye, transfer notice), synthesised once.

People hang up on dead air: with the greeting's audio ready before the call, the first media
frame leaves within milliseconds of the stream's `start`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace

from moksori.audio.frames import Frame
from moksori.engine.reply_speech import spoken_text
from moksori.errors import MoksoriError
from moksori.providers.base import TTS, TTSOptions
from moksori.providers.registry import Stack
from moksori.settings import Settings
from moksori.text.chunker import ClauseChunker

log = logging.getLogger("moksori.telephony")

DEFAULT_GREETING = "Hello! How can I help you?"
TRANSFER_NOTICE = "One moment, I am transferring your call."


def spoken_clauses(text: str, language: str) -> list[str]:
    """The texts a fixed reply (`Session.say`) hands to TTS, clause by clause: the same chunking
    and normalisation as a reply's (`engine.reply_speech`), so pre-synthesised audio is found again."""
    chunker = ClauseChunker(first_min_chars=1)
    clauses = list(chunker.push(text)) + list(chunker.flush())
    return [spoken for clause in clauses if (spoken := spoken_text(clause, language)) is not None]


class PhraseCacheTTS(TTS):
    """A TTS that keeps the audio of a few fixed phrases (greeting, goodbye) ready.

    People hang up on dead air: with the greeting synthesised once per process, the first audio
    of a call leaves as soon as the stream starts. Any other text goes to the wrapped TTS.
    """

    def __init__(self, inner: TTS, *, max_phrases: int = 32) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.name = inner.name
        self.caps = inner.caps
        self._max = max_phrases
        self._phrases: set[str] = set()
        self._cache: dict[tuple[str, str | None, str, float], list[Frame]] = {}
        self._inflight: dict[tuple[str, str | None, str, float], asyncio.Event] = {}

    def remember(self, texts: Iterable[str]) -> None:
        for t in texts:
            if len(self._phrases) < self._max:
                self._phrases.add(t)

    def cached(self, text: str, opts: TTSOptions) -> bool:
        return (text, opts.voice, opts.language, opts.speed) in self._cache

    async def warm(self, text: str, opts: TTSOptions) -> None:
        self.remember([text])
        async for _ in self.synthesize(text, opts):
            pass

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        key = (text, opts.voice, opts.language, opts.speed)
        if key not in self._cache and key in self._inflight:
            await self._inflight[key].wait()  # being warmed right now: wait for it, never twice
        frames = self._cache.get(key)
        if frames is not None:
            for f in frames:
                yield f
            return
        if text not in self._phrases or key in self._inflight:
            async for f in self.inner.synthesize(text, opts):
                yield f
            return
        done = self._inflight[key] = asyncio.Event()
        got: list[Frame] = []
        try:
            async for f in self.inner.synthesize(text, opts):
                got.append(f)
                yield f
            self._cache[key] = got
        finally:
            self._inflight.pop(key, None)
            done.set()

    async def load(self) -> None:
        await self.inner.load()

    async def close(self) -> None:
        await self.inner.close()


def stack_for_calls(stack: Stack) -> tuple[Stack, PhraseCacheTTS]:
    """The shared stack with a phrase cache in front of its TTS (one per server)."""
    tts = stack.tts if isinstance(stack.tts, PhraseCacheTTS) else PhraseCacheTTS(stack.tts)
    return replace(stack, tts=tts), tts


async def warm_phrases(stack: Stack, settings: Settings, tts: PhraseCacheTTS) -> None:
    """Synthesise the greeting and the goodbye once, before the first call needs them."""
    if getattr(stack.tts, "standin", False):  # the realtime brain: the upstream speaks them
        return
    language = settings.language if settings.language != "auto" else "en"
    greeting = settings.agent.greeting if settings.agent.greeting is not None else DEFAULT_GREETING
    texts = [greeting, settings.telephony.goodbye, TRANSFER_NOTICE]
    opts = TTSOptions(voice=None, language=language, speed=settings.tts.speed)
    for text in texts:
        for clause in spoken_clauses(text or "", language):
            if not tts.cached(clause, opts):
                try:
                    await tts.warm(clause, opts)
                except MoksoriError as e:  # the call still works, just without a cached greeting
                    log.warning("cannot pre-synthesise %r: %s", clause, e)
