"""Speech synthesis on any OpenAI-compatible `POST {base_url}/audio/speech`.

OpenAI's TTS API or another `moksori serve`. With `response_format: "pcm"` (the default) the
answer is raw 24 kHz 16-bit mono and is streamed out as it arrives; with `"wav"` the whole file is
read first. Either way an answer longer than its text could take to say is cut there and fails
(`max_speech_seconds`). Every failure is translated here into `ProviderError` / `ProviderTimeout`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from moksori.audio.frames import Frame
from moksori.audio.wav import read_wav_bytes
from moksori.errors import AudioFormatError, ProviderError
from moksori.providers.base import TTS, TTSCaps, TTSOptions
from moksori.providers.http import (
    LoopClient,
    answer_error,
    check_base_url,
    host_of,
    read_at_most,
    transport_error,
)

PROVIDER = "openai-tts"
PCM_RATE = 24000  # OpenAI's `pcm`: 24 kHz, 16-bit little-endian, mono
MIN_CHUNK = PCM_RATE * 2 // 20  # yield at least 50 ms at a time
DEFAULT_VOICE = "alloy"

# An answer is cut at the longest speech its text could make. Read aloud, a character takes
# ~0.07 s (~0.14 s a Korean syllable, ~0.35 s a digit read one by one: server/audio_api.py's
# estimate): 1 s a character, plus 10 s of silence around it, slowed by the requested speed.
MAX_SECONDS_PER_CHAR = 1.0
EXTRA_SECONDS = 10.0
WAV_MAX_BYTES_PER_SECOND = 48000 * 2 * 4  # a `wav` may be any format: up to 48 kHz stereo 32-bit


def max_speech_seconds(text: str, speed: float) -> float:
    """The longest audio an answer for `text` at `speed` may hold."""
    return (EXTRA_SECONDS + MAX_SECONDS_PER_CHAR * len(text)) / max(speed, 0.25)


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
        seconds = max_speech_seconds(text, opts.speed)
        too_long = ProviderError(f"TTS server {self.host} sent more than {seconds:.0f} s of audio for "
                                 f"{len(text)} characters of text; not read further", retryable=False, provider=PROVIDER)
        try:
            async with self._http().stream("POST", self.url, json=body, headers=headers) as resp:
                if (err := await answer_error("TTS", self.host, resp, PROVIDER)) is not None:
                    raise err
                if self.response_format == "wav":
                    limit = int(seconds * WAV_MAX_BYTES_PER_SECOND) + 64 * 1024  # + its header chunks
                    data, whole = await read_at_most(resp, limit)
                    if not whole:
                        raise too_long
                    try:
                        frame = read_wav_bytes(data, name="TTS answer")
                    except AudioFormatError as e:
                        raise ProviderError(f"TTS server {self.host} sent an unreadable WAV: {e}", retryable=False,
                                            provider=PROVIDER) from None
                    if len(frame):
                        yield frame
                    return
                pending = b""
                limit, received = int(seconds * PCM_RATE) * 2, 0
                async for chunk in resp.aiter_bytes():
                    received += len(chunk)
                    if received > limit:
                        raise too_long
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
