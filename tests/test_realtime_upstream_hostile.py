"""The realtime brain against a hostile upstream: numbers `json.loads` reads as inf, a
`response.create` never answered (or answered with an error and nothing else), pings of unknown
events while a reply hangs, and a flood of transcript deltas.

Sans I/O against `UpstreamProtocol`, and in virtual time against the scripted in-memory upstream
`moksori.testing.fake_realtime` (a stand-in, not a model: its `ignore_responses` and `scripts`
make it misbehave as a hostile server on a real socket did, `/tmp/hunt_upstream/hostile_rt.py`).
The client and the brain must skip what they cannot use, time out what never ends, stop asking
for a reply the upstream will not give, and never let one upstream end the session by mistake.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np

from moksori.brains.realtime import (RealtimeUpstream, ReconnectPolicy, SessionOptions, Timeouts, UpstreamOptions,
                                     UpstreamProtocol, resolve_endpoint, usage_from_wire)
from moksori.brains.realtime import events as E
from moksori.brains.realtime import protocol as protocol_module
from moksori.brains.realtime.conversation import ItemRecord
from moksori.brains.realtime.protocol import MAX_RESPONSE_TEXT_CHARS, MAX_RESUMES
from moksori.brains.realtime.session import RealtimeSession
from moksori.brains.realtime.wire import WIRE_INT_MAX, wire_int
from moksori.engine import events as EE
from moksori.engine.config import SessionConfig
from moksori.engine.turns import TurnConfig
from moksori.testing.fake_realtime import FakeRealtimeServer
from moksori.testing.fakes import ScriptedSTT, fake_stack, quiet
from moksori.testing.harness import Recording, play_into_session, settle
from moksori.testing.virtual_time import run_virtual

EP = resolve_endpoint("ws://fake.test/v1/realtime?model=gpt-realtime", api_key="sk-test")
R = 24000


def _feed(p: UpstreamProtocol, *events: dict | str, now: float = 1.0) -> list[E.UpstreamEvent]:
    out: list[E.UpstreamEvent] = []
    for e in events:
        out += p.receive(e if isinstance(e, str) else json.dumps(e), now)
    return out


def _protocol() -> UpstreamProtocol:
    p = UpstreamProtocol(UpstreamOptions(EP))
    p.begin_connection(0.0)
    p.session_created = p.configured = True
    return p


def _client(server: FakeRealtimeServer, **kw) -> RealtimeUpstream:
    session = kw.pop("session", SessionOptions(instructions="Be brief.", turn="manual"))
    timeouts = kw.pop("timeouts", Timeouts(keepalive_s=None, first_event_s=2, response_s=3, idle_s=2))
    return RealtimeUpstream(UpstreamOptions(EP, session, timeouts=timeouts, **kw), connector=server.connector,
                            rand=lambda: 0.5)


class Recorder:
    def __init__(self, up: RealtimeUpstream) -> None:
        self.events: list[E.UpstreamEvent] = []
        self._new = asyncio.Event()
        self._task = asyncio.create_task(self._run(up))

    async def _run(self, up: RealtimeUpstream) -> None:
        async for e in up.events():
            self.events.append(e)
            self._new.set()

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait(self, kind: type, n: int = 1, timeout: float = 60.0, pred=lambda e: True) -> list:
        async def until() -> list:
            while len([e for e in self.of(kind) if pred(e)]) < n:
                self._new.clear()
                await self._new.wait()
            return [e for e in self.of(kind) if pred(e)]
        return await asyncio.wait_for(until(), timeout)


def _completed(e: E.ResponseDone) -> bool:
    return e.status == "completed"


# --------------------------------------------------------------------------- 1. numbers that are not numbers


def test_wire_int_refuses_non_finite_negative_absurd_and_non_numbers():
    for bad in (float("inf"), float("-inf"), float("nan"), -1, -0.5, WIRE_INT_MAX + 1, 1e300, 10**40, True, "12",
                None, [], {}):
        assert wire_int(bad) is None and wire_int(bad, 7) == 7, bad
    assert wire_int(0) == 0 and wire_int(12.9) == 12 and wire_int(WIRE_INT_MAX) == WIRE_INT_MAX
    assert json.loads("1e999") == float("inf")  # what an upstream can make `json.loads` give


def test_non_finite_numbers_in_upstream_events_are_skipped_or_read_as_missing():
    p = _protocol()
    rid, iid = "r1", "a1"
    out = _feed(p, '{"type":"input_audio_buffer.speech_started","item_id":"u1","audio_start_ms":1e999}',
                '{"type":"input_audio_buffer.speech_stopped","item_id":"u1","audio_end_ms":-1e999}',
                '{"type":"input_audio_buffer.speech_started","item_id":"u2","audio_start_ms":NaN}',
                {"type": "response.created", "response": {"id": rid}},
                {"type": "response.output_item.added", "response_id": rid,
                 "item": {"id": iid, "type": "message", "role": "assistant"}},
                '{"type":"response.content_part.added","response_id":"r1","item_id":"a1","content_index":1e999,'
                '"part":{"type":"audio"}}',
                '{"type":"conversation.item.truncated","item_id":"a1","content_index":0,"audio_end_ms":1e999}',
                '{"type":"response.done","response":{"id":"r1","status":"completed","output":[],'
                '"usage":{"total_tokens":1e999,"input_tokens":1e999,"output_tokens":3,'
                '"input_token_details":{"text_tokens":1e400,"audio_tokens":-4,"cached_tokens":1e999}}}}')
    kinds = [type(e).__name__ for e in out]
    # the events whose point is the number are skipped; the reply's lifecycle is not lost
    assert kinds == ["ResponseStarted", "ResponseDone"], kinds
    assert p.conv.get(iid).content_index == 0 and p.conv.get(iid).upstream_cut_ms is None
    done = out[-1]
    assert done.status == "completed" and done.usage is not None
    assert (done.usage.input_tokens, done.usage.input_audio_tokens, done.usage.cached_tokens,
            done.usage.output_tokens) == (0, 0, 0, 3)
    assert usage_from_wire({"input_tokens": float("nan"), "output_tokens": 10**30}).output_tokens == 0
    # and the session's state goes on: the next speech start is used
    out = _feed(p, {"type": "input_audio_buffer.speech_started", "item_id": "u3", "audio_start_ms": 1200})
    assert [(e.item_id, e.audio_start_ms) for e in out] == [("u3", 1200)]


def test_the_per_event_guard_catches_arithmetic_errors(monkeypatch):
    def overflow(self, o, now):
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setitem(protocol_module._HANDLERS, "response.created", overflow)
    p = _protocol()
    assert p.receive(json.dumps({"type": "response.created", "response": {"id": "r1"}}), 1.0) == []


def test_a_usage_of_1e999_does_not_end_the_session():
    """The hostile server's `usage_inf`: before, `int(inf)` escaped the per-event guard and the
    client failed the whole session (`internal_error`, close 1011 for the Realtime client)."""

    async def flood_usage(server, conn, rid, iid):
        server.begin_response(conn, rid, iid)
        server.audio_delta(conn, rid, iid, 200, text="Hi.")
        server.send_raw(conn, '{"type":"response.done","event_id":"e1","response":{"id":"%s","status":"completed",'
                              '"output":[],"usage":{"total_tokens":1e999,"input_tokens":1e999,"output_tokens":3}}}'
                        % rid)

    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=300)
        server.scripts.append(flood_usage)
        up = _client(server)
        await up.start()
        rec = Recorder(up)
        await up.add_message("user", "hello")
        await up.create_response()
        first = (await rec.wait(E.ResponseDone))[0]
        assert first.status == "completed" and first.usage is not None and first.usage.output_tokens == 3
        await up.add_message("user", "again")
        await up.create_response()
        done = await rec.wait(E.ResponseDone, 2)
        assert done[1].status == "completed" and done[1].conn == 1
        assert not rec.of(E.UpstreamFailed) and not rec.of(E.UpstreamDropped) and up.failure is None
        await up.close()

    run_virtual(main())


# --------------------------------------------------------------------------- 2. a reply never given


def test_a_response_never_answered_is_asked_again_once_then_abandoned_and_the_next_one_works():
    """The hostile server's `no_response_created`: before, every `response_s` the client dropped
    the connection, re-seeded a new one and asked again, for ever (11 reconnects in 170 s)."""

    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=500)
        server.ignore_responses = 1000
        up = _client(server)
        await up.start()
        rec = Recorder(up)
        loop = asyncio.get_running_loop()
        await up.add_message("user", "hello?")
        t0 = loop.time()
        await up.create_response()
        gone, = await rec.wait(E.ResponseAbandoned, timeout=60)
        assert gone.asked and not gone.cut and gone.resumes == MAX_RESUMES == 1
        assert loop.time() - t0 < 3 * 3 + 2  # two connections' response timeouts (3 s), no more
        drops = rec.of(E.UpstreamDropped)
        assert [d.reason for d in drops] == ["response_timeout"] * 2
        await rec.wait(E.Reconnected, 2)
        # asked once, asked again once on the next connection; the third connection asks nothing
        assert [r.resumed for r in rec.of(E.Reconnected)] == [True, False]
        assert sum(s.responses for s in server.sessions) == 2 and len(server.sessions) == 3
        # the next reply is asked for afresh, and answered
        server.ignore_responses = 0
        await up.create_response()
        done = await rec.wait(E.ResponseDone, pred=_completed)
        assert done[0].conn == 3
        await asyncio.sleep(10)
        assert len(server.sessions) == 3 and not rec.of(E.UpstreamFailed)
        await up.close()

    run_virtual(main())


def test_an_error_then_nothing_is_abandoned_too():
    """The hostile server's `error_then_nothing`: an `error` not tied to our event, then silence."""

    async def error_only(server, conn, rid, iid):
        server.send_raw(conn, {"type": "error", "error": {"type": "server_error", "code": "server_error",
                                                          "message": "hostile internal error"}})

    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=500)
        server.scripts.extend([error_only, error_only])
        up = _client(server)
        await up.start()
        rec = Recorder(up)
        await up.add_message("user", "hello?")
        await up.create_response()
        gone, = await rec.wait(E.ResponseAbandoned, timeout=60)
        assert gone.asked and len(rec.of(E.UpstreamError)) == 2
        await up.create_response()
        assert (await rec.wait(E.ResponseDone, pred=_completed))[0].status == "completed"
        await up.close()

    run_virtual(main())


def test_connections_where_the_pending_reply_never_advances_count_as_failed_tries():
    """An upstream that stops answering replies is given up after the reconnect policy's tries,
    with backoff, instead of being reconnected to (and re-seeded) for ever. A reply answered
    earlier on the same connection does not make it a good one."""

    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=500)
        up = _client(server, reconnect=ReconnectPolicy(max_attempts=4, base_delay_s=0.2, max_delay_s=1.0))
        await up.start()
        rec = Recorder(up)
        await up.add_message("user", "hello?")
        await up.create_response()
        await rec.wait(E.ResponseDone, pred=_completed)
        server.ignore_responses = 10_000
        await up.add_message("user", "still there?")
        await up.create_response()
        await rec.wait(E.ResponseAbandoned, timeout=60)
        await rec.wait(E.Reconnected, 2)
        await up.create_response()  # the user asks again: two more connections get nothing
        failed, = await rec.wait(E.UpstreamFailed, timeout=60)
        assert failed.reason == "gave_up" and "4 tries" in failed.detail
        assert len(server.sessions) == 4 and len(rec.of(E.ResponseAbandoned)) == 2
        tries = rec.of(E.Reconnecting)
        assert [t.attempt for t in tries] == [1, 2, 3] and tries[0].delay_s == 0 and tries[-1].delay_s > 0

    run_virtual(main())


def test_drops_with_progress_still_resume_each_reply():
    """A real network drop mid-reply: the reply is resumed; a reply that completes starts the
    count again, so the next drop, in a later reply, is resumed too."""

    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=3000)
        up = _client(server)
        await up.start()
        rec = Recorder(up)
        for n in (1, 2, 3):
            await up.add_message("user", f"question {n}")
            await up.create_response()
            await rec.wait(E.AudioDelta, 5 + 30 * (n - 1) + 5 * (n - 1))
            server.drop()
            await rec.wait(E.Reconnected, n)
            await rec.wait(E.ResponseDone, n, pred=_completed)
        assert all(r.resumed for r in rec.of(E.Reconnected)) and not rec.of(E.ResponseAbandoned)
        assert [d.reason for d in rec.of(E.ResponseDone) if not _completed(d)] == ["upstream_lost"] * 3
        await up.close()

    run_virtual(main())


def _brain(server: FakeRealtimeServer) -> RealtimeSession:
    cfg = SessionConfig(output_rate=R, partial_interval_ms=0, turn=TurnConfig(mode="silence", silence_duration_ms=500))
    opts = UpstreamOptions(EP, SessionOptions(), timeouts=Timeouts(keepalive_s=None, idle_s=5, response_s=5))
    return RealtimeSession(fake_stack(stt=ScriptedSTT(["hello."])), cfg, upstream=opts, connector=server.connector)


def test_brain_a_reply_the_upstream_never_gives_fails_with_an_error_and_the_next_turn_is_answered():
    server = FakeRealtimeServer(reply_ms=600)

    async def main():
        s = _brain(server)
        await s.ready(5)
        rec = Recording(R)
        s.bus.listen(rec)
        server.ignore_responses = 1000
        s.add_user_text("are you there?")
        await play_into_session(s, quiet(20.0, rate=R), recording=rec)
        server.ignore_responses = 0
        s.add_user_text("and now?")
        await play_into_session(s, quiet(5.0, rate=R), recording=rec)
        await settle(s, 5)
        await s.close()
        return rec

    rec = run_virtual(main())
    first, second = rec.of(EE.AgentResponseDone)
    assert first.status == "failed" and first.reason == "upstream_unresponsive"
    err, = [e for e in rec.of(EE.ErrorEvent) if e.code == "upstream_unresponsive"]
    assert err.response_id == first.response_id and "did not give a reply" in err.message
    assert second.status == "completed"
    assert len(rec.of(EE.BrainReconnected)) == 2 and not rec.of(EE.BrainUpstreamFailed)
    assert len(server.sessions) == 3


# --------------------------------------------------------------------------- 3. pings are not progress


def test_unknown_events_do_not_keep_a_hung_reply_alive():
    """The hostile server's `unknown_forever`: `response.created`, one delta, then
    `rate_limits.updated` every second. Before, any message reset the idle timer: no timeout."""

    async def pings(server, conn, rid, iid):
        server.begin_response(conn, rid, iid)
        server.audio_delta(conn, rid, iid, 100, text="Thinking ")
        while True:
            await asyncio.sleep(1.0)
            server.send_raw(conn, {"type": "rate_limits.updated", "rate_limits": []})
            server.send_raw(conn, "not json at all")

    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=500)
        server.scripts.append(pings)
        up = _client(server, timeouts=Timeouts(keepalive_s=None, first_event_s=2, response_s=3, idle_s=5))
        await up.start()
        rec = Recorder(up)
        await up.add_message("user", "hello")
        await up.create_response()
        delta = (await rec.wait(E.AudioDelta))[0]
        drop, = await rec.wait(E.UpstreamDropped, timeout=30)
        assert drop.reason == "idle_timeout" and drop.in_response
        assert 5 - 0.01 <= drop.t - delta.t < 5.5
        # the cut reply is resumed on the next connection (the fake answers it normally)
        assert (await rec.wait(E.Reconnected))[0].resumed
        assert (await rec.wait(E.ResponseDone, pred=_completed))[0].conn == 2
        await up.close()

    run_virtual(main())


def test_a_reply_that_hangs_again_when_resumed_is_abandoned():
    """The same hang on the resumed reply: it is not asked for a third time."""

    async def pings(server, conn, rid, iid):
        server.begin_response(conn, rid, iid)
        server.audio_delta(conn, rid, iid, 100, text="Thinking ")
        while True:
            await asyncio.sleep(1.0)
            server.send_raw(conn, {"type": "rate_limits.updated", "rate_limits": []})

    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=500)
        server.scripts.extend([pings, pings])
        up = _client(server)
        await up.start()
        rec = Recorder(up)
        await up.add_message("user", "hello")
        await up.create_response()
        gone, = await rec.wait(E.ResponseAbandoned, timeout=30)
        assert gone.cut and not gone.asked
        assert [d.reason for d in rec.of(E.UpstreamDropped)] == ["idle_timeout", "idle_timeout"]
        assert [r.resumed for r in await rec.wait(E.Reconnected, 2)] == [True, False]
        assert [d.reason for d in rec.of(E.ResponseDone)] == ["upstream_lost", "upstream_lost"]
        await up.create_response()
        assert (await rec.wait(E.ResponseDone, pred=_completed))[0].conn == 3
        await up.close()

    run_virtual(main())


def test_progress_of_the_response_keeps_its_idle_timer_alive():
    """A slow reply that keeps advancing is not an idle one: deltas 1.5 s apart for 12 s, with
    an idle timeout of 2 s."""

    async def slow(server, conn, rid, iid):
        server.begin_response(conn, rid, iid)
        for _ in range(8):
            server.audio_delta(conn, rid, iid, 100, text="slow ")
            await asyncio.sleep(1.5)
        server.send_raw(conn, {"type": "response.done", "response": {"id": rid, "status": "completed",
                                                                     "output": []}})

    async def main() -> None:
        server = FakeRealtimeServer(reply_ms=500)
        server.scripts.append(slow)
        up = _client(server)
        await up.start()
        rec = Recorder(up)
        await up.add_message("user", "hello")
        await up.create_response()
        done, = await rec.wait(E.ResponseDone, timeout=30)
        assert done.status == "completed" and not rec.of(E.UpstreamDropped)
        await up.close()

    run_virtual(main())


# --------------------------------------------------------------------------- 4. a flood of text


def test_item_text_is_accumulated_in_linear_time():
    rec = ItemRecord("a1")
    t0 = time.perf_counter()
    for _ in range(40_000):
        rec.add_text("word " * 5)
    assert rec.text_chars == 1_000_000 and len(rec.text) == 1_000_000
    assert time.perf_counter() - t0 < 1.0  # ~10 ms; `+=` on the attribute copied 20 GB here
    rec.text = "set"
    rec.add_text(" more")
    assert rec.text == "set more" and rec.text_chars == 8


def test_a_response_over_the_text_limit_ends_incomplete_and_is_cancelled_upstream():
    p = _protocol()
    _feed(p, {"type": "response.created", "response": {"id": "r1"}},
          {"type": "response.output_item.added", "response_id": "r1",
           "item": {"id": "a1", "type": "message", "role": "assistant"}})
    chunk = "word " * 20
    delta = {"type": "response.output_audio_transcript.delta", "response_id": "r1", "item_id": "a1", "delta": chunk}
    out: list[E.UpstreamEvent] = []
    for _ in range(MAX_RESPONSE_TEXT_CHARS // len(chunk) + 50):
        out += _feed(p, delta)
    texts = [e for e in out if isinstance(e, E.AssistantTranscriptDelta)]
    assert sum(len(e.delta) for e in texts) == MAX_RESPONSE_TEXT_CHARS
    done, = [e for e in out if isinstance(e, E.ResponseDone)]
    assert (done.status, done.reason, done.item_ids) == ("incomplete", "text_limit", ("a1",))
    assert p.conv.get("a1").text_chars == MAX_RESPONSE_TEXT_CHARS and p.conv.get("a1").final
    cancel, = p.take_outbox()
    assert cancel["type"] == "response.cancel" and cancel["response_id"] == "r1" and p.take_outbox() == []
    assert not p.in_response and p.deadline(2.0) is None
    # whatever it still sends for that response is ignored (and is no progress)
    assert _feed(p, delta, {"type": "response.done", "response": {"id": "r1", "status": "cancelled"}},
                 {"type": "response.output_audio_transcript.done", "response_id": "r1", "item_id": "a1",
                  "transcript": "x" * 100_000}, now=50.0) == []
    assert p.last_progress < 50.0
    # one huge final transcript is cut the same way
    _feed(p, {"type": "response.created", "response": {"id": "r2"}})
    out = _feed(p, {"type": "response.output_text.done", "response_id": "r2", "item_id": "a2",
                    "text": "y" * (3 * MAX_RESPONSE_TEXT_CHARS)})
    assert len(out[0].text) == MAX_RESPONSE_TEXT_CHARS and out[1].reason == "text_limit"


def test_brain_a_text_flood_ends_the_reply_incomplete_and_the_session_goes_on():
    """The hostile server's `text_flood`: 100-character transcript deltas, 50 every 5 ms (three
    times the limit here), and no end. The reply ends at the limit (`incomplete`, with an error
    saying why), the upstream is told to cancel, and the next turn is answered; the event loop is
    never stalled (before, each delta recounted the whole text so far)."""

    async def flood(server, conn, rid, iid):
        server.begin_response(conn, rid, iid)
        server.audio_delta(conn, rid, iid, 200)
        for _ in range(3 * MAX_RESPONSE_TEXT_CHARS // 5000):
            for _ in range(50):
                server.audio_delta(conn, rid, iid, 0, text="word " * 20)
            await asyncio.sleep(0.005)
        await asyncio.sleep(3600)  # and never a response.done

    server = FakeRealtimeServer(reply_ms=600)
    server.scripts.append(flood)

    async def main():
        s = _brain(server)
        await s.ready(5)
        rec = Recording(R)
        s.bus.listen(rec)
        s.add_user_text("talk")
        await play_into_session(s, quiet(3.0, rate=R), recording=rec)
        s.add_user_text("and now?")
        await play_into_session(s, quiet(5.0, rate=R), recording=rec)
        await settle(s, 5)
        await s.close()
        return rec

    rec = run_virtual(main())
    first, second = rec.of(EE.AgentResponseDone)
    assert first.status == "incomplete" and first.reason == "upstream_text_limit"
    assert len(first.generated_text) <= MAX_RESPONSE_TEXT_CHARS + 10
    err, = [e for e in rec.of(EE.ErrorEvent) if e.code == "upstream_text_limit"]
    assert err.response_id == first.response_id
    cancels = [e for e in server.sessions[0].received if e["type"] == "response.cancel"]
    assert cancels and cancels[0].get("response_id")
    assert second.status == "completed" and not rec.of(EE.BrainUpstreamDropped)


def test_empty_deltas_are_no_progress():
    p = _protocol()
    _feed(p, {"type": "response.created", "response": {"id": "r1"}})
    empty_audio = {"type": "response.output_audio.delta", "response_id": "r1", "item_id": "a1", "delta": ""}
    empty_text = {"type": "response.output_audio_transcript.delta", "response_id": "r1", "item_id": "a1",
                  "delta": ""}
    _feed(p, empty_audio, empty_text, now=9.0)
    assert p.last_progress == 1.0 and p.deadline(9.0) == (1.0 + p.opts.timeouts.idle_s, "idle_timeout")
    pcm = np.zeros(R // 10, np.int16).tobytes()
    _feed(p, {**empty_audio, "delta": base64.b64encode(pcm).decode()}, now=9.0)
    assert p.last_progress == 9.0
