"""A real MCP server for tests, built with the `mcp` SDK's own server (`MCPServer`, FastMCP in 1.x).

    python tests/mcp_test_server.py stdio
    python tests/mcp_test_server.py http PORT

Tools: `add`, `weather` (a fixed forecast per city), `slow` (sleeps), `fail` (raises),
`crash` (the process exits mid-call), `pid` (this process's id), `big` (a long answer),
`secret_op` (not read-only, for approval tests).
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

server = MCPServer("moksori-test", log_level="CRITICAL")

FORECAST = {"Seoul": "sunny, 21 degrees", "Busan": "rain, 18 degrees", "서울": "맑음, 21도"}


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def weather(city: str) -> str:
    """Today's weather for a city."""
    return f"{city}: {FORECAST.get(city, 'cloudy, 15 degrees')}"


@server.tool()
async def slow(seconds: float) -> str:
    """Wait, then answer."""
    await asyncio.sleep(seconds)
    return f"waited {seconds} s"


@server.tool()
def fail(reason: str = "boom") -> str:
    """Always fails."""
    raise RuntimeError(f"the tool failed: {reason}")


@server.tool()
def crash() -> str:
    """The server process dies while answering."""
    os._exit(3)


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def pid() -> str:
    """This server's process id."""
    return str(os.getpid())


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def big(n: int = 10000) -> str:
    """A long answer."""
    return "x" * n


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
def secret_op(target: str) -> str:
    """Changes something (needs approval in tests)."""
    return f"done: {target}"


def http_app():
    """The Streamable HTTP app at /mcp, plus /health; with MCP_TEST_TOKEN set, every /mcp request
    must carry `Authorization: Bearer <token>` (to test headers taken from the environment)."""
    from starlette.responses import PlainTextResponse

    app = server.streamable_http_app()
    token = os.environ.get("MCP_TEST_TOKEN")

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/health":
            await PlainTextResponse("ok")(scope, receive, send)
            return
        if token and scope["type"] == "http":
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            if auth != f"Bearer {token}":
                await PlainTextResponse("unauthorized", status_code=401)(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "http":
        import uvicorn

        uvicorn.run(http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    else:
        server.run("stdio")
