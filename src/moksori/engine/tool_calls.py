"""The tool calls of one reply: which the client runs and which the server does, a server
tool's run (with a short filler when it is slow), the apology when a whole round failed, and
their records (memory items and the `agent.tool_call` / `agent.tool_result` /
`agent.function_call` / `agent.tool_filler` events). Both brains' replies run and record their
tool calls through `ToolCalls` (`Response`, the realtime brain's `UpstreamReply`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from moksori.engine import events as E
from moksori.engine.clock import Clock
from moksori.engine.memory import Item, new_id
from moksori.engine.response_host import ResponseHost
from moksori.engine.tools import Tool, ToolBox, ToolRun
from moksori.providers.base import ToolCall
from moksori.tools.results import FAILURE_APOLOGIES, SLOW_FILLERS

__all__ = ["MAX_TOOL_CALLS_PER_ROUND", "MAX_TOOL_ROUNDS", "ToolCalls", "ToolReply", "call_items", "failure_apology", "function_call_item",
           "run_tool", "slow_filler", "split_calls"]

MAX_TOOL_ROUNDS = 3  # the last one is offered no tools: the reply ends in words, not in a call
# Server tool calls run from one LLM round; any more are left out of the conversation (a model
# that ignored this asked for 5,000 in one round, each a real request for an MCP or HTTP tool)
MAX_TOOL_CALLS_PER_ROUND = 16
log = logging.getLogger("moksori.session")


class ToolReply(Protocol):
    """What a reply's tool calls use of the reply (`Response` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def language(self) -> str: ...
    @property
    def host(self) -> ResponseHost: ...
    @property
    def toolbox(self) -> ToolBox:
        """The session's tool box, plus the reply's own tools."""

    def now(self) -> float: ...
    def emit(self, ev: E.Event) -> None:
        """Publish, or hold back while the reply is speculative."""
    def remember(self, item: Item) -> str:
        """Store an item in memory (once the reply is public); returns its id."""
        ...


class ToolCalls:
    """One reply's tool calls: run, told (events) and recorded (memory)."""

    def __init__(self, reply: ToolReply) -> None:
        self._reply = reply
        self.fillers_said = 0  # a reply says one slow-tool filler at the most

    async def run(self, call: ToolCall, tool: Tool, say: Callable[[str], bool]) -> ToolRun:
        """Run one server tool (`run_tool`: it never hangs, a failure is an error output); when
        it runs longer than the host's `tool_slow_after_s`, a short filler in the reply's
        language is said meanwhile, once per reply. `say(words)` says it the brain's way (the
        pipeline: a clause; the realtime brain: an out-of-band upstream response) and returns
        False when it cannot now."""
        r = self._reply

        def filler() -> None:
            words = slow_filler(r.language, call.id)
            if say(words):
                self.fillers_said += 1
                r.emit(E.AgentToolFiller(t=r.now(), response_id=r.id, call_id=call.id, name=call.name, text=words))

        wanted = not self.fillers_said and not tool.say_first and tool.filler
        return await run_tool(r.toolbox, call, r.host.clock, r.host.tool_slow_after_s, filler if wanted else None)

    def apology(self, runs: Sequence[ToolRun]) -> str | None:
        """The words to say when every tool of a round failed (None: some worked, or the
        session has no tool behaviour configured: the model reads the errors itself)."""
        r = self._reply
        return None if r.host.tool_slow_after_s is None else failure_apology(runs, r.language)

    def to_client(self, call: ToolCall, item_id: str) -> None:
        """A call of a client's tool: into memory and out as `agent.function_call` (the client
        runs it; the reply ends)."""
        r = self._reply
        r.remember(function_call_item(call, item_id))
        r.emit(E.AgentFunctionCall(t=r.now(), response_id=r.id, item_id=r.item_id, call_id=call.id, name=call.name,
                                   arguments=call.arguments, call_item_id=item_id))

    def announce(self, call: ToolCall, tool: Tool, item_id: str | None = None) -> str:
        """`agent.tool_call` for a server tool about to run; returns the id of the call's item:
        an MCP server's tool (`Tool.mcp_server`) gets one `mcp_call` item, whose id is announced
        (`mcp_item_id`: the Realtime MCP runner shows the client that item)."""
        r = self._reply
        mcp = tool.mcp_server is not None
        item_id = item_id or new_id("mcp" if mcp else "item")
        r.emit(E.AgentToolCall(t=r.now(), response_id=r.id, item_id=r.item_id, call_id=call.id, name=call.name,
                               arguments=call.arguments, mcp_item_id=item_id if mcp else None,
                               server_label=tool.mcp_server))
        return item_id

    def record(self, call: ToolCall, tool: Tool, run: ToolRun, item_id: str,
               output_item_id: str | None = None) -> None:
        """A server tool's call and result into memory (`call_items`) and `agent.tool_result`."""
        r = self._reply
        log.debug("tool %s -> %s: %s", call.name, "ok" if run.ok else run.error_kind, run.output[:500])
        for item in call_items(call, tool, run, item_id, output_item_id):
            r.remember(item)
        r.emit(E.AgentToolResult(t=r.now(), response_id=r.id, item_id=r.item_id, call_id=call.id, name=call.name,
                                 output=run.output, ok=run.ok, error_kind=run.error_kind))


def split_calls(calls: Sequence[ToolCall], box: ToolBox,
                client: set[str]) -> tuple[list[ToolCall], list[ToolCall]]:
    """(the server's calls, which the reply runs; the client's, which end the reply): a call of
    a tool the box lacks, or that the client declared (`client`, names), is the client's."""
    local = [c for c in calls if box.get(c.name) is not None and c.name not in client]
    remote = [c for c in calls if box.get(c.name) is None or c.name in client]
    return local, remote


async def run_tool(box: ToolBox, call: ToolCall, clock: Clock, slow_after_s: float | None,
                   on_slow: Callable[[], None] | None) -> ToolRun:
    """Run one server tool (the box's timeouts: it never hangs, a failure is an error output);
    `on_slow()` is called once if it still runs `slow_after_s` later (None: never)."""
    task = asyncio.ensure_future(box.call(call.name, call.arguments))
    if slow_after_s is None or on_slow is None:
        return await task
    timer = asyncio.ensure_future(clock.sleep(slow_after_s))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            on_slow()
        return await task
    finally:
        timer.cancel()
        if not task.done():
            task.cancel()


def slow_filler(language: str, call_id: str) -> str:
    """The short words said while a slow tool runs (one of a few, in the reply's language)."""
    options = SLOW_FILLERS.get(language) or SLOW_FILLERS["en"]
    return options[hash(call_id) % len(options)]


def failure_apology(runs: Sequence[ToolRun], language: str) -> str | None:
    """The words to say when every tool of a round failed (None: some worked, or none ran)."""
    if not runs or any(r.ok for r in runs):
        return None
    return FAILURE_APOLOGIES.get(language) or FAILURE_APOLOGIES["en"]


def function_call_item(call: ToolCall, item_id: str) -> Item:
    return Item(id=item_id, type="function_call", role="assistant", call_id=call.id, name=call.name,
                arguments=call.arguments)


def call_items(call: ToolCall, tool: Tool, run: ToolRun, item_id: str,
               output_item_id: str | None = None) -> list[Item]:
    """The memory items of a server tool's call and result: one `mcp_call` item for an MCP
    server's tool (as the Realtime client was shown it), else `function_call` +
    `function_call_output`."""
    if tool.mcp_server is not None:
        return [Item(id=item_id, type="mcp_call", role="assistant", call_id=call.id, name=call.name,
                     arguments=call.arguments, output=run.output, server_label=tool.mcp_server,
                     error=None if run.ok else run.output)]
    return [function_call_item(call, item_id),
            Item(id=output_item_id or new_id("item"), type="function_call_output", role="user", call_id=call.id,
                 output=run.output)]
