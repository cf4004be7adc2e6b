"""MCP servers a Realtime client names in `session.update` (`{"type": "mcp", "server_url", ...}`),
run for one connection, with either brain. The wire shapes are
`moksori.protocols.realtime.mcp`; the MCP client is `moksori.tools.mcp_client`.

    mcp = RealtimeMCP(host, settings.tools)
    mcp.sync(cfg.mcp_tools)          # after each session.update: list new servers, drop removed ones
    kw["reply_tools"] = mcp.for_response(o.mcp_tools)  # response.create's own: that reply only
    mcp.response_done(response_id)   # just before its response.done: MCP items still open end (cancelled),
                                     # the servers it named for itself are dropped
    mcp.note_call(e)                 # on E.AgentToolCall, just before the engine runs the handler
    mcp.answer(item)                 # the client's mcp_approval_response
    await mcp.close()

MCP tools in `response.create` serve that response only (as in the GA API): when the reply
starts, each server not already listed for the session with the same settings is listed, its
`mcp_list_tools` item going out as an output item of the response; its tools join the reply's
tool box (`ResponseOptions.reply_tools`), not the session's, and its connection closes when the
response is done.

Each server's tools go into the session's tool box as server-side tools, so the engine runs
them inside the reply and the LLM continues with the result. With the realtime brain the same
tools are offered to the upstream as function tools (`host.tools_changed()` after each listing
or drop; a response's own servers through the reply's tools): the brain's reply runs the
upstream's call through the same handler and sends the output back up. Their handler speaks the
Realtime protocol around the call: an `mcp_approval_request` item and a wait for the client's
answer when `require_approval` says so, then the `mcp_call` item and its events. The call is
parsed as soon as the LLM has written it, often while the words before it are still being
synthesised or paced out; the request goes out after their last audio (`host.when_sent`), and
`realtime_mcp_approval_timeout_s` counts from then: the client cannot answer a request it has
not been shown.

Only `server_url`s under an entry of `tools.realtime_mcp_allow` are reached (see
`moksori.tools.allowlist`); any other is reported as `mcp_list_tools.failed` without a
connection attempt. The client's `headers` (and `authorization`) go to that server only.
Nothing here raises into the session: a dead server is a failed listing or a failed call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from moksori.engine import events as E
from moksori.engine.memory import new_id
from moksori.engine.tools import Tool, ToolBox
from moksori.errors import ConfigError
from moksori.protocols import realtime as rt
from moksori.providers.base import ToolSpec
from moksori.tools.allowlist import URLAllowList
from moksori.tools.mcp_client import MCPConnection, MCPTarget, MCPToolInfo, MCPUnavailable
from moksori.tools.results import ToolOutcome
from moksori.tools.toolset import tool_name

if TYPE_CHECKING:
    from moksori.settings import ToolsSettings

log = logging.getLogger("moksori.realtime.mcp")

LIST_TIMEOUT_S = 10.0
MAX_KEPT_ITEMS = 256
MAX_SERVERS = 8  # MCP servers per session: each is a connection this server holds open
# an approval request waits behind the words before its call (their audio still going out) at
# most this long; never shown by then, the call does not run
SHOW_TIMEOUT_S = 300.0


class MCPHost(Protocol):
    """What the Realtime connection gives this module."""

    ev: rt.ServerEvents

    def send(self, event: dict[str, Any] | None) -> None: ...
    def error(self, message: str, *, code: str = ..., param: str | None = ..., event_id: str | None = ...,
              kind: str = ...) -> None: ...
    @property
    def toolbox(self) -> ToolBox: ...
    def client_tool_names(self) -> set[str]: ...
    def tools_changed(self) -> None: ...
    def output_item_added(self, response_id: str, item: dict[str, Any]) -> int | None: ...
    def output_item_done(self, response_id: str, index: int | None, item: dict[str, Any]) -> None: ...
    def send_in(self, response_id: str, event: dict[str, Any] | None) -> None:
        """Send an event of one of the response's items, in its place among the response's events."""
        ...
    def when_sent(self, response_id: str, fn: Callable[[], None]) -> None:
        """Call `fn()` once the response's events so far have gone out to the client."""
        ...


@dataclass
class _Server:
    cfg: rt.MCPToolConfig
    list_item_id: str
    conn: MCPConnection | None = None
    tools: dict[str, MCPToolInfo] = field(default_factory=dict)  # LLM name -> the server's tool
    task: asyncio.Task[None] | None = None
    over_limit: bool = False
    response_id: str | None = None  # a server `response.create` named for that response only
    output_index: int | None = None  # ... its `mcp_list_tools` item's place in the response's output
    listing: bool = False  # its `mcp_list_tools` item is out and not done yet


class RealtimeMCP:
    def __init__(self, host: MCPHost, settings: ToolsSettings) -> None:
        self.host = host
        self.call_timeout_s = settings.realtime_mcp_timeout_s
        self.approval_timeout_s = settings.realtime_mcp_approval_timeout_s
        self.max_chars = settings.max_result_chars
        try:
            self.allow: URLAllowList | None = URLAllowList(settings.realtime_mcp_allow)
            self._allow_error = ""
        except ConfigError as e:
            self.allow, self._allow_error = None, str(e)
        self._servers: dict[str, _Server] = {}
        self._owner: dict[str, _Server] = {}  # LLM tool name -> its server
        # response id -> the servers `response.create` named for that response only
        self._reply_servers: dict[str, list[_Server]] = {}
        # LLM name -> (response_id, arguments, mcp_call item id) of the call the engine announced
        # last: a reply runs its tools one after the other, each handler right after its `AgentToolCall`
        self._calls: dict[str, tuple[str, str, str | None]] = {}
        self._approvals: dict[str, tuple[str, asyncio.Future[tuple[bool, str | None]]]] = {}
        # response id -> its `mcp_call` items announced and not done yet: item id -> (output
        # index, the item as it ends if the response ends first: failed, cancelled)
        self._open_calls: dict[str, dict[str, tuple[int | None, dict[str, Any]]]] = {}
        # responses that went on after an approval: a client that follows OpenAI's flow sends
        # `response.create` after its answer, which this reply already serves
        self.resumed: set[str] = set()
        # the MCP items of this session as last sent, for `conversation.item.retrieve`
        self.items: dict[str, dict[str, Any]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ servers

    def owns(self, name: str) -> bool:
        return name in self._owner or any(name in srv.tools for srvs in self._reply_servers.values()
                                          for srv in srvs)

    def sync(self, configs: tuple[rt.MCPToolConfig, ...]) -> None:
        """Make the session's MCP servers those of `configs`: a new or changed server is
        listed (in the background), a removed one is dropped with its tools."""
        wanted = {c.server_label: c for c in configs}
        for label, srv in list(self._servers.items()):
            if wanted.get(label) != srv.cfg:
                self._drop(label)
        for label, cfg in wanted.items():
            if label not in self._servers:
                srv = _Server(cfg, new_id("mcpl"), over_limit=len(self._servers) >= MAX_SERVERS)
                self._servers[label] = srv
                srv.task = asyncio.get_running_loop().create_task(self._list(srv), name=f"mcp-list-{label}")

    def _drop(self, label: str) -> None:
        srv = self._servers.pop(label)
        if srv.task is not None and not srv.task.done():
            srv.task.cancel()
        for name in srv.tools:
            self.host.toolbox.remove(name)
            self._owner.pop(name, None)
            self._calls.pop(name, None)
        if srv.tools:
            self.host.tools_changed()
        self._close_conn(srv)

    def for_response(self, configs: tuple[rt.MCPToolConfig, ...]) -> Callable[[str], Awaitable[list[Tool]]]:
        """The MCP tools of one `response.create`, for `ResponseOptions.reply_tools`: the reply
        lists its servers when it starts (a server the session already has with the same
        settings is not listed again: its tools are in the session's box) and gets their tools."""

        async def tools_for(response_id: str) -> list[Tool]:
            servers: list[_Server] = []
            for cfg in configs:
                if self._servers.get(cfg.server_label, None) is not None \
                        and self._servers[cfg.server_label].cfg == cfg:
                    continue
                over = len(self._servers) + sum(map(len, self._reply_servers.values())) + len(servers) >= MAX_SERVERS
                servers.append(_Server(cfg, new_id("mcpl"), over_limit=over, response_id=response_id))
            if not servers:
                return []
            self._reply_servers[response_id] = servers
            taken = {s.name for s in self.host.toolbox.specs()} | self.host.client_tool_names()
            for srv in servers:  # one after the other: the names of the first one win
                await self._list(srv, taken)
            return [self._tool(name, info, srv) for srv in servers for name, info in srv.tools.items()]

        return tools_for

    def response_done(self, response_id: str) -> None:
        """The response is over (its `response.done` goes out next): every MCP item it announced
        and has not finished (a call or a listing still running when it was cancelled) is done
        now, as cancelled, so the client gets each item's end before `response.done` and the
        response's output is what it saw; then the servers it named for itself are dropped."""
        ev = self.host.ev
        for item_id, (idx, item) in self._open_calls.pop(response_id, {}).items():
            self.host.send_in(response_id, ev.mcp_call_failed(item_id, idx or 0))
            self.host.output_item_done(response_id, idx, self.keep(item))
        for srv in self._reply_servers.get(response_id, []):
            if srv.listing:
                srv.listing = False
                log.info("realtime MCP server %s: listing cancelled with response %s", srv.cfg.server_label,
                         response_id)
                if ev.flavor is not rt.Flavor.GA:
                    self._item_done(srv, [])
                self.host.send(ev.mcp_list_tools_failed(srv.list_item_id))
                if ev.flavor is rt.Flavor.GA:
                    self._item_done(srv, [])
        self._drop_reply_servers(response_id)

    def _drop_reply_servers(self, response_id: str) -> None:
        for srv in self._reply_servers.pop(response_id, []):
            for name in srv.tools:
                self._calls.pop(name, None)
            self._close_conn(srv)

    def _close_conn(self, srv: _Server) -> None:
        if srv.conn is not None:
            task = asyncio.get_running_loop().create_task(srv.conn.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def keep(self, item: dict[str, Any]) -> dict[str, Any]:
        self.items[item["id"]] = item
        while len(self.items) > MAX_KEPT_ITEMS:
            del self.items[next(iter(self.items))]
        return item

    def _item_done(self, srv: _Server, tools: list[dict[str, Any]]) -> None:
        """The listed item: GA `conversation.item.done`; Azure, which has no such event, gets its
        one `conversation.item.created` now, with the tools. A response's own server: the
        response's `output_item.done` (and the conversation's)."""
        item = self.keep(rt.mcp_list_tools_item(srv.list_item_id, srv.cfg.server_label, tools))
        if srv.response_id is not None:
            if self.host.ev.flavor is rt.Flavor.GA:
                self.host.output_item_done(srv.response_id, srv.output_index, item)
            else:
                srv.output_index = self.host.output_item_added(srv.response_id, item)
        elif self.host.ev.flavor is rt.Flavor.GA:
            self.host.send(self.host.ev.conversation_item_done(item, None))
        else:
            self.host.send(self.host.ev.conversation_item_added(item, None))

    async def _list(self, srv: _Server, taken: set[str] | None = None) -> None:
        """List a server's tools and make them tools of the session's box (`taken` None) or of
        one reply (`taken`: the names the reply already has; the made tools go in `srv.tools`)."""
        ev, cfg = self.host.ev, srv.cfg
        if ev.flavor is rt.Flavor.GA:
            empty = rt.mcp_list_tools_item(srv.list_item_id, cfg.server_label, [])
            if srv.response_id is not None:
                srv.output_index = self.host.output_item_added(srv.response_id, empty)
            else:
                self.host.send(ev.conversation_item_added(empty, None))
        srv.listing = True
        self.host.send(ev.mcp_list_tools_in_progress(srv.list_item_id))
        reason = self._allow_error or (self.allow.check(cfg.server_url) if self.allow is not None else None)
        if srv.over_limit:
            reason = f"a session may use at most {MAX_SERVERS} MCP servers"
        if reason:  # never contacted
            self._list_failed(srv, reason, kind="invalid_request_error")
            return
        await asyncio.to_thread(_import_sdk)  # the first import takes long: not on the event loop
        srv.conn = MCPConnection(MCPTarget(name=cfg.server_label, url=cfg.server_url, headers=cfg.request_headers(),
                                           connect_timeout_s=LIST_TIMEOUT_S), backoff_s=(0.5, 5.0))
        try:
            listed = await srv.conn.list_tools(timeout_s=LIST_TIMEOUT_S)
        except MCPUnavailable as e:
            self._list_failed(srv, str(e), kind="server_error")
            return
        except Exception as e:  # never into the session
            log.exception("MCP server %s: listing failed", cfg.server_label)
            self._list_failed(srv, f"{type(e).__name__}: {e}"[:300], kind="server_error")
            return
        session_wide = taken is None
        if taken is None:
            taken = {s.name for s in self.host.toolbox.specs()} | self.host.client_tool_names()
        left_out: list[str] = []  # tools whose names clash with the names taken, even prefixed
        for t in listed:
            if not cfg.allows(t.name, t.read_only):
                continue
            name = tool_name(t.name)
            if name in taken:
                name = tool_name(f"{cfg.server_label}_{t.name}")
            if name in taken:
                left_out.append(t.name)
                continue
            taken.add(name)
            srv.tools[name] = t
            if session_wide:
                self._owner[name] = srv
                self.host.toolbox.add(self._tool(name, t, srv))
        if left_out:
            # not a failure: the listing completes without them (its item lists what is usable).
            # GA has no event for a notice (an `error` would read as a failed request): a log
            # line; Azure's dialect has a non-error `warning` event. One for the whole listing
            more = f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
            names = ", ".join(repr(n[:80]) for n in left_out[:5]) + more
            note = f"MCP server {cfg.server_label!r}: left out {names}: the name is taken by another tool"
            log.warning("realtime %s", note)
            if ev.flavor is rt.Flavor.AZURE:
                self.host.send(ev.warning(note))
        if session_wide and srv.tools:
            self.host.tools_changed()
        if not srv.listing:  # pragma: no cover - its response ended (cancelled) meanwhile: done already
            return
        srv.listing = False
        if ev.flavor is not rt.Flavor.GA:
            self._item_done(srv, [t.to_wire() for t in srv.tools.values()])
        self.host.send(ev.mcp_list_tools_completed(srv.list_item_id))
        if ev.flavor is rt.Flavor.GA:
            self._item_done(srv, [t.to_wire() for t in srv.tools.values()])

    def _list_failed(self, srv: _Server, reason: str, *, kind: str) -> None:
        if not srv.listing:  # pragma: no cover - its response ended (cancelled) meanwhile: done already
            return
        srv.listing = False
        log.info("realtime MCP server %s (%s): %s", srv.cfg.server_label, srv.cfg.server_url, reason)
        if self.host.ev.flavor is not rt.Flavor.GA:
            self._item_done(srv, [])
        self.host.send(self.host.ev.mcp_list_tools_failed(srv.list_item_id))
        if srv.response_id is not None and self.host.ev.flavor is rt.Flavor.GA:
            self._item_done(srv, [])  # the response's output item is done too (with no tools)
        self.host.error(f"MCP server {srv.cfg.server_label!r}: {reason}", code="mcp_list_tools_failed",
                        param="response.tools" if srv.response_id is not None else "session.tools", kind=kind)

    def _tool(self, name: str, info: MCPToolInfo, srv: _Server) -> Tool:
        async def handler(args: dict[str, Any]) -> Any:
            return await self._call(name, info, srv, args)

        needs_approval = srv.cfg.require_approval.requires_approval(info.name, info.read_only)
        # (the handler keeps its own clocks, `_approval`; this is the engine's backstop over them)
        wait = SHOW_TIMEOUT_S + self.approval_timeout_s if needs_approval else 0.0
        return Tool(ToolSpec(name, info.description, info.input_schema or {"type": "object", "properties": {}}),
                    handler, timeout_s=wait + self.call_timeout_s + 5.0, filler=not needs_approval,
                    mcp_server=srv.cfg.server_label)

    # ------------------------------------------------------------------ calls

    def note_call(self, e: E.AgentToolCall) -> None:
        """The engine is about to run one of our tools for this response (its handler follows)."""
        self._calls[e.name] = (e.response_id, e.arguments, e.mcp_item_id)

    async def _call(self, name: str, info: MCPToolInfo, srv: _Server, args: dict[str, Any]) -> Any:
        host, ev, label = self.host, self.host.ev, srv.cfg.server_label
        # the item id is the engine's: the conversation's `mcp_call` item has the same one
        rid, arguments, call_item_id = self._calls.pop(name, ("", json.dumps(args, ensure_ascii=False), None))
        approval_id: str | None = None
        if srv.cfg.require_approval.requires_approval(info.name, info.read_only):
            approval_id = new_id("mcpr")
            item = self.keep(rt.mcp_approval_request_item(approval_id, label, info.name, arguments))
            idx = host.output_item_added(rid, item)
            host.output_item_done(rid, idx, item)
            fut: asyncio.Future[tuple[bool, str | None]] = asyncio.get_running_loop().create_future()
            self._approvals[approval_id] = (rid, fut)
            try:
                answer = await self._approval(rid, fut)
            finally:
                self._approvals.pop(approval_id, None)
            if answer is None:
                return json.dumps({"error": f"the call of {info.name} was not approved within "
                                            f"{self.approval_timeout_s:g} s: it did not run", "kind": "not_approved"})
            approve, reason = answer
            if not approve:
                why = f" ({reason})" if reason else ""
                return json.dumps({"error": f"the user denied the call of {info.name}{why}: it did not run",
                                   "kind": "denied"}, ensure_ascii=False)
        item_id = call_item_id or new_id("mcp")
        idx = host.output_item_added(rid, rt.mcp_call_item(item_id, label, info.name, "",
                                                           approval_request_id=approval_id))
        # if the response ends first (cancelled), `response_done` ends the item with this
        cancelled = rt.mcp_call_item(item_id, label, info.name, arguments, approval_request_id=approval_id,
                                     error=rt.mcp_tool_execution_error("cancelled: the reply was cancelled"))
        self._open_calls.setdefault(rid, {})[item_id] = (idx, cancelled)
        # (in their place among the response's events: after the words before the call have gone out)
        if rid:
            host.send_in(rid, ev.mcp_call_arguments_delta(rid, item_id, idx or 0, arguments))
            host.send_in(rid, ev.mcp_call_arguments_done(rid, item_id, idx or 0, arguments))
        host.send_in(rid, ev.mcp_call_in_progress(item_id, idx or 0))
        if srv.conn is None:  # pragma: no cover - tools exist only once listed
            outcome = ToolOutcome.failure("unavailable", f"MCP server {label} is not connected")
        else:
            try:
                outcome = await srv.conn.call(info.name, args, timeout_s=self.call_timeout_s,
                                              max_chars=self.max_chars)
            except asyncio.CancelledError:  # the reply was cancelled (barge-in, response.cancel)
                if self._close_call(rid, item_id):  # not ended by its response's end already
                    host.send_in(rid, ev.mcp_call_failed(item_id, idx or 0))
                    host.output_item_done(rid, idx, self.keep(cancelled))
                raise
        if not self._close_call(rid, item_id):  # pragma: no cover - its response ended meanwhile: done already
            return outcome
        if outcome.ok:
            host.send_in(rid, ev.mcp_call_completed(item_id, idx or 0))
            done = rt.mcp_call_item(item_id, label, info.name, arguments, approval_request_id=approval_id,
                                    output=outcome.text)
        else:
            host.send_in(rid, ev.mcp_call_failed(item_id, idx or 0))
            done = rt.mcp_call_item(item_id, label, info.name, arguments, approval_request_id=approval_id,
                                    error=_wire_error(outcome))
        host.output_item_done(rid, idx, self.keep(done))
        return outcome

    async def _approval(self, rid: str, fut: asyncio.Future[tuple[bool, str | None]]) -> tuple[bool, str | None] | None:
        """The client's answer to the approval request just put out in response `rid` (`fut`, set
        by `answer` or by `close`), or None when none came `approval_timeout_s` after the client
        was shown the request: that clock starts when the request has gone out, after the words
        before the call (`host.when_sent`), which may still be being spoken. A cancelled reply
        cancels this wait, whichever clock runs."""
        shown: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def sent() -> None:
            if not shown.done():
                shown.set_result(None)

        self.host.when_sent(rid, sent)
        if not shown.done():
            either: set[asyncio.Future[Any]] = {fut, shown}  # (an answer, or `close`, may come first)
            done, _ = await asyncio.wait(either, timeout=SHOW_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                log.info("realtime MCP approval request of response %s never went out: not run", rid)
                return None
        if not fut.done():
            try:
                return await asyncio.wait_for(fut, self.approval_timeout_s)
            except asyncio.TimeoutError:
                return None
        return fut.result()

    def _close_call(self, rid: str, item_id: str) -> bool:
        """The call's item is to be done now: False when it was already (its response ended)."""
        calls = self._open_calls.get(rid)
        if calls is None or calls.pop(item_id, None) is None:
            return False
        if not calls:
            del self._open_calls[rid]
        return True

    def answer(self, item: rt.MCPApprovalResponseItem) -> bool:
        """The client's approval response; False when no call waits for that request."""
        rid, fut = self._approvals.get(item.approval_request_id, ("", None))
        if fut is None or fut.done():
            return False
        fut.set_result((item.approve, item.reason))
        if rid:
            self.resumed.add(rid)
        return True

    async def close(self) -> None:
        for _rid, fut in self._approvals.values():
            if not fut.done():
                fut.set_result((False, "the session ended"))
        for label in list(self._servers):
            self._drop(label)
        for rid in list(self._reply_servers):
            self._drop_reply_servers(rid)  # the session ends: no events
        self._open_calls.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _import_sdk() -> None:
    import httpx2  # noqa: F401 - imported to check the SDK's transport is installed
    import mcp
    import mcp.client.streamable_http  # noqa: F401 - the same check for its HTTP client


def _wire_error(outcome: ToolOutcome) -> dict[str, Any]:
    try:
        message = str(json.loads(outcome.text).get("error") or outcome.text)
    except (ValueError, AttributeError):
        message = outcome.text
    if outcome.kind == "unavailable":
        return rt.mcp_protocol_error(-32000, message)
    return rt.mcp_tool_execution_error(message)
