"""`conversation.item.truncate`: memory and the store keep only what the listener heard.

A Realtime client (the official `openai` SDK here; a browser doing its own playback is the same)
says with `conversation.item.truncate` how much of an assistant item's audio it played. The
product rule: after that, the agent's memory (what the LLM reads next) and the stored
conversation (SQLite, PostgreSQL) hold only the words of that audio. Checked:

* a truncate of a reply still in progress (the LLM still writing, its audio still going out)
  without `response.cancel` first: the reply stops there (`conversation.item.truncated` once, at
  `audio_end_ms`; `response.done` cancelled; no audio or words after it; a `response.cancel` sent
  after the truncate is a no-op, not an error), the next reply's prompt has the cut text, and the
  Conversations API shows the same cut text;
* a truncate after `response.cancel`, and one of a finished reply (twice: a later cut may only
  shorten it): the store follows;
* the realtime brain (`MOKSORI_BRAIN=realtime`), whose `response.done` of a cut reply waits for
  the upstream's usage: the truncate that comes before the reply's record is what is stored;
* bad input: past the audio or past an earlier cut, negative, an unknown item, the user's item,
  a content index other than 0: an `invalid_request_error` each, the session goes on, no traceback.

Real components: `moksori serve` with the embedded Silero, smart-turn, Whisper and Piper, its LLM
the scripted OpenAI-compatible stand-in on loopback (tests/scripted_llm_server.py, replies of a
known length; it records the prompts); for the realtime brain the upstream is
`moksori.testing.fake_realtime` (a scripted stand-in, not a model: a tone and a known transcript)
behind the WebSocket fault proxy. Real SQLite and real PostgreSQL (127.0.0.1:5432) stores.
The recorder's ordering (truncate before or after the reply's record) is also checked alone.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from typing import Any

import pytest
from databases import database
from realtime_speech import user_messages
from scripted_llm_server import LONG_REPLY, ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from test_realtime_clients import GA_ADAPTER, KEY, EventLog, audio_seconds, ga_client, moksori_serve
from test_recording_server import get, wait_for

from moksori.engine import events as E
from moksori.providers.base import Usage
from moksori.recording.recorder import Recorder
from moksori.store.records import AgentReply, ReplyHeard
from moksori.testing.fake_realtime import FakeRealtimeServer, serve_websocket
from moksori.testing.ws_fault_proxy import WSFaultProxy
from speech import prepared_data_dir, requires_speech

STORY = LONG_REPLY.split()


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def scripted_llm():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request, tmp_path_factory):
    with database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="module")
def served(db_url, data_dir, tmp_path_factory, scripted_llm):
    """The pipeline brain on the store."""
    with moksori_serve(data_dir, tmp_path_factory.mktemp("serve"), MOKSORI_STORE_URL=db_url,
                       MOKSORI_LLM_PROVIDER="openai", MOKSORI_LLM_BASE_URL=scripted_llm.url,
                       MOKSORI_LLM_MODEL="scripted", MOKSORI_LANGUAGE="en", MOKSORI_CONFIG="") as srv:
        yield srv


class FakeUpstream:
    """`moksori.testing.fake_realtime` served on loopback from a thread of its own (a stand-in
    upstream: it answers every response with `reply_ms` of a tone and `reply` as its transcript)."""

    def __init__(self, **kw: Any) -> None:
        self.server = FakeRealtimeServer(**kw)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-upstream", daemon=True)
        self._ws: Any = None
        self.port = 0

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        self._ws = asyncio.run_coroutine_threadsafe(serve_websocket(self.server), self._loop).result(10)
        self.port = self._ws.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._ws.close()
            await self._ws.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream(reply_ms=9000, reply_text=lambda sess: LONG_REPLY) as up:
        yield up


@pytest.fixture(scope="module")
def proxy(upstream):
    with WSFaultProxy(f"ws://127.0.0.1:{upstream.port}") as p:
        yield p


@pytest.fixture(scope="module")
def brain_front(db_url, data_dir, proxy, tmp_path_factory):
    """`MOKSORI_BRAIN=realtime` on the store, in front of the stand-in upstream (through the proxy)."""
    port = free_port()
    env = {"MOKSORI_DATA_DIR": str(data_dir), "MOKSORI_API_KEYS": KEY, "MOKSORI_BRAIN": "realtime",
           "MOKSORI_REALTIME_URL": proxy.url + "/v1/realtime?model=gpt-realtime", "MOKSORI_REALTIME_API_KEY": "sk-up",
           "MOKSORI_STORE_URL": db_url, "MOKSORI_LANGUAGE": "en", "MOKSORI_CONFIG": "", "PYTHONUNBUFFERED": "1"}
    with ServerProcess([sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port",
                        str(port)], port=port, ready_path="/health", ready_timeout_s=120, env=env,
                       cwd=tmp_path_factory.mktemp("front")) as srv:
        yield srv


# --------------------------------------------------------------------------- the client


async def connect(port: int, user: str) -> tuple[Any, EventLog]:
    """The GA SDK's Realtime client as `user`, turn detection off, every event validated."""
    conn = await ga_client(port).realtime.connect(model="gpt-realtime", extra_query={"user": user}).enter()
    log = EventLog(conn.recv_bytes, adapter=GA_ADAPTER, parse=conn.parse_event)
    await log.wait("session.created")
    await conn.session.update(session={"type": "realtime", "instructions": "scripted:long",
                                       "audio": {"input": {"turn_detection": None}}})
    await log.wait("session.updated")
    return conn, log


async def ask(conn: Any, log: EventLog, text: str, **response: Any) -> tuple[str, str, str]:
    """A typed user message, then `response.create`: (user item, assistant item, response id)
    once the reply's item has been announced."""
    n = len(log.events)
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": text}]})
    user = (await log.wait("conversation.item.done", lambda e: e["item"]["role"] == "user", start=n))["item"]["id"]
    await conn.response.create(response=response or None)
    rid = (await log.wait("response.created", start=n, timeout=30))["response"]["id"]
    added = await log.wait("response.output_item.added", lambda e: e["response_id"] == rid, start=n, timeout=60)
    return user, added["item"]["id"], rid


def of_response(log: EventLog, typ: str, rid: str, start: int = 0) -> list[dict[str, Any]]:
    return [e for e in log.events[start:] if e["type"] == typ and e.get("response_id") == rid]


async def until_audio(log: EventLog, rid: str, seconds: float, timeout: float = 60.0) -> None:
    async def enough() -> None:
        while audio_seconds(of_response(log, "response.output_audio.delta", rid)) < seconds:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(enough(), timeout)


async def truncate(conn: Any, log: EventLog, item_id: str, ms: int, *, index: int = 0) -> dict[str, Any]:
    """Truncate; the `conversation.item.truncated` (at `ms`: a cancel's own is at what the server
    thought was heard) or `error` it got."""
    eid = f"evt_{uuid.uuid4().hex[:12]}"
    n = len(log.events)
    await conn.conversation.item.truncate(item_id=item_id, content_index=index, audio_end_ms=ms, event_id=eid)

    def answer(e: dict[str, Any]) -> bool:
        return (e["type"] == "error" and e["error"].get("event_id") == eid) or \
            (e["type"] == "conversation.item.truncated" and e["item_id"] == item_id and e["audio_end_ms"] == ms)

    for _ in range(500):  # 10 s
        found = next((e for e in log.events[n:] if answer(e)), None)
        if found is not None:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no answer to the truncate of {item_id} at {ms} ms; got {log.types()[-15:]}")


async def transcript(conn: Any, log: EventLog, item_id: str) -> str:
    """The item's words in the session's memory (`conversation.item.retrieve`)."""
    n = len(log.events)
    await conn.conversation.item.retrieve(item_id=item_id)
    got = await log.wait("conversation.item.retrieved", lambda e: e["item"]["id"] == item_id, start=n)
    return got["item"]["content"][0].get("transcript") or ""


def done_transcript(done: dict[str, Any]) -> str:
    return done["response"]["output"][0]["content"][0].get("transcript") or ""


def stored_items(srv: ServerProcess, user: str, heard: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The user's conversation as the Conversations API shows it, once each item of `heard` says
    those words (records are written in batches, in order: the last may still be on its way)."""
    seen: dict[str, dict[str, Any]] = {}

    def read() -> dict[str, dict[str, Any]] | None:
        nonlocal seen
        status, body = get(srv, f"/v1/conversations?user={user}", KEY)
        if status != 200 or not body["data"]:
            return None
        status, items = get(srv, f"/v1/conversations/{body['data'][0]['id']}/items?order=asc", KEY)
        seen = {i["id"]: i for i in items["data"]} if status == 200 else {}
        return seen if all(i in seen and stored_text(seen[i]) == text for i, text in heard.items()) else None

    try:
        return wait_for(read, "the stored heard text", timeout=20)
    except AssertionError as e:
        raise AssertionError(f"{e}: wanted {heard}, stored {[(i, stored_text(it)) for i, it in seen.items()]}") \
            from None


def stored_text(item: dict[str, Any]) -> str:
    return item["content"][0].get("text") or item["content"][0].get("transcript") or ""


def is_story_prefix(text: str) -> bool:
    words = text.split()
    return STORY[:len(words)] == words


# --------------------------------------------------------------------------- pipeline brain


@pytest.mark.models
@requires_speech
def test_a_truncate_mid_reply_stops_it_and_memory_and_store_keep_the_heard_words(served, scripted_llm) -> None:
    user = f"trunc-{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {}

    async def main() -> None:
        conn, log = await connect(served.port, user)
        try:
            scripted_llm.token_delay_s = 0.3  # the LLM is still writing the story when the client cuts it
            try:
                asked, story, rid = await ask(conn, log, "Tell me a story.")
                await until_audio(log, rid, 2.5)
                sent_s = audio_seconds(of_response(log, "response.output_audio.delta", rid))
                n = len(log.events)
                t0 = time.monotonic()
                answer = await truncate(conn, log, story, 1200)  # no response.cancel first
                done = await log.wait("response.done", lambda e: e["response"]["id"] == rid, start=n, timeout=15)
                took_ms = 1000 * (time.monotonic() - t0)
            finally:
                scripted_llm.token_delay_s = 0.01
            assert answer["type"] == "conversation.item.truncated" and answer["audio_end_ms"] == 1200, answer
            assert done["response"]["status"] == "cancelled", done["response"]
            assert done["response"]["status_details"]["reason"] == "client_cancelled"
            # said once, and the reply stopped there: no audio nor words of it afterwards
            cuts = [e for e in log.of("conversation.item.truncated") if e["item_id"] == story]
            assert [e["audio_end_ms"] for e in cuts] == [1200]
            after = log.events.index(cuts[0])
            assert not of_response(log, "response.output_audio.delta", rid, after)
            assert not of_response(log, "response.output_audio_transcript.delta", rid, after)
            # the LLM was stopped mid-story: the rest was never written
            written = "".join(e["delta"] for e in of_response(log, "response.output_audio_transcript.delta", rid))
            assert len(written.split()) < len(STORY), written
            heard = done_transcript(done)
            # 1.2 s of speech: a few words, not the 2.5 s the client had been sent (~7 words) nor the whole story
            assert heard and is_story_prefix(heard) and len(heard.split()) <= 6, (heard, sent_s)
            print(f"cut at 1200 ms of {sent_s:.2f} s sent, {len(written.split())} of {len(STORY)} words written: "
                  f"heard {heard!r}; response.done {took_ms:.0f} ms after the truncate")
            assert await transcript(conn, log, story) == heard
            # a client that cancels after its truncate (OpenAI's interrupt the other way round) has its
            # wish: no error; a second cancel has nothing to cancel
            for eid in ("evt_cancel_after_truncate", "evt_cancel_again"):
                await conn.response.cancel(event_id=eid)
            err = await log.wait("error", lambda e: e["error"].get("event_id") == "evt_cancel_again", timeout=10)
            assert err["error"]["code"] == "response_cancel_not_active"
            assert not [e for e in log.of("error") if e["error"].get("event_id") == "evt_cancel_after_truncate"]

            # the next reply's prompt has the cut text, nothing of the rest
            before = len(scripted_llm.requests)
            _, answer_item, rid2 = await ask(conn, log, "What did you just say?",
                                             instructions="scripted:reply=I was telling you a story.")
            done2 = await log.wait("response.done", lambda e: e["response"]["id"] == rid2, timeout=60)
            assert done2["response"]["status"] == "completed"
            prompt = next(user_messages(r) for r in scripted_llm.requests[before:]
                          if any("What did you just say?" in str(m.get("content")) for m in r["messages"]))
            assert prompt == [("user", "Tell me a story."), ("assistant", heard), ("user", "What did you just say?")]

            # bad input: a clear error each, never past the audio or an earlier cut
            bad = [(story, 1201, 0, "audio_end_ms", "1200ms"), (story, 10**7, 0, "audio_end_ms", "already shorter"),
                   ("item_nope", 10, 0, "item_id", "does not exist"), (asked, 10, 0, "item_id", "assistant"),
                   (answer_item, -5, 0, "audio_end_ms", "at least 0"), (answer_item, 10, 1, "content_index", "0")]
            for item_id, ms, index, param, said in bad:
                err = await truncate(conn, log, item_id, ms, index=index)
                assert err["type"] == "error", (item_id, ms, err)
                assert err["error"]["type"] == "invalid_request_error" and err["error"]["param"] == param, err
                assert said in err["error"]["message"], err
            # a finished reply, truncated twice: the second cut may only shorten it
            await until_audio(log, rid2, 0.9, timeout=5)
            assert (await truncate(conn, log, answer_item, 900))["audio_end_ms"] == 900
            assert (await truncate(conn, log, answer_item, 500))["audio_end_ms"] == 500
            err = await truncate(conn, log, answer_item, 900)
            assert err["type"] == "error" and "500ms" in err["error"]["message"], err
            out["answer"] = answer_item, await transcript(conn, log, answer_item)
            out["story"] = story, heard
            log.check_ids()
        finally:
            await log.close()
            await conn.close()

    asyncio.run(main())
    story, heard = out["story"]
    answer_item, answer_heard = out["answer"]
    items = stored_items(served, user, {story: heard, answer_item: answer_heard})
    assert items[story]["status"] == "incomplete" and items[answer_item]["status"] == "incomplete"
    assert len(answer_heard.split()) < len("I was telling you a story.".split())
    assert "Traceback" not in served.log_text()


@pytest.mark.models
@requires_speech
def test_a_truncate_after_response_cancel_is_what_is_stored(served) -> None:
    user = f"trunc-{uuid.uuid4().hex[:8]}"
    out: dict[str, str] = {}

    async def main() -> None:
        conn, log = await connect(served.port, user)
        try:
            _, story, rid = await ask(conn, log, "Tell me a story.")
            await until_audio(log, rid, 3.0)
            await conn.response.cancel()
            done = await log.wait("response.done", lambda e: e["response"]["id"] == rid, timeout=15)
            assert done["response"]["status"] == "cancelled"
            estimate = done_transcript(done)  # what the server's playback model says was heard
            answer = await truncate(conn, log, story, 900)
            assert answer["type"] == "conversation.item.truncated" and answer["audio_end_ms"] == 900, answer
            heard = await transcript(conn, log, story)
            assert heard and is_story_prefix(heard) and len(heard.split()) < len(estimate.split()), (heard, estimate)
            out["story"], out["heard"] = story, heard
            log.check_ids()
        finally:
            await log.close()
            await conn.close()

    asyncio.run(main())
    stored_items(served, user, {out["story"]: out["heard"]})
    assert "Traceback" not in served.log_text()


# --------------------------------------------------------------------------- realtime brain


@pytest.mark.models
@requires_speech
@pytest.mark.parametrize("cancel_first", [False, True], ids=["truncate-only", "cancel-then-truncate"])
def test_the_realtime_brain_stores_the_truncate_that_comes_before_the_replys_record(brain_front, proxy, upstream,
                                                                                  cancel_first) -> None:
    """The brain's `response.done` of a cut reply waits for the upstream's (its usage): the
    reply's record is written after the client's truncate, and must carry it. With
    `cancel_first`, the proxy holds what goes upstream for a second, so the truncate surely
    comes before the upstream's `response.done`."""
    user = f"trunc-{uuid.uuid4().hex[:8]}"
    out: dict[str, str] = {}

    async def main() -> None:
        conn, log = await connect(brain_front.port, user)
        try:
            _, story, rid = await ask(conn, log, "Tell me a story.")
            await until_audio(log, rid, 2.5)
            n = len(log.events)
            if cancel_first:
                proxy.client_delay_s = 1.0
                try:
                    await conn.response.cancel()
                    answer = await truncate(conn, log, story, 700)
                    done = await log.wait("response.done", lambda e: e["response"]["id"] == rid, start=n, timeout=15)
                    assert log.events.index(answer) < log.events.index(done)  # the record came after it
                finally:
                    proxy.client_delay_s = 0.0
            else:
                answer = await truncate(conn, log, story, 700)
                done = await log.wait("response.done", lambda e: e["response"]["id"] == rid, start=n, timeout=15)
                assert [e["audio_end_ms"] for e in log.of("conversation.item.truncated") if e["item_id"] == story] \
                    == [700]
            assert answer["type"] == "conversation.item.truncated" and answer["audio_end_ms"] == 700, answer
            assert done["response"]["status"] == "cancelled"
            heard = await transcript(conn, log, story)
            assert heard and is_story_prefix(heard) and len(heard.split()) < len(STORY) // 4, heard
            out["story"], out["heard"] = story, heard
            log.check_ids()
        finally:
            await log.close()
            await conn.close()

    asyncio.run(main())
    assert upstream.server.sessions[-1].truncates[-1][1] == 700  # the upstream's copy is cut there too
    items = stored_items(brain_front, user, {out["story"]: out["heard"]})
    assert items[out["story"]]["status"] == "incomplete"
    assert "Traceback" not in brain_front.log_text()


# --------------------------------------------------------------------------- the recorder alone


def _done(item_id: str, heard: str, *, interrupted: bool) -> E.AgentResponseDone:
    return E.AgentResponseDone(t=2.0, response_id="resp_1", item_id=item_id, turn_id=None, text=heard,
                               generated_text=LONG_REPLY, interrupted=interrupted,
                               status="cancelled" if interrupted else "completed", reason=None, language="en",
                               function_calls=(), usage=Usage(), modalities=("audio", "text"), in_conversation=True)


def test_the_recorder_keeps_a_truncate_that_comes_before_the_replys_record() -> None:
    records: list[Any] = []
    rec = Recorder(lambda r: records.append(r) or True, conversation_id="conv_1", tenant="t", user=None,
                   channel="realtime")
    rec(E.AgentResponseStarted(t=1.0, response_id="resp_1", item_id="item_1", turn_id=None,
                               modalities=("audio", "text")))
    rec.truncated("item_1", "Let me tell")  # before the record: kept for it
    assert not records
    rec(_done("item_1", "Let me tell you a rather long", interrupted=True))
    [reply] = records
    assert isinstance(reply, AgentReply) and reply.heard_text == "Let me tell" and reply.interrupted
    assert reply.status == "incomplete"
    rec.truncated("item_1", "Let me tell")  # the same again: nothing new to write
    assert len(records) == 1
    rec.truncated("item_1", "Let me")  # shorter, later: written
    assert isinstance(records[-1], ReplyHeard) and records[-1].heard_text == "Let me"
    # a reply that had finished when the truncate came (before its record): marked as cut
    records.clear()
    rec.truncated("item_2", "Sure")
    rec(E.AgentResponseStarted(t=3.0, response_id="resp_1", item_id="item_2", turn_id=None,
                               modalities=("audio", "text")))
    rec(_done("item_2", LONG_REPLY, interrupted=False))
    assert records[0].heard_text == "Sure" and records[0].interrupted and records[0].status == "incomplete"
