"""Live sessions into the store (`moksori.recording`), on real SQLite and real PostgreSQL.

The sessions are real engine sessions opened the way every entry point opens them
(`moksori.brains.open_session`, so the context window is wired in) and recorded through the
store's real batched writer. Their models are the scripted fakes of `moksori.testing.fakes`
(named stand-ins: an energy VAD, a scripted STT and LLM, a tone TTS), because what is tested
here is what gets stored and loaded, not the models; the real models, a real `moksori serve`,
the openai Realtime client and `kill -9` are in `test_recording_server.py`.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from databases import database, postgres_database
from tcp_proxy import TCPProxy

from moksori.brains import open_session
from moksori.engine import events as E
from moksori.engine.config import config_from_settings
from moksori.engine.tools import Tool, ToolBox
from moksori.providers.base import ToolCall, ToolSpec
from moksori.recording import Who, record_session
from moksori.settings import Settings
from moksori.store import Store, tenant_id
from moksori.testing.fakes import ScriptedLLM, ScriptedSTT, ToneTTS, fake_stack, quiet, tone
from moksori.testing.harness import play_into_session, settle

T1, T2 = tenant_id("key-one"), tenant_id("key-two")
LONG = " ".join(f"word{i}" for i in range(60)) + "."


def session_for(stack, *, lead_ms: int = 200):
    settings = Settings()
    cfg = config_from_settings(settings, output_rate=16000, output_lead_ms=lead_ms, partial_interval_ms=0)
    return open_session(stack, cfg, settings=settings)


async def speak(session, seconds: float = 0.8, tail: float = 1.2):
    return await play_into_session(session, [tone(seconds), quiet(tail)], chunk_ms=20)


async def items_of(store: Store, tenant: str, conversation: str) -> list:
    assert await store.flush(10)
    found = await store.list_items(tenant, conversation, order="asc", limit=100)
    assert found is not None, f"conversation {conversation} is not stored"
    return found[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    with database(request.param, tmp_path) as url:
        yield url


def test_spoken_turns_are_stored_as_they_happen(db_url) -> None:
    async def main() -> None:
        store = await Store(db_url, hash_secret=b"t").start()
        llm = ScriptedLLM("Sure, here is a short answer.")
        stack = fake_stack(stt=ScriptedSTT(["What is the capital of Korea?", "And of Japan?"]), llm=llm)
        s = session_for(stack)
        rec = record_session(s, store, Who(T1, "alice", "realtime"))
        await speak(s)
        await settle(s)
        await asyncio.sleep(0.2)
        # stored while the session is still open: nothing waits for the end of the session
        items = await items_of(store, T1, s.id)
        assert [(i.role, i.text) for i in items] == [("user", "What is the capital of Korea?"),
                                                      ("assistant", "Sure, here is a short answer.")]
        user, reply = items
        assert user.language == "en" and user.audio and user.started_at is not None
        assert user.latency is not None and user.latency["stt_ms"] >= 40  # the scripted STT takes 50 ms
        assert not reply.interrupted and reply.status == "completed" and reply.audio
        for stage in ("llm_first_token_ms", "tts_first_audio_ms", "first_audio_ms"):
            assert reply.latency is not None and reply.latency[stage] > 0, reply.latency
        assert reply.latency["llm_first_token_ms"] < reply.latency["first_audio_ms"]
        assert abs(reply.created_at - time.time()) < 10 and reply.created_at > user.created_at
        await speak(s)
        await settle(s)
        await s.close()
        items = await items_of(store, T1, s.id)
        assert [i.text for i in items if i.role == "user"] == ["What is the capital of Korea?", "And of Japan?"]
        usage = await store.conversation_usage(T1, s.id)
        assert usage is not None
        total, _, turns = usage
        assert [t["kind"] for t in turns] == ["user", "reply", "user", "reply"]
        assert total.input_tokens > 0 and total.output_tokens > 0 and total.stt_seconds > 0
        assert total.tts_characters == 2 * len("Sure, here is a short answer.") and total.tts_seconds > 1.0
        conv = await store.get_conversation(T1, s.id)
        assert conv is not None and conv.user == "alice" and conv.channel == "realtime"
        assert rec.recorder.stats.user_turns == 2 and rec.recorder.stats.replies == 2
        await store.close()

    asyncio.run(main())


def test_a_disconnect_mid_reply_keeps_what_was_heard(db_url) -> None:
    async def main() -> None:
        store = await Store(db_url, hash_secret=b"t").start()
        stack = fake_stack(llm=ScriptedLLM(LONG, token_delay_s=0.005),
                           tts=ToneTTS(seconds_per_char=0.02))
        s = session_for(stack)
        record_session(s, store, Who(T1, None, "realtime"))
        started = asyncio.Event()
        s.bus.listen(lambda e: started.set() if isinstance(e, E.AgentAudioStarted) else None)
        await speak(s, tail=0.6)
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(1.0)  # about a second of the reply is heard, then the client is gone
        await s.close()
        items = await items_of(store, T1, s.id)
        reply = next(i for i in items if i.role == "assistant")
        assert reply.interrupted and reply.status == "incomplete"
        assert reply.text == LONG  # everything generated
        heard = reply.heard_text or ""
        assert heard and LONG.startswith(heard) and 3 <= len(heard.split()) < len(LONG.split()) // 2, heard
        conv = await store.get_conversation(T1, s.id)
        assert conv is not None and conv.user is None  # anonymous, still stored
        await store.close()

    asyncio.run(main())


def test_a_closing_session_is_written_at_once_for_another_worker(db_url) -> None:
    """The user may reconnect to another worker right away: when a session closes, its queued
    records are written without the batch's gather wait (here 30 s), so another process's store
    (`other`, as another worker's) reads them within moments."""
    async def main() -> None:
        store = await Store(db_url, hash_secret=b"t", flush_interval_s=30.0).start()
        other = await Store(db_url, hash_secret=b"t").start()
        stack = fake_stack(llm=ScriptedLLM(LONG, token_delay_s=0.005), tts=ToneTTS(seconds_per_char=0.02))
        s = session_for(stack)
        record_session(s, store, Who(T1, "carol", "realtime", load_history=False))
        started = asyncio.Event()
        s.bus.listen(lambda e: started.set() if isinstance(e, E.AgentAudioStarted) else None)
        await speak(s, tail=0.6)
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.5)
        assert await other.list_items(T1, s.id) is None  # still gathering in this worker's writer
        await s.close()  # mid-reply: the heard part is among the last records
        t0 = time.monotonic()
        while (found := await other.list_items(T1, s.id, order="asc")) is None or len(found[0]) < 2:
            assert time.monotonic() - t0 < 3, found
            await asyncio.sleep(0.05)
        user, reply = found[0]
        assert user.role == "user" and reply.role == "assistant" and reply.interrupted and reply.heard_text
        await other.close()
        await store.close()

    asyncio.run(main())


def test_a_barge_in_stores_the_heard_part_and_tool_calls_are_stored(db_url) -> None:
    async def main() -> None:
        store = await Store(db_url, hash_secret=b"t").start()

        def call(req):  # a stand-in for a model that calls a tool on the first turn
            last = req.messages[-1]
            return ToolCall("call_1", "lookup", '{"q": "weather"}') if last.role == "user" else None

        llm = ScriptedLLM(lambda req: "It is sunny. " + LONG, token_delay_s=0.005, tool_call=call)
        box = ToolBox()

        async def lookup(args):
            return {"weather": "sunny"}

        box.add(Tool(ToolSpec("lookup", "Look something up.", {"type": "object", "properties": {}}), lookup))
        stack = fake_stack(llm=llm, tts=ToneTTS(seconds_per_char=0.02))
        settings = Settings()
        cfg = config_from_settings(settings, output_rate=16000, partial_interval_ms=0)
        s = open_session(stack, cfg, settings=settings, toolbox=box)
        record_session(s, store, Who(T1, "bob", "phone"))
        started = asyncio.Event()
        s.bus.listen(lambda e: started.set() if isinstance(e, E.AgentAudioStarted) else None)
        await speak(s, tail=0.5)
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.8)
        await speak(s, seconds=0.6, tail=1.5)  # the user talks over the reply
        await settle(s)
        items = await items_of(store, T1, s.id)
        kinds = [(i.type, i.role) for i in items]
        assert kinds[:4] == [("message", "user"), ("function_call", None), ("function_call_output", None),
                             ("message", "assistant")], kinds
        fc, out, reply = items[1:4]
        assert fc.name == "lookup" and json.loads(fc.arguments or "") == {"q": "weather"} and fc.call_id == "call_1"
        assert json.loads(out.output or "") == {"weather": "sunny"} and out.call_id == "call_1"
        assert reply.interrupted and reply.heard_text and len(reply.heard_text) < len(reply.text)
        assert reply.text.startswith("It is sunny.")
        await s.close()
        await store.close()

    asyncio.run(main())


def test_the_next_session_of_a_user_starts_with_their_history(db_url) -> None:
    async def main() -> None:
        store = await Store(db_url, hash_secret=b"t").start()
        stt = ScriptedSTT(["My cat is called Nabi."])
        first = session_for(fake_stack(stt=stt))
        record_session(first, store, Who(T1, "alice", "realtime"))
        await speak(first)
        await settle(first)
        await first.close()
        await store.close()  # a new process: nothing in memory, everything from the database

        store = await Store(db_url, hash_secret=b"t").start()
        llm = ScriptedLLM("Nabi, of course.")
        again = session_for(fake_stack(stt=ScriptedSTT(["What is my cat called?"]), llm=llm))
        rec = record_session(again, store, Who(T1, "alice", "browser"))
        await speak(again)
        await settle(again)
        assert [i.text for i in again.memory.history] == ["My cat is called Nabi.", "Sure. Here is a short answer for you."]
        assert rec.history_items == 2
        sent = [(m.role, m.content) for m in llm.requests[0].messages]
        assert sent[1:] == [("user", "My cat is called Nabi."), ("assistant", "Sure. Here is a short answer for you."),
                            ("user", "What is my cat called?")], sent
        # the conversation itself holds only its own items; the history is not copied into it
        assert [i.text for i in await items_of(store, T1, again.id)] == ["What is my cat called?", "Nabi, of course."]

        # another user of the same key, and the same user id under another key: no history
        for who in (Who(T1, "bob", "realtime"), Who(T2, "alice", "realtime")):
            llm2 = ScriptedLLM("Hello.")
            other = session_for(fake_stack(stt=ScriptedSTT(["Hi."]), llm=llm2))
            record_session(other, store, who)
            await speak(other)
            await settle(other)
            assert other.memory.history == []
            assert [m.role for m in llm2.requests[0].messages] == ["system", "user"]
            await other.close()
        # without history (the browser's "New conversation"): stored, but nothing loaded
        llm3 = ScriptedLLM("Hello.")
        fresh = session_for(fake_stack(stt=ScriptedSTT(["Start over."]), llm=llm3))
        record_session(fresh, store, Who(T1, "alice", "browser", load_history=False))
        await speak(fresh)
        await settle(fresh)
        assert [m.role for m in llm3.requests[0].messages] == ["system", "user"]
        await fresh.close()
        await again.close()
        listed = await store.list_conversations(T1, "alice")
        assert listed is not None and len(listed[0]) == 3
        await store.close()

    asyncio.run(main())


def test_history_within_the_context_budget(tmp_path) -> None:
    async def main() -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
        store = await Store(url, hash_secret=b"t").start()
        from moksori.store import AgentReply, ConversationStarted, UserTurn

        now = time.time() - 1000
        store.submit(ConversationStarted("conv_old", "default", "carol", "realtime", now))
        for k in range(300):  # a long past: far more than a small context holds
            store.submit(UserTurn("conv_old", f"u{k}", f"question number {k} " * 5, now + 2 * k))
            store.submit(AgentReply("conv_old", f"a{k}", f"answer number {k} " * 5, now + 2 * k + 1))
        assert await store.flush(20)
        settings = Settings(agent={"context_tokens": 600})
        llm = ScriptedLLM("Fine.")
        stack = fake_stack(stt=ScriptedSTT(["And now?"]), llm=llm)
        cfg = config_from_settings(settings, output_rate=16000, partial_interval_ms=0)
        s = open_session(stack, cfg, settings=settings)
        record_session(s, store, Who("default", "carol", "cli"))
        await speak(s)
        await settle(s)
        msgs = llm.requests[0].messages
        assert msgs[-1].content == "And now?" and msgs[-2].content.startswith("answer number 299")
        assert 4 <= len(msgs) < 40  # the newest turns only, within 600 tokens
        assert sum(len(m.content) for m in msgs) < 600 * 5
        await s.close()
        await store.close()

    asyncio.run(main())


def test_a_dead_database_never_breaks_a_live_session(caplog) -> None:
    """PostgreSQL goes away mid-session (the connection is cut and refused): replies go on at
    the same pace, records queue, a warning says so; when it is back, everything is written."""
    import logging

    async def main(url: str, proxy: TCPProxy) -> None:
        store = await Store(url, hash_secret=b"t").start()
        s = session_for(fake_stack(stt=ScriptedSTT(["One.", "Two.", "Three."])))
        record_session(s, store, Who(T1, "dave", "realtime"))
        await speak(s)
        await settle(s)
        assert await store.flush(10)
        proxy.cut()
        t0 = time.monotonic()
        done = []
        s.bus.listen(lambda e: done.append(e) if isinstance(e, E.AgentResponseDone) else None)
        for _ in range(2):
            await speak(s)
            await settle(s)
        assert len(done) == 2 and all(e.status == "completed" for e in done)
        assert time.monotonic() - t0 < 10
        await asyncio.sleep(0.5)
        assert store.writer.failing and store.writer.pending >= 4
        proxy.restore()
        assert await store.flush(30)
        assert not store.writer.failing
        items = await items_of(store, T1, s.id)
        assert [i.text for i in items if i.role == "user"] == ["One.", "Two.", "Three."]
        await s.close()
        await store.close()

    with postgres_database() as url:
        host_port = url.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.split(":")
        proxy = TCPProxy(host, int(port)).start()
        try:
            # migrate directly, then go through the proxy (which the test cuts)
            asyncio.run(Store(url, hash_secret=b"t").start()).writer.close()
            proxied = url.replace(host_port, f"127.0.0.1:{proxy.port}")
            with caplog.at_level(logging.WARNING, logger="moksori.store"):
                asyncio.run(main(proxied, proxy))
        finally:
            proxy.stop()
    assert any("write failed" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)
    assert any("database back" in r.getMessage() for r in caplog.records)


def test_a_dead_database_at_session_start_costs_one_bounded_wait(tmp_path) -> None:
    """The history cannot be loaded (nothing listens): the first reply waits at most the load's
    time limit, then the session goes on without history."""
    from servers import closed_port

    async def main() -> None:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/nothing"
        store = Store(url, hash_secret=b"t")
        store.writer.start()  # no migrations: the database does not exist
        llm = ScriptedLLM("Hello.")
        s = session_for(fake_stack(llm=llm))
        record_session(s, store, Who(T1, "erin", "realtime"))
        done = []
        s.bus.listen(lambda e: done.append(e) if isinstance(e, E.AgentResponseDone) else None)
        t0 = time.monotonic()
        await speak(s)
        await settle(s, 10)
        assert len(done) == 1 and done[0].status == "completed"
        assert time.monotonic() - t0 < 8
        assert s.memory.history == []
        await s.close()
        await store.close(timeout_s=0.5)

    asyncio.run(main())


def test_the_realtime_brain_records_the_same_and_gets_the_history_upstream(db_url) -> None:
    """`MOKSORI_BRAIN=realtime`: the upstream is `moksori.testing.fake_realtime` (a scripted GA
    server, a stand-in: it "transcribes" from a script, answers with a tone and reports usage
    with audio tokens), here in real time. The user's history goes upstream as items before the
    first turn; the turn and the reply are stored with the upstream's usage."""
    from moksori.brains.realtime import ReconnectPolicy, SessionOptions, Timeouts, UpstreamOptions, resolve_endpoint
    from moksori.brains.realtime.session import RealtimeSession
    from moksori.engine.config import SessionConfig
    from moksori.engine.turns import TurnConfig
    from moksori.store import AgentReply, ConversationStarted, UserTurn
    from moksori.testing.fake_realtime import FakeRealtimeServer

    async def main() -> None:
        store = await Store(db_url, hash_secret=b"t").start()
        now = time.time() - 100
        store.submit(ConversationStarted("conv_before", T1, "alice", "realtime", now))
        store.submit(UserTurn("conv_before", "item_b1", "My cat is called Nabi.", now + 1))
        store.submit(AgentReply("conv_before", "item_b2", "What a lovely name.", now + 2))
        server = FakeRealtimeServer(reply_ms=1200)
        server.transcripts.append("what is my cat called")
        cfg = SessionConfig(output_rate=24000, partial_interval_ms=0,
                            turn=TurnConfig(mode="silence", silence_duration_ms=500))
        ep = resolve_endpoint("ws://fake.test/v1/realtime?model=gpt-realtime", api_key="sk-test")
        opts = UpstreamOptions(ep, SessionOptions(), timeouts=Timeouts(keepalive_s=None, idle_s=5, response_s=5),
                               reconnect=ReconnectPolicy())
        s = RealtimeSession(fake_stack(), cfg, upstream=opts, who="upstream", connector=server.connector)
        record_session(s, store, Who(T1, "alice", "realtime"))
        await s.ready(5)
        await play_into_session(s, [quiet(0.5, rate=24000), tone(1.0, rate=24000), quiet(3.0, rate=24000)])
        await settle(s, 10)
        created = [e["item"] for sess in server.sessions for e in sess.received
                   if e["type"] == "conversation.item.create"]
        texts = [part.get("text") for item in created for part in item.get("content", [])]
        assert texts[:2] == ["My cat is called Nabi.", "What a lovely name."], created
        items = await items_of(store, T1, s.id)
        assert [(i.role, i.text) for i in items] == [("user", "what is my cat called"),
                                                      ("assistant", items[1].text)] and items[1].text
        usage = await store.conversation_usage(T1, s.id)
        assert usage is not None
        total = usage[0]
        assert total.llm_model == "gpt-realtime" and total.input_audio_tokens == 50
        assert total.output_audio_tokens > 0 and total.cached_tokens == 8  # as the stand-in reports them
        await s.close()
        await store.close()

    asyncio.run(main())


def test_pii_is_masked_in_what_is_stored_but_not_in_the_live_memory(tmp_path) -> None:
    """The guardrails' PII redactor (`guardrails.redact_pii`, all four kinds by default) masks
    every text a live session writes to the store; the session itself still holds the words."""
    from moksori.agent_kit import AgentKit

    said = "Call me at 010-1234-5678 or write to kim@example.com please."
    answer = "Sure, I will call 010-1234-5678 today."

    async def main() -> None:
        settings = Settings()
        kit = await AgentKit.build(settings, start_tools=False)
        store = await Store(f"sqlite+aiosqlite:///{tmp_path}/pii.db", hash_secret=b"t").start()
        try:
            stack = fake_stack(stt=ScriptedSTT([said]), llm=ScriptedLLM(answer))
            cfg = config_from_settings(settings, output_rate=16000, output_lead_ms=200, partial_interval_ms=0)
            s = open_session(stack, cfg, settings=settings, kit=kit)
            record_session(s, store, Who(T1, "pii-user", "realtime"))
            await speak(s)
            await settle(s)
            items = await items_of(store, T1, s.id)
            stored = [i.text for i in items]
            assert stored == ["Call me at [PHONE] or write to [EMAIL] please.", "Sure, I will call [PHONE] today."]
            live = [m.text for m in s.memory.items if m.type == "message"]
            assert said in live and answer in live  # the conversation in progress is not altered
            await s.close()
        finally:
            await store.close()
            await kit.close()

    asyncio.run(main())


def test_redact_record_masks_only_text_fields() -> None:
    from moksori.recording.recorder import redact_record
    from moksori.store.records import ToolCallRecord, ToolResultRecord

    def mask(text: str) -> str:
        return text.replace("secret", "***")

    call = ToolCallRecord("conv-secret", "item", "call", "lookup", '{"q": "secret"}', 1.0)
    masked = redact_record(call, mask)
    assert masked.arguments == '{"q": "***"}' and masked.conversation_id == "conv-secret" and masked.name == "lookup"
    result = ToolResultRecord("c", "i", "call", "nothing here", 1.0)
    assert redact_record(result, mask) is result


def test_a_turn_blocked_by_moderation_never_reaches_the_llm_later_nor_the_store(db_url) -> None:
    """The moderation endpoint (a loopback stand-in of `/v1/moderations`, named as such: it flags
    'attack') blocks the first spoken turn. The next turn's LLM request does not carry it (the
    term lists would not have caught it again: only the moderation verdict knew), and the store
    holds the placeholder, never the words, so a later session's history does not either."""
    from servers import ThreadedASGIServer
    from test_guardrails import ModerationStandIn

    from moksori.agent_kit import AgentKit
    from moksori.engine.memory import BLOCKED_TEXT
    from moksori.guardrails import Guardrails
    from moksori.guardrails.moderation import ModerationClient

    stand_in = ModerationStandIn()

    async def main(url: str) -> None:
        store = await Store(db_url, hash_secret=b"t").start()
        llm = ScriptedLLM("Happy to help.")
        stack = fake_stack(stt=ScriptedSTT(["How do I attack the castle?", "What about the moat?"]), llm=llm)
        guard = Guardrails(moderation=ModerationClient(url, timeout_s=2.0), moderation_on="input",
                           safe_replies={"en": "Let us talk about something else."})
        kit = AgentKit(guard=guard)
        settings = Settings()
        cfg = config_from_settings(settings, output_rate=16000, output_lead_ms=200, partial_interval_ms=0)
        s = open_session(stack, cfg, settings=settings, kit=kit)
        events: list[E.Event] = []
        s.bus.listen(events.append)
        record_session(s, store, Who(T1, "dana", "realtime"))
        await speak(s)
        await settle(s)
        assert len(llm.requests) == 0  # blocked: the LLM never saw the first turn
        trips = [e for e in events if isinstance(e, E.GuardrailTripped)]
        assert [(t.stage, t.action, t.policy) for t in trips] == [("input", "block", "moderation")]
        removed = [e for e in events if isinstance(e, E.GuardrailInputRemoved)]
        assert len(removed) == 1 and len(removed[0].item_ids) == 1
        await speak(s)
        await settle(s)
        assert len(llm.requests) == 1
        sent = " ".join(m.content for m in llm.requests[0].messages)
        assert "attack" not in sent and "castle" not in sent and BLOCKED_TEXT in sent and "moat" in sent
        assert all("attack" not in i.text for i in s.memory.items)
        await s.close()
        items = await items_of(store, T1, s.id)
        assert [(i.role, i.text) for i in items] == [
            ("user", BLOCKED_TEXT), ("assistant", "Let us talk about something else."),
            ("user", "What about the moat?"), ("assistant", "Happy to help.")]
        history = await store.load_history(T1, "dana", max_tokens=10_000)
        assert not any("attack" in (i.text or "") for i in history.items)
        await kit.close()
        await store.close()

    with ThreadedASGIServer(stand_in.app) as srv:
        asyncio.run(main(f"{srv.url}/v1"))
