"""A connection to one MCP server, over stdio (a child process) or Streamable HTTP.

Built on the official `mcp` SDK, version 2.x (pinned): `mcp.Client` with
`StdioServerParameters` or a `streamable_http_client` transport. 2.x was chosen over 1.x
knowingly: it is what `openai-agents` (our Realtime conformance client) already installs, so
one MCP stack is in the environment, not two; it brings `httpx2` (which the `openai` SDK 3.x
uses too), while the rest of Moksori keeps `httpx`.

The SDK's client lives inside anyio task groups and cancel scopes, which must be entered and
left by the same task. So each connection has an *owner task* that opens the client, waits
until it is told to close, and closes it; calls from any task go through the open session.
When a call finds the connection broken (the child died, the HTTP server went away), the
connection is marked dead and the next call reconnects, after a short backoff so that a
server that cannot start is not respawned in a hot loop. A call is never retried by itself:
tools can have effects.

Shutdown closes the child's stdin, waits 2 s, then kills its process tree (the SDK's own
`stdio_client` does this inside a cancellation shield), so no child outlives `close()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moksori.tools.results import ToolOutcome

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 20


@dataclass(frozen=True)
class MCPTarget:
    """Where an MCP server is: `command` (+ args, env, cwd) for stdio, or `url` (+ headers)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    connect_timeout_s: float = 15.0

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"

    def describe(self) -> str:
        return f"{self.command} (stdio)" if self.command else f"{self.url}"


@dataclass(frozen=True)
class MCPToolInfo:
    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool | None = None  # the server's readOnlyHint annotation, if any

    def to_wire(self) -> dict[str, Any]:
        """As in a Realtime `mcp_list_tools` item."""
        out: dict[str, Any] = {"name": self.name, "input_schema": self.input_schema,
                               "description": self.description}
        if self.read_only is not None:
            out["annotations"] = {"readOnlyHint": self.read_only}
        return out


class MCPUnavailable(Exception):
    """The server could not be reached or started (message is for a person)."""


class MCPConnection:
    def __init__(self, target: MCPTarget, *, backoff_s: tuple[float, float] = (1.0, 30.0),
                 ping_after_s: float = 20.0) -> None:
        self.target = target
        self._backoff = backoff_s
        # after this long without an answer, check the server before a call: one that died
        # while idle is then replaced before the call instead of failing it
        self.ping_after_s = ping_after_s
        self._last_ok = 0.0
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: asyncio.Task[None] | None = None
        self._closing: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self.connects = 0  # how many times a connection was opened (tests, diagnostics)

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        return self._client is not None and self._owner is not None and not self._owner.done()

    @property
    def last_error(self) -> str:
        return self._last_error

    # ------------------------------------------------------------------ connecting

    def _make_client(self) -> Any:
        from mcp import Client, StdioServerParameters

        t = self.target
        if t.command:
            params = StdioServerParameters(command=t.command, args=list(t.args), env=dict(t.env) or None,
                                           cwd=t.cwd)
            return Client(params)
        if t.url is None:
            raise ValueError(f"MCP server {t.name!r} has neither a command nor a URL")
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(headers=dict(t.headers),
                                  timeout=httpx2.Timeout(30.0, connect=min(10.0, t.connect_timeout_s), read=300.0))
        return Client(_HTTPTransport(streamable_http_client(t.url, http_client=http), http))

    async def _own(self, ready: asyncio.Future[None], closing: asyncio.Event) -> None:
        try:
            async with self._make_client() as client:
                self._client = client
                if not ready.done():
                    ready.set_result(None)
                await closing.wait()
        except BaseException as e:
            if not ready.done():
                ready.set_exception(MCPUnavailable(_describe_exc(e)))
            elif not isinstance(e, asyncio.CancelledError):
                log.warning("MCP server %s: connection ended: %s", self.target.name, _describe_exc(e))
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self._client = None

    async def _ensure(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (the old one's tasks are gone)
            self._loop, self._lock, self._owner, self._client = loop, asyncio.Lock(), None, None
        assert self._lock is not None
        async with self._lock:
            if self.connected:
                return self._client
            await self._stop_owner()
            now = time.monotonic()
            if now < self._retry_at:
                raise MCPUnavailable(f"{self._last_error or 'not reachable'}; retrying in "
                                     f"{self._retry_at - now:.1f} s")
            ready: asyncio.Future[None] = loop.create_future()
            self._closing = asyncio.Event()
            self._owner = asyncio.create_task(self._own(ready, self._closing), name=f"mcp-{self.target.name}")
            try:
                await asyncio.wait_for(asyncio.shield(ready), self.target.connect_timeout_s)
            except (MCPUnavailable, asyncio.TimeoutError) as e:
                await self._stop_owner()
                msg = str(e) if isinstance(e, MCPUnavailable) else \
                    f"no answer within {self.target.connect_timeout_s:g} s"
                self._note_failure(f"cannot connect to MCP server {self.target.name} "
                                   f"({self.target.describe()}): {msg}")
                raise MCPUnavailable(self._last_error) from None
            self._failures = 0
            self._retry_at = 0.0
            self.connects += 1
            self._last_ok = time.monotonic()
            return self._client

    def _note_failure(self, message: str) -> None:
        self._failures += 1
        self._last_error = message
        lo, hi = self._backoff
        self._retry_at = time.monotonic() + min(hi, lo * 2 ** (self._failures - 1))
        log.warning("%s", message)

    async def _stop_owner(self) -> None:
        owner, self._owner = self._owner, None
        self._client = None
        if owner is None or owner.done():
            return
        if self._closing is not None:
            self._closing.set()
        try:
            await asyncio.wait_for(asyncio.shield(owner), 8.0)  # stdin close, 2 s grace, then kill
        except asyncio.TimeoutError:
            owner.cancel()
            await asyncio.gather(owner, return_exceptions=True)
        except Exception:  # noqa: BLE001 - the connection's own error was logged already
            pass

    async def _mark_dead(self, why: str) -> None:
        self._last_error = f"MCP server {self.target.name}: {why}"
        assert self._lock is not None
        async with self._lock:
            await self._stop_owner()

    async def _alive(self, client: Any) -> bool:
        """A cheap round trip (`ping` is gone from the 2026-07-28 protocol; `tools/list` is not)."""
        from mcp import MCPError

        try:
            async with asyncio.timeout(min(2.0, self.target.connect_timeout_s)):
                await client.list_tools(cache_mode="refresh")
        except asyncio.CancelledError:
            raise
        except MCPError as e:
            if e.code not in _CONNECTION_CODES:
                return True  # it answered, if only with an error
            await self._mark_dead(f"no answer to a check ({_describe_exc(e)})")
            return False
        except Exception as e:  # noqa: BLE001 - dead or stuck: either way, reconnect
            await self._mark_dead(f"no answer to a check ({_describe_exc(e)})")
            return False
        self._last_ok = time.monotonic()
        return True

    async def close(self) -> None:
        """Close the session and end a stdio child (idempotent; call from the loop that used it)."""
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            self._owner = None  # that loop is gone; its child saw EOF when the pipes closed
            return
        await self._stop_owner()

    # ------------------------------------------------------------------ calls

    async def list_tools(self, allowed: Sequence[str] | None = None, *, timeout_s: float = 10.0) -> list[MCPToolInfo]:
        """The server's tools (only `allowed` ones when given). Raises MCPUnavailable."""
        client = await self._ensure()
        tools: list[MCPToolInfo] = []
        cursor = None
        try:
            async with asyncio.timeout(timeout_s):
                for _ in range(MAX_LIST_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    for t in page.tools:
                        ann = getattr(t, "annotations", None)
                        tools.append(MCPToolInfo(t.name, t.description or "", dict(t.input_schema or {}),
                                                 getattr(ann, "read_only_hint", None) if ann else None))
                    cursor = page.next_cursor
                    if not cursor:
                        break
        except TimeoutError:
            raise MCPUnavailable(f"MCP server {self.target.name} did not list its tools within {timeout_s:g} s") from None
        except Exception as e:  # noqa: BLE001 - the SDK raises several types; one message for a person
            await self._mark_dead(_describe_exc(e))
            raise MCPUnavailable(self._last_error) from None
        self._last_ok = time.monotonic()
        if allowed is not None:
            keep = set(allowed)
            tools = [t for t in tools if t.name in keep]
        return tools

    async def call(self, name: str, arguments: dict[str, Any], *, timeout_s: float,
                   max_chars: int = 4000) -> ToolOutcome:
        """Call one tool. Never raises: every failure is a `ToolOutcome` the LLM can read."""
        started = time.monotonic()

        def elapsed() -> float:
            return time.monotonic() - started

        try:
            client = await self._ensure()
            if time.monotonic() - self._last_ok > self.ping_after_s and not await self._alive(client):
                client = await self._ensure()
        except MCPUnavailable as e:
            return ToolOutcome.failure("unavailable", str(e), elapsed_s=elapsed())
        try:
            async with asyncio.timeout(timeout_s):
                result = await client.call_tool(name, arguments, read_timeout_seconds=timeout_s)
            self._last_ok = time.monotonic()
        except TimeoutError:
            return ToolOutcome.failure("timeout", f"the tool {name} did not answer within {timeout_s:g} s",
                                       elapsed_s=elapsed())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every SDK failure becomes a tool outcome the LLM reads
            from mcp import MCPError

            if isinstance(e, MCPError) and e.code not in _CONNECTION_CODES:
                # the server answered with a JSON-RPC error (unknown tool, bad params): still alive
                return ToolOutcome.failure("failed", f"{name}: {e.message}", elapsed_s=elapsed())
            await self._mark_dead(_describe_exc(e))
            return ToolOutcome.failure("unavailable", f"{name}: the MCP server {self.target.name} "
                                       f"stopped answering ({_describe_exc(e)})", elapsed_s=elapsed())
        text = result_text(result)
        if result.is_error:
            return ToolOutcome.failure("failed", f"{name}: {text}", elapsed_s=elapsed())
        return ToolOutcome.success(text, limit=max_chars, elapsed_s=elapsed())


def _connection_codes() -> frozenset[int]:
    try:
        from mcp_types import CONNECTION_CLOSED

        return frozenset({CONNECTION_CLOSED})
    except ImportError:  # pragma: no cover - older mcp-types
        return frozenset({-32000})


_CONNECTION_CODES = _connection_codes()


def result_text(result: Any) -> str:
    """The text of a CallToolResult: text blocks joined; structured content as JSON."""
    import json

    parts: list[str] = []
    for block in result.content or ():
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} omitted]")
        elif kind == "resource":
            res = getattr(block, "resource", None)
            parts.append(getattr(res, "text", None) or f"[resource {getattr(res, 'uri', '')}]")
        elif kind == "resource_link":
            parts.append(f"[link {getattr(block, 'uri', '')}]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, default=str)
    return "\n".join(parts)


def _describe_exc(e: BaseException) -> str:
    """One line for an exception, unwrapping anyio's exception groups."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    text = " ".join(str(e).split())
    if isinstance(e, FileNotFoundError):
        return f"command not found: {e.filename or text}"
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


class _HTTPTransport:
    """`streamable_http_client(...)` plus closing the httpx2 client we made for it."""

    def __init__(self, inner: Any, http: Any) -> None:
        self._inner = inner
        self._http = http

    async def __aenter__(self) -> Any:
        await self._http.__aenter__()
        try:
            return await self._inner.__aenter__()
        except BaseException:
            await self._http.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            return await self._inner.__aexit__(*exc)
        finally:
            await self._http.__aexit__(None, None, None)
