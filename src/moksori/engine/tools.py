"""Tools the agent runs itself (server-side), as opposed to tools a Realtime client declares.

A server-side tool has a handler; the engine calls it and feeds the result back to the LLM in
the same response. A client tool has none: the engine hands the call to the client and ends
the response, as the Realtime protocol expects.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from moksori.providers.base import ToolSpec

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    spec: ToolSpec
    handler: Handler
    # say this before running the tool (e.g. a goodbye before hanging up)
    say_first: str | None = None
    # end the response after this tool (no second LLM pass)
    final: bool = False
    # the longest a call may take (None: the box's default); the handler may enforce a shorter one
    timeout_s: float | None = None
    # say a short filler when the call is slow (False: e.g. a call waiting for the user's approval)
    filler: bool = True
    # an MCP server's tool (a `[[tools.mcp]]` server's, or one a Realtime client named): its call
    # is one `mcp_call` item in the conversation (not function_call + function_call_output),
    # under this server label
    mcp_server: str | None = None


@dataclass(frozen=True)
class ToolRun:
    """What one call gave: `output` for the LLM; `ok` False when it failed, timed out or was
    unknown (`error_kind` then says which)."""

    output: str
    ok: bool = True
    error_kind: str | None = None


class ToolBox:
    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {t.spec.name: t for t in tools or []}

    def add(self, tool: Tool) -> None:
        self._tools[tool.spec.name] = tool

    def with_tools(self, tools: list[Tool]) -> ToolBox:
        """A box with these tools added (a tool of a name already here replaces it), for one
        reply; this box is unchanged."""
        box = ToolBox(list(self._tools.values()))
        for tool in tools:
            box.add(tool)
        return box

    def remove(self, name: str) -> None:
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for t in self._tools.values())

    async def run(self, name: str, arguments: str, *, timeout_s: float = 20.0) -> str:
        """Run a server-side tool; any failure becomes a JSON error the LLM can read."""
        return (await self.call(name, arguments, timeout_s=timeout_s)).output

    async def call(self, name: str, arguments: str, *, timeout_s: float = 20.0) -> ToolRun:
        """Run a server-side tool and say whether it worked. Never raises (but lets
        cancellation through); `timeout_s` applies unless the tool has its own."""
        tool = self._tools.get(name)
        if tool is None:
            return ToolRun(json.dumps({"error": f"unknown tool {name}"}), False, "failed")
        try:
            args = json.loads(arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as e:
            return ToolRun(json.dumps({"error": f"bad arguments: {e}"}), False, "bad_arguments")
        try:
            result = await asyncio.wait_for(tool.handler(args), tool.timeout_s or timeout_s)
        except asyncio.TimeoutError:
            return ToolRun(json.dumps({"error": "tool timed out", "kind": "timeout"}), False, "timeout")
        except Exception as e:  # noqa: BLE001 - reported to the model, never raised into the session
            return ToolRun(json.dumps({"error": f"{type(e).__name__}: {e}"[:300]}), False, "failed")
        ok, kind = getattr(result, "ok", True), getattr(result, "kind", None)
        if hasattr(result, "text") and hasattr(result, "ok"):  # a moksori.tools ToolOutcome
            result = result.text
        output = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
        return ToolRun(output, bool(ok), kind)
