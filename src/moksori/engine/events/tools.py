"""Tools in a reply: a client's function call, a server-side tool's call, result and filler."""

from __future__ import annotations

from .base import Event, _event, optional


@_event
class AgentFunctionCall(Event):
    """A call of a client tool: the reply ends and the client runs it."""

    type = "agent.function_call"
    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str
    call_item_id: str


@_event
class AgentToolCall(Event):
    """A server-side tool is about to run."""

    type = "agent.tool_call"
    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str
    # an MCP tool's call (`Tool.mcp_server`): the id of its `mcp_call` item, and the server
    mcp_item_id: str | None = optional(default=None)
    server_label: str | None = optional(default=None)


@_event
class AgentToolResult(Event):
    type = "agent.tool_result"
    response_id: str
    item_id: str
    call_id: str
    name: str
    output: str
    ok: bool = optional(default=True)  # False: the tool failed, timed out or was unavailable
    error_kind: str | None = optional(default=None)  # timeout | unavailable | failed | bad_arguments | ...


@_event
class AgentToolFiller(Event):
    """A server-side tool is slow: the agent says a short filler while it runs."""

    type = "agent.tool_filler"
    response_id: str
    call_id: str
    name: str
    text: str
