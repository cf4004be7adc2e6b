"""The upstream Realtime client's logic: wire shapes, endpoint and settings validation, ordering,
truncate clamping, timeouts, reconnects and re-seeding.

Timeouts and reconnects run in virtual time (`moksori.testing.virtual_time`) against the scripted
in-memory upstream `moksori.testing.fake_realtime` (a stand-in: it is not a model; it answers with
a tone and a text that says how much of the conversation it holds), so a 20-minute conversation
takes well under a second. The same client against a real `moksori serve` upstream, through a
fault-injecting proxy, is in `test_realtime_upstream.py`.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pydantic
import pytest
from openai.types import realtime as ga_types

from moksori.audio.frames import Frame
from moksori.brains.realtime import (ClientWire, ReconnectPolicy, ReseedBudget, RealtimeUpstream, SessionOptions,
                                     Timeouts, UpstreamOptions, UpstreamProtocol, options_from_settings,
                                     resolve_endpoint, usage_from_wire)
from moksori.brains.realtime import events as E
from moksori.brains.realtime.protocol import InputRef
from moksori.errors import ConfigError, ProviderError
from moksori.protocols.realtime import PCMU
from moksori.settings import load_settings
from moksori.testing.fake_realtime import FakeRealtimeServer
from moksori.testing.virtual_time import run_virtual

GA_CLIENT = pydantic.TypeAdapter(ga_types.RealtimeClientEvent)
EP = resolve_endpoint("ws://fake.test/v1/realtime?model=gpt-realtime", api_key="sk-test")


def _extra_fields(model: object, path: str = "") -> list[str]:
    """Fields the SDK's pydantic models did not recognise (they would be unknown to OpenAI too)."""
    out: list[str] = []
    if isinstance(model, pydantic.BaseModel):
        out += [f"{path}.{k}" for k in (model.model_extra or {})]
        for name in type(model).model_fields:
            out += _extra_fields(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for i, x in enumerate(model):
            out += _extra_fields(x, f"{path}[{i}]")
    return out


# --------------------------------------------------------------------------- wire shapes


@pytest.mark.parametrize("turn", ["server_vad", "semantic_vad", "manual"])
def test_ga_client_events_are_what_the_openai_sdk_knows(turn):
    w = ClientWire("openai")
    opts = SessionOptions(instructions="Be brief.", voice="marin", turn=turn,
                          tools=({"name": "weather", "description": "d", "parameters": {"type": "object"}},),
                          max_output_tokens=200)
    msgs = [w.session_update(opts), w.append("AAAA"), w.commit(), w.clear(), w.response_create(),
            w.response_create(instructions="x", modalities=("text",), metadata={"k": "v"}),
            w.response_cancel("resp_1"), w.truncate("item_1", 1200), w.retrieve("item_1"),
            w.message("user", text="hi", item_id="item_a"), w.message("assistant", text="hello", item_id="item_b"),
            w.message("user", audio_b64="AAAA"), w.message("system", text="sys"),
            w.function_call("call_1", "weather", "{}", item_id="item_c"), w.function_output("call_1", "sunny")]
    for m in msgs:
        parsed = GA_CLIENT.validate_python(m)
        assert parsed.type == m["type"]
        assert _extra_fields(parsed) == [], m
    assert len({m["event_id"] for m in msgs}) == len(msgs)
    audio_in = msgs[0]["session"]["audio"]["input"]
    if turn == "manual":
        assert audio_in["turn_detection"] is None
    else:
        assert audio_in["turn_detection"]["type"] == turn
    assert audio_in["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert "temperature" not in msgs[0]["session"]  # GA sessions have none


def test_azure_session_is_flat_with_voice_objects_and_rate():
    w = ClientWire("azure")
    s = w.session_payload(SessionOptions(voice="en-US-AvaNeural", turn="semantic_vad", temperature=0.7))
    assert s["input_audio_format"] == "pcm16" and s["input_audio_sampling_rate"] == 24000
    assert s["voice"] == {"name": "en-US-AvaNeural", "type": "azure-standard"}
    assert s["turn_detection"]["type"] == "azure_semantic_vad"
    assert s["input_audio_transcription"] == {"model": "azure-speech"}
    assert s["modalities"] == ["text", "audio"] and s["temperature"] == 0.7
    assert w.session_payload(SessionOptions(voice="alloy"))["voice"] == {"name": "alloy", "type": "openai"}
    g711 = w.session_payload(SessionOptions(input_format=PCMU, output_format=PCMU))
    assert g711["input_audio_format"] == "g711_ulaw" and "input_audio_sampling_rate" not in g711


@pytest.mark.parametrize(("url", "flavor", "want_url", "want_header"), [
    ("wss://api.openai.com/v1/realtime?model=gpt-realtime", "auto",
     "wss://api.openai.com/v1/realtime?model=gpt-realtime", ("Authorization", "Bearer K")),
    ("ws://127.0.0.1:8000?model=m", "auto", "ws://127.0.0.1:8000/v1/realtime?model=m", ("Authorization", "Bearer K")),
    ("http://127.0.0.1:8000/v1", "openai", "ws://127.0.0.1:8000/v1/realtime?model=gpt-realtime", None),
    ("https://res.services.ai.azure.com", "auto",
     "wss://res.services.ai.azure.com/voice-live/realtime?model=gpt-realtime&api-version=2025-10-01",
     ("api-key", "K")),
    ("http://127.0.0.1:8000", "azure",
     "ws://127.0.0.1:8000/voice-live/realtime?model=gpt-realtime&api-version=2025-10-01", ("api-key", "K")),
    ("https://res.openai.azure.com/openai/v1/realtime?model=gpt-realtime", "auto",
     "wss://res.openai.azure.com/openai/v1/realtime?model=gpt-realtime", ("api-key", "K")),
])
def test_endpoint_urls_and_auth_headers(url, flavor, want_url, want_header):
    model = None if "model=" in url else "gpt-realtime"
    ep = resolve_endpoint(url, flavor=flavor, api_key="K", model=model)
    assert ep.url == want_url
    if want_header is not None:
        assert ep.headers == (want_header,)
    assert "K" not in repr(ep)  # the key never reaches a log line


@pytest.mark.parametrize(("url", "needle"), [
    ("", "empty"), ("ftp://x/v1/realtime", "ws://"), ("ws:///v1/realtime", "no host"),
    ("wss://api.openai.com/v1/realtime", "model"),
])
def test_bad_endpoints_are_one_line_config_errors(url, needle):
    with pytest.raises(ConfigError) as exc:
        resolve_endpoint(url)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_settings_brain_and_realtime_group(monkeypatch):
    monkeypatch.setenv("MOKSORI_BRAIN", "realtime")
    with pytest.raises(ConfigError, match="MOKSORI_REALTIME_URL"):
        load_settings()
    monkeypatch.setenv("MOKSORI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime?model=m")
    monkeypatch.setenv("MOKSORI_REALTIME_API_KEY", "sk-x")
    monkeypatch.setenv("MOKSORI_REALTIME_FLAVOR", "openai")
    monkeypatch.setenv("MOKSORI_REALTIME_TURN_DETECTION", "moksori")
    monkeypatch.setenv("MOKSORI_REALTIME_IDLE_TIMEOUT_S", "7")
    monkeypatch.setenv("MOKSORI_REALTIME_ROTATE_AFTER_S", "3300")
    s = load_settings()
    opts = options_from_settings(s, instructions="hi")
    assert s.brain == "realtime" and opts.endpoint.flavor == "openai"
    assert opts.session.turn == "manual" and opts.timeouts.idle_s == 7 and opts.reconnect.rotate_after_s == 3300
    assert opts.endpoint.headers == (("Authorization", "Bearer sk-x"),)
    monkeypatch.setenv("MOKSORI_REALTIME_FLAVOR", "gemini")
    with pytest.raises(ConfigError, match="realtime.flavor"):
        load_settings()
    monkeypatch.setenv("MOKSORI_REALTIME_FLAVOR", "auto")
    monkeypatch.setenv("MOKSORI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime")
    with pytest.raises(ConfigError, match="model"):
        options_from_settings(load_settings())
    monkeypatch.setenv("MOKSORI_BRAIN", "telepathy")
    with pytest.raises(ConfigError, match="brain"):
        load_settings()


def test_usage_keeps_text_audio_and_cached_tokens_apart():
    wire = {"total_tokens": 300, "input_tokens": 200, "output_tokens": 100,
            "input_token_details": {"text_tokens": 120, "audio_tokens": 80, "image_tokens": 0, "cached_tokens": 64,
                                    "cached_tokens_details": {"text_tokens": 40, "audio_tokens": 24}},
            "output_token_details": {"text_tokens": 30, "audio_tokens": 70}}
    u = usage_from_wire(wire, model="gpt-realtime")
    assert (u.input_tokens, u.cached_tokens, u.input_audio_tokens, u.cached_audio_tokens) == (120, 40, 80, 24)
    assert (u.output_tokens, u.output_audio_tokens, u.llm_model) == (30, 70, "gpt-realtime")
    beta = usage_from_wire({"input_tokens": 50, "output_tokens": 5,
                            "input_token_details": {"text_tokens": 50, "audio_tokens": 0, "cached_tokens": 10}})
    assert (beta.input_tokens, beta.cached_tokens, beta.output_tokens) == (50, 10, 5)
    assert usage_from_wire(None) is None and usage_from_wire({"input_tokens": "x"}).input_tokens == 0


# --------------------------------------------------------------------------- protocol, sans I/O


def _feed(p: UpstreamProtocol, *events: dict) -> list[E.UpstreamEvent]:
    out: list[E.UpstreamEvent] = []
    for e in events:
        out += p.receive(json.dumps(e), 1.0)
    return out


def _audio_delta(item: str, ms: int, rid: str = "r1") -> dict:
    import base64

    pcm = np.zeros(24 * ms, dtype="<i2").tobytes()
    return {"type": "response.output_audio.delta", "response_id": rid, "item_id": item, "output_index": 0,
            "content_index": 0, "delta": base64.b64encode(pcm).decode()}


def test_a_late_user_transcript_still_says_where_it_belongs():
    p = UpstreamProtocol(UpstreamOptions(EP))
    p.begin_connection(0.0)
    out = _feed(p,
                {"type": "input_audio_buffer.committed", "item_id": "u1", "previous_item_id": None},
                {"type": "response.created", "response": {"id": "r1"}},
                {"type": "response.output_item.added", "response_id": "r1",
                 "item": {"id": "a1", "type": "message", "role": "assistant"}},
                {"type": "conversation.item.added", "previous_item_id": "u1",
                 "item": {"id": "a1", "type": "message", "role": "assistant", "content": []}},
                _audio_delta("a1", 200),
                {"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1",
                 "content_index": 0, "transcript": "late words"},
                # a second user turn committed after the reply; its transcript comes first
                {"type": "input_audio_buffer.committed", "item_id": "u2", "previous_item_id": "a1"},
                {"type": "conversation.item.input_audio_transcription.completed", "item_id": "u2",
                 "content_index": 0, "transcript": "second"})
    finals = [e for e in out if isinstance(e, E.UserTranscript)]
    assert [(e.item_id, e.previous_item_id, e.text) for e in finals] == [("u1", None, "late words"), ("u2", "a1", "second")]
    assert [h.id for h in p.conv.history()] == ["u1", "a1", "u2"]
    # an item the upstream places earlier than where it was first seen moves there
    _feed(p, {"type": "conversation.item.added", "previous_item_id": "u1",
              "item": {"id": "x1", "type": "message", "role": "system", "content": [{"type": "input_text", "text": "s"}]}})
    assert [h.id for h in p.conv.history()] == ["u1", "x1", "a1", "u2"]


def test_truncate_is_clamped_to_generated_audio_and_to_an_earlier_cut():
    p = UpstreamProtocol(UpstreamOptions(EP))
    p.begin_connection(0.0)
    _feed(p, {"type": "response.created", "response": {"id": "r1"}},
          {"type": "response.output_item.added", "response_id": "r1",
           "item": {"id": "a1", "type": "message", "role": "assistant"}},
          {"type": "response.content_part.added", "item_id": "a1", "content_index": 1, "part": {"type": "audio"}},
          _audio_delta("a1", 300), _audio_delta("a1", 450))
    msg, r = p.truncate("a1", 5000)
    assert r.sent and r.reason == "clamped" and r.audio_end_ms == 750 and msg["audio_end_ms"] == 750
    assert msg["content_index"] == 1
    msg2, r2 = p.truncate("a1", 900)  # later, larger: never past the first cut
    assert msg2 is None and r2.reason == "already_truncated" and r2.audio_end_ms == 750
    msg3, r3 = p.truncate("a1", 400)
    assert r3.sent and msg3["audio_end_ms"] == 400
    assert p.truncate("nope", 10)[1].reason == "unknown_item"
    # rejected anyway: a typed event, and the cut is still what counts as heard
    out = _feed(p, {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                               "message": "no", "event_id": msg3["event_id"]}})
    assert [type(e).__name__ for e in out] == ["TruncateRejected"]
    assert out[0].audio_end_ms == 400 and p.conv.get("a1").truncated_ms == 400
    # after a reconnect the item is text upstream: nothing is sent, the cut is recorded
    p.begin_connection(2.0)
    msg4, r4 = p.truncate("a1", 100)
    assert msg4 is None and r4.reason == "no_audio" and p.conv.get("a1").truncated_ms == 100


def test_reseed_plan_keeps_the_newest_items_within_budget_and_never_orphans_a_tool_result():
    p = UpstreamProtocol(UpstreamOptions(EP, reseed=ReseedBudget(max_items=4, max_chars=10_000)))
    p.begin_connection(0.0)
    conv = p.conv
    conv.ensure("u1", kind="message", role="user", text="first")
    conv.ensure("a1", kind="message", role="assistant", text="one two three four", audio_ms=1000.0,
                truncated_ms=500)
    conv.ensure("c1", kind="function_call", call_id="call_1", name="weather", arguments="{}")
    conv.ensure("o1", kind="function_call_output", call_id="call_1", output="sunny")
    conv.ensure("a2", kind="message", role="assistant", text="It is sunny.")
    conv.ensure("u2", kind="message", role="user", text="")  # nothing to say: skipped
    conv.ensure("u3", kind="message", role="user", text="thanks")
    plan = p.reseed()
    assert [m["item"]["id"] for m in plan.messages] == ["c1", "o1", "a2", "u3"]
    p2 = UpstreamProtocol(UpstreamOptions(EP, reseed=ReseedBudget(max_items=3)))
    p2.conv = conv
    assert [m["item"]["id"] for m in p2.reseed().messages] == ["a2", "u3"]  # o1 without c1 is dropped
    p3 = UpstreamProtocol(UpstreamOptions(EP))
    p3.conv = conv
    texts = [m["item"]["content"][0].get("text") for m in p3.reseed().messages if m["item"]["type"] == "message"]
    assert texts[1] == "one two"  # a cut reply contributes only the share heard
    p3.conv.get("a1").heard_text = "one two three"
    assert p3.reseed().messages[1]["item"]["content"][0]["text"] == "one two three"


@pytest.mark.parametrize("flavor", ["openai", "azure"])
def test_a_response_s_input_names_the_items_the_upstream_holds_and_says_the_rest(flavor):
    """`InputRef`: an item of the conversation a response's own `input` names. OpenAI's dialect
    gets an `item_reference` to each of its upstream items the conversation holds when the
    `response.create` goes (after a reconnect: those the re-seed gave the new connection); an item
    it does not hold (deleted, left out of the re-seed, refused there) goes as its words, nothing
    when it has none. Azure Voice Live has no `item_reference`: words."""
    ep = resolve_endpoint("ws://127.0.0.1:8000/v1/realtime?model=gpt-realtime", flavor=flavor, api_key="K")
    p = UpstreamProtocol(UpstreamOptions(ep, reseed=ReseedBudget(max_items=3)))
    p.begin_connection(0.0)
    p.add_message("user", "the oldest words", item_id="old")
    p.add_message("user", "hello", item_id="u1")
    p.add_function_call("call_1", "lookup", "{}", item_id="c1")  # an mcp_call here: a call and its output there
    p.add_function_output("call_1", "found", item_id="o1")
    p.add_message("user", "gone", item_id="u2")
    p.delete("u2")
    refs = [InputRef(("u1",), "user", "hello"), InputRef(("c1", "o1"), "assistant", ""),
            InputRef(("u2",), "user", "gone"), InputRef(("nowhere",), "assistant", ""),
            InputRef(("old",), "user", "the oldest words")]

    def said(role: str, text: str) -> dict:
        kind = "output_text" if role == "assistant" else "input_text"
        return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}

    sent = p.response_create(0.0, conversation="none", input=refs)["response"]["input"]
    if flavor == "openai":
        assert sent == [{"type": "item_reference", "id": i} for i in ("u1", "c1", "o1")] + [
            said("user", "gone"), {"type": "item_reference", "id": "old"}]
    else:
        assert sent == [said("user", "hello"), said("user", "gone"), said("user", "the oldest words")]
    p.begin_connection(1.0)  # a reconnect: the re-seed gives the new connection the newest three items
    assert [m["item"]["id"] for m in p.reseed().messages] == ["u1", "c1", "o1"]
    again = p.response_create(1.0, conversation="none", input=refs)["response"]["input"]
    assert again[-1] == said("user", "the oldest words")  # left out of the re-seed: not upstream any more
    assert again[:-1] == sent[:-1]
    typed = p.add_message("user", "refused words", item_id="r1")
    _feed(p, {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                         "message": "no", "event_id": typed["event_id"]}})
    ref = [InputRef(("r1",), "user", "refused words")]
    assert p.response_create(2.0, conversation="none", input=ref)["response"]["input"] == [
        said("user", "refused words")], "an item the upstream refused goes as its words"
    _feed(p, {"type": "conversation.item.added", "item": {"id": "r1", "type": "message", "role": "user",
                                                         "content": [{"type": "input_text", "text": "refused words"}]}})
    if flavor == "openai":  # (added after all, e.g. sent again as words)
        assert p.response_create(3.0, conversation="none", input=ref)["response"]["input"] == [
            {"type": "item_reference", "id": "r1"}]


def test_unreadable_or_odd_upstream_messages_are_skipped():
    p = UpstreamProtocol(UpstreamOptions(EP))
    p.begin_connection(0.0)
    for raw in ["not json", "[]", '{"type": 5}', '{"type": "response.output_audio.delta"}',
                '{"type": "response.output_audio.delta", "item_id": "a", "delta": "%%%"}',
                '{"type": "response.done"}', '{"type": "mystery.event"}', b"\xff\xfe"]:
        assert p.receive(raw, 1.0) == []


# --------------------------------------------------------------------------- the client, in virtual time


def _client(server: FakeRealtimeServer, **kw) -> RealtimeUpstream:
    session = kw.pop("session", SessionOptions(instructions="Be brief.", turn="manual"))
    timeouts = kw.pop("timeouts", Timeouts(keepalive_s=None, first_event_s=2, response_s=3, idle_s=2))
    return RealtimeUpstream(UpstreamOptions(EP, session, timeouts=timeouts, **kw), connector=server.connector,
                            rand=lambda: 0.5)


class Recorder:
    def __init__(self, up: RealtimeUpstream) -> None:
        self.events: list[E.UpstreamEvent] = []
        self._task = asyncio.create_task(self._run(up))
        self._new = asyncio.Event()

    async def _run(self, up: RealtimeUpstream) -> None:
        async for e in up.events():
            self.events.append(e)
            self._new.set()

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait(self, kind: type, n: int = 1, timeout: float = 30.0, pred=lambda e: True) -> list:
        async def until() -> list:
            while len([e for e in self.of(kind) if pred(e)]) < n:
                self._new.clear()
                await self._new.wait()
            return [e for e in self.of(kind) if pred(e)]
        return await asyncio.wait_for(until(), timeout)


def _second_of_speech() -> Frame:
    t = np.arange(24000) / 24000
    return Frame((8000 * np.sin(2 * np.pi * 200 * t)).astype(np.int16), 24000)


async def _manual_turn(up: RealtimeUpstream, rec: Recorder, n_done: int) -> None:
    await up.append_audio(_second_of_speech())
    await up.commit()
    await up.create_response()
    await rec.wait(E.ResponseDone, n_done, pred=lambda e: e.status == "completed")


def test_twenty_minute_conversation_crosses_a_time_limit_without_losing_a_turn():
    """~20 minutes of turns (speak 1 s, answer 2 s, pause) on an upstream whose sessions end
    after 7 minutes: two forced reconnects, every turn answered, and each new session was given
    the conversation before the next turn."""

    async def main() -> None:
        server = FakeRealtimeServer(max_session_s=7 * 60, reply_ms=2000)
        up = _client(server, reseed=ReseedBudget(max_items=400, max_chars=100_000))
        await up.start()
        rec = Recorder(up)
        loop = asyncio.get_running_loop()
        turns = 0
        while loop.time() < 20 * 60:
            turns += 1
            server.transcripts.append(f"turn number {turns}")
            await _manual_turn(up, rec, turns)
            await asyncio.sleep(7.0)
        assert turns >= 100
        drops = rec.of(E.UpstreamDropped)
        assert [d.reason for d in drops] == ["time_limit", "time_limit"]
        assert all(420 - 1 < d.age_s < 420 + 1 for d in drops)
        reconnects = rec.of(E.Reconnected)
        assert len(reconnects) == 2 and all(r.reseed_errors == 0 and r.gap_s < 0.5 for r in reconnects)
        # no lost turn: every user turn is in the history, in order, each followed by a reply
        hist = up.history()
        users = [h.text for h in hist if h.role == "user"]
        assert users == [f"turn number {k}" for k in range(1, turns + 1)]
        for i, h in enumerate(hist):
            if h.role == "user":
                assert hist[i + 1].role == "assistant" and hist[i + 1].text.startswith("Reply"), (i, h)
        # the last session holds the earlier turns (re-seeded), not just its own
        last = server.sessions[-1]
        assert ("user", "turn number 1") in last.texts()
        assert len(server.sessions) == 3 and not any(isinstance(e, E.UpstreamFailed) for e in rec.events)
        await up.close()

    run_virtual(main())


def test_a_drop_mid_reply_reconnects_reseeds_and_resumes_the_reply():
    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=3000)
        up = _client(server)
        await up.start()
        rec = Recorder(up)
        server.transcripts.extend(["my name is Mina", "tell me a story"])
        await _manual_turn(up, rec, 1)
        await up.append_audio(_second_of_speech())
        await up.commit()
        await up.create_response()
        await rec.wait(E.AudioDelta, 35)  # 30 deltas of turn one, 5 of turn two
        server.drop()
        done = await rec.wait(E.ResponseDone, 2)
        assert done[1].synthetic and done[1].status == "failed" and done[1].reason == "upstream_lost"
        drop = (await rec.wait(E.UpstreamDropped))[0]
        assert drop.in_response and drop.reason == "closed"
        r = (await rec.wait(E.Reconnected))[0]
        assert r.reseeded == 4 and r.resumed and r.gap_s < 0.1
        done = await rec.wait(E.ResponseDone, 3)
        assert done[2].status == "completed" and done[2].conn == 2
        # the new session got the earlier turns, the cut reply as far as it went, and the note
        texts = server.sessions[1].texts()
        assert texts[:3] == [("user", "my name is Mina"),
                             ("assistant", "Reply 1 in a conversation of 1 items; you said: my name is Mina"),
                             ("user", "tell me a story")]
        assert texts[3][0] == "assistant" and texts[3][1].startswith("Reply 2")
        assert "cut off" in texts[4][1]
        await up.close()

    run_virtual(main())


def test_calls_made_while_down_go_out_in_order_after_the_reconnect():
    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=500)
        up = _client(server)
        await up.start()
        rec = Recorder(up)
        server.refuse_next = 2  # the reconnect needs three tries
        server.drop()
        await rec.wait(E.UpstreamDropped)
        server.transcripts.append("spoken while down")
        await up.append_audio(_second_of_speech())
        await up.commit()
        await up.create_response()
        assert not up.connected
        done = await rec.wait(E.ResponseDone, pred=lambda e: e.status == "completed")
        tries = rec.of(E.Reconnecting)
        assert [t.attempt for t in tries] == [1, 2, 3] and tries[0].delay_s == 0 and tries[1].delay_s > 0
        assert done[0].conn == 2
        r = rec.of(E.Reconnected)[0]
        assert r.replayed_audio_ms == 1000 and not r.resumed
        kinds = [e["type"] for e in server.sessions[-1].received]
        assert kinds.index("input_audio_buffer.append") < kinds.index("input_audio_buffer.commit") \
            < kinds.index("response.create")
        assert server.sessions[-1].texts()[0] == ("user", "spoken while down")
        await up.close()

    run_virtual(main())


def test_speech_in_progress_at_a_drop_is_replayed_to_the_new_connection():
    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=500, silence_ms=500)
        up = _client(server, session=SessionOptions(turn="server_vad"))
        await up.start()
        rec = Recorder(up)
        server.transcripts.append("i was speaking")
        speech = _second_of_speech()
        await up.append_audio(Frame(np.zeros(4800, np.int16), 24000))
        await up.append_audio(Frame(speech.samples[:12000], 24000))
        await rec.wait(E.SpeechStarted)
        server.drop()  # the user is mid-sentence
        await rec.wait(E.UpstreamDropped)
        await up.append_audio(Frame(speech.samples[12000:], 24000))
        for _ in range(10):
            await up.append_audio(Frame(np.zeros(2400, np.int16), 24000))
            await asyncio.sleep(0.1)
        done = await rec.wait(E.ResponseDone, pred=lambda e: e.status == "completed")
        r = rec.of(E.Reconnected)[0]
        assert r.replayed_audio_ms >= 500 and not r.resumed  # the speech, from its start (less padding)
        assert done[0].conn == 2 and up.history()[0].text == "i was speaking"
        await up.close()

    run_virtual(main())


@pytest.mark.parametrize("fault", ["hang", "stall_mid_reply", "no_response"])
def test_a_silent_upstream_is_detected_by_timeouts(fault):
    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=3000)
        up = _client(server, reconnect=ReconnectPolicy(max_attempts=3))
        loop = asyncio.get_running_loop()
        if fault == "hang":
            server.hang_next = 5
            t0 = loop.time()
            with pytest.raises(ProviderError, match="first event timeout|cannot set up"):
                await up.start()
            assert loop.time() - t0 < 3 * 2 + 1  # three tries of first_event_s=2, then give up
            return
        await up.start()
        rec = Recorder(up)
        await up.add_message("user", "hello")
        if fault == "no_response":
            server.stall()
        await up.create_response()
        if fault == "stall_mid_reply":
            await rec.wait(E.AudioDelta, 3)
            server.stall()
        drop = (await rec.wait(E.UpstreamDropped, timeout=10))[0]
        assert drop.reason == ("idle_timeout" if fault == "stall_mid_reply" else "response_timeout")
        assert drop.in_response
        r = (await rec.wait(E.Reconnected))[0]
        assert r.resumed and r.reseeded == (2 if fault == "stall_mid_reply" else 1)  # + the cut reply's start
        done = await rec.wait(E.ResponseDone, pred=lambda e: e.status == "completed")
        assert done[0].conn == 2
        await up.close()

    run_virtual(main())


def test_a_rejected_key_fails_at_once_and_a_dead_upstream_gives_up_with_a_last_event():
    async def main() -> None:
        server = FakeRealtimeServer()
        server.refuse_next, server.refuse_status = 1, 401
        up = _client(server)
        with pytest.raises(ProviderError, match="401"):
            await up.start()
        assert len(server.sessions) == 0

        server2 = FakeRealtimeServer()
        up2 = _client(server2, reconnect=ReconnectPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=0.2))
        await up2.start()
        rec = Recorder(up2)
        server2.refuse_next = 10
        server2.drop()
        failed = (await rec.wait(E.UpstreamFailed))[0]
        assert failed.reason == "gave_up" and len(rec.of(E.Reconnecting)) == 3
        await asyncio.sleep(0.1)
        with pytest.raises(ProviderError, match="gone"):
            await up2.append_audio(_second_of_speech())
        await up2.close()

    run_virtual(main())


def test_barge_in_cancels_and_truncates_and_a_rejected_truncate_is_survived():
    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=4000)
        up = _client(server)
        await up.start()
        rec = Recorder(up)
        await up.add_message("user", "a long story please")
        await up.create_response()
        await rec.wait(E.AudioDelta, 8)
        got_ms = rec.of(E.AudioDelta)[-1].item_audio_ms
        r = await up.interrupt(heard_ms=60_000)  # the engine's estimate ran past what came
        assert r is not None and r.sent and r.reason == "clamped" and r.audio_end_ms <= got_ms
        done = (await rec.wait(E.ResponseDone))[0]
        assert done.status == "cancelled"
        assert (await rec.wait(E.ItemTruncated))[0].audio_end_ms == r.audio_end_ms
        assert server.sessions[0].truncates == [(r.item_id, r.audio_end_ms)] and not rec.of(E.UpstreamError)
        # the upstream rejects the next one anyway: reported, and the session goes on
        server.reject_truncates = 1
        await up.add_message("user", "again")
        await up.create_response()
        await rec.wait(E.AudioDelta, 8 + 5)
        r2 = await up.interrupt(heard_ms=200)
        rej = (await rec.wait(E.TruncateRejected))[0]
        assert rej.item_id == r2.item_id and rej.audio_end_ms == 200
        await up.add_message("user", "are you still there?")
        await up.create_response()
        done = await rec.wait(E.ResponseDone, 3)
        assert done[2].status == "completed" and done[2].usage is not None and done[2].usage.output_audio_tokens > 0
        heard = [h for h in up.history() if h.id == r2.item_id][0]
        assert heard.interrupted and len(heard.heard_text.split()) < len(heard.text.split())
        await up.close()

    run_virtual(main())


def test_a_planned_rotation_happens_only_at_a_quiet_moment():
    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=3000)
        up = _client(server, reconnect=ReconnectPolicy(rotate_after_s=10))
        await up.start()
        rec = Recorder(up)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(8.5)
        await up.add_message("user", "talk past the rotation time")
        await up.create_response()  # runs 8.5 s -> 11.5 s
        drop = (await rec.wait(E.UpstreamDropped, timeout=20))[0]
        assert drop.planned and drop.reason == "rotation" and loop.time() >= 11.5
        assert rec.of(E.ResponseDone)[0].status == "completed"  # the reply was not cut
        r = (await rec.wait(E.Reconnected))[0]
        assert not r.resumed and r.reseeded == 2
        await up.close()

    run_virtual(main())
