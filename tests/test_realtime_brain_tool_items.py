"""The realtime brain: a reply's words before a tool item keep their audio in their own message item.

An upstream (speech-to-speech) reply that speaks, calls a tool the client is shown (an MCP tool:
the front runs it and its `mcp_call` item goes out inside the response) and speaks again is two
assistant message items for a Realtime client of Moksori, as the pipeline brain's is
(tests/test_realtime_tool_item_audio.py). An upstream sends its audio faster than real time, so
when its function call arrives most of the words before it are still queued in the front's
speaker, to be paced out: that audio (and its transcript) must still go out under the first
message item, whose `response.output_audio.done`, `output_audio_transcript.done`,
`content_part.done` and `output_item.done` follow its last audio; only then the tool item, then
the second message item with the follow-up's audio. Checked:

* (with and without output guardrails, which show the words clause by clause as each is checked)
  the order of the response's events, each audio delta's item id (one run of the first item's,
  then one of the second's), each item's audio to the sample (the first item has exactly the
  upstream's first response's audio, the second exactly the follow-up's), the items' words in
  `response.done` and in the session's memory (`conversation.item.retrieve`);
* the first item truncated while its audio is still going out: `conversation.item.truncated`
  once, before the item's end, the reply stops there (no audio after it, `response.done`
  cancelled), the tool item shown only after the first item is done, the upstream's audio item
  truncated at the same milliseconds.

Real components: `moksori serve` with the realtime brain (Silero only), the `mcp` SDK's own server
(tests/mcp_test_server.py) over Streamable HTTP on loopback, the official `openai` SDK's Realtime
client (every event validated against its union). The upstream is `moksori.testing.fake_realtime`
served over a real WebSocket on loopback (a scripted stand-in, not a model): its first response
says PREFACE with 2.4 s of a tone, sent at once as OpenAI's are, then calls the MCP tool; the
follow-up says SAID with 1.5 s of another tone (or 8 s, when the test asks for a long one).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from servers import ServerProcess
from test_realtime_clients import moksori_serve
from test_realtime_mcp import mcp_url  # noqa: F401 - the module's fixture
from test_realtime_tool_item_audio import events_of, first_item_before_the_tool, pcm, truncated_midway, wire
from test_realtime_truncate import transcript, truncate
from test_realtime_truncate_tools import PREFACE, SAID, ask, in_session

from moksori.audio.frames import Frame
from moksori.protocols import realtime as rt
from moksori.testing.fake_realtime import FakeRealtimeServer, serve_websocket
from speech import prepared_data_dir

RATE = 24000
FIRST_MS, SECOND_MS, LONG_MS = 2400, 1500, 8000
CHUNK_MS = 100


class Upstream:
    """The scripted upstream on a real socket, its event loop in a thread of its own."""

    def __init__(self) -> None:
        self.fake = FakeRealtimeServer()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-realtime", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        srv = self.loop.run_until_complete(serve_websocket(self.fake))
        self.port = srv.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        srv.close()
        self.loop.run_until_complete(srv.wait_closed())

    def __enter__(self) -> Upstream:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def script(self, follow_up_ms: int = SECOND_MS) -> None:
        """The next reply: PREFACE and the tool call, then the follow-up (SAID, `follow_up_ms`)."""
        self.fake.scripts.clear()
        self.fake.scripts.extend([_speaks_then_calls, _follow_up(follow_up_ms)])

    def item_saying(self, text: str) -> str:
        """The upstream's id of its assistant item that said `text` (on its latest connection)."""
        return next(i["id"] for i in self.fake.sessions[-1].items
                    if i.get("role") == "assistant" and i["content"][0].get("transcript") == text)

    def received(self, *kinds: str) -> list[dict[str, Any]]:
        """The client events of these kinds on the upstream's latest connection (the front's session
        now), in order."""
        return [e for e in self.fake.sessions[-1].received if e["type"] in kinds]


_ids = itertools.count(1)


def _ev() -> rt.ServerEvents:
    return rt.ServerEvents(rt.Flavor.GA, ids=_ids)


def _tone(ms: int, hz: float) -> str:
    t = np.arange(RATE * ms // 1000) / RATE
    return rt.PCM16_24K.encode(Frame((3000 * np.sin(2 * np.pi * hz * t)).astype(np.int16), RATE))


async def _say(server: FakeRealtimeServer, conn: Any, rid: str, iid: str, text: str, ms: int, hz: float) -> dict:
    """One assistant audio item: `ms` of a tone, all at once, with `text`'s words as it goes; its ends."""
    ev = _ev()
    server.begin_response(conn, rid, iid)
    words, n = text.split(), ms // CHUNK_MS
    for k in range(n):
        server.send_raw(conn, ev.output_audio_delta(rid, iid, 0, 0, _tone(CHUNK_MS, hz)))
        lo, hi = len(words) * k // n, len(words) * (k + 1) // n
        if hi > lo:  # (as OpenAI's: each word with the space before it)
            delta = " ".join(words[lo:hi])
            server.send_raw(conn, ev.output_audio_transcript_delta(rid, iid, 0, 0, f" {delta}" if lo else delta))
    conn.sess.generated_ms[iid] = float(ms)
    server.send_raw(conn, ev.output_audio_done(rid, iid, 0, 0))
    server.send_raw(conn, ev.output_audio_transcript_done(rid, iid, 0, 0, text))
    server.send_raw(conn, ev.response_content_part_done(rid, iid, 0, 0, rt.event_part("audio", transcript=text)))
    item = rt.message_item(iid, "assistant", [rt.ContentPart("output_audio", transcript=text)], rt.Flavor.GA)
    server.send_raw(conn, ev.response_output_item_done(rid, 0, item))
    conn.sess.items.append(item)
    return item


def _done(server: FakeRealtimeServer, conn: Any, rid: str, output: list[dict]) -> None:
    usage = rt.Usage(input_text_tokens=20, output_text_tokens=10, output_audio_tokens=40)
    server.send_raw(conn, _ev().response_done(rt.response_object(rid, rt.Flavor.GA, status="completed",
                                                                 output=output, usage=usage)))


async def _speaks_then_calls(server: FakeRealtimeServer, conn: Any, rid: str, iid: str) -> None:
    """PREFACE, then a call of the MCP server's weather tool (the name the front offered it as)."""
    said = await _say(server, conn, rid, iid, PREFACE, FIRST_MS, 220.0)
    name = next(t["name"] for t in conn.sess.session.get("tools") or [] if "weather" in t["name"])
    ev, call_id, call_item = _ev(), f"call_{next(_ids)}", f"item_fc{next(_ids)}"
    arguments = json.dumps({"city": "Seoul"})
    item = rt.function_call_item(call_item, call_id, name, arguments, rt.Flavor.GA)
    added = rt.function_call_item(call_item, call_id, name, "", rt.Flavor.GA, status="in_progress")
    server.send_raw(conn, ev.response_output_item_added(rid, 1, added))
    server.send_raw(conn, ev.function_call_arguments_delta(rid, call_item, 1, call_id, arguments))
    server.send_raw(conn, ev.function_call_arguments_done(rid, call_item, 1, call_id, name, arguments))
    server.send_raw(conn, ev.response_output_item_done(rid, 1, item))
    conn.sess.items.append(item)
    _done(server, conn, rid, [said, item])


def _follow_up(ms: int):
    async def follow_up(server: FakeRealtimeServer, conn: Any, rid: str, iid: str) -> None:
        _done(server, conn, rid, [await _say(server, conn, rid, iid, SAID, ms, 440.0)])

    return follow_up


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def front(tmp_path_factory, upstream, mcp_url) -> Iterator[ServerProcess]:  # noqa: F811
    with moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("serve-brain-tools"),
                       MOKSORI_BRAIN="realtime",
                       MOKSORI_REALTIME_URL=f"ws://127.0.0.1:{upstream.port}/v1/realtime?model=gpt-realtime",
                       MOKSORI_REALTIME_API_KEY="sk-fake-upstream", MOKSORI_REALTIME_RESPONSE_TIMEOUT_S="30",
                       MOKSORI_STORE_URL="none", MOKSORI_LANGUAGE="en", MOKSORI_CONFIG="",
                       MOKSORI_TOOLS_REALTIME_MCP_ALLOW=mcp_url) as srv:
        yield srv


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, upstream, mcp_url) -> Iterator[ServerProcess]:  # noqa: F811
    """The same front with output guardrails on (a block term no reply says): the upstream's words
    go out clause by clause as each is checked, so those before the tool may still be coming when
    the tool item does."""
    with moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("serve-brain-guarded"),
                       MOKSORI_BRAIN="realtime",
                       MOKSORI_REALTIME_URL=f"ws://127.0.0.1:{upstream.port}/v1/realtime?model=gpt-realtime",
                       MOKSORI_REALTIME_API_KEY="sk-fake-upstream", MOKSORI_REALTIME_RESPONSE_TIMEOUT_S="30",
                       MOKSORI_STORE_URL="none", MOKSORI_LANGUAGE="en", MOKSORI_CONFIG="",
                       MOKSORI_TOOLS_REALTIME_MCP_ALLOW=mcp_url, MOKSORI_GUARDRAILS_BLOCK_TERMS_EN="banana") as srv:
        yield srv


def samples(events: list[dict[str, Any]], item_id: str) -> int:
    return len(pcm(events, item_id)) // 2


@pytest.mark.models
@pytest.mark.parametrize("server", ["front", "guarded"])
def test_the_words_before_the_tool_item_keep_their_audio(request, server, upstream, mcp_url) -> None:  # noqa: F811
    served = request.getfixturevalue(server)
    upstream.script()

    async def body(conn: Any, log: Any) -> None:
        reply = await ask(conn, log, "What is the weather in Seoul?")
        done = await log.wait("response.done", lambda e: e["response"]["id"] == reply.rid, timeout=60)
        assert done["response"]["status"] == "completed", done["response"]
        events = events_of(log, reply.rid)
        first, second = reply.messages()
        first_item_before_the_tool(events, first, second)
        # each item has its own audio, to the sample: none of the first's went out under the second
        assert (samples(events, first), samples(events, second)) == (RATE * FIRST_MS // 1000,
                                                                     RATE * SECOND_MS // 1000)
        said = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"
                       and e["item_id"] == first)
        assert said.split() == PREFACE.split()
        out = done["response"]["output"]
        assert [(o["type"], o["id"]) for o in out] == [("message", first), ("mcp_call", out[1]["id"]),
                                                       ("message", second)], out
        assert out[1]["output"] == "Seoul: sunny, 21 degrees"
        assert out[0]["content"][0]["transcript"] == PREFACE and out[2]["content"][0]["transcript"] == SAID
        assert await transcript(conn, log, first) == PREFACE and await transcript(conn, log, second) == SAID

    in_session(served, mcp_url, "Answer with the weather tool.", body)


@pytest.mark.models
def test_the_first_item_truncated_while_its_audio_still_goes_out(front, upstream, mcp_url) -> None:  # noqa: F811
    upstream.script(LONG_MS)

    async def body(conn: Any, log: Any) -> None:
        reply, first, done = await truncated_midway(conn, log)
        seq = wire(events_of(log, reply.rid))
        first_done = seq.index(("response.output_item.done", first))
        assert seq.index(("conversation.item.truncated", first)) < first_done, seq  # (it was still in progress)
        assert all(item != first or typ == "conversation.item.done" for typ, item in seq[first_done + 1:]), seq
        tools = [i for i, (typ, item) in enumerate(seq) if typ == "response.output_item.added" and item != first]
        assert all(i > first_done for i in tools), seq
        heard = await transcript(conn, log, first)
        assert heard != PREFACE and PREFACE.split()[:len(heard.split())] == heard.split(), heard
        out = done["response"]["output"]
        assert out[0]["id"] == first and out[0]["content"][0]["transcript"] == heard, out
        assert out[0]["status"] == "incomplete", out[0]
        assert all(o["content"][0]["transcript"] == "" for o in out[1:] if o["type"] == "message"), out
        # the upstream's own item was cut where the listener stopped hearing it (the follow-up's, if
        # it came, at 0)
        for _ in range(100):
            if upstream.received("conversation.item.truncate"):
                break
            await asyncio.sleep(0.05)
        cuts_up = [(e["item_id"], e["audio_end_ms"]) for e in upstream.received("conversation.item.truncate")]
        assert [ms for item, ms in cuts_up if item == upstream.item_saying(PREFACE)] == [500], cuts_up
        assert all(ms == 0 for item, ms in cuts_up if item != upstream.item_saying(PREFACE)), cuts_up

    in_session(front, mcp_url, "Answer with the weather tool.", body)


@pytest.mark.models
def test_the_second_item_of_a_finished_reply_truncated_later(front, upstream, mcp_url) -> None:  # noqa: F811
    """A late truncate of the message item after the tool item: memory keeps the words heard, and
    the upstream's copy of the follow-up is cut at the same milliseconds of its own audio item
    (the message item's audio starts where that item's does), the words before the tool untouched."""
    upstream.script()

    async def body(conn: Any, log: Any) -> None:
        reply = await ask(conn, log, "What is the weather in Seoul?")
        await log.wait("response.done", lambda e: e["response"]["id"] == reply.rid, timeout=60)
        first, second = reply.messages()
        answer = await truncate(conn, log, second, 300)
        assert answer["type"] == "conversation.item.truncated" and answer["audio_end_ms"] == 300, answer
        assert await transcript(conn, log, first) == PREFACE
        heard = await transcript(conn, log, second)
        assert heard != SAID and SAID.split()[:len(heard.split())] == heard.split(), heard
        for _ in range(100):
            if upstream.received("conversation.item.truncate"):
                break
            await asyncio.sleep(0.05)
        cuts_up = [(e["item_id"], e["audio_end_ms"]) for e in upstream.received("conversation.item.truncate")]
        assert cuts_up == [(upstream.item_saying(SAID), 300)], cuts_up

    in_session(front, mcp_url, "Answer with the weather tool.", body)
