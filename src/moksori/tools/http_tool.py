"""HTTP tools: Moksori POSTs the call's arguments as JSON to a URL and reads the answer.

This is how a user wires up the weather or booking lookups voice-agent demos show, without
writing an MCP server: `[[tools.http]]` with a name, a description, a JSON schema and a URL.
The answer (JSON or text) goes back to the LLM. Redirects are not followed, the answer is
read up to `max_response_bytes`, and every failure (timeout, refused connection, HTTP 4xx/5xx,
an answer too large) comes back as a JSON error the LLM can read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from moksori.providers.http import error_message, truncate
from moksori.tools.results import ToolOutcome


class HTTPTool:
    def __init__(self, name: str, url: str, *, headers: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                 max_response_bytes: int = 256 * 1024, max_chars: int = 4000) -> None:
        self.name = name
        self.url = str(httpx.URL(url))
        self.headers = {"Content-Type": "application/json", "Accept": "application/json, text/plain;q=0.9",
                        **dict(headers or {})}
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.max_chars = max_chars
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a client's pool belongs to one loop
            self._client = httpx.AsyncClient(follow_redirects=False,
                                             timeout=httpx.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s)))
            self._loop = loop
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

    async def call(self, arguments: dict[str, Any]) -> ToolOutcome:
        started = time.monotonic()
        host = httpx.URL(self.url).host
        try:
            async with asyncio.timeout(self.timeout_s):
                status, ctype, body = await self._post(arguments)
        except TimeoutError:
            return ToolOutcome.failure("timeout", f"{self.name}: {host} did not answer within {self.timeout_s:g} s",
                                       elapsed_s=time.monotonic() - started)
        except _TooLarge:
            return ToolOutcome.failure("too_large", f"{self.name}: the answer from {host} is larger than "
                                       f"{self.max_response_bytes} bytes", elapsed_s=time.monotonic() - started)
        except httpx.HTTPError as e:
            return ToolOutcome.failure("unavailable", f"{self.name}: cannot reach {host} "
                                       f"({type(e).__name__}: {truncate(str(e), 120)})",
                                       elapsed_s=time.monotonic() - started)
        elapsed = time.monotonic() - started
        if 300 <= status < 400:
            return ToolOutcome.failure("failed", f"{self.name}: {host} answered with a redirect (HTTP {status}), "
                                       "which is not followed", elapsed_s=elapsed)
        if status >= 400:
            return ToolOutcome.failure("failed", f"{self.name}: {host} returned HTTP {status}: {error_message(body)}",
                                       elapsed_s=elapsed)
        text = body.decode("utf-8", errors="replace")
        if "json" in ctype:
            try:
                text = json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
            except ValueError:
                pass  # say what the server said
        return ToolOutcome.success(text.strip() or "(empty answer)", limit=self.max_chars, elapsed_s=elapsed)

    async def _post(self, arguments: dict[str, Any]) -> tuple[int, str, bytes]:
        async with self._http().stream("POST", self.url, content=json.dumps(arguments, ensure_ascii=False).encode(),
                                       headers=self.headers) as resp:
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
                raise _TooLarge
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise _TooLarge
                chunks.append(chunk)
            return resp.status_code, resp.headers.get("content-type", ""), b"".join(chunks)


class _TooLarge(Exception):
    pass
