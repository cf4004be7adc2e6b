"""One TTS per language behind the TTS contract: English and Korean voices side by side."""

from __future__ import annotations

from collections.abc import AsyncIterator

from moksori.audio.frames import Frame
from moksori.errors import ProviderError
from moksori.providers.base import TTS, TTSCaps, TTSOptions


class LanguageRouterTTS(TTS):
    name = "router"

    def __init__(self, by_language: dict[str, TTS], default_language: str = "en") -> None:
        if not by_language:
            raise ValueError("no TTS voices configured")
        self.by_language = by_language
        self.default_language = default_language if default_language in by_language else next(iter(by_language))
        voices = tuple(v for t in by_language.values() for v in t.caps.voices)
        self.caps = TTSCaps(sample_rate=by_language[self.default_language].caps.sample_rate,
                            languages=tuple(by_language), voices=voices)
        self.name = "+".join(f"{lang}:{t.name}" for lang, t in by_language.items())

    def pick(self, opts: TTSOptions) -> TTS:
        if opts.voice:
            for tts in self.by_language.values():
                if opts.voice in tts.caps.voices:
                    return tts
        return self.by_language.get(opts.language) or self.by_language[self.default_language]

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        tts = self.pick(opts)
        try:
            async for frame in tts.synthesize(text, opts):
                yield frame
        except ProviderError:
            raise
        except Exception as e:
            raise ProviderError(f"{tts.name} failed: {type(e).__name__}", retryable=False, provider=tts.name) from e

    async def close(self) -> None:
        for t in self.by_language.values():
            await t.close()
