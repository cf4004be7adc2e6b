"""MCP tools in the Realtime protocol (GA and Azure Voice Live; the beta has none): parsing the
client's `{"type": "mcp", ...}` tools and `mcp_approval_response` items, and building the
MCP items the server sends. Pure: no sockets, no MCP client (that is `moksori.tools`).

The flow the server runs with these (`moksori.server.realtime_mcp`):

1. `session.update` with an MCP tool -> for each server, an `mcp_list_tools` item:
   `conversation.item.added` (no tools yet), `mcp_list_tools.in_progress`, then
   `mcp_list_tools.completed` and `conversation.item.done` with the tools, or
   `mcp_list_tools.failed` and an `error` (unreachable, or `server_url` outside
   `tools.realtime_mcp_allow`: such a URL is never contacted).
2. The model calls an MCP tool. If `requires_approval(...)`: an `mcp_approval_request` item is
   output and the call waits, inside the same response, for the client's
   `conversation.item.create` `{"type": "mcp_approval_response", "approval_request_id",
   "approve", "reason"}` (or a timeout, `tools.realtime_mcp_approval_timeout_s`); denied or
   unanswered, the model is told and the reply goes on. Then (or at once without approval) an
   `mcp_call` item: `response.output_item.added`, `response.mcp_call_arguments.delta|done`,
   `response.mcp_call.in_progress`, `response.mcp_call.completed|failed`,
   `response.output_item.done` with `output` or `error`, and the reply continues with the result.

`require_approval` follows the API: "always" (also the default when omitted), "never", or
`{"always": {"tool_names", "read_only"}, "never": {...}}`; a tool matching `never` needs no
approval, one matching `always` does, and any other tool does too (the safe default).
Azure's `{"always": [names], "never": [names]}` form is accepted as well.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._checks import as_bool, as_dict, as_list, as_opt_str, as_str, fail

__all__ = [
    "SERVED", "MCPToolFilter", "MCPApprovalPolicy", "MCPToolConfig", "MCPApprovalResponseItem", "parse_mcp_tool",
    "parse_mcp_tools", "parse_mcp_tool_choice", "parse_mcp_approval_response", "mcp_tool_to_wire",
    "mcp_list_tools_item", "mcp_call_item", "mcp_approval_request_item", "mcp_approval_response_item",
    "mcp_tool_execution_error", "mcp_protocol_error", "mcp_http_error",
]

SERVED = True
"""Whether the connection runs MCP tools (`moksori.server.realtime_mcp`). When False, MCP tools
are validated and recorded with a warning, not echoed as if in force, and approval responses
are refused with a clear error."""

_LABEL_MAX = 64


@dataclass(frozen=True)
class MCPToolFilter:
    """`{"tool_names": [...], "read_only": bool}`; a field left out does not constrain."""

    tool_names: tuple[str, ...] | None = None
    read_only: bool | None = None

    def matches(self, name: str, read_only_hint: bool | None) -> bool:
        if self.tool_names is None and self.read_only is None:
            return False  # an empty filter matches nothing
        if self.tool_names is not None and name not in self.tool_names:
            return False
        if self.read_only is not None and bool(read_only_hint) != self.read_only:
            return False
        return True

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tool_names is not None:
            out["tool_names"] = list(self.tool_names)
        if self.read_only is not None:
            out["read_only"] = self.read_only
        return out


@dataclass(frozen=True)
class MCPApprovalPolicy:
    mode: Literal["always", "never", "filter"] = "always"
    always: MCPToolFilter | None = None
    never: MCPToolFilter | None = None

    def requires_approval(self, name: str, read_only_hint: bool | None = None) -> bool:
        if self.mode != "filter":
            return self.mode == "always"
        if self.never is not None and self.never.matches(name, read_only_hint):
            return False
        return True  # matches `always`, or nothing: ask

    def to_wire(self) -> str | dict[str, Any]:
        if self.mode != "filter":
            return self.mode
        out: dict[str, Any] = {}
        if self.always is not None:
            out["always"] = self.always.to_wire()
        if self.never is not None:
            out["never"] = self.never.to_wire()
        return out


@dataclass(frozen=True)
class MCPToolConfig:
    server_label: str
    server_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    authorization: str | None = None
    allowed: MCPToolFilter | None = None  # None: every tool the server lists
    require_approval: MCPApprovalPolicy = field(default_factory=MCPApprovalPolicy)
    server_description: str | None = None

    def allows(self, name: str, read_only_hint: bool | None = None) -> bool:
        if self.allowed is None:
            return True
        return (self.allowed.tool_names is None or name in self.allowed.tool_names) and \
            (self.allowed.read_only is None or bool(read_only_hint) == self.allowed.read_only)

    def request_headers(self) -> dict[str, str]:
        """Headers for the MCP server: the client's, plus `authorization` as a bearer token."""
        out = dict(self.headers)
        if self.authorization:
            out["Authorization"] = f"Bearer {self.authorization}"
        return out


@dataclass(frozen=True, slots=True)
class MCPApprovalResponseItem:
    approval_request_id: str
    approve: bool
    reason: str | None = None
    id: str | None = None


# ---------------------------------------------------------------------------- parsing

def _filter(value: Any, param: str) -> MCPToolFilter:
    if isinstance(value, list):  # Azure: a plain list of names
        return MCPToolFilter(tuple(as_str(n, f"{param}[{i}]", nonempty=True, max_len=128)
                                   for i, n in enumerate(value)))
    obj = as_dict(value, param)
    names = obj.get("tool_names")
    ro = obj.get("read_only")
    return MCPToolFilter(
        None if names is None else tuple(as_str(n, f"{param}.tool_names[{i}]", nonempty=True, max_len=128)
                                         for i, n in enumerate(as_list(names, f"{param}.tool_names"))),
        None if ro is None else as_bool(ro, f"{param}.read_only"))


def _approval(value: Any, param: str) -> MCPApprovalPolicy:
    if value is None:
        return MCPApprovalPolicy()
    if isinstance(value, str):
        if value not in ("always", "never"):
            fail(f"{param} must be 'always', 'never' or a filter object", param)
        return MCPApprovalPolicy("always" if value == "always" else "never")
    obj = as_dict(value, param)
    for key in obj:
        if key not in ("always", "never"):
            fail(f"{param} may only have 'always' and 'never'", f"{param}.{key[:40]}")
    return MCPApprovalPolicy("filter",
                             None if obj.get("always") is None else _filter(obj["always"], f"{param}.always"),
                             None if obj.get("never") is None else _filter(obj["never"], f"{param}.never"))


def parse_mcp_tool(obj: Mapping[str, Any], param: str, warnings: list[str]) -> MCPToolConfig | None:
    """One `{"type": "mcp", ...}` tool. None (with a warning) for kinds this server cannot
    serve: service connectors and tunnels."""
    label = as_str(obj.get("server_label"), f"{param}.server_label", nonempty=True, max_len=_LABEL_MAX)
    if obj.get("connector_id") is not None or obj.get("tunnel_id") is not None:
        warnings.append(f"{param}: MCP connectors and tunnels are not supported; use server_url "
                        f"(the tool {label[:40]!r} was ignored)")
        return None
    url = as_str(obj.get("server_url"), f"{param}.server_url", nonempty=True, max_len=2048)
    headers: dict[str, str] = {}
    if obj.get("headers") is not None:
        for k, v in as_dict(obj["headers"], f"{param}.headers").items():
            headers[as_str(k, f"{param}.headers", nonempty=True, max_len=256)] = \
                as_str(v, f"{param}.headers.{k[:40]}", max_len=8192)
    allowed = None if obj.get("allowed_tools") is None else _filter(obj["allowed_tools"], f"{param}.allowed_tools")
    for key in obj:
        if key in ("defer_loading", "allowed_callers") and obj[key] is not None:
            warnings.append(f"{param}.{key} is accepted but not supported; it has no effect")
    return MCPToolConfig(
        server_label=label, server_url=url, headers=headers,
        authorization=as_opt_str(obj.get("authorization"), f"{param}.authorization"),
        allowed=allowed, require_approval=_approval(obj.get("require_approval"), f"{param}.require_approval"),
        server_description=as_opt_str(obj.get("server_description"), f"{param}.server_description"))


def parse_mcp_tools(value: Any, param: str, warnings: list[str]) -> tuple[MCPToolConfig, ...]:
    """The MCP tools of a `tools` array (other kinds are `session_fields.parse_tools`' business)."""
    out: list[MCPToolConfig] = []
    labels: set[str] = set()
    for i, raw in enumerate(as_list(value if value is not None else [], param)):
        obj = as_dict(raw, f"{param}[{i}]")
        if obj.get("type") != "mcp":
            continue
        tool = parse_mcp_tool(obj, f"{param}[{i}]", warnings)
        if tool is None:
            continue
        if tool.server_label in labels:
            fail(f"duplicate MCP server_label {tool.server_label!r}", f"{param}[{i}].server_label")
        labels.add(tool.server_label)
        out.append(tool)
        if not SERVED:
            warnings.append(f"{param}[{i}]: MCP tools are validated but this server does not connect to them yet; "
                            f"the tool {tool.server_label[:40]!r} has no effect")
    return tuple(out)


def parse_mcp_tool_choice(obj: Mapping[str, Any], param: str) -> dict[str, Any]:
    """`{"type": "mcp", "server_label", "name"?}`."""
    out: dict[str, Any] = {"type": "mcp", "server_label": as_str(obj.get("server_label"), f"{param}.server_label",
                                                                  nonempty=True, max_len=_LABEL_MAX)}
    if obj.get("name") is not None:
        out["name"] = as_str(obj["name"], f"{param}.name", nonempty=True, max_len=128)
    return out


def parse_mcp_approval_response(obj: Mapping[str, Any], param: str, item_id: str | None) -> MCPApprovalResponseItem:
    return MCPApprovalResponseItem(
        approval_request_id=as_str(obj.get("approval_request_id"), f"{param}.approval_request_id", nonempty=True,
                                   max_len=64),
        approve=as_bool(obj.get("approve"), f"{param}.approve"),
        reason=as_opt_str(obj.get("reason"), f"{param}.reason"), id=item_id)


# ---------------------------------------------------------------------------- wire shapes

def mcp_tool_to_wire(tool: MCPToolConfig) -> dict[str, Any]:
    """A session's MCP tool as echoed in `session.created|updated` (no headers or token)."""
    out: dict[str, Any] = {"type": "mcp", "server_label": tool.server_label, "server_url": tool.server_url,
                           "require_approval": copy.deepcopy(tool.require_approval.to_wire())}
    if tool.allowed is not None:
        out["allowed_tools"] = tool.allowed.to_wire()
    if tool.server_description is not None:
        out["server_description"] = tool.server_description
    return out


def mcp_list_tools_item(item_id: str, server_label: str, tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`tools`: `{"name", "input_schema", "description"?, "annotations"?}` each
    (`moksori.tools.MCPToolInfo.to_wire()` gives that shape)."""
    return {"id": item_id, "type": "mcp_list_tools", "server_label": server_label,
            "tools": [_tool_wire(t) for t in tools]}


def _tool_wire(t: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": str(t["name"]), "input_schema": copy.deepcopy(t.get("input_schema") or {})}
    if t.get("description") is not None:
        out["description"] = str(t["description"])
    if t.get("annotations") is not None:
        out["annotations"] = copy.deepcopy(t["annotations"])
    return out


def mcp_tool_execution_error(message: str) -> dict[str, Any]:
    return {"type": "tool_execution_error", "message": message}


def mcp_protocol_error(code: int, message: str) -> dict[str, Any]:
    return {"type": "protocol_error", "code": int(code), "message": message}


def mcp_http_error(code: int, message: str) -> dict[str, Any]:
    return {"type": "http_error", "code": int(code), "message": message}


def mcp_call_item(item_id: str, server_label: str, name: str, arguments: str, *,
                  approval_request_id: str | None = None, output: str | None = None,
                  error: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An `mcp_call` item; `output` once it completed, `error` (one of the `mcp_*_error` shapes)
    if it failed, neither while it runs."""
    return {"id": item_id, "type": "mcp_call", "server_label": server_label, "name": name, "arguments": arguments,
            "approval_request_id": approval_request_id, "output": output,
            "error": dict(error) if error is not None else None}


def mcp_approval_request_item(item_id: str, server_label: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": item_id, "type": "mcp_approval_request", "server_label": server_label, "name": name,
            "arguments": arguments}


def mcp_approval_response_item(item: MCPApprovalResponseItem, item_id: str) -> dict[str, Any]:
    """The client's approval response as the server echoes it (`conversation.item.added|done`)."""
    return {"id": item_id, "type": "mcp_approval_response", "approval_request_id": item.approval_request_id,
            "approve": item.approve, "reason": item.reason}
