"""What every provider speaking HTTP to an OpenAI-compatible server shares: base-URL checks,
one client per event loop, and translating httpx failures into the project's error vocabulary."""

from __future__ import annotations

import asyncio
import json
import re

import httpx

from moksori.errors import ConfigError, ProviderError, ProviderTimeout, is_retryable_status

MAX_ERROR_CHARS = 300
# An error answer's body is read this far and no further: its message is cut to MAX_ERROR_CHARS
# anyway, and a 1 GB HTTP 500 body read whole stalled the event loop (every session) ~5 s and
# left the process at 4.7 GB.
MAX_ERROR_BODY_BYTES = 64 * 1024

_LEADING_SPACE = re.compile(r"\s*")


def truncate(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    # cut before normalising whitespace, which would otherwise run over all of a huge text
    m = _LEADING_SPACE.match(text)
    start = m.end() if m else 0
    text = " ".join(text[start:start + 4 * limit].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def read_at_most(resp: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of a streamed response's body, and whether that was all of it.
    Past the limit nothing more is read: the response is closed (its connection dropped)."""
    buf = bytearray()
    async for chunk in resp.aiter_bytes():
        if len(buf) + len(chunk) > limit:
            buf += chunk[: limit - len(buf)]
            await resp.aclose()
            return bytes(buf), False
        buf += chunk
    return bytes(buf), True


def size_text(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n / 1024:g} KiB" if n >= 1024 else f"{n} bytes"


def too_large(what: str, host: str, limit: int, provider: str, kind: str = "an answer") -> ProviderError:
    """A body past its cap: permanent (the same request would get the same answer)."""
    return ProviderError(f"{what} server {host} sent {kind} larger than {size_text(limit)}; not read further",
                         retryable=False, provider=provider)


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


def redirect_error(what: str, host: str, resp: httpx.Response, provider: str) -> ProviderError:
    """A 3xx: redirects are not followed, and not retried (the same request gets the same answer)."""
    where = resp.headers.get("location")
    try:
        target = str(resp.url.join(where)) if where else "nowhere (no Location header)"
    except (httpx.InvalidURL, ValueError):
        target = where or ""
    return ProviderError(f"{what} server {host} redirected to {truncate(target, 200)}, not followed "
                         f"(HTTP {resp.status_code})", retryable=False, status=resp.status_code, provider=provider,
                         hint="set the base URL to the address it redirects to")


async def answer_error(what: str, host: str, resp: httpx.Response, provider: str, *,
                       key_hint: str = "check the API key") -> ProviderError | None:
    """The error for a streamed answer that is a redirect or a non-2xx status, else None. Of an
    error's body at most MAX_ERROR_BODY_BYTES are read (its message), then it is closed."""
    if resp.status_code < 300:
        return None
    if resp.status_code < 400:
        return redirect_error(what, host, resp, provider)
    try:
        raw, _ = await read_at_most(resp, MAX_ERROR_BODY_BYTES)
    except httpx.HTTPError:
        raw = b""  # the status says what went wrong; the body would only add detail
    await resp.aclose()
    return status_error(what, host, resp, raw, provider, key_hint=key_hint)


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
