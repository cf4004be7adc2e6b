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


class ToolBox:
    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {t.spec.name: t for t in tools or []}

    def add(self, tool: Tool) -> None:
        self._tools[tool.spec.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for t in self._tools.values())

    async def run(self, name: str, arguments: str, *, timeout_s: float = 20.0) -> str:
        """Run a server-side tool; any failure becomes a JSON error the LLM can read."""
        tool = self._tools.get(name)
        if tool is None:
            return json.dumps({"error": f"unknown tool {name}"})
        try:
            args = json.loads(arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as e:
            return json.dumps({"error": f"bad arguments: {e}"})
        try:
            result = await asyncio.wait_for(tool.handler(args), timeout_s)
        except asyncio.TimeoutError:
            return json.dumps({"error": "tool timed out"})
        except Exception as e:  # noqa: BLE001 - reported to the model, never raised into the session
            return json.dumps({"error": f"{type(e).__name__}: {e}"[:300]})
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
