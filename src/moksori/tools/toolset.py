"""The server-side tool set, built once from settings and shared by every session.

    tools = ServerTools.from_settings(settings.tools)
    warnings = await tools.start()          # connect MCP servers, list their tools
    box = ToolBox(tools.engine_tools())     # engine.tools.Tool: spec + handler
    ...
    await tools.close()                     # ends stdio children

Order and names: built-ins first, then `[[tools.http]]`, then each `[[tools.mcp]]` server's
tools in the order listed. Names must fit what chat APIs accept (`[A-Za-z0-9_-]{1,64}`): other
characters become `_`. A name already taken by a built-in, an HTTP tool or a `reserved` name
(e.g. the phone tools) is a configuration error for HTTP tools; an MCP tool that collides is
offered as `<server>_<tool>` instead, and dropped with a warning if that is taken too.

Handlers never raise: timeouts, dead servers and HTTP errors come back as JSON errors the
LLM can read (`moksori.tools.results`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from moksori.engine.tools import Tool
from moksori.errors import ConfigError
from moksori.providers.base import ToolSpec
from moksori.tools import builtins
from moksori.tools._env import expand, expand_all
from moksori.tools.http_tool import HTTPTool
from moksori.tools.mcp_client import MCPConnection, MCPTarget, MCPToolInfo, MCPUnavailable
from moksori.tools.results import ToolOutcome

if TYPE_CHECKING:
    import datetime as dt

    from moksori.settings import ToolsSettings

log = logging.getLogger(__name__)

_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
Source = Literal["builtin", "http", "mcp"]


def tool_name(raw: str) -> str:
    """A name chat APIs accept: `[A-Za-z0-9_-]`, at most 64 characters."""
    return (re.sub(r"[^A-Za-z0-9_-]", "_", raw) or "tool")[:64]


@dataclass(frozen=True)
class ToolInfo:
    name: str  # as offered to the LLM
    source: Source
    spec: ToolSpec
    timeout_s: float
    server: str | None = None  # MCP server name
    remote_name: str | None = None  # the tool's own name on its MCP server
    read_only: bool | None = None


@dataclass
class _MCPServer:
    name: str
    conn: MCPConnection
    allowed: tuple[str, ...] | None
    timeout_s: float
    listed: bool = False


class ServerTools:
    def __init__(self, *, timezone: str = "UTC", builtin_names: Iterable[str] = ("current_time",),
                 max_result_chars: int = 4000, slow_after_s: float = 1.5, reserved: Iterable[str] = (),
                 now: Callable[[], dt.datetime] | None = None) -> None:
        self.max_chars = max_result_chars
        self.slow_after_s = slow_after_s
        self._reserved = set(reserved)
        self._tools: dict[str, ToolInfo] = {}
        self._http: dict[str, HTTPTool] = {}
        self._mcp: list[_MCPServer] = []
        self._now = now
        self.warnings: list[str] = []
        for b in builtin_names:
            if b not in builtins.BUILTIN_NAMES:
                raise ConfigError(f"tools.builtins: unknown built-in {b!r}",
                                  hint=f"known: {', '.join(builtins.BUILTIN_NAMES)}")
        self._tz = builtins.zone(timezone)
        if "current_time" in builtin_names:
            spec = builtins.current_time_spec(timezone)
            self._add(ToolInfo("current_time", "builtin", ToolSpec(spec["name"], spec["description"],
                                                                    spec["parameters"]), 1.0))

    # ------------------------------------------------------------------ building

    @classmethod
    def from_settings(cls, s: ToolsSettings, *, reserved: Iterable[str] = (),
                      environ: Mapping[str, str] | None = None,
                      now: Callable[[], dt.datetime] | None = None) -> ServerTools:
        """Everything but the MCP listing (that needs the servers: `await start()`).
        `${VAR}` placeholders in headers and env are filled from `environ` (default os.environ)."""
        out = cls(timezone=s.timezone, builtin_names=s.builtins, max_result_chars=s.max_result_chars,
                  slow_after_s=s.slow_after_s, reserved=reserved, now=now)
        for h in s.http:
            out.add_http(h.name, h.url, description=h.description, parameters=h.parameters,
                         headers=expand_all(h.headers, f"tools.http[{h.name}].headers", environ),
                         timeout_s=h.timeout_s, max_response_bytes=h.max_response_bytes)
        names = set()
        for m in s.mcp:
            if m.name in names:
                raise ConfigError(f"tools.mcp: two servers are named {m.name!r}")
            names.add(m.name)
            target = MCPTarget(
                name=m.name,
                command=expand(m.command, f"tools.mcp[{m.name}].command", environ) if m.command else None,
                args=tuple(expand(a, f"tools.mcp[{m.name}].args", environ) for a in m.args),
                env=expand_all(m.env, f"tools.mcp[{m.name}].env", environ), cwd=m.cwd,
                url=expand(m.url, f"tools.mcp[{m.name}].url", environ) if m.url else None,
                headers=expand_all(m.headers, f"tools.mcp[{m.name}].headers", environ),
                connect_timeout_s=m.connect_timeout_s)
            out.add_mcp(target, allowed_tools=m.allowed_tools, timeout_s=m.timeout_s)
        return out

    def _add(self, info: ToolInfo) -> None:
        self._tools[info.name] = info

    def _taken(self, name: str) -> bool:
        return name in self._tools or name in self._reserved

    def add_http(self, name: str, url: str, *, description: str = "", parameters: dict[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                 max_response_bytes: int = 256 * 1024) -> None:
        if not _NAME_OK.match(name):
            raise ConfigError(f"tools.http: {name!r} is not a valid tool name (letters, digits, _ and -)")
        if self._taken(name):
            raise ConfigError(f"tools.http: the tool name {name!r} is already used")
        import httpx

        try:
            u = httpx.URL(url)
        except httpx.InvalidURL as e:
            raise ConfigError(f"tools.http[{name}].url is not a URL: {e}") from None
        if u.scheme not in ("http", "https") or not u.host:
            raise ConfigError(f"tools.http[{name}].url must be an http(s) URL, got {url!r}")
        params = parameters or {"type": "object", "properties": {}}
        _check_schema(params, f"tools.http[{name}].parameters")
        self._http[name] = HTTPTool(name, url, headers=headers, timeout_s=timeout_s,
                                    max_response_bytes=max_response_bytes, max_chars=self.max_chars)
        self._add(ToolInfo(name, "http", ToolSpec(name, description, params), timeout_s))

    def add_mcp(self, target: MCPTarget, *, allowed_tools: Iterable[str] | None = None, timeout_s: float = 10.0,
                connection: MCPConnection | None = None) -> None:
        self._mcp.append(_MCPServer(target.name, connection or MCPConnection(target),
                                    tuple(allowed_tools) if allowed_tools is not None else None, timeout_s))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> list[str]:
        """Connect every MCP server (concurrently) and list its tools. A server that cannot be
        reached gives a warning (returned and logged), not an error: `refresh()` tries again."""
        await asyncio.gather(*(self._list(s) for s in self._mcp if not s.listed))
        return list(self.warnings)

    async def refresh(self) -> list[str]:
        """List the tools of servers that were not reachable before (cheap when all are up)."""
        before = len(self.warnings)
        await self.start()
        return self.warnings[before:]

    async def _list(self, srv: _MCPServer) -> None:
        try:
            tools = await srv.conn.list_tools(srv.allowed, timeout_s=max(srv.timeout_s, 5.0))
        except MCPUnavailable as e:
            self._warn(str(e))
            return
        srv.listed = True
        if srv.allowed is not None:
            missing = set(srv.allowed) - {t.name for t in tools}
            if missing:
                self._warn(f"MCP server {srv.name} has no tool named {', '.join(sorted(missing))}")
        for t in tools:
            self._add_mcp_tool(srv, t)

    def _add_mcp_tool(self, srv: _MCPServer, t: MCPToolInfo) -> None:
        name = tool_name(t.name)
        if self._taken(name):
            alt = tool_name(f"{srv.name}_{t.name}")
            if self._taken(alt):
                self._warn(f"MCP tool {t.name} of server {srv.name} is not offered: the names {name} and {alt} "
                           "are already used")
                return
            self._warn(f"MCP tool {t.name} of server {srv.name} is offered as {alt} ({name} is already used)")
            name = alt
        schema = t.input_schema if isinstance(t.input_schema, dict) and t.input_schema else \
            {"type": "object", "properties": {}}
        self._add(ToolInfo(name, "mcp", ToolSpec(name, t.description, schema), srv.timeout_s, server=srv.name,
                           remote_name=t.name, read_only=t.read_only))

    def _warn(self, msg: str) -> None:
        log.warning("%s", msg)
        self.warnings.append(msg)

    async def close(self) -> None:
        await asyncio.gather(*(s.conn.close() for s in self._mcp), *(h.close() for h in self._http.values()),
                             return_exceptions=True)

    # ------------------------------------------------------------------ use

    def names(self) -> list[str]:
        return list(self._tools)

    def info(self, name: str) -> ToolInfo | None:
        return self._tools.get(name)

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for t in self._tools.values())

    async def run(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        """Run a tool by its offered name. Never raises (but lets cancellation through)."""
        info = self._tools.get(name)
        if info is None:
            return ToolOutcome.failure("failed", f"there is no tool named {name}")
        if not isinstance(arguments, dict):
            return ToolOutcome.failure("bad_arguments", "arguments must be a JSON object")
        try:
            if info.source == "builtin":
                return ToolOutcome.success(builtins.current_time(self._tz, self._now), limit=self.max_chars)
            if info.source == "http":
                problem = _schema_problem(info.spec.parameters, arguments)
                if problem:
                    return ToolOutcome.failure("bad_arguments", f"{name}: {problem}")
                return await self._http[name].call(arguments)
            srv = next(s for s in self._mcp if s.name == info.server)
            return await srv.conn.call(info.remote_name or name, arguments, timeout_s=info.timeout_s,
                                       max_chars=self.max_chars)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("tool %s failed unexpectedly", name)
            return ToolOutcome.failure("failed", f"{name}: {type(e).__name__}: {e}")

    def engine_tools(self) -> list[Tool]:
        """`engine.tools.Tool`s (spec + handler) for a `ToolBox`. Give the box a timeout of at
        least `info(name).timeout_s` (+1 s): each handler enforces its own."""
        def handler_for(name: str) -> Callable[[dict[str, Any]], Any]:
            async def handler(args: dict[str, Any]) -> ToolOutcome:
                return await self.run(name, args)  # the box reads `.text`, `.ok` and `.kind`
            return handler

        # an MCP server's tool is recorded as one `mcp_call` item under its server's name
        # (`Tool.mcp_server`), as a Realtime client's MCP tools are
        return [Tool(info.spec, handler_for(name), timeout_s=info.timeout_s + 1.0,
                     mcp_server=info.server if info.source == "mcp" else None)
                for name, info in self._tools.items()]


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ConfigError(f"{where} must be a JSON schema of type object")
    try:
        import jsonschema

        jsonschema.validators.validator_for(schema).check_schema(schema)
    except ImportError:  # pragma: no cover - jsonschema comes with the mcp SDK
        return
    except Exception as e:  # noqa: BLE001 - jsonschema.SchemaError
        raise ConfigError(f"{where} is not a valid JSON schema: {getattr(e, 'message', e)}") from None


def _schema_problem(schema: dict[str, Any], args: dict[str, Any]) -> str | None:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover
        return None
    err = jsonschema.validators.validator_for(schema)(schema).iter_errors(args)
    first = next(iter(err), None)
    if first is None:
        return None
    where = "/".join(str(p) for p in first.absolute_path)
    return f"bad arguments{' at ' + where if where else ''}: {first.message}"[:200]


async def build_server_tools(tools_settings: ToolsSettings, *,
                             reserved: Iterable[str] = ()) -> tuple[ServerTools, list[str]]:
    """Build the set from `settings.tools` and list the MCP servers' tools: (set, warnings).
    Call once at server start; `engine_tools()` then goes into every session's `ToolBox`."""
    tools = ServerTools.from_settings(tools_settings, reserved=reserved)
    return tools, await tools.start()
