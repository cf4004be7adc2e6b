"""The MCP client against hostile MCP servers: what a server sends is bounded.

The hostile server is this file run as a script (raw JSON-RPC, no SDK):

    python tests/test_mcp_client_limits.py stdio MODE
    python tests/test_mcp_client_limits.py http PORT        (MODE is the path: /MODE/mcp)

MODE shapes the handshake and the listing (`noinit` never answers `initialize`, `many` lists 500
tools, `pageloop` always has a next page, `deep` a schema nested too deep to parse, `garbage`
prints non-UTF-8 lines and non-JSON on stdout, `flood` floods stderr); the tool called shapes the
result (`big`, `bigmany`, `endless`, `badcontent`, `badlist`, `pid`, anything else echoes).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

BIG_BYTES = 6 * 1024 * 1024


def _tool(name: str) -> dict:
    return {"name": name, "description": "a tool", "inputSchema": {"type": "object", "properties": {}}}


def _tools(mode: str) -> list[dict]:
    if mode in ("many", "pageloop"):
        return [_tool(f"t{i:04d}") for i in range(500)]
    if mode == "deep":
        return [_tool("deep")]  # replaced by a raw deep schema in _dumps
    return [_tool(n) for n in ("echo", "big", "bigmany", "endless", "badcontent", "badlist", "pid", "manyblocks",
                               "bracetext")]


DEEP = '{"type":"object","properties":{"a":' * 240 + '{"type":"string"}' + "}}" * 240


def _dumps(obj: dict) -> str:
    out = json.dumps(obj)
    return out.replace('{"type": "object", "properties": {}}', DEEP) if '"deep"' in out else out


def _result(name: str, args: dict) -> dict:
    if name == "big":
        return {"content": [{"type": "text", "text": "A" * BIG_BYTES}]}
    if name == "bigmany":
        return {"content": [{"type": "text", "text": "B"}] * 300_000}
    if name == "manyblocks":  # small in bytes, but 60,000 content blocks to validate
        return {"content": [{"type": "text", "text": "C"}] * 60_000}
    if name == "bracetext":  # braces and quotes inside a string are text, not objects
        return {"content": [{"type": "text", "text": '{"k": 1}' * 60_000}]}
    if name == "badcontent":
        return {"content": [{"type": "text", "text": "fine"}, {"type": "weird_unknown", "foo": 1}]}
    if name == "badlist":
        return {"content": "not a list", "isError": "yes"}
    if name == "pid":
        return {"content": [{"type": "text", "text": str(os.getpid())}]}
    return {"content": [{"type": "text", "text": f"echo:{json.dumps(args)}"}]}


def _handle(mode: str, msg: dict) -> dict | None:
    """The reply to one request (None: never answer)."""
    method, rid = msg.get("method"), msg["id"]
    if method == "initialize":
        if mode == "noinit":
            return None
        return {"jsonrpc": "2.0", "id": rid, "result": {
            "protocolVersion": msg.get("params", {}).get("protocolVersion") or "2025-11-25",
            "capabilities": {"tools": {}}, "serverInfo": {"name": "hostile", "version": "1"}}}
    if method == "tools/list":
        result: dict = {"tools": _tools(mode)}
        if mode == "pageloop":
            result["nextCursor"] = "again"
        return {"jsonrpc": "2.0", "id": rid, "result": result}
    if method == "tools/call":
        p = msg.get("params", {})
        return {"jsonrpc": "2.0", "id": rid, "result": _result(p.get("name"), p.get("arguments") or {})}
    if method == "ping":
        return {"jsonrpc": "2.0", "id": rid, "result": {}}
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}}


def _stdio_main(mode: str) -> None:
    out = sys.stdout.buffer
    if mode == "flood":
        sys.stderr.write(("E" * 1000 + "\n") * 20_000)  # 20 MB at once
        sys.stderr.flush()
    if mode == "garbage":
        out.write(b"Welcome to a hostile server!\n{not json}\n\x00\xff\xfe garbage\n[1,2,3]\n")
        out.flush()
    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "id" not in msg or "method" not in msg:
            continue
        if mode == "garbage":
            out.write(b"garbage line before the reply \xff\n")
        reply = _handle(mode, msg)
        if reply is not None:
            out.write(_dumps(reply).encode() + b"\n")
            out.flush()


def _http_app():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def health(request: Request) -> Response:
        return JSONResponse({})

    async def endpoint(request: Request) -> Response:
        mode = request.path_params["mode"]
        if request.method == "GET":
            return Response(status_code=405)
        if request.method == "DELETE":
            return Response(status_code=200)
        msg = json.loads(await request.body())
        if "id" not in msg:
            return Response(status_code=202)
        if msg.get("method") == "tools/call" and msg.get("params", {}).get("name") == "endless":
            async def endless():
                yield b'{"jsonrpc":"2.0","id":' + json.dumps(msg["id"]).encode() + b',"result":{"content":[{"type":"text","text":"'
                while True:
                    yield b"A" * 65536
                    await asyncio.sleep(0)
            return StreamingResponse(endless(), media_type="application/json")
        reply = _handle(mode, msg)
        if reply is None:
            await asyncio.sleep(100_000)
        return Response(_dumps(reply), media_type="application/json")

    return Starlette(routes=[Route("/health", health), Route("/{mode}/mcp", endpoint, methods=["GET", "POST", "DELETE"])])


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        _stdio_main(sys.argv[2])
    else:
        import uvicorn

        uvicorn.run(_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    sys.exit(0)

# ------------------------------------------------------------------------------------------ tests

import gc  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from moksori.tools import MCPConnection, MCPTarget  # noqa: E402
from moksori.tools.mcp_client import MCPUnavailable  # noqa: E402
from servers import ServerProcess, free_port  # noqa: E402

HERE = Path(__file__).resolve()
ENV = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def stdio(mode: str, name: str = "hostile", **kw) -> MCPConnection:
    return MCPConnection(MCPTarget(name, command=sys.executable, args=(str(HERE), "stdio", mode), env=ENV, **kw))


@pytest.fixture(scope="module")
def hostile_http():
    port = free_port()
    srv = ServerProcess([sys.executable, str(HERE), "http", str(port)], port=port, ready_path="/health",
                        env=ENV, ready_timeout_s=60)
    with srv:
        yield srv


def http(srv, mode: str, name: str = "hostile", **kw) -> MCPConnection:
    return MCPConnection(MCPTarget(name, url=f"{srv.url}/{mode}/mcp", **kw))


class LoopWatch:
    """The longest the event loop went without running a 10 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.worst = max(self.worst, now - last - 0.01)
            last = now

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# --------------------------------------------------------------------------- 1. result size


@pytest.mark.parametrize("tool", ["big", "bigmany"])
async def test_http_result_over_the_limit_is_a_short_error_and_the_connection_stays(hostile_http, tool) -> None:
    conn = http(hostile_http, "ok")
    try:
        assert "echo" in [t.name for t in await conn.list_tools()]
        async with LoopWatch() as watch:
            out = await conn.call(tool, {}, timeout_s=20)
        assert not out.ok and out.kind == "failed", out
        assert "the MCP server hostile sent a result larger than 4 MiB" in out.text
        assert "validation" not in out.text.lower() and len(out.text) < 300
        assert watch.worst < 0.5, f"the event loop stalled {watch.worst:.2f} s"
        again = await conn.call("echo", {"x": 1}, timeout_s=10)
        assert again.ok and "echo:" in again.text and conn.connects == 1
    finally:
        await conn.close()


async def test_http_endless_body_is_cut_off(hostile_http) -> None:
    conn = http(hostile_http, "ok")
    try:
        started = time.monotonic()
        out = await conn.call("endless", {}, timeout_s=15)
        assert not out.ok and "larger than 4 MiB" in out.text, out
        assert time.monotonic() - started < 10
        assert (await conn.call("echo", {}, timeout_s=10)).ok
    finally:
        await conn.close()


async def test_stdio_result_over_the_limit_is_a_short_error_and_the_child_stays() -> None:
    conn = stdio("ok")
    try:
        first = await conn.call("pid", {}, timeout_s=10)
        assert first.ok
        async with LoopWatch() as watch:
            out = await conn.call("big", {}, timeout_s=20)
        assert not out.ok and out.kind == "failed", out
        assert "the MCP server hostile sent a result larger than 4 MiB" in out.text
        assert watch.worst < 0.5, f"the event loop stalled {watch.worst:.2f} s"
        again = await conn.call("pid", {}, timeout_s=10)
        assert again.ok and again.text == first.text and conn.connects == 1  # the same child
    finally:
        await conn.close()


@pytest.mark.parametrize("kind", ["stdio", "http"])
async def test_too_many_objects_is_refused_before_parsing_but_braces_in_text_are_fine(hostile_http, kind) -> None:
    conn = stdio("ok") if kind == "stdio" else http(hostile_http, "ok")
    try:
        async with LoopWatch() as watch:
            out = await conn.call("manyblocks", {}, timeout_s=20)
        assert not out.ok and "the MCP server hostile sent a result with more than 50000 JSON objects" in out.text, out
        assert watch.worst < 0.5, f"the event loop stalled {watch.worst:.2f} s"
        text = await conn.call("bracetext", {}, timeout_s=20, max_chars=100)
        assert text.ok and '{"k": 1}' in text.text
        assert conn.connects == 1
    finally:
        await conn.close()


# --------------------------------------------------------------------------- 2. a child's stderr


async def test_stdio_stderr_goes_to_our_log_named_and_rate_limited(caplog, capfd) -> None:
    caplog.set_level(logging.INFO, logger="moksori.tools.mcp_client")
    conn = stdio("flood", name="noisy")
    try:
        assert (await conn.call("echo", {}, timeout_s=20)).ok
        await asyncio.sleep(0.5)
    finally:
        await conn.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mcp noisy: ")]
    assert 1 <= len(lines) <= 30, len(lines)
    assert all(len(line) < 600 for line in lines)
    counts = [r.getMessage() for r in caplog.records if "more stderr lines" in r.getMessage()]
    assert counts and "mcp noisy" in counts[-1]
    assert "EEEEEEEEEE" not in capfd.readouterr().err  # the child's stderr is not ours


# --------------------------------------------------------------------------- 3, 4. connecting


@pytest.mark.parametrize("kind", ["stdio", "http"])
async def test_connect_timeout_is_kept_and_named_right(hostile_http, kind, caplog) -> None:
    caplog.set_level(logging.WARNING)
    conn = stdio("noinit", connect_timeout_s=2) if kind == "stdio" else http(hostile_http, "noinit",
                                                                              connect_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(MCPUnavailable) as err:
        await conn.list_tools()
    took = time.monotonic() - started
    assert "no answer within 2 s" in str(err.value)
    assert took < 3.0, f"failed after {took:.1f} s"
    await conn.close()
    gc.collect()
    await asyncio.sleep(0.1)
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_stdio_garbage_on_stdout_is_skipped() -> None:
    conn = stdio("garbage", connect_timeout_s=5)
    try:
        assert "echo" in [t.name for t in await conn.list_tools()]
        out = await conn.call("echo", {"x": 1}, timeout_s=5)
        assert out.ok and "echo:" in out.text
    finally:
        await conn.close()


# --------------------------------------------------------------------------- 5. a bad result


@pytest.mark.parametrize("tool", ["badcontent", "badlist"])
async def test_bad_result_is_a_bad_result_not_a_dead_server(tool) -> None:
    conn = stdio("ok")
    try:
        out = await conn.call(tool, {}, timeout_s=10)
        assert not out.ok and out.kind == "failed", out
        assert "the MCP server hostile sent a result that is not valid" in out.text
        assert "validation error" not in out.text and "pydantic" not in out.text and len(out.text) < 300
        assert (await conn.call("echo", {}, timeout_s=10)).ok and conn.connects == 1
    finally:
        await conn.close()


# --------------------------------------------------------------------------- 6, 7. listing


async def test_many_tools_are_capped_with_one_warning(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="moksori.tools.mcp_client")
    conn = stdio("many")
    try:
        tools = await conn.list_tools()
        assert len(tools) == 128 and tools[0].name == "t0000"
        assert len(await conn.list_tools()) == 128
    finally:
        await conn.close()
    warned = [r.getMessage() for r in caplog.records if "more tools than the 128" in r.getMessage()]
    assert len(warned) == 1 and "500 listed" in warned[0]


async def test_endless_paging_stops() -> None:
    conn = stdio("pageloop")
    try:
        started = time.monotonic()
        assert len(await conn.list_tools()) == 128
        assert await conn.list_tools(["not-there"]) == []  # the same cursor again: no more pages
        assert time.monotonic() - started < 5
    finally:
        await conn.close()


async def test_deeply_nested_listing_is_one_log_line(hostile_http, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    conn = http(hostile_http, "deep")
    try:
        with pytest.raises(MCPUnavailable) as err:
            await conn.list_tools()
        assert "not valid JSON-RPC" in str(err.value) and len(str(err.value)) < 300
    finally:
        await conn.close()
    sdk = [r for r in caplog.records if r.name.startswith("mcp.")]
    parse = [r for r in sdk if "Error parsing JSON response" in r.getMessage()]
    assert parse and all(r.exc_info is None and "\n" not in r.getMessage() for r in parse)
