"""The server-side tool set, built once from settings and shared by every session.

    tools = ServerTools.from_settings(settings.tools)
    warnings = await tools.start()          # connect MCP servers, list their tools
    box = ToolBox(tools.engine_tools())     # engine.tools.Tool: spec + handler
    ...
    await tools.close()                     # ends stdio children

Order and names: built-ins first, then `[[tools.http]]`, then each `[[tools.mcp]]` server's
tools, servers in config order and each server's tools in the order it lists them. Names must
fit what chat APIs accept (`[A-Za-z0-9_-]{1,64}`): other characters become `_`. A name already
taken by a built-in, an HTTP tool or a `reserved` name (e.g. the phone tools) is a configuration
error for HTTP tools; an MCP tool that collides is offered as `<server>_<tool>` instead, and
dropped with a warning if that is taken too.

Who keeps a contested name is decided by config order, not by which server answers first: the
servers are listed concurrently, but their tools are named in config order once every listing
has finished, so the first configured server's `echo` is `echo` on every start at which it
answers (one that cannot be reached is named when `refresh()` reaches it). A name, once
given, is never taken back while the process runs: a server listed later (one that was down at
start and is reached by `refresh()`) gets only the names still free, even when it comes first
in the config, because live sessions already call the name and it must keep meaning the same
tool. That case is warned about, naming the holder; a restart with every server up restores
config order.

At most `max_tools` (default 128, the most OpenAI accepts in one request) are offered in all:
built-ins and HTTP tools first (more HTTP tools than that is a configuration error), then MCP
tools in the order above; the rest are not offered (nor callable), with one warning per
listing that counts and names them.

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
MAX_TOOLS = 128  # tools offered in all: the most OpenAI's chat and Responses APIs accept in one request
_NAMED_IN_WARNING = 20  # left-out tools named in the one warning; the rest are counted
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
                 now: Callable[[], dt.datetime] | None = None, max_tools: int = MAX_TOOLS) -> None:
        self.max_chars = max_result_chars
        self.max_tools = max_tools
        self.slow_after_s = slow_after_s
        self._reserved = set(reserved)
        self._tools: dict[str, ToolInfo] = {}
        self._http: dict[str, HTTPTool] = {}
        self._mcp: list[_MCPServer] = []
        self._now = now
        self._listing = asyncio.Lock()  # one start()/refresh() at a time: a server is named once
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
        if len(self._tools) >= self.max_tools:
            raise ConfigError(f"tools.http: {name!r} is one tool too many: at most {self.max_tools} tools are "
                              "offered in all, built-ins included")
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
        """Connect every MCP server not listed yet (concurrently) and list its tools, then name
        them in config order (see the module's docstring). A server that cannot be reached gives
        a warning (returned and logged), not an error: `refresh()` tries again."""
        async with self._listing:
            pending = [s for s in self._mcp if not s.listed]
            listings = await asyncio.gather(*(self._fetch(s) for s in pending))
            left_out: list[tuple[_MCPServer, MCPToolInfo]] = []
            for srv, listing in zip(pending, listings):  # config order, whichever answered first
                if isinstance(listing, MCPUnavailable):
                    self._warn(str(listing))
                    continue
                srv.listed = True
                if srv.allowed is not None:
                    missing = set(srv.allowed) - {t.name for t in listing}
                    if missing:
                        self._warn(f"MCP server {srv.name} has no tool named {', '.join(sorted(missing))}")
                for t in listing:
                    if len(self._tools) >= self.max_tools:
                        left_out.append((srv, t))
                    else:
                        self._add_mcp_tool(srv, t)
            if left_out:
                self._warn_left_out(left_out)
        return list(self.warnings)

    async def refresh(self) -> list[str]:
        """List the tools of servers that were not reachable before (cheap when all are up).
        Names already given are kept (see the module's docstring)."""
        before = len(self.warnings)
        await self.start()
        return self.warnings[before:]

    async def _fetch(self, srv: _MCPServer) -> list[MCPToolInfo] | MCPUnavailable:
        try:
            return await srv.conn.list_tools(srv.allowed, timeout_s=max(srv.timeout_s, 5.0))
        except MCPUnavailable as e:
            return e

    def _add_mcp_tool(self, srv: _MCPServer, t: MCPToolInfo) -> None:
        name = tool_name(t.name)
        if self._taken(name):
            alt = tool_name(f"{srv.name}_{t.name}")
            if self._taken(alt):
                self._warn(f"MCP tool {t.name} of server {srv.name} is not offered: the names {name} and {alt} "
                           "are already used")
                return
            self._warn(f"MCP tool {t.name} of server {srv.name} is offered as {alt} ({name} is already used"
                       f"{self._holder(name, srv)})")
            name = alt
        schema = t.input_schema if isinstance(t.input_schema, dict) and t.input_schema else \
            {"type": "object", "properties": {}}
        self._add(ToolInfo(name, "mcp", ToolSpec(name, t.description, schema), srv.timeout_s, server=srv.name,
                           remote_name=t.name, read_only=t.read_only))

    def _holder(self, name: str, srv: _MCPServer) -> str:
        """Who holds `name`, for the warning; says so when a later-configured server got it first."""
        info = self._tools.get(name)
        if info is None:
            return ""
        if info.source != "mcp":
            return f" by a{'n' if info.source == 'http' else ''} {info.source} tool"
        order = [s.name for s in self._mcp]
        if info.server in order and order.index(info.server) > order.index(srv.name):
            return (f" by MCP server {info.server}, listed while {srv.name} was unreachable; a restart with "
                    "both up gives it back")
        return f" by MCP server {info.server}"

    def _warn_left_out(self, left_out: list[tuple[_MCPServer, MCPToolInfo]]) -> None:
        per_server: dict[str, int] = {}
        for srv, _ in left_out:
            per_server[srv.name] = per_server.get(srv.name, 0) + 1
        named = ", ".join(f"{srv.name}/{t.name}" for srv, t in left_out[:_NAMED_IN_WARNING])
        more = f" and {len(left_out) - _NAMED_IN_WARNING} more" if len(left_out) > _NAMED_IN_WARNING else ""
        counts = ", ".join(f"{n} of {name}" for name, n in per_server.items())
        self._warn(f"{len(left_out)} MCP tool(s) are not offered: at most {self.max_tools} tools are offered in "
                   f"all ({counts}): {named}{more}")

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
