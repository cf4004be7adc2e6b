"""`conversation.item.truncate` of a reply that called a tool and then spoke again.

A reply that says some words, calls a tool the client is shown (an MCP tool: its `mcp_call` item
goes out inside the response) and then speaks its follow-up has two assistant message items: the
words before the tool item, and those after it. Each is truncatable as OpenAI's are, and a
truncate means what it means for a reply with one item: the listener heard the reply up to there.
Checked:

* the second item, truncated while it plays (no `response.cancel`): `conversation.item.truncated`
  once, at `audio_end_ms`; the reply stops there (`response.done` cancelled, no audio after); the
  first item keeps its words, the second only those heard; the next reply's prompt has both so,
  with the tool call between them; the stored reply's heard text is the first item's words and
  the heard ones of the second;
* the first item, truncated while the second plays: the reply is heard up to there (the second
  item not at all): memory, the reply stops, one `conversation.item.truncated`, the store;
* the second item of a finished reply, truncated later (twice: a later cut may only shorten it),
  and bad input on it (past its audio: a clear error, the session goes on); the stored reply
  (under its first item's id) is heard as memory keeps it: the first item's words and the heard
  ones of the second.

Real components: `moksori serve` (pipeline brain, Piper for the reply audio, a real SQLite store),
the `mcp` SDK's own server (tests/mcp_test_server.py) over Streamable HTTP on loopback, the
official `openai` SDK's Realtime client (every event validated against its union). The packaged
SmolLM2 cannot call tools, so the LLM is the scripted OpenAI-compatible stand-in on loopback
(tests/scripted_llm_server.py): it says a preface, calls the tool in the same answer, then says
"The tool says: <result>." (and, when asked, a long story after it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from databases import database
from realtime_speech import user_messages
from scripted_llm_server import LONG_REPLY, ScriptedLLM
from servers import ServerProcess
from test_realtime_clients import GA_ADAPTER, EventLog, audio_seconds, ga_client, moksori_serve
from test_realtime_mcp import mcp_tool, mcp_url, scripted  # noqa: F401 - the module's fixtures
from test_realtime_truncate import of_response, stored_items, transcript, truncate

from speech import prepared_data_dir, requires_speech

PREFACE = "Let me check the weather for you."
SAID = "The tool says: Seoul: sunny, 21 degrees."  # the follow-up's first words (the tool's result)
FOLLOW_UP = f"{SAID} {LONG_REPLY}".split()
TOOL = "scripted:tool=weather\nscripted:preface=" + PREFACE


@pytest.fixture(scope="module")
def served(tmp_path_factory, scripted, mcp_url):  # noqa: F811
    data_dir = prepared_data_dir(tmp_path_factory)
    with database("sqlite", tmp_path_factory.mktemp("db")) as url, \
            moksori_serve(data_dir, tmp_path_factory.mktemp("serve"), MOKSORI_STORE_URL=url,
                          MOKSORI_LLM_PROVIDER="openai", MOKSORI_LLM_BASE_URL=scripted.url,
                          MOKSORI_LLM_MODEL="scripted", MOKSORI_LANGUAGE="en", MOKSORI_CONFIG="",
                          MOKSORI_TOOLS_REALTIME_MCP_ALLOW=mcp_url) as srv:
        yield srv


async def connect(port: int, user: str, instructions: str, server_url: str) -> tuple[Any, EventLog]:
    """The GA SDK's client as `user`, turn detection off, the MCP server's tools listed."""
    conn = await ga_client(port).realtime.connect(model="gpt-realtime", extra_query={"user": user}).enter()
    log = EventLog(conn.recv_bytes, adapter=GA_ADAPTER, parse=conn.parse_event)
    await log.wait("session.created")
    await conn.session.update(session={"type": "realtime", "instructions": instructions,
                                       "audio": {"input": {"turn_detection": None}},
                                       "tools": [mcp_tool(server_url)]})
    await log.wait("session.updated")
    await log.wait("mcp_list_tools.completed", timeout=30)
    return conn, log


def in_session(served: ServerProcess, mcp_url: str, instructions: str,  # noqa: F811
               body: Callable[[Any, EventLog], Awaitable[None]]) -> str:
    """`body(conn, log)` in a session of a new user (returned), its event ids checked; no traceback."""
    user = f"tools-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        conn, log = await connect(served.port, user, instructions, mcp_url)
        try:
            await body(conn, log)
            log.check_ids()
        finally:
            await log.close()
            await conn.close()

    asyncio.run(main())
    assert "Traceback" not in served.log_text()
    return user


def stored_cut(served: ServerProcess, user: str, item_id: str, heard: str) -> None:
    """The stored reply (under its first item's id) is cut to `heard`."""
    items = stored_items(served, user, {item_id: heard})
    assert items[item_id]["status"] == "incomplete"


class Reply:
    """One response of the client's log: its message items in order, their audio."""

    def __init__(self, log: EventLog, rid: str) -> None:
        self.log, self.rid = log, rid

    def messages(self) -> list[str]:
        return [e["item"]["id"] for e in of_response(self.log, "response.output_item.added", self.rid)
                if e["item"]["type"] == "message"]

    def audio_s(self, item_id: str) -> float:
        return audio_seconds([e for e in of_response(self.log, "response.output_audio.delta", self.rid)
                              if e["item_id"] == item_id])

    async def until(self, seconds: float, *, index: int = 1, timeout: float = 60.0) -> str:
        """The id of message item `index` once `seconds` of its audio have come."""
        async def enough() -> str:
            while True:
                ids = self.messages()
                if len(ids) > index and self.audio_s(ids[index]) >= seconds:
                    return ids[index]
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(enough(), timeout)


async def ask(conn: Any, log: EventLog, text: str) -> Reply:
    n = len(log.events)
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": text}]})
    await conn.response.create()
    rid = (await log.wait("response.created", start=n, timeout=30))["response"]["id"]
    return Reply(log, rid)


def output(done: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, id, transcript) of a `response.done`'s output items."""
    return [(i["type"], i["id"], (i["content"][0].get("transcript") or "") if i["type"] == "message" else "")
            for i in done["response"]["output"]]


async def cut_while_playing(conn: Any, log: EventLog, playing_s: float,
                           at: Callable[[Reply], tuple[str, int]]) -> tuple[str, str, int, dict[str, Any]]:
    """Ask; once the second message item has played `playing_s`, truncate the item `at(reply)`
    names at its ms. (first item, second item, ms, the reply's `response.done`), after checking
    the truncate was answered once, at that ms, and the reply stopped there."""
    reply = await ask(conn, log, "What is the weather in Seoul?")
    second = await reply.until(playing_s)
    first = reply.messages()[0]
    item_id, ms = at(reply)
    n = len(log.events)
    answer = await truncate(conn, log, item_id, ms)
    done = await log.wait("response.done", lambda e: e["response"]["id"] == reply.rid, start=n, timeout=15)
    assert answer["type"] == "conversation.item.truncated" and answer["audio_end_ms"] == ms, answer
    assert done["response"]["status"] == "cancelled", done["response"]
    cuts = [e for e in log.of("conversation.item.truncated") if e["item_id"] in (first, second)]
    assert [(e["item_id"], e["audio_end_ms"]) for e in cuts] == [(item_id, ms)]
    assert not of_response(log, "response.output_audio.delta", reply.rid, log.events.index(cuts[0]))
    return first, second, ms, done


def is_prefix(text: str, words: list[str]) -> bool:
    return words[:len(text.split())] == text.split()


async def next_prompt(conn: Any, log: EventLog, scripted_llm: ScriptedLLM, question: str) -> list[tuple[str, str]]:
    """What the LLM reads for the next reply (a plain answer, no tool)."""
    before, n = len(scripted_llm.requests), len(log.events)
    await conn.session.update(session={"type": "realtime", "instructions": "scripted:reply=Fine.", "tools": []})
    await log.wait("session.updated", start=n)
    reply = await ask(conn, log, question)
    await log.wait("response.done", lambda e: e["response"]["id"] == reply.rid, timeout=60)
    return next(user_messages(r) for r in scripted_llm.requests[before:]
                if any(question in str(m.get("content")) for m in r["messages"]))


@pytest.mark.models
@requires_speech
def test_the_second_message_item_truncated_while_it_plays(served, scripted, mcp_url) -> None:  # noqa: F811
    out: dict[str, str] = {}

    async def body(conn: Any, log: EventLog) -> None:
        first, second, _, done = await cut_while_playing(conn, log, 5.0, lambda r: (r.messages()[1], 4000))
        # the first item whole, the second only what was heard: a few words of the follow-up
        heard = await transcript(conn, log, second)
        assert await transcript(conn, log, first) == PREFACE
        assert heard and is_prefix(heard, FOLLOW_UP) and len(heard.split()) < 20, heard
        kinds = output(done)
        assert [k for k, _, _ in kinds] == ["message", "mcp_call", "message"], kinds
        assert kinds[0][2] == PREFACE and kinds[2] == ("message", second, heard), kinds
        prompt = await next_prompt(conn, log, scripted, "And tomorrow?")
        assert prompt == [("user", "What is the weather in Seoul?"), ("assistant", PREFACE), ("assistant", ""),
                          ("tool", "Seoul: sunny, 21 degrees"), ("assistant", heard), ("user", "And tomorrow?")]
        out.update(first=first, heard=f"{PREFACE} {heard}")

    user = in_session(served, mcp_url, f"{TOOL}\nscripted:after_tool=long", body)
    stored_cut(served, user, out["first"], out["heard"])


@pytest.mark.models
@requires_speech
def test_the_first_message_item_truncated_while_the_second_plays(served, scripted, mcp_url) -> None:  # noqa: F811
    out: dict[str, str] = {}

    async def body(conn: Any, log: EventLog) -> None:
        # half the first item's audio: what went out before the tool item (the rest of its
        # words' audio was still on its way then: the client got it in the second item)
        first, second, _, _ = await cut_while_playing(
            conn, log, 3.0, lambda r: (r.messages()[0], int(1000 * r.audio_s(r.messages()[0])) // 2))
        heard = await transcript(conn, log, first)
        assert is_prefix(heard, PREFACE.split()) and heard != PREFACE, heard
        assert await transcript(conn, log, second) == ""
        prompt = await next_prompt(conn, log, scripted, "And tomorrow?")
        said = [("assistant", heard)] if heard else []
        assert prompt == [("user", "What is the weather in Seoul?"), *said, ("assistant", ""),
                          ("tool", "Seoul: sunny, 21 degrees"), ("user", "And tomorrow?")], prompt
        out.update(first=first, heard=heard)

    user = in_session(served, mcp_url, f"{TOOL}\nscripted:after_tool=long", body)
    stored_cut(served, user, out["first"], out["heard"])


@pytest.mark.models
@requires_speech
def test_the_second_message_item_of_a_finished_reply_truncated_later(served, scripted, mcp_url) -> None:  # noqa: F811
    out: dict[str, str] = {}

    async def body(conn: Any, log: EventLog) -> None:
        reply = await ask(conn, log, "What is the weather in Seoul?")
        done = await log.wait("response.done", lambda e: e["response"]["id"] == reply.rid, timeout=60)
        assert done["response"]["status"] == "completed"
        first, second = reply.messages()
        sent_ms = int(1000 * reply.audio_s(second))
        assert await transcript(conn, log, second) == SAID
        err = await truncate(conn, log, second, sent_ms + 100)
        assert err["type"] == "error" and err["error"]["param"] == "audio_end_ms", err
        cut = sent_ms - 800
        assert (await truncate(conn, log, second, cut))["audio_end_ms"] == cut
        heard = await transcript(conn, log, second)
        assert heard != SAID and is_prefix(heard, SAID.split()), heard
        assert (await truncate(conn, log, second, cut - 400))["audio_end_ms"] == cut - 400
        shorter = await transcript(conn, log, second)
        assert is_prefix(shorter, heard.split()) and len(shorter) <= len(heard), (shorter, heard)
        err = await truncate(conn, log, second, cut)
        assert err["type"] == "error" and f"{cut - 400}ms" in err["error"]["message"], err
        assert await transcript(conn, log, first) == PREFACE
        prompt = await next_prompt(conn, log, scripted, "And tomorrow?")
        assert prompt[:2] == [("user", "What is the weather in Seoul?"), ("assistant", PREFACE)]
        last = ("assistant", shorter) if shorter else ("tool", "Seoul: sunny, 21 degrees")
        assert prompt[-2:] == [last, ("user", "And tomorrow?")], prompt
        out.update(first=first, heard=f"{PREFACE} {shorter}".strip())

    user = in_session(served, mcp_url, TOOL, body)
    stored_cut(served, user, out["first"], out["heard"])
