"""MCP tools from Realtime clients, end to end.

Real components: `moksori serve` (pipeline brain, Piper for reply audio), the `mcp` SDK's own
server (tests/mcp_test_server.py) over Streamable HTTP on loopback, guarded by a bearer token
that only the client's `headers` carry, and the official `openai` SDK Realtime client (every
event it receives is validated against the SDK's own union, and every MCP item against the
SDK's model, extra keys included). The packaged SmolLM2 cannot pick tools, so the LLM is the
scripted OpenAI-compatible server on loopback (tests/scripted_llm_server.py), standing in for a
smart model: it calls the tool the instructions name (`scripted:tool=NAME`), then says
"The tool says: <result>."
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from openai.types.conversations.conversation_item import McpCall as ConversationMcpCall
from openai.types.realtime import (
    RealtimeMcpApprovalRequest,
    RealtimeMcpApprovalResponse,
    RealtimeMcpListTools,
    RealtimeMcpToolCall,
)
from scripted_llm_server import SHORT_REPLY, ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, closed_port, free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_realtime_clients import KEY, EventLog, b64, ga_connect, moksori_serve, speech_pcm, stream_realtime
from test_realtime_codec import azure_validate
from websockets.asyncio.client import connect

from speech import prepared_data_dir

HERE = Path(__file__).parent
MCP_SERVER = str(HERE / "mcp_test_server.py")
TOKEN = "mcp-test-token-42"
APPROVAL_TIMEOUT_S = 4.0


def sdk_shape(model: Any, obj: dict[str, Any]) -> None:
    """`obj` is what the SDK's model describes: it validates, and has no key the model lacks."""
    model.model_validate(obj)
    extra = set(obj) - set(model.model_fields)
    assert not extra, f"{model.__name__}: unexpected keys {extra}"


class Trap:
    """An HTTP server that must never be contacted (the target of a URL outside the allow-list)."""

    def __init__(self) -> None:
        self.hits = 0
        self.app = Starlette(routes=[Route("/{path:path}", self.hit, methods=["GET", "POST", "DELETE"])])

    async def hit(self, request: Request) -> PlainTextResponse:
        self.hits += 1
        return PlainTextResponse("no")


@pytest.fixture(scope="module")
def scripted():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"  # type: ignore[attr-defined]
        yield llm


@pytest.fixture(scope="module")
def mcp_url():
    port = free_port()
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "MCP_TEST_TOKEN": TOKEN}
    with ServerProcess([sys.executable, MCP_SERVER, "http", str(port)], port=port, ready_path="/health", env=env,
                       ready_timeout_s=60) as srv:
        yield srv.url + "/mcp"


@pytest.fixture(scope="module")
def trap():
    t = Trap()
    with ThreadedASGIServer(t.app) as srv:
        t.url = srv.url  # type: ignore[attr-defined]
        yield t


@pytest.fixture(scope="module")
def dead_url():
    return f"http://127.0.0.1:{closed_port()}/mcp"


@pytest.fixture(scope="module")
def server(tmp_path_factory, scripted, mcp_url, dead_url):
    data_dir = prepared_data_dir(tmp_path_factory)
    allow = f"{mcp_url},{dead_url}"
    with moksori_serve(data_dir, tmp_path_factory.mktemp("serve-mcp"), MOKSORI_LLM_PROVIDER="openai",
                       MOKSORI_LLM_BASE_URL=scripted.url, MOKSORI_LLM_MODEL="scripted",
                       MOKSORI_TOOLS_REALTIME_MCP_ALLOW=allow, MOKSORI_SERVER_SHED_LOOP_LAG_MS="5000",
                       MOKSORI_TOOLS_REALTIME_MCP_APPROVAL_TIMEOUT_S=str(APPROVAL_TIMEOUT_S)) as srv:
        yield srv


def mcp_tool(url: str, *, label: str = "wx", approval: Any = "never", auth: bool = True) -> dict[str, Any]:
    tool: dict[str, Any] = {"type": "mcp", "server_label": label, "server_url": url,
                            "allowed_tools": {"tool_names": ["weather", "secret_op"]}, "require_approval": approval}
    if auth:
        tool["headers"] = {"Authorization": f"Bearer {TOKEN}"}
    return tool


async def open_session(port: int, instructions: str, tools: list[dict[str, Any]]) -> tuple[Any, EventLog]:
    conn, log = await ga_connect(port)
    await log.wait("session.created")
    await conn.session.update(session={"type": "realtime", "instructions": instructions,
                                       "output_modalities": ["text"],
                                       "audio": {"input": {"turn_detection": None}}, "tools": tools})
    updated = await log.wait("session.updated")
    echoed = [t for t in updated["session"]["tools"] if t["type"] == "mcp"]
    assert [t["server_label"] for t in echoed] == [t["server_label"] for t in tools]
    assert all("headers" not in t for t in echoed)  # the token is never echoed
    return conn, log


async def ask(conn: Any, log: EventLog, text: str) -> None:
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": text}]})
    await conn.response.create()


async def stored_items(server: ServerProcess, conversation_id: str, ready: Any, timeout: float = 10.0) -> list[Any]:
    """The conversation's items as the Conversations API lists them (the official client), once
    `ready(items)` holds (the recorder's writer commits in the background)."""
    import openai

    api = openai.AsyncOpenAI(api_key=KEY, base_url=server.url + "/v1", max_retries=0)
    try:
        for _ in range(int(timeout / 0.2)):
            items = [i async for i in api.conversations.items.list(conversation_id, order="asc")]
            if ready(items):
                return items
            await asyncio.sleep(0.2)
        raise AssertionError(f"the stored items of {conversation_id} never got ready: {items}")
    finally:
        await api.close()


def reply_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


async def listed(log: EventLog, *, item_event: str = "conversation.item.done") -> dict[str, Any]:
    """The `mcp_list_tools` item once listed (after `mcp_list_tools.completed`; Azure has one
    `conversation.item.created`, with the tools)."""
    done = await log.wait("mcp_list_tools.completed", timeout=30)
    item = (await log.wait(item_event, lambda e: e["item"]["type"] == "mcp_list_tools"))["item"]
    assert item["id"] == done["item_id"]
    sdk_shape(RealtimeMcpListTools, item)
    for t in item["tools"]:
        sdk_shape(RealtimeMcpListTools.model_fields["tools"].annotation.__args__[0], t)  # type: ignore[union-attr]
    return item


async def test_a_listed_mcp_tool_is_called_and_the_reply_continues(server, scripted, mcp_url) -> None:
    conn, log = await open_session(server.port, "scripted:tool=weather", [mcp_tool(mcp_url)])
    try:
        added = await log.wait("conversation.item.added", lambda e: e["item"]["type"] == "mcp_list_tools")
        await log.wait("mcp_list_tools.in_progress", lambda e: e["item_id"] == added["item"]["id"])
        item = await listed(log)
        assert sorted(t["name"] for t in item["tools"]) == ["secret_op", "weather"]  # allowed_tools only
        weather = next(t for t in item["tools"] if t["name"] == "weather")
        assert weather["input_schema"]["properties"]["city"]["type"] == "string"

        n = len(log.events)
        await ask(conn, log, "What is the weather in Seoul?")
        done = await log.wait("response.done", start=n, timeout=60)
        events = log.events[n:]
        types = [e["type"] for e in events]
        mcp_types = [t for t in types if t.startswith("response.mcp_call")]
        assert mcp_types == ["response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
                             "response.mcp_call.in_progress", "response.mcp_call.completed"]
        added = next(i for i, e in enumerate(events) if e["type"] == "response.output_item.added"
                     and e["item"]["type"] == "mcp_call")
        assert added < types.index("response.mcp_call_arguments.delta")
        assert events[added]["item"]["output"] is None and events[added]["item"]["arguments"] == ""
        args_done = next(e for e in events if e["type"] == "response.mcp_call_arguments.done")
        assert json.loads(args_done["arguments"]) == {"city": "Seoul"}
        call = next(e["item"] for e in events if e["type"] == "response.output_item.done"
                    and e["item"]["type"] == "mcp_call")
        sdk_shape(RealtimeMcpToolCall, call)
        assert call["server_label"] == "wx" and call["name"] == "weather"
        assert call["output"] == "Seoul: sunny, 21 degrees" and call["error"] is None
        assert call["id"] == args_done["item_id"]
        await conn.conversation.item.retrieve(item_id=call["id"])
        got = await log.wait("conversation.item.retrieved", start=n)
        assert got["item"] == call
        r = done["response"]
        assert r["status"] == "completed"
        assert [o["type"] for o in r["output"]] == ["mcp_call", "message"]
        assert reply_text(events) == "The tool says: Seoul: sunny, 21 degrees."
        assert r["output"][1]["content"][0]["text"] == "The tool says: Seoul: sunny, 21 degrees."
        # the LLM saw the result as a tool message
        last = scripted.requests[-1]["messages"]
        assert last[-1]["role"] == "tool" and "sunny" in last[-1]["content"]
        # the store keeps the call as one `mcp_call` item: the Conversations API lists it so
        stored = await stored_items(server, r["conversation_id"], lambda its: len(its) >= 3)  # the reply lands after the call
        assert [i.type for i in stored] == ["message", "mcp_call", "message"]
        assert isinstance(stored[1], ConversationMcpCall) and not stored[1].model_extra  # the SDK's model, no extra keys
        kept = stored[1].model_dump()
        assert kept["id"] == call["id"] and kept["server_label"] == "wx" and kept["name"] == "weather"
        assert kept["output"] == "Seoul: sunny, 21 degrees" and json.loads(kept["arguments"]) == {"city": "Seoul"}

        # a session.update without the MCP tool drops its tools
        n = len(log.events)
        await conn.session.update(session={"type": "realtime", "tools": []})
        await log.wait("session.updated", start=n)
        await ask(conn, log, "And in Busan?")
        done = await log.wait("response.done", start=n, timeout=60)
        assert [o["type"] for o in done["response"]["output"]] == ["message"]
        assert reply_text(log.events[n:]) == SHORT_REPLY
        offered = [t["function"]["name"] for t in scripted.requests[-1].get("tools") or []]
        assert "weather" not in offered and "secret_op" not in offered
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_mcp_tools_in_response_create_serve_that_response_only(server, scripted, mcp_url, trap) -> None:
    """GA: `response.create` with `response.tools` holding an `mcp` tool lists that server for the
    response (its `mcp_list_tools` item is an output item of the response), calls its tool, and
    the next response (without it) is offered no MCP tool. The session's tools never change."""
    conn, log = await open_session(server.port, "scripted:reply=Plain.", [])
    try:
        n = len(log.events)
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Weather in Seoul?"}]})
        await conn.response.create(response={"instructions": "scripted:tool=weather", "output_modalities": ["text"],
                                             "tools": [mcp_tool(mcp_url, label="once")]})
        done = await log.wait("response.done", start=n, timeout=60)
        events = log.events[n:]
        types = [e["type"] for e in events]
        assert not [e for e in events if e["type"] in ("error", "session.updated")], types
        created = types.index("response.created")
        assert created < types.index("mcp_list_tools.in_progress") < types.index("mcp_list_tools.completed")
        r = done["response"]
        assert r["status"] == "completed"
        assert [o["type"] for o in r["output"]] == ["mcp_list_tools", "mcp_call", "message"]
        lt, call = r["output"][0], r["output"][1]
        sdk_shape(RealtimeMcpListTools, lt)
        sdk_shape(RealtimeMcpToolCall, call)
        assert lt["server_label"] == "once" and sorted(t["name"] for t in lt["tools"]) == ["secret_op", "weather"]
        listed_added = next(e for e in events if e["type"] == "response.output_item.added"
                            and e["item"]["type"] == "mcp_list_tools")
        assert listed_added["output_index"] == 0 and listed_added["item"]["tools"] == []
        assert call["server_label"] == "once" and call["output"] == "Seoul: sunny, 21 degrees"
        assert reply_text(events) == "The tool says: Seoul: sunny, 21 degrees."
        offered = [t["function"]["name"] for t in scripted.requests[-2].get("tools") or []]
        assert "weather" in offered

        # the next response has no MCP tool: the server named for the last one is gone
        n = len(log.events)
        await ask(conn, log, "And now?")
        done = await log.wait("response.done", start=n, timeout=60)
        assert [o["type"] for o in done["response"]["output"]] == ["message"]
        assert reply_text(log.events[n:]) == "Plain."
        offered = [t["function"]["name"] for t in scripted.requests[-1].get("tools") or []]
        assert "weather" not in offered and "secret_op" not in offered
        # the call stays in the history as one `mcp_call` item; the LLM reads it as a tool call and result
        msgs = scripted.requests[-1]["messages"]
        calls = [c["function"]["name"] for m in msgs if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        assert calls == ["weather"]
        assert [m["content"] for m in msgs if m["role"] == "tool"] == ["Seoul: sunny, 21 degrees"]
        m = len(log.events)
        await conn.conversation.item.retrieve(item_id=call["id"])
        assert (await log.wait("conversation.item.retrieved", start=m))["item"] == call
        await conn.conversation.item.delete(item_id=call["id"])  # deleted: gone for the LLM too
        assert (await log.wait("conversation.item.deleted", start=m))["item_id"] == call["id"]
        await conn.conversation.item.retrieve(item_id=call["id"])
        assert (await log.wait("error", start=m))["error"]["code"] == "item_not_found"

        # a response's MCP server outside the allow-list: listing fails, never contacted, the reply goes on
        n = len(log.events)
        await conn.response.create(response={"tools": [mcp_tool(trap.url + "/mcp", label="outside")]})
        done = await log.wait("response.done", start=n, timeout=60)
        err = await log.wait("error", start=n)
        assert err["error"]["code"] == "mcp_list_tools_failed" and "allow-list" in err["error"]["message"]
        assert "mcp_list_tools.failed" in [e["type"] for e in log.events[n:]]
        assert done["response"]["status"] == "completed"
        assert [o["type"] for o in done["response"]["output"]] == ["mcp_list_tools", "message"]
        assert [e["item"]["tools"] for e in log.events[n:] if e["type"] == "response.output_item.done"
                and e["item"]["type"] == "mcp_list_tools"] == [[]]  # its output item is done, with no tools
        assert err["error"]["param"] == "response.tools"
        assert trap.hits == 0
        assert not [m for m in scripted.requests[-1]["messages"] if m["role"] == "tool" or m.get("tool_calls")]
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_two_servers_with_the_same_tool_names(server, scripted, mcp_url) -> None:
    conn, log = await open_session(server.port, "scripted:reply=Fine.",
                                   [mcp_tool(mcp_url, label="a"), mcp_tool(mcp_url, label="b")])
    try:
        for _ in range(2):
            await listed(log)
        await log.wait("mcp_list_tools.completed", lambda e: len(log.of("mcp_list_tools.completed")) == 2)
        n = len(log.events)
        await ask(conn, log, "Hi.")
        await log.wait("response.done", start=n, timeout=60)
        offered = sorted(t["function"]["name"] for t in scripted.requests[-1].get("tools") or [])
        assert "weather" in offered and "secret_op" in offered
        assert ("a_weather" in offered) != ("b_weather" in offered)  # the second server's copy is prefixed
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_approval_approved_then_denied(server, mcp_url) -> None:
    policy = {"never": {"tool_names": ["weather"]}}  # secret_op is in no filter: it needs approval
    conn, log = await open_session(server.port, "scripted:tool=secret_op", [mcp_tool(mcp_url, approval=policy)])
    try:
        await listed(log)
        for approve in (True, False):
            n = len(log.events)
            await ask(conn, log, "Please do the secret operation.")
            req_ev = await log.wait("response.output_item.done", lambda e: e["item"]["type"] == "mcp_approval_request",
                                    start=n, timeout=60)
            req = req_ev["item"]
            sdk_shape(RealtimeMcpApprovalRequest, req)
            assert req["name"] == "secret_op" and json.loads(req["arguments"]) == {"target": "test"}
            assert not [e for e in log.events[n:] if e["type"].startswith("response.mcp_call")]  # waits
            await conn.conversation.item.create(item={"type": "mcp_approval_response", "approval_request_id": req["id"],
                                                      "approve": approve, "reason": None if approve else "not today"})
            if approve:  # as OpenAI's flow has it: the reply already goes on, so this one is ignored
                await conn.response.create()
            echo = await log.wait("conversation.item.added", lambda e: e["item"]["type"] == "mcp_approval_response",
                                  start=n)
            sdk_shape(RealtimeMcpApprovalResponse, echo["item"])
            assert echo["item"]["approve"] is approve
            done = await log.wait("response.done", start=n, timeout=60)
            events = log.events[n:]
            outputs = [o["type"] for o in done["response"]["output"]]
            text = reply_text(events)
            if approve:
                assert outputs == ["mcp_approval_request", "mcp_call", "message"]
                call = done["response"]["output"][1]
                sdk_shape(RealtimeMcpToolCall, call)
                assert call["approval_request_id"] == req["id"] and call["output"] == "done: test"
                assert "response.mcp_call.completed" in [e["type"] for e in events]
                assert text == "The tool says: done: test."
                assert not [e for e in events if e["type"] == "error"]  # the extra response.create: ignored
                assert len([e for e in events if e["type"] == "response.created"]) == 1
            else:
                assert outputs == ["mcp_approval_request", "message"]  # never called
                assert not [e for e in events if e["type"].startswith("response.mcp_call")]
                assert "denied" in text and "not today" in text
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_an_unanswered_approval_times_out_and_the_session_goes_on(server, mcp_url) -> None:
    conn, log = await open_session(server.port, "scripted:tool=weather",
                                   [mcp_tool(mcp_url, approval="always")])
    try:
        await listed(log)
        n = len(log.events)
        await ask(conn, log, "Weather in Seoul?")
        req = (await log.wait("response.output_item.done", lambda e: e["item"]["type"] == "mcp_approval_request",
                              start=n, timeout=60))["item"]
        done = await log.wait("response.done", start=n, timeout=APPROVAL_TIMEOUT_S + 60)
        assert done["response"]["status"] == "completed"
        assert "not approved within" in reply_text(log.events[n:])
        m = len(log.events)
        await conn.conversation.item.create(item={"type": "mcp_approval_response", "approval_request_id": req["id"],
                                                  "approve": True})
        err = await log.wait("error", start=m)
        assert err["error"]["code"] == "item_not_found" and "approval" in err["error"]["message"]
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_not_allowed_unreachable_and_unauthorised_servers_fail_cleanly(server, trap, dead_url, mcp_url) -> None:
    tools = [mcp_tool(trap.url + "/mcp", label="outside"), mcp_tool(dead_url, label="dead"),
             mcp_tool(mcp_url, label="noauth", auth=False)]
    conn, log = await open_session(server.port, "scripted:reply=Still here.", tools)
    try:
        for _ in range(200):
            if len(log.of("mcp_list_tools.failed")) == len(tools):
                break
            await asyncio.sleep(0.1)
        assert len(log.of("mcp_list_tools.failed")) == len(tools) and not log.of("mcp_list_tools.completed")
        errors = {e["error"]["message"].split("'")[1]: e["error"] for e in log.of("error")}
        assert set(errors) == {"outside", "dead", "noauth"}
        assert all(e["code"] == "mcp_list_tools_failed" for e in errors.values())
        assert "allow-list" in errors["outside"]["message"]
        assert "cannot connect" in errors["dead"]["message"], errors["dead"]
        # the same server listed fine with the client's Authorization header (the tests above)
        assert "cannot connect" in errors["noauth"]["message"], errors["noauth"]
        assert trap.hits == 0  # a URL outside the allow-list is never contacted
        # the session still answers
        n = len(log.events)
        await ask(conn, log, "Hello?")
        done = await log.wait("response.done", start=n, timeout=60)
        assert done["response"]["status"] == "completed" and reply_text(log.events[n:]) == "Still here."
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_voice_live_spoken_turn_calls_an_mcp_tool_and_speaks_the_answer(server, mcp_url) -> None:
    """Azure Voice Live dialect, server VAD on real recorded speech, audio out."""
    url = f"ws://127.0.0.1:{server.port}/voice-live/realtime?api-version=2025-10-01&model=gpt-realtime"
    async with connect(url, additional_headers={"api-key": KEY}, max_size=None) as ws:
        log = EventLog(ws.recv)
        try:
            await log.wait("session.created")
            await ws.send(json.dumps({"type": "session.update", "session": {
                "instructions": "scripted:tool=weather", "modalities": ["text", "audio"],
                "tools": [mcp_tool(mcp_url)]}}))
            await log.wait("session.updated")
            item = await listed(log, item_event="conversation.item.created")
            assert sorted(t["name"] for t in item["tools"]) == ["secret_op", "weather"]
            n = len(log.events)

            async def append(chunk: Any) -> None:
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(chunk)}))

            log.spawn(stream_realtime(append, speech_pcm()))
            done = await log.wait("response.done", start=n, timeout=90)
            events = log.events[n:]
            mcp_events = [e for e in log.events if "mcp" in e["type"] or "mcp" in str(e.get("item", {}).get("type"))]
            assert len(mcp_events) >= 8
            for e in mcp_events:  # the Azure SDK's own models know every MCP event and item
                azure_validate(e)
            r = done["response"]
            assert [o["type"] for o in r["output"]] == ["mcp_call", "message"], r["output"]
            assert r["output"][0]["output"] == "Seoul: sunny, 21 degrees"
            transcript = "".join(e["delta"] for e in events if e["type"] == "response.audio_transcript.delta")
            assert transcript == "The tool says: Seoul: sunny, 21 degrees."
            audio = sum(len(e["delta"]) for e in events if e["type"] == "response.audio.delta")
            assert audio > 24000 * 2 * 4 // 3  # more than a second of base64 pcm16 at 24 kHz
            assert [e["type"] for e in events if e["type"].startswith("response.mcp_call")] == [
                "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
                "response.mcp_call.in_progress", "response.mcp_call.completed"]
        finally:
            await log.close()


async def test_a_reply_cancelled_while_waiting_for_approval(server, mcp_url) -> None:
    conn, log = await open_session(server.port, "scripted:tool=weather", [mcp_tool(mcp_url, approval="always")])
    try:
        await listed(log)
        n = len(log.events)
        await ask(conn, log, "Weather in Seoul?")
        req = (await log.wait("response.output_item.done", lambda e: e["item"]["type"] == "mcp_approval_request",
                              start=n, timeout=60))["item"]
        await conn.response.cancel()
        done = await log.wait("response.done", start=n, timeout=20)
        assert done["response"]["status"] == "cancelled"
        assert not [e for e in log.events[n:] if e["type"].startswith("response.mcp_call")]
        m = len(log.events)
        await conn.conversation.item.create(item={"type": "mcp_approval_response", "approval_request_id": req["id"],
                                                  "approve": True})
        assert (await log.wait("error", start=m))["error"]["code"] == "item_not_found"
        # the session goes on: the next question asks again
        await ask(conn, log, "Weather in Seoul, please?")
        req2 = (await log.wait("response.output_item.done", lambda e: e["item"]["type"] == "mcp_approval_request",
                               start=m, timeout=60))["item"]
        await conn.conversation.item.create(item={"type": "mcp_approval_response", "approval_request_id": req2["id"],
                                                  "approve": True})
        done = await log.wait("response.done", start=m, timeout=60)
        assert done["response"]["status"] == "completed"
        assert reply_text(log.events[m:]) == "The tool says: Seoul: sunny, 21 degrees."
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_webrtc_call_with_an_mcp_tool_in_its_ephemeral_key_and_approval_on_the_data_channel(
        server, mcp_url) -> None:
    """WebRTC uses the same connection: the tool comes with the key's session (a preset, listed
    when the call starts), events and the approval travel on `oai-events`."""
    from openai import AsyncOpenAI

    from moksori.testing.webrtc_client import RtcClient

    api = AsyncOpenAI(api_key=KEY, base_url=server.url + "/v1", max_retries=0)
    try:
        secret = await api.realtime.client_secrets.create(session={
            "type": "realtime", "instructions": "scripted:tool=weather", "output_modalities": ["text"],
            "tools": [mcp_tool(mcp_url, approval="always")]})  # type: ignore[list-item]
    finally:
        await api.close()
    client = RtcClient()
    await client.connect_sdk(server.url, secret.value)
    try:
        await asyncio.wait_for(client.opened.wait(), 15)
        await client.wait_event("session.created")
        await client.wait_event("mcp_list_tools.completed", timeout=30)
        item = (await client.wait_event("conversation.item.done", pred=lambda e: e["item"]["type"] == "mcp_list_tools"))
        sdk_shape(RealtimeMcpListTools, item["item"])
        n = len(client.events)
        client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Seoul?"}]}})
        client.send({"type": "response.create"})
        req = await client.wait_event("response.output_item.done", after=n, timeout=60,
                                      pred=lambda e: e["item"]["type"] == "mcp_approval_request")
        client.send({"type": "conversation.item.create", "item": {
            "type": "mcp_approval_response", "approval_request_id": req["item"]["id"], "approve": True}})
        done = await client.wait_event("response.done", after=n, timeout=60)
        assert [o["type"] for o in done["response"]["output"]] == ["mcp_approval_request", "mcp_call", "message"]
        assert done["response"]["output"][1]["output"] == "Seoul: sunny, 21 degrees"
        assert done["response"]["output"][2]["content"][0]["text"] == "The tool says: Seoul: sunny, 21 degrees."
    finally:
        await client.close()


# --------------------------------------------------------------------------- the realtime brain


@pytest.fixture(scope="module")
def brain_front(tmp_path_factory, server, mcp_url):
    """`moksori serve` with the realtime brain. Its upstream is `server` above (the pipeline brain
    whose LLM is the scripted stand-in): a scripted speech-to-speech upstream that calls the
    function tools it is offered, as `scripted:tool=NAME` says. The MCP tools the client names
    reach the upstream as function tools; the front runs their calls."""
    cwd = tmp_path_factory.mktemp("serve-brain-mcp")
    with moksori_serve(prepared_data_dir(tmp_path_factory), cwd, MOKSORI_BRAIN="realtime",
                       MOKSORI_REALTIME_URL=f"ws://127.0.0.1:{server.port}/v1/realtime?model=gpt-realtime",
                       MOKSORI_REALTIME_API_KEY=KEY, MOKSORI_REALTIME_RESPONSE_TIMEOUT_S="30",
                       MOKSORI_STORE_URL=f"sqlite+aiosqlite:///{cwd / 'front.db'}", MOKSORI_LANGUAGE="en",
                       MOKSORI_TOOLS_REALTIME_MCP_ALLOW=mcp_url, MOKSORI_SERVER_SHED_LOOP_LAG_MS="5000",
                       MOKSORI_TOOLS_REALTIME_MCP_APPROVAL_TIMEOUT_S=str(APPROVAL_TIMEOUT_S)) as srv:
        yield srv


async def test_the_realtime_brain_offers_mcp_tools_upstream_and_runs_the_upstreams_calls(
        brain_front, scripted, mcp_url) -> None:
    policy = {"never": {"tool_names": ["weather"]}}  # secret_op needs approval
    conn, log = await open_session(brain_front.port, "scripted:tool=weather", [mcp_tool(mcp_url, approval=policy)])
    try:
        item = await listed(log)
        assert sorted(t["name"] for t in item["tools"]) == ["secret_op", "weather"]
        n = len(log.events)
        await ask(conn, log, "What is the weather in Seoul?")
        done = await log.wait("response.done", start=n, timeout=90)
        events = log.events[n:]
        r = done["response"]
        assert r["status"] == "completed", r
        assert [o["type"] for o in r["output"]] == ["mcp_call", "message"], r["output"]
        assert [e["type"] for e in events if e["type"].startswith("response.mcp_call")] == [
            "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
            "response.mcp_call.in_progress", "response.mcp_call.completed"]
        call = r["output"][0]
        sdk_shape(RealtimeMcpToolCall, call)
        assert call["server_label"] == "wx" and call["name"] == "weather" and call["output"] == "Seoul: sunny, 21 degrees"
        assert json.loads(call["arguments"]) == {"city": "Seoul"}
        assert reply_text(events) == "The tool says: Seoul: sunny, 21 degrees."
        # the upstream (its scripted LLM) was offered the MCP tools as function tools, and read the result
        asked, answered = scripted.requests[-2:]
        assert {"weather", "secret_op"} <= {t["function"]["name"] for t in asked.get("tools") or []}
        assert answered["messages"][-1]["role"] == "tool" and "sunny" in answered["messages"][-1]["content"]
        await conn.conversation.item.retrieve(item_id=call["id"])
        assert (await log.wait("conversation.item.retrieved", start=n))["item"] == call
        stored = await stored_items(brain_front, r["conversation_id"], lambda its: len(its) >= 3)
        assert [i.type for i in stored] == ["message", "mcp_call", "message"]
        assert isinstance(stored[1], ConversationMcpCall) and stored[1].id == call["id"]
        assert stored[1].server_label == "wx" and stored[1].output == "Seoul: sunny, 21 degrees"

        # a call that needs approval: the request, the client's answer, then the call
        n = len(log.events)
        await conn.session.update(session={"type": "realtime", "instructions": "scripted:tool=secret_op"})
        await log.wait("session.updated", start=n)
        await ask(conn, log, "Please do the secret operation.")  # upstream after the first call, its output and reply
        req = (await log.wait("response.output_item.done", lambda e: e["item"]["type"] == "mcp_approval_request",
                              start=n, timeout=60))["item"]
        sdk_shape(RealtimeMcpApprovalRequest, req)
        assert req["name"] == "secret_op" and json.loads(req["arguments"]) == {"target": "test"}
        await conn.conversation.item.create(item={"type": "mcp_approval_response", "approval_request_id": req["id"],
                                                  "approve": True})
        await conn.response.create()  # as OpenAI's flow has it: the reply already goes on, so this is ignored
        done = await log.wait("response.done", start=n, timeout=60)
        events = log.events[n:]
        assert [o["type"] for o in done["response"]["output"]] == ["mcp_approval_request", "mcp_call", "message"]
        assert done["response"]["output"][1]["approval_request_id"] == req["id"]
        assert done["response"]["output"][1]["output"] == "done: test"
        assert reply_text(events) == "The tool says: done: test."
        # the upstream's conversation in order: each call, its output, then what came after
        roles = [m["role"] for m in scripted.requests[-1]["messages"]]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "user", "assistant", "tool"], roles
        assert len([e for e in events if e["type"] == "response.created"]) == 1
        assert not [e for e in log.events if e["type"] == "error"], [e for e in log.events if e["type"] == "error"]
        assert not [e for e in log.events if e["type"] == "warning" and "MCP" in str(e)]
        log.check_ids()
    finally:
        await log.close()
        await conn.close()
