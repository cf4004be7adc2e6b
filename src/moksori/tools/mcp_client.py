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
shutdown, inside a cancellation shield), and then ends what the child had started
(`mcp_process.ProcessFamily`: its process group and its descendants, also those in sessions of
their own; SIGTERM, SIGKILL after 2 s), so none of them outlives `close()`, a reconnect or the
server's shutdown. Out of reach: a double-forked daemon (init's from the start).

What a server sends is bounded (`moksori.tools.mcp_transports`): one message (a tool result, a
listing) at most `MAX_MESSAGE_BYTES` (4 MiB), over HTTP and stdio, counted as it is read, so a
bigger one is cut off before it is parsed and its call fails with a short error; a stdio child's
stderr goes into our log, named and rate-limited; at most `MAX_TOOLS` tools are taken from one
server. A connect that does not finish within `connect_timeout_s` fails then (the attempt is torn
down in the background, and `close()` waits for that).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moksori.tools.mcp_transports import (
    MAX_MESSAGE_BYTES,
    TOO_LARGE_CODE,
    CappedHTTPTransport,
    capped_stdio_client,
    mib,
    quiet_sdk_logs,
)
from moksori.tools.results import ToolOutcome

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 20
# the most a stdio server's shutdown takes: 2 s after its stdin closes, 2 s after SIGTERM and 2 s
# to reap it after SIGKILL (the SDK's), then 2 s from SIGTERM to SIGKILL and 1 s for SIGKILL to end
# what it left running (`mcp_process.ProcessFamily`), and a margin
SHUTDOWN_S = 10.0
MAX_TOOLS = 128  # from one server; the most OpenAI's API takes in one request
MAX_TOOLS_SEEN = 2048  # stop paging a listing after this many tools, kept or not


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
                 ping_after_s: float = 20.0, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 max_tools: int = MAX_TOOLS) -> None:
        self.target = target
        self.max_message_bytes = max_message_bytes
        self.max_tools = max_tools
        self._warned_tools = False
        self._ready: asyncio.Future[None] | None = None
        self._dying: set[asyncio.Task[None]] = set()  # connect attempts given up, still tearing down
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

        quiet_sdk_logs()
        t = self.target
        if t.command:
            params = StdioServerParameters(command=t.command, args=list(t.args), env=dict(t.env) or None,
                                           cwd=t.cwd)
            return Client(capped_stdio_client(params, name=t.name, max_bytes=self.max_message_bytes))
        if t.url is None:
            raise ValueError(f"MCP server {t.name!r} has neither a command nor a URL")
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(headers={"Accept-Encoding": "identity", **dict(t.headers)},
                                  timeout=httpx2.Timeout(30.0, connect=min(10.0, t.connect_timeout_s), read=300.0))
        # every response is size-capped: wrap the client's own transports (so proxies from the
        # environment still apply, which passing `transport=` would turn off)
        cap = self.max_message_bytes
        http._transport = CappedHTTPTransport(t.name, cap, inner=http._transport)  # noqa: SLF001 - pinned httpx2
        http._mounts = {k: None if v is None else CappedHTTPTransport(t.name, cap, inner=v)  # noqa: SLF001
                        for k, v in http._mounts.items()}  # noqa: SLF001
        return Client(_HTTPTransport(streamable_http_client(t.url, http_client=http,
                                                            max_sse_event_size=self.max_message_bytes), http))

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
            elif ready.cancelled():  # a connect given up on: say why it failed, if it did
                if not _only_cancelled(e):
                    log.warning("MCP server %s: the abandoned connect ended: %s", self.target.name, _describe_exc(e))
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
            self._ready = None
            self._dying = set()
        assert self._lock is not None
        async with self._lock:
            if self.connected:
                return self._client
            await self._stop_owner()
            now = time.monotonic()
            if now < self._retry_at:
                raise MCPUnavailable(f"{self._last_error or 'not reachable'}; retrying in "
                                     f"{self._retry_at - now:.1f} s")
            started = time.monotonic()
            await _load_sdk()  # the first import takes seconds: not on the loop (but within the timeout)
            wait_s = max(1.0, self.target.connect_timeout_s - (time.monotonic() - started))
            ready: asyncio.Future[None] = loop.create_future()
            self._ready = ready
            self._closing = asyncio.Event()
            self._owner = asyncio.create_task(self._own(ready, self._closing), name=f"mcp-{self.target.name}")
            try:
                await asyncio.wait_for(asyncio.shield(ready), wait_s)
            except (MCPUnavailable, asyncio.TimeoutError) as e:
                ready.cancel()  # nobody waits for it any more: the owner must not set an exception on it
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
        ready, self._ready = self._ready, None
        self._client = None
        if owner is None or owner.done():
            return
        if ready is None or not ready.done() or ready.cancelled() or ready.exception() is not None:
            # still inside the client's `__aenter__` (it never looks at `closing`): cancel it now and
            # let it tear down (the child's shutdown is shielded and bounded) in the background
            owner.cancel()
            self._dying.add(owner)
            owner.add_done_callback(self._dying.discard)
            return
        if self._closing is not None:
            self._closing.set()
        try:
            await asyncio.wait_for(asyncio.shield(owner), SHUTDOWN_S)
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
            self._dying.clear()
            return
        await self._stop_owner()
        if self._dying:
            await asyncio.wait(set(self._dying), timeout=SHUTDOWN_S)

    # ------------------------------------------------------------------ calls

    async def list_tools(self, allowed: Sequence[str] | None = None, *, timeout_s: float = 10.0) -> list[MCPToolInfo]:
        """The server's tools (only `allowed` ones when given). Raises MCPUnavailable."""
        client = await self._ensure()
        from mcp import MCPError  # loaded by now (`_load_sdk`)
        from pydantic import ValidationError

        tools: list[MCPToolInfo] = []
        keep = set(allowed) if allowed is not None else None
        seen = 0
        more = False  # the listing went on past what was taken
        cursor = None
        cursors: set[str] = set()
        try:
            async with asyncio.timeout(timeout_s):
                for _ in range(MAX_LIST_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    for t in page.tools:
                        seen += 1
                        if keep is not None and t.name not in keep:
                            continue
                        if len(tools) >= self.max_tools:
                            more = True
                            continue
                        ann = getattr(t, "annotations", None)
                        tools.append(MCPToolInfo(t.name, t.description or "", dict(t.input_schema or {}),
                                                 getattr(ann, "read_only_hint", None) if ann else None))
                    cursor = page.next_cursor
                    if not cursor:
                        break
                    if len(tools) >= self.max_tools:
                        more = True
                        break
                    if cursor in cursors or seen >= MAX_TOOLS_SEEN:
                        log.warning("MCP server %s: stopped reading its tool listing after %d tools (%s)",
                                    self.target.name, seen,
                                    "the same page again" if cursor in cursors else "too many")
                        break
                    cursors.add(cursor)
                    await asyncio.sleep(0)
        except TimeoutError:
            raise MCPUnavailable(f"MCP server {self.target.name} did not list its tools within {timeout_s:g} s") from None
        except ValidationError as e:  # it answered, with something that is not a tool listing
            raise MCPUnavailable(f"MCP server {self.target.name} sent a tool listing that is not valid "
                                 f"({_validation_summary(e)})") from None
        except MCPError as e:
            if e.code in _CONNECTION_CODES and not _too_large(e):
                await self._mark_dead(_describe_exc(e))
                raise MCPUnavailable(self._last_error) from None
            raise MCPUnavailable(f"MCP server {self.target.name} could not list its tools: "
                                 f"{self._error_text(e)}") from None
        except Exception as e:  # noqa: BLE001 - the SDK raises several types; one message for a person
            await self._mark_dead(_describe_exc(e))
            raise MCPUnavailable(self._last_error) from None
        self._last_ok = time.monotonic()
        if more and not self._warned_tools:
            self._warned_tools = True
            log.warning("MCP server %s offers more tools than the %d taken (%d listed%s); the rest are not "
                        "offered", self.target.name, self.max_tools, seen, ", and more pages" if cursor else "")
        return tools

    def _error_text(self, e: Any) -> str:
        """A JSON-RPC error from the server (or the SDK on its behalf), short and for a person."""
        if _too_large(e):
            return _over_limit_text(e, self.target.name, self.max_message_bytes)
        if getattr(e, "code", None) == -32700:  # PARSE_ERROR: the SDK's text carries a pydantic dump
            return f"the MCP server {self.target.name} sent a message that is not valid JSON-RPC"
        text = " ".join(str(getattr(e, "message", e)).split())
        return text[:300] + ("..." if len(text) > 300 else "")

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
            from pydantic import ValidationError

            if _too_large(e):  # cut off before it was parsed; the connection stays
                text = _over_limit_text(e, self.target.name, self.max_message_bytes)
                return ToolOutcome.failure("failed", f"{name}: {text.replace('a message', 'a result', 1)}",
                                           elapsed_s=elapsed())
            if isinstance(e, ValidationError):  # it answered, but not with a tool result: still alive
                self._last_ok = time.monotonic()
                return ToolOutcome.failure("failed", f"{name}: the MCP server {self.target.name} sent a result "
                                           f"that is not valid ({_validation_summary(e)})", elapsed_s=elapsed())
            if isinstance(e, MCPError) and e.code not in _CONNECTION_CODES:
                # the server answered with a JSON-RPC error (unknown tool, bad params): still alive
                return ToolOutcome.failure("failed", f"{name}: {self._error_text(e)}", elapsed_s=elapsed())
            await self._mark_dead(_describe_exc(e))
            return ToolOutcome.failure("unavailable", f"{name}: the MCP server {self.target.name} "
                                       f"stopped answering ({_describe_exc(e)})", elapsed_s=elapsed())
        text = result_text(result)
        if result.is_error:
            return ToolOutcome.failure("failed", f"{name}: {text}", elapsed_s=elapsed())
        return ToolOutcome.success(text, limit=max_chars, elapsed_s=elapsed())


_sdk_loaded = False


async def _load_sdk() -> None:
    """Import the SDK in a thread the first time (seconds on a busy machine, which would otherwise
    stall the event loop and eat into the first connect's timeout)."""
    global _sdk_loaded
    if not _sdk_loaded:
        def load() -> None:
            import mcp.client.stdio
            import mcp.client.streamable_http  # noqa: F401
            from mcp import Client  # noqa: F401

        await asyncio.to_thread(load)
        _sdk_loaded = True


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


_OVER_LIMIT = ("sent a message larger than", "sent a message with more than")


def _too_large(e: BaseException) -> bool:
    """A message over the limits: our stdio transport's error, the HTTP transport's (the SDK
    reports it as a parse error), or the SDK's SSE event limit."""
    from mcp import MCPError

    if not isinstance(e, MCPError):
        return False
    text = str(e.message)
    return e.code == TOO_LARGE_CODE or any(m in text for m in _OVER_LIMIT) or "byte limit" in text


def _over_limit_text(e: BaseException, server: str, max_bytes: int) -> str:
    """`the MCP server X sent a message ...` from the error, whichever limit it was."""
    text = " ".join(str(getattr(e, "message", e)).split())
    if "the MCP server" in text and any(m in text for m in _OVER_LIMIT):
        return text[text.index("the MCP server"):][:200]
    return f"the MCP server {server} sent a message larger than {mib(max_bytes)}"


def _validation_summary(e: Any) -> str:
    """A pydantic ValidationError in a few words: how many problems, and where the first is."""
    try:
        errors = e.errors(include_url=False, include_input=False)
    except Exception:  # noqa: BLE001
        return type(e).__name__
    if not errors:
        return "invalid"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))[:80]
    what = " ".join(str(first.get("msg", "")).split())[:100]
    more = f"; {len(errors) - 1} more problems" if len(errors) > 1 else ""
    return f"{where}: {what}{more}" if where else f"{what}{more}"


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def _only_cancelled(e: BaseException) -> bool:
    return all(isinstance(leaf, asyncio.CancelledError) for leaf in _leaves(e))


def _describe_exc(e: BaseException) -> str:
    """One line for an exception, unwrapping anyio's exception groups (the real cause first, not a
    cancellation it caused)."""
    leaves = _leaves(e) or [e]
    e = next((leaf for leaf in leaves if not isinstance(leaf, asyncio.CancelledError)), leaves[0])
    text = " ".join(str(e).split())
    if any(m in text for m in _OVER_LIMIT):  # ours, maybe wrapped in the SDK's "Failed to parse ..."
        return text[text.index("the MCP server"):] if "the MCP server" in text else text
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
