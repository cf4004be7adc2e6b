"""What every provider speaking HTTP to an OpenAI-compatible server shares: base-URL checks,
one client per event loop, and translating httpx failures into the project's error vocabulary."""

from __future__ import annotations

import asyncio
import json

import httpx

from moksori.errors import ConfigError, ProviderError, ProviderTimeout, is_retryable_status

MAX_ERROR_CHARS = 300


def truncate(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_message(raw: bytes | str, limit: int = MAX_ERROR_CHARS) -> str:
    """The human part of an error body: OpenAI `error.message`, FastAPI `detail`, or the text."""
    text = (raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw).strip()
    try:
        body = json.loads(text)
    except ValueError:
        return truncate(text, limit) or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return truncate(err["message"], limit)
        if isinstance(err, str):
            return truncate(err, limit)
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return truncate(body[key], limit)
    return truncate(text, limit) or "(empty body)"


def retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def status_error(what: str, host: str, resp: httpx.Response, raw: bytes | str, provider: str, *,
                 key_hint: str = "check the API key") -> ProviderError:
    """A non-2xx answer: retryable for 408/425/429/5xx; carries the server's Retry-After."""
    status = resp.status_code
    err = ProviderError(f"{what} server {host} returned HTTP {status}: {error_message(raw)}",
                        retryable=is_retryable_status(status), status=status, provider=provider,
                        hint=key_hint if status in (401, 403) else None)
    wait = retry_after(resp)
    if wait is not None:
        err.retry_after = wait  # honoured by resilience
    return err


def transport_error(what: str, host: str, e: Exception, provider: str) -> ProviderError:
    """Connection failures are retryable, timeouts are ProviderTimeout, bad URLs are permanent."""
    kind = type(e).__name__
    if isinstance(e, httpx.TimeoutException):
        return ProviderTimeout(f"{what} server {host} timed out ({kind})", provider=provider)
    if isinstance(e, httpx.TransportError) and not isinstance(e, httpx.UnsupportedProtocol):
        return ProviderError(f"cannot reach {what} server {host} ({kind}: {truncate(str(e), 120)})",
                             retryable=True, provider=provider)
    return ProviderError(f"request to {what} server {host} failed ({kind}: {truncate(str(e), 120)})",
                         retryable=False, provider=provider)


def check_base_url(base_url: str | None, what: str) -> httpx.URL:
    if not base_url:
        raise ConfigError(f"the {what} provider needs a base_url", hint="e.g. http://127.0.0.1:8080/v1")
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as e:
        raise ConfigError(f"invalid {what} base_url: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{what} base_url must be an http(s) URL like http://127.0.0.1:8001/v1, got {base_url!r}")
    return url


def host_of(url: httpx.URL) -> str:
    return url.host + (f":{url.port}" if url.port else "")


class LoopClient:
    """An httpx client for the running event loop.

    A client's pooled connections belong to the loop that opened them, and a server warms its
    models in one loop (`asyncio.run`) before serving in another, so a client made elsewhere is
    dropped and a fresh one is made on first use in the new loop.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)))
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()
