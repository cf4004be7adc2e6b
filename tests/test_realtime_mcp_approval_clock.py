"""A Realtime client's MCP call that needs approval: its wait starts when the client is shown the request.

The LLM writes some words and then the call; the call is parsed at once, while those words are
still being synthesised and paced out. The `mcp_approval_request` item goes out only after their
last audio (it must not come before the words that lead to it), so the client cannot answer before
then: `tools.realtime_mcp_approval_timeout_s` counts from that moment, not from the parse. Checked,
with a small approval timeout and words before the call that play for longer than it:

* a client that answers within the timeout after seeing the request is heard: the call runs (its
  `mcp_call` item, the tool's result spoken), no `error`;
* a client that never answers: the reply goes on (the model told the call did not run) a whole
  timeout after the request reached the client, not at once;
* the reply cancelled while the request still waits behind the words before it, and a connection
  closed there: the reply ends cleanly (`response.done` cancelled, the request then answered with
  `item_not_found`), the session and the server go on, no traceback.

And, hermetically through `Outbound` (the engine's side scripted, as in
`test_realtime_outbound_parts.py`): `when_sent` calls back right after the events sent before it
have gone out, whether they waited for a message item or not, and at the reply's end when it is cut.

Real components: `moksori serve` (pipeline brain, Piper for the reply audio), the `mcp` SDK's own
server (tests/mcp_test_server.py) over Streamable HTTP on loopback, the official `openai` SDK's
Realtime client (every event validated against its union). The LLM is the scripted
OpenAI-compatible stand-in on loopback (tests/scripted_llm_server.py, not a model): it says the
preface, calls the tool in the same answer, then says "The tool says: <result>.".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from test_realtime_clients import EventLog, audio_seconds, ga_connect, moksori_serve
from test_realtime_mcp import mcp_tool, mcp_url, scripted  # noqa: F401 - the module's fixtures
from test_realtime_outbound_parts import FIRST, RID, audio, done, start, wire, words
from test_realtime_truncate import of_response
from test_realtime_truncate_tools import SAID, Reply, ask

from moksori.protocols import realtime as rt
from speech import prepared_data_dir

APPROVAL_TIMEOUT_S = 3.0
# about 9 s of speech: still playing long after a timeout counted from the parse would have run out
PREFACE = ("Let me check the weather in Seoul for you. I will look at the temperature, the wind and the "
           "chance of rain, and then I will tell you what to wear today.")
INSTRUCTIONS = f"scripted:tool=weather\nscripted:preface={PREFACE}"


@pytest.fixture(scope="module")
def approving(tmp_path_factory, scripted, mcp_url):  # noqa: F811
    with moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("serve-approval"),
                       MOKSORI_LLM_PROVIDER="openai", MOKSORI_LLM_BASE_URL=scripted.url, MOKSORI_LLM_MODEL="scripted",
                       MOKSORI_LANGUAGE="en", MOKSORI_CONFIG="", MOKSORI_TOOLS_REALTIME_MCP_ALLOW=mcp_url,
                       MOKSORI_SERVER_SHED_LOOP_LAG_MS="5000",
                       MOKSORI_TOOLS_REALTIME_MCP_APPROVAL_TIMEOUT_S=str(APPROVAL_TIMEOUT_S)) as srv:
        yield srv


async def spoken_session(port: int, url: str) -> tuple[Any, EventLog]:
    """The GA SDK's client, audio replies, turn detection off, the MCP server listed with every
    call needing approval."""
    conn, log = await ga_connect(port)
    await log.wait("session.created")
    await conn.session.update(session={"type": "realtime", "instructions": INSTRUCTIONS,
                                       "audio": {"input": {"turn_detection": None}},
                                       "tools": [mcp_tool(url, approval="always")]})
    await log.wait("session.updated")
    await log.wait("mcp_list_tools.completed", timeout=30)
    return conn, log


def is_request(e: dict[str, Any]) -> bool:
    return e["item"]["type"] == "mcp_approval_request"


async def shown_request(log: EventLog, reply: Reply) -> tuple[dict[str, Any], float]:
    """The approval request as the client got it, and when (monotonic), checking the premise: the
    words before the call played for longer than the approval timeout before it came."""
    asked = time.monotonic()
    done_ev = await log.wait("response.output_item.done", lambda e: e["response_id"] == reply.rid and is_request(e),
                             timeout=60)
    shown = time.monotonic()
    first = reply.messages()[0]
    played = reply.audio_s(first)
    assert shown - asked > APPROVAL_TIMEOUT_S + 1.0 and played > APPROVAL_TIMEOUT_S + 1.0, \
        f"premise: the words before the call must still be going out a timeout after the call ({shown - asked:.1f} s, " \
        f"{played:.1f} s of audio)"
    return done_ev["item"], shown


def output_types(done_ev: dict[str, Any]) -> list[str]:
    return [o["type"] for o in done_ev["response"]["output"]]


async def test_an_answer_within_the_timeout_after_the_request_is_shown_is_heard(approving, mcp_url) -> None:  # noqa: F811
    conn, log = await spoken_session(approving.port, mcp_url)
    try:
        reply = await ask(conn, log, "What is the weather in Seoul?")
        req, _shown = await shown_request(log, reply)
        await asyncio.sleep(APPROVAL_TIMEOUT_S / 2)  # the user reads it and decides
        n = len(log.events)
        await conn.conversation.item.create(item={"type": "mcp_approval_response", "approval_request_id": req["id"],
                                                  "approve": True})
        done_ev = await log.wait("response.done", lambda e: e["response"]["id"] == reply.rid, timeout=60)
        assert not log.of("error"), log.of("error")
        assert [e for e in log.events[n:] if e["type"] == "conversation.item.added"
                and e["item"]["type"] == "mcp_approval_response"], "the answer was not taken"
        assert done_ev["response"]["status"] == "completed", done_ev["response"]
        assert output_types(done_ev) == ["message", "mcp_approval_request", "mcp_call", "message"]
        call = done_ev["response"]["output"][2]
        assert call["approval_request_id"] == req["id"] and call["output"] == "Seoul: sunny, 21 degrees", call
        assert done_ev["response"]["output"][3]["content"][0]["transcript"] == SAID
        log.check_ids()
    finally:
        await log.close()
        await conn.close()
    assert "Traceback" not in approving.log_text()


async def test_an_unanswered_request_times_out_a_whole_timeout_after_it_is_shown(approving, mcp_url) -> None:  # noqa: F811
    conn, log = await spoken_session(approving.port, mcp_url)
    try:
        reply = await ask(conn, log, "What is the weather in Seoul?")
        req, shown = await shown_request(log, reply)
        # the reply goes on (its next message item) once the wait is over
        await log.wait("response.output_item.added", lambda e: e["response_id"] == reply.rid
                       and e["item"]["type"] == "message" and e["item"]["id"] != reply.messages()[0], timeout=60)
        waited = time.monotonic() - shown
        assert APPROVAL_TIMEOUT_S - 0.3 <= waited <= APPROVAL_TIMEOUT_S + 10, \
            f"the call waited {waited:.2f} s after its request was shown, not {APPROVAL_TIMEOUT_S:g} s"
        done_ev = await log.wait("response.done", lambda e: e["response"]["id"] == reply.rid, timeout=60)
        assert done_ev["response"]["status"] == "completed", done_ev["response"]
        assert output_types(done_ev) == ["message", "mcp_approval_request", "message"]  # never called
        assert "not approved within" in done_ev["response"]["output"][2]["content"][0]["transcript"]
        n = len(log.events)
        await conn.conversation.item.create(item={"type": "mcp_approval_response", "approval_request_id": req["id"],
                                                  "approve": True})  # too late
        assert (await log.wait("error", start=n))["error"]["code"] == "item_not_found"
        log.check_ids()
    finally:
        await log.close()
        await conn.close()
    assert "Traceback" not in approving.log_text()


async def test_a_reply_cancelled_or_a_connection_closed_while_the_request_waits_to_be_shown(
        approving, mcp_url) -> None:  # noqa: F811
    conn, log = await spoken_session(approving.port, mcp_url)
    try:
        reply = await ask(conn, log, "What is the weather in Seoul?")
        await reply.until(1.0, index=0, timeout=30)  # the call is parsed by now; its request waits
        assert not [e for e in of_response(log, "response.output_item.added", reply.rid) if is_request(e)]
        n = len(log.events)
        await conn.response.cancel()
        done_ev = await log.wait("response.done", lambda e: e["response"]["id"] == reply.rid, start=n, timeout=20)
        assert done_ev["response"]["status"] == "cancelled", done_ev["response"]
        assert output_types(done_ev) == ["message", "mcp_approval_request"]  # shown as it ends; never called
        assert not [e for e in log.events if e["type"].startswith("response.mcp_call")]
        req = done_ev["response"]["output"][1]
        m = len(log.events)
        await conn.conversation.item.create(item={"type": "mcp_approval_response", "approval_request_id": req["id"],
                                                  "approve": True})
        assert (await log.wait("error", start=m))["error"]["code"] == "item_not_found"
        # the session goes on: the next question asks again, and is answered in time
        again = await ask(conn, log, "What is the weather in Seoul, please?")
        req2, _ = await shown_request(log, again)
        await conn.conversation.item.create(item={"type": "mcp_approval_response", "approval_request_id": req2["id"],
                                                  "approve": True})
        done_ev = await log.wait("response.done", lambda e: e["response"]["id"] == again.rid, timeout=60)
        assert output_types(done_ev) == ["message", "mcp_approval_request", "mcp_call", "message"]
        log.check_ids()
    finally:
        await log.close()
        await conn.close()
    # a connection closed while its request waits behind the words: the server goes on
    conn, log = await spoken_session(approving.port, mcp_url)
    reply = await ask(conn, log, "What is the weather in Seoul?")
    await reply.until(1.0, index=0, timeout=30)
    await log.close()
    await conn.close()
    conn, log = await spoken_session(approving.port, mcp_url)
    try:
        reply = await ask(conn, log, "Hello?")
        await reply.until(0.5, index=0, timeout=30)
    finally:
        await log.close()
        await conn.close()
    assert audio_seconds(of_response(log, "response.output_audio.delta", reply.rid)) >= 0.5
    assert "Traceback" not in approving.log_text()


# ---------------------------------------------------------------------- hermetic: Outbound.when_sent


def request_item(n: int) -> dict[str, Any]:
    return rt.mcp_approval_request_item(f"mcpr_{n}", "wx", "weather", "{}")


def test_when_sent_calls_back_once_the_events_before_it_have_gone_out() -> None:
    host, out = start()
    calls: list[int] = []
    words(out, FIRST, "Let me check.")
    audio(out, FIRST)
    idx = out.output_item_added(RID, request_item(1))  # the words before it are still going out
    out.output_item_done(RID, idx, request_item(1))
    out.when_sent(RID, lambda: calls.append(len(host.sent)))
    audio(out, FIRST)
    assert calls == [] and ("output_item.added", "mcpr_1") not in wire(host)
    (_second, said), = host.session.splits
    assert said is not None
    said()  # the first item's last audio has gone out: then the request, then the call back
    assert calls == [len(host.sent)] and wire(host)[-2:] == [("output_item.done", "mcpr_1"),
                                                             ("conversation.item.done", "mcpr_1")]
    # nothing waits: at once
    out.when_sent(RID, lambda: calls.append(-1))
    assert calls[-1] == -1
    out.when_sent("resp_unknown", lambda: calls.append(-2))  # a response not streaming: at once
    assert calls[-1] == -2


def test_when_sent_calls_back_when_a_reply_cut_first_ends() -> None:
    host, out = start()
    calls: list[str] = []
    words(out, FIRST, "Let me check the weather.")
    audio(out, FIRST)
    idx = out.output_item_added(RID, request_item(1))
    out.output_item_done(RID, idx, request_item(1))
    out.when_sent(RID, lambda: calls.append(host.sent[-1]["type"]))
    assert calls == []
    done(out, interrupted=True, text="Let me check")  # cut before the first item's words had gone out
    assert calls == ["conversation.item.done"]  # after the request's events, before `response.done`
    assert host.sent[-1]["type"] == "response.done"
