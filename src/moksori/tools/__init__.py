"""Server-side tools: MCP servers (stdio and Streamable HTTP), HTTP tools and built-ins,
configured once (`[tools]` in the TOML config) and offered in every session.

`ServerTools.from_settings(settings.tools)` builds the set; `await start()` lists the MCP
servers' tools; `engine_tools()` gives `engine.tools.Tool`s for the session's `ToolBox`.
"""

from moksori.tools.allowlist import URLAllowList
from moksori.tools.http_tool import HTTPTool
from moksori.tools.mcp_client import MCPConnection, MCPTarget, MCPToolInfo, MCPUnavailable
from moksori.tools.results import FAILURE_APOLOGIES, SLOW_FILLERS, ToolOutcome
from moksori.tools.toolset import ServerTools, ToolInfo, build_server_tools, tool_name

__all__ = [
    "FAILURE_APOLOGIES", "HTTPTool", "MCPConnection", "MCPTarget", "MCPToolInfo", "MCPUnavailable",
    "SLOW_FILLERS", "ServerTools", "ToolInfo", "ToolOutcome", "URLAllowList", "build_server_tools", "tool_name",
]
