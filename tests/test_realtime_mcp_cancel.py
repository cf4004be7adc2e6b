"""MCP items when a Realtime response is cancelled mid-way, and a tool left out of a listing.

Real components: `moksori serve` (pipeline brain), the official `openai` SDK Realtime client
(every event validated against the SDK's union), the scripted OpenAI-compatible LLM stand-in
(tests/scripted_llm_server.py), and a small raw JSON-RPC MCP server on loopback (Streamable HTTP,
JSON answers) that can hang where a test needs it: `/hang/mcp` never answers `tools/call`,
`/noinit/mcp` never answers `initialize`, `/clash/mcp` lists three tools of one name.

What OpenAI's Realtime API promises a client, checked in event order: every output item a
response announced gets its `response.output_item.done` (an `mcp_call` its
`response.mcp_call.failed`, with its arguments as they were) before that response's
`response.done`, whose output is the items as the client last saw them; no
`conversation.item.truncated` for an item the client never got; no `error` event for a listing
that completed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from openai.types.realtime import RealtimeMcpListTools, RealtimeMcpToolCall
from scripted_llm_server import ScriptedLLM
from servers import ThreadedASGIServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from test_realtime_clients import KEY, EventLog, moksori_serve
from test_realtime_mcp import ask, listed, open_session, sdk_shape
from websockets.asyncio.client import connect

from speech import prepared_data_dir

HANG_S = 30.0  # a hanging answer: far longer than any test waits


def _tool(name: str) -> dict[str, Any]:
    return {"name": name, "description": "Echo x.", "annotations": {"readOnlyHint": True},
            "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}}


class RawMCP:
    """A bare MCP server (JSON-RPC over Streamable HTTP, JSON answers); the mode is the first
    path segment (`/MODE/mcp`)."""

    def __init__(self) -> None:
        self.app = Starlette(routes=[Route("/{mode}/mcp", self.endpoint, methods=["GET", "POST", "DELETE"])])

    async def endpoint(self, request: Request) -> Response:
        mode = request.path_params["mode"]
        if request.method == "GET":
            return Response(status_code=405)
        if request.method == "DELETE":
            return Response(status_code=200)
        msg = json.loads(await request.body())
        if "id" not in msg:  # a notification
            return Response(status_code=202)
        method = msg.get("method")
        if method == "initialize":
            if mode == "noinit":
                await asyncio.sleep(HANG_S)
            result: dict[str, Any] = {"protocolVersion": msg.get("params", {}).get("protocolVersion", "2025-06-18"),
                                      "capabilities": {"tools": {}}, "serverInfo": {"name": "raw", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": [_tool("dup"), _tool("dup"), _tool("dup")] if mode == "clash" else [_tool("echo")]}
        elif method == "tools/call":
            if mode == "hang":
                await asyncio.sleep(HANG_S)
            result = {"content": [{"type": "text", "text": "echoed"}]}
        elif method == "ping":
            result = {}
        else:
            return JSONResponse({"jsonrpc": "2.0", "id": msg["id"],
                                 "error": {"code": -32601, "message": "Method not found"}})
        return JSONResponse({"jsonrpc": "2.0", "id": msg["id"], "result": result})


@pytest.fixture(scope="module")
def raw_mcp():
    m = RawMCP()
    with ThreadedASGIServer(m.app) as srv:
        m.url = srv.url  # type: ignore[attr-defined]
        yield m


@pytest.fixture(scope="module")
def server(tmp_path_factory, raw_mcp):
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as llm_srv, \
            moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("serve-mcp-cancel"),
                          MOKSORI_LLM_PROVIDER="openai", MOKSORI_LLM_BASE_URL=llm_srv.url + "/v1",
                          MOKSORI_LLM_MODEL="scripted", MOKSORI_TOOLS_REALTIME_MCP_ALLOW=raw_mcp.url + "/",
                          MOKSORI_SERVER_SHED_LOOP_LAG_MS="5000") as srv:
        yield srv


def mcp(raw_mcp: Any, mode: str, label: str) -> dict[str, Any]:
    return {"type": "mcp", "server_label": label, "server_url": f"{raw_mcp.url}/{mode}/mcp",
            "require_approval": "never"}


async def settle(log: EventLog, s: float = 1.0) -> None:
    """Time for anything that would (wrongly) come after `response.done`."""
    await asyncio.sleep(s)


def check_closed_before_done(events: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The response's `response.done` and the items its `output_item.done` events gave, having
    checked: one `response.done`; every item announced got its `output_item.done` before it; the
    response's output is those items, as last sent; nothing about them after it; no truncation."""
    types = [e["type"] for e in events]
    assert types.count("response.done") == 1, types
    end = types.index("response.done")
    done = events[end]
    added = [e for e in events[:end] if e["type"] == "response.output_item.added"]
    closed = {e["item"]["id"]: e for e in events[:end] if e["type"] == "response.output_item.done"}
    assert [e["item"]["id"] for e in added] == list(closed), types  # each announced item is done, in order
    assert [closed[e["item"]["id"]]["output_index"] for e in added] == [e["output_index"] for e in added]
    assert done["response"]["output"] == [e["item"] for e in closed.values()]  # what the client saw
    ids = set(closed)
    late = [e for e in events[end + 1:] if e.get("item_id") in ids or e.get("item", {}).get("id") in ids]
    assert not late, late
    assert "conversation.item.truncated" not in types, types  # the client was shown no audio, nor any message
    return done, [e["item"] for e in closed.values()]


async def test_cancel_during_an_mcp_call_ends_the_call_item_before_response_done(server, raw_mcp) -> None:
    conn, log = await open_session(server.port, "scripted:tool=echo", [mcp(raw_mcp, "hang", "h")])
    try:
        await listed(log)
        n = len(log.events)
        await ask(conn, log, "Echo something.")
        await log.wait("response.mcp_call.in_progress", start=n, timeout=60)
        await conn.response.cancel()
        await log.wait("response.done", start=n, timeout=20)
        await settle(log)
        events = log.events[n:]
        types = [e["type"] for e in events]
        done, items = check_closed_before_done(events)
        assert done["response"]["status"] == "cancelled"
        assert [i["type"] for i in items] == ["mcp_call"]
        call = items[0]
        sdk_shape(RealtimeMcpToolCall, call)
        args = next(e for e in events if e["type"] == "response.mcp_call_arguments.done")["arguments"]
        assert json.loads(args) == {"x": "test"}
        assert call["arguments"] == args  # as they were, not the empty ones of output_item.added
        assert call["output"] is None and call["error"] is not None and "cancel" in call["error"]["message"]
        failed = [i for i, t in enumerate(types) if t == "response.mcp_call.failed"]
        assert len(failed) == 1 and failed[0] < types.index("response.done")
        assert events[failed[0]]["item_id"] == call["id"]
        assert "response.mcp_call.completed" not in types
        conv_done = [e for e in events if e["type"] == "conversation.item.done" and e["item"]["id"] == call["id"]]
        assert len(conv_done) == 1 and conv_done[0]["item"] == call
        assert not [e for e in events if e["type"] == "error"], types
        # the conversation keeps the item as the client was shown it
        m = len(log.events)
        await conn.conversation.item.retrieve(item_id=call["id"])
        assert (await log.wait("conversation.item.retrieved", start=m))["item"] == call
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_cancel_while_a_response_mcp_server_is_listed_ends_its_listing_item(server, raw_mcp) -> None:
    conn, log = await open_session(server.port, "scripted:reply=Plain.", [])
    try:
        n = len(log.events)
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Hi."}]})
        await conn.response.create(response={"tools": [mcp(raw_mcp, "noinit", "slow")]})
        progress = await log.wait("mcp_list_tools.in_progress", start=n, timeout=30)
        await asyncio.sleep(0.5)  # the listing waits for a server that never answers
        await conn.response.cancel()
        await log.wait("response.done", start=n, timeout=20)
        await settle(log)
        events = log.events[n:]
        types = [e["type"] for e in events]
        done, items = check_closed_before_done(events)
        assert done["response"]["status"] == "cancelled"
        assert [i["type"] for i in items] == ["mcp_list_tools"]
        sdk_shape(RealtimeMcpListTools, items[0])
        assert items[0]["id"] == progress["item_id"] and items[0]["tools"] == []
        assert types.count("mcp_list_tools.failed") == 1
        assert types.index("mcp_list_tools.failed") < types.index("response.done")
        assert "mcp_list_tools.completed" not in types
        assert not [e for e in events if e["type"] == "error"], types  # the client cancelled: no failure to report
        # the session goes on
        n = len(log.events)
        await ask(conn, log, "Still there?")
        done = await log.wait("response.done", start=n, timeout=60)
        assert done["response"]["status"] == "completed"
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_a_tool_left_out_of_a_listing_is_no_error(server, raw_mcp) -> None:
    """Three tools named `dup`: the first keeps its name, the second gets the server's label as a
    prefix, the third clashes either way and is left out. The listing completes: no `error`."""
    conn, log = await open_session(server.port, "scripted:reply=Fine.", [mcp(raw_mcp, "clash", "c")])
    try:
        item = await listed(log)
        assert len(item["tools"]) == 2
        await asyncio.sleep(0.5)
        assert not log.of("mcp_list_tools.failed")
        assert not log.of("error"), log.of("error")
        log.check_ids()
    finally:
        await log.close()
        await conn.close()

    # Azure Voice Live has a non-error `warning` event: the notice goes there
    url = f"ws://127.0.0.1:{server.port}/voice-live/realtime?api-version=2025-10-01&model=gpt-realtime"
    async with connect(url, additional_headers={"api-key": KEY}, max_size=None) as ws:
        alog = EventLog(ws.recv)
        try:
            await alog.wait("session.created")
            await ws.send(json.dumps({"type": "session.update", "session": {
                "instructions": "scripted:reply=Fine.", "modalities": ["text"],
                "tools": [mcp(raw_mcp, "clash", "c")]}}))
            await alog.wait("mcp_list_tools.completed", timeout=30)
            created = await alog.wait("conversation.item.created", lambda e: e["item"]["type"] == "mcp_list_tools")
            assert len(created["item"]["tools"]) == 2
            warning = await alog.wait("warning", timeout=5)
            assert "left out" in warning["warning"]["message"] and "taken" in warning["warning"]["message"]
            assert not alog.of("error"), alog.of("error")
        finally:
            await alog.close()
