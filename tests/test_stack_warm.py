"""`Stack.warm` at start-up: a remote TTS that is busy or away is logged and skipped, not fatal."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from moksori.errors import ProviderError
from moksori.providers.registry import Stack


class BusyTTS:
    """Stands in for a remote TTS whose server answers 503 (its speech limiter is full)."""

    name = "busy"
    url = "http://127.0.0.1:1/v1/audio/speech"
    standin = False
    caps = SimpleNamespace(languages=("en", "ko"))

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def synthesize(self, text, opts):
        self.asked.append(opts.language)
        raise ProviderError("TTS server 127.0.0.1:1 returned HTTP 503: too many speech requests at once", retryable=True)
        yield  # an async generator, as the real providers are


async def test_warm_skips_a_busy_remote_tts_and_says_so(caplog):
    vad = SimpleNamespace(stream=lambda: (lambda frame: 0.0), caps=SimpleNamespace(frame_samples=512))
    tts = BusyTTS()
    stack = Stack(vad=vad, turn=None, stt=SimpleNamespace(standin=True), llm=SimpleNamespace(), tts=tts)
    with caplog.at_level(logging.WARNING, logger="moksori.providers.registry"):
        await stack.warm("system")
    assert tts.asked == ["en", "ko"]  # both languages tried, neither stopped the start
    assert [r.getMessage() for r in caplog.records] == [
        f"TTS warm-up skipped (busy at {tts.url}, {lang}): TTS server 127.0.0.1:1 returned HTTP 503: "
        "too many speech requests at once" for lang in ("en", "ko")]  # the provider and its URL named


async def test_warm_still_raises_what_is_not_a_provider_error():
    class Broken(BusyTTS):
        async def synthesize(self, text, opts):
            raise RuntimeError("a bug")
            yield

    vad = SimpleNamespace(stream=lambda: (lambda frame: 0.0), caps=SimpleNamespace(frame_samples=512))
    stack = Stack(vad=vad, turn=None, stt=SimpleNamespace(standin=True), llm=SimpleNamespace(), tts=Broken())
    with pytest.raises(RuntimeError, match="a bug"):
        await stack.warm("system")
