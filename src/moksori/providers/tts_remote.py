"""Speech synthesis on any OpenAI-compatible `POST {base_url}/audio/speech`.

OpenAI's TTS API or another `moksori serve`. With `response_format: "pcm"` (the default) the
answer is raw 24 kHz 16-bit mono and is streamed out as it arrives; with `"wav"` the whole file is
read first. Every failure is translated here into `ProviderError` / `ProviderTimeout`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from moksori.audio.frames import Frame
from moksori.audio.wav import read_wav_bytes
from moksori.errors import AudioFormatError, ProviderError
from moksori.providers.base import TTS, TTSCaps, TTSOptions
from moksori.providers.http import LoopClient, check_base_url, host_of, status_error, transport_error

PROVIDER = "openai-tts"
PCM_RATE = 24000  # OpenAI's `pcm`: 24 kHz, 16-bit little-endian, mono
MIN_CHUNK = PCM_RATE * 2 // 20  # yield at least 50 ms at a time
DEFAULT_VOICE = "alloy"


class RemoteTTS(TTS):
    name = "openai-tts"

    def __init__(self, base_url: str, model: str = "tts-1", api_key: str | None = None, voice: str | None = None, *,
                 response_format: str = "pcm", timeout_s: float = 30.0,
                 languages: tuple[str, ...] = ("en", "ko")) -> None:
        if response_format not in ("pcm", "wav"):
            raise ValueError("response_format must be 'pcm' or 'wav'")
        url = check_base_url(base_url, "TTS")
        self.url = url.copy_with(path=url.path.rstrip("/") + "/audio/speech")
        self.host = host_of(url)
        self.model = model
        self.voice = voice
        self.response_format = response_format
        self._api_key = api_key or None
        self.timeout_s = timeout_s
        self.caps = TTSCaps(sample_rate=PCM_RATE, languages=languages, voices=(voice,) if voice else ())
        self._client = LoopClient(timeout_s)

    def __repr__(self) -> str:  # never shows the key
        return f"RemoteTTS({self.host!r}, model={self.model!r}, voice={self.voice!r})"

    def _http(self) -> httpx.AsyncClient:
        return self._client.get()

    async def close(self) -> None:
        await self._client.aclose()

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        if not text.strip():
            return
        body = {"model": self.model, "input": text, "voice": opts.voice or self.voice or DEFAULT_VOICE,
                "response_format": self.response_format, "speed": opts.speed}
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            async with self._http().stream("POST", self.url, json=body, headers=headers) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise status_error("TTS", self.host, resp, resp.content, PROVIDER)
                if self.response_format == "wav":
                    data = await resp.aread()
                    try:
                        frame = read_wav_bytes(data, name="TTS answer")
                    except AudioFormatError as e:
                        raise ProviderError(f"TTS server {self.host} sent an unreadable WAV: {e}", retryable=False,
                                            provider=PROVIDER) from None
                    if len(frame):
                        yield frame
                    return
                pending = b""
                async for chunk in resp.aiter_bytes():
                    pending += chunk
                    if len(pending) >= MIN_CHUNK:
                        cut = len(pending) - len(pending) % 2
                        yield Frame.from_bytes(pending[:cut], PCM_RATE)
                        pending = pending[cut:]
                cut = len(pending) - len(pending) % 2
                if cut:
                    yield Frame.from_bytes(pending[:cut], PCM_RATE)
        except httpx.HTTPError as e:
            raise transport_error("TTS", self.host, e, PROVIDER) from None
