"""Speech recognition on any OpenAI-compatible `POST {base_url}/audio/transcriptions`.

OpenAI's Whisper API, a faster-whisper server, or another `moksori serve`. Batch only: the whole
turn's audio is uploaded as one 16 kHz WAV and one final transcript comes back. Every failure is
translated here into `ProviderError` / `ProviderTimeout`; no httpx exception leaves this module.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator

import httpx
import numpy as np

from moksori.audio.frames import Frame
from moksori.audio.wav import wav_bytes
from moksori.errors import ProviderError
from moksori.providers.base import STT, STTCaps, STTOptions, Transcript
from moksori.providers.http import (
    LoopClient,
    answer_error,
    check_base_url,
    host_of,
    read_at_most,
    too_large,
    transport_error,
)

PROVIDER = "openai-stt"
RATE = 16000

# A transcript is small JSON: `verbose_json` with segments, tokens and word timings runs to a few
# hundred bytes a second of speech. 1 MiB plus 2 KiB a second of audio is far above that.
MAX_ANSWER_BASE_BYTES = 1 << 20
MAX_ANSWER_BYTES_PER_SECOND = 2048

# verbose_json reports language names ("english"); some servers send codes ("en")
_LANGUAGE_CODES = {"english": "en", "korean": "ko"}


def language_code(value: object, fallback: str) -> str:
    if not isinstance(value, str) or not value.strip():
        return fallback
    v = value.strip().lower()
    return _LANGUAGE_CODES.get(v, v[:2] if len(v) > 2 and v[2] in "-_" else v)


class RemoteSTT(STT):
    name = "openai-stt"

    def __init__(self, base_url: str, model: str = "whisper-1", api_key: str | None = None, *,
                 timeout_s: float = 30.0, languages: tuple[str, ...] = ("en", "ko")) -> None:
        url = check_base_url(base_url, "STT")
        self.url = url.copy_with(path=url.path.rstrip("/") + "/audio/transcriptions")
        self.host = host_of(url)
        self.model = model
        self._api_key = api_key or None
        self.timeout_s = timeout_s
        self.caps = STTCaps(streaming=False, languages=languages, sample_rate=RATE, detects_language=True)
        self._client = LoopClient(timeout_s)

    def __repr__(self) -> str:  # never shows the key
        return f"RemoteSTT({self.host!r}, model={self.model!r})"

    def _http(self) -> httpx.AsyncClient:
        return self._client.get()

    async def close(self) -> None:
        await self._client.aclose()

    async def transcribe(self, audio: AsyncIterable[np.ndarray], opts: STTOptions) -> AsyncIterator[Transcript]:
        chunks = [np.asarray(a, dtype=np.float32) for a in [c async for c in audio]]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        seconds = len(samples) / RATE
        fallback = opts.language or (opts.languages[0] if opts.languages else "en")
        if len(samples) < RATE // 10:  # under 100 ms: nothing a server could hear
            yield Transcript("", fallback, True, seconds)
            return
        data = {"model": self.model, "response_format": "verbose_json"}
        if opts.language:
            data["language"] = opts.language
        if opts.prompt:
            data["prompt"] = opts.prompt
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        files = {"file": ("audio.wav", wav_bytes(Frame.from_float(samples, RATE)), "audio/wav")}
        limit = MAX_ANSWER_BASE_BYTES + int(MAX_ANSWER_BYTES_PER_SECOND * seconds)
        try:
            async with self._http().stream("POST", self.url, data=data, files=files, headers=headers) as resp:
                if (err := await answer_error("STT", self.host, resp, PROVIDER)) is not None:
                    raise err
                raw, whole = await read_at_most(resp, limit)
        except httpx.HTTPError as e:
            raise transport_error("STT", self.host, e, PROVIDER) from None
        if not whole:
            raise too_large("STT", self.host, limit, PROVIDER, "a transcript")
        try:
            body = json.loads(raw)
            text = body["text"]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ProviderError(f"STT server {self.host} sent an answer without a 'text' field",
                                retryable=False, provider=PROVIDER) from None
        yield Transcript(text.strip(), language_code(body.get("language"), fallback), True, seconds)
