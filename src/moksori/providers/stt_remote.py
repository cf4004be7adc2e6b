"""Speech recognition on any OpenAI-compatible `POST {base_url}/audio/transcriptions`.

OpenAI's Whisper API, a faster-whisper server, or another `moksori serve`. Batch only: the whole
turn's audio is uploaded as one 16 kHz WAV and one final transcript comes back. Every failure is
translated here into `ProviderError` / `ProviderTimeout`; no httpx exception leaves this module.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator

import httpx
import numpy as np

from moksori.audio.frames import Frame
from moksori.audio.wav import wav_bytes
from moksori.errors import ConfigError, ProviderError, ProviderTimeout, is_retryable_status
from moksori.providers.base import STT, STTCaps, STTOptions, Transcript

PROVIDER = "openai-stt"
RATE = 16000

# verbose_json reports language names ("english"); some servers send codes ("en")
_LANGUAGE_CODES = {"english": "en", "korean": "ko"}


def language_code(value: object, fallback: str) -> str:
    if not isinstance(value, str) or not value.strip():
        return fallback
    v = value.strip().lower()
    return _LANGUAGE_CODES.get(v, v[:2] if len(v) > 2 and v[2] in "-_" else v)


def error_message(resp: httpx.Response) -> str:
    """The human part of an OpenAI-style error body (`error.message`), else the text, shortened."""
    text = resp.text.strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            text = err["message"]
        elif isinstance(err, str):
            text = err
        elif isinstance(body.get("detail"), str):
            text = body["detail"]
    text = " ".join(text.split())
    return (text[:199] + "…" if len(text) > 200 else text) or "(empty body)"


def http_error(what: str, host: str, resp: httpx.Response, provider: str) -> ProviderError:
    status = resp.status_code
    return ProviderError(f"{what} server {host} returned HTTP {status}: {error_message(resp)}",
                         retryable=is_retryable_status(status), status=status, provider=provider,
                         hint="check the API key" if status in (401, 403) else None)


def transport_error(what: str, host: str, e: httpx.HTTPError, provider: str) -> ProviderError:
    kind = type(e).__name__
    if isinstance(e, httpx.TimeoutException):
        return ProviderTimeout(f"{what} server {host} timed out ({kind})", provider=provider)
    if isinstance(e, httpx.TransportError) and not isinstance(e, httpx.UnsupportedProtocol):
        return ProviderError(f"cannot reach {what} server {host} ({kind})", retryable=True, provider=provider)
    return ProviderError(f"request to {what} server {host} failed ({kind}: {e})", retryable=False,
                         provider=provider)


def check_base_url(base_url: str, what: str) -> httpx.URL:
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as e:
        raise ConfigError(f"invalid {what} base_url: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{what} base_url must be an http(s) URL like http://127.0.0.1:8001/v1, got {base_url!r}")
    return url


def loop_client(provider) -> httpx.AsyncClient:
    """The provider's httpx client for the running event loop.

    A client's pooled connections belong to the loop that opened them, and a server warms its
    models in one loop (`asyncio.run`) before serving in another, so a client made elsewhere is
    dropped (its loop is gone or busy) and a fresh one is made here.
    """
    loop = asyncio.get_running_loop()
    if provider._client is None or provider._loop is not loop:
        provider._client = httpx.AsyncClient(
            timeout=httpx.Timeout(provider.timeout_s, connect=min(10.0, provider.timeout_s)))
        provider._loop = loop
    return provider._client


class RemoteSTT(STT):
    name = "openai-stt"

    def __init__(self, base_url: str, model: str = "whisper-1", api_key: str | None = None, *,
                 timeout_s: float = 30.0, languages: tuple[str, ...] = ("en", "ko")) -> None:
        url = check_base_url(base_url, "STT")
        self.url = url.copy_with(path=url.path.rstrip("/") + "/audio/transcriptions")
        self.host = url.host + (f":{url.port}" if url.port else "")
        self.model = model
        self._api_key = api_key or None
        self.timeout_s = timeout_s
        self.caps = STTCaps(streaming=False, languages=languages, sample_rate=RATE, detects_language=True)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never shows the key
        return f"RemoteSTT({self.host!r}, model={self.model!r})"

    def _http(self) -> httpx.AsyncClient:
        return loop_client(self)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

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
        try:
            resp = await self._http().post(self.url, data=data, files=files, headers=headers)
        except httpx.HTTPError as e:
            raise transport_error("STT", self.host, e, PROVIDER) from None
        if resp.status_code >= 400:
            raise http_error("STT", self.host, resp, PROVIDER)
        try:
            body = resp.json()
            text = body["text"]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ProviderError(f"STT server {self.host} sent an answer without a 'text' field",
                                retryable=False, provider=PROVIDER) from None
        yield Transcript(text.strip(), language_code(body.get("language"), fallback), True, seconds)
