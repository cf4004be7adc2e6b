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
        err.retry_after = wait  # type: ignore[attr-defined]  # honoured by resilience
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


def loop_client(provider) -> httpx.AsyncClient:
    """The provider's httpx client for the running event loop.

    A client's pooled connections belong to the loop that opened them, and a server warms its
    models in one loop (`asyncio.run`) before serving in another, so a client made elsewhere is
    dropped and a fresh one is made here. The provider keeps `_client`, `_loop`, `timeout_s`.
    """
    loop = asyncio.get_running_loop()
    if provider._client is None or provider._loop is not loop:
        provider._client = httpx.AsyncClient(
            timeout=httpx.Timeout(provider.timeout_s, connect=min(10.0, provider.timeout_s)))
        provider._loop = loop
    return provider._client


async def close_client(provider) -> None:
    client, provider._client = provider._client, None
    if client is not None and provider._loop is asyncio.get_running_loop():
        await client.aclose()
