"""Live partial transcripts are decoded only when something reads them (engine/partial_readers.py).

Engine and Realtime-connection logic in virtual time with scripted fakes (the STT fake counts
its calls): a Realtime session with no reader starts no partial decode; the browser app's
timeline, a reader appearing mid-turn, the LLM prefill and the setting `on` turn them on. Then a
real server on 127.0.0.1 (the real app, fast fake models) and a real SSE client: a follower of a
Realtime conversation's live events that connects mid-session gets `transcript.delta`, and so
does one of a phone call (simulated Twilio), whose partials used to be off altogether.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from carrier_sim import CarrierSim
from servers import ServerProcess, free_port

from moksori.engine import events as E
from moksori.engine.config import SessionConfig
from moksori.engine.partial_readers import PartialReaders
from moksori.engine.session import Session
from moksori.engine.turns import TurnConfig
from moksori.protocols.realtime import Flavor
from moksori.server.realtime_conn import RealtimeConnection
from moksori.settings import Settings
from moksori.testing.fakes import ScriptedLLM, ScriptedSTT, fake_stack, quiet, tone
from moksori.testing.harness import play_into_session
from moksori.testing.virtual_time import run_virtual

HERE = Path(__file__).resolve().parent
KEY = "sk-partial-readers-1"
SECRET = "partial-readers-stream-secret"
SPEECH_S = 3.0  # one turn: partials every 1.2 s (the default) would decode twice while it lasts


def test_readers_logic() -> None:
    mode = ["auto"]
    r = PartialReaders(lambda: mode[0])  # type: ignore[arg-type, return-value]
    assert not r.wanted()
    following = [False]
    withdraw = r.add("live events", lambda: following[0])
    assert not r.wanted() and r.reading() == []
    following[0] = True
    assert r.wanted() and r.reading() == ["live events"]
    withdraw()
    assert not r.wanted()
    r.add("realtime timeline")
    assert r.wanted()
    mode[0] = "off"
    assert not r.wanted()
    mode[0] = "on"
    assert PartialReaders(lambda: "on").wanted()


def _realtime_turn(settings: Settings, *, timeline: bool) -> tuple[list[dict[str, Any]], RealtimeConnection, ScriptedSTT]:
    async def main() -> tuple[list[dict[str, Any]], RealtimeConnection, ScriptedSTT]:
        sent: list[dict[str, Any]] = []

        async def send(ev: dict[str, Any]) -> None:
            sent.append(ev)

        stt = ScriptedSTT(["hello there."])
        conn = RealtimeConnection(fake_stack(stt=stt), settings, Flavor.GA, send, timeline=timeline)
        await conn.start()
        await conn.on_message(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"},
                                                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}}}}))
        audio = np.concatenate([quiet(0.3, rate=24000).samples, tone(SPEECH_S, rate=24000).samples,
                                quiet(2.0, rate=24000).samples])
        step = 480  # 20 ms at 24 kHz
        clock = conn.session.clock
        t0 = clock.now()
        for i in range(0, len(audio), step):
            chunk = base64.b64encode(audio[i:i + step].astype("<i2").tobytes()).decode()
            await conn.on_message(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await clock.sleep(t0 + (i + step) / 24000 - clock.now())
        await conn.close()
        return sent, conn, stt

    return run_virtual(main())


def _deltas(sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["event"] for e in sent if e["type"] == "moksori.event" and e["event"]["type"] == "user.transcript_delta"]


def test_a_realtime_session_nobody_reads_partials_of_decodes_none() -> None:
    sent, conn, stt = _realtime_turn(Settings(turn={"provider": "none"}), timeline=False)
    assert Settings().stt.partials == "auto"
    types = [e["type"] for e in sent]
    assert "conversation.item.input_audio_transcription.completed" in types and "response.done" in types
    partials = conn.session.partials
    assert partials.decodes == 0 and partials.unread >= 2  # two ticks of speech, neither decoded
    assert stt.calls and min(stt.calls) >= SPEECH_S  # only the pauses' decodes, of the whole turn
    assert "error" not in types


def test_the_browser_apps_timeline_reads_them() -> None:
    sent, conn, stt = _realtime_turn(Settings(turn={"provider": "none"}), timeline=True)
    assert conn.session.partials.decodes >= 2 and conn.session.partials.unread == 0
    deltas = _deltas(sent)
    assert deltas and deltas[0]["text"] == "hello there." and deltas[0]["final"] is False
    assert min(stt.calls) < SPEECH_S  # a partial heard only part of the turn


def test_the_setting_forces_them_on_or_off() -> None:
    _, conn, _ = _realtime_turn(Settings(turn={"provider": "none"}, stt={"partials": "on"}), timeline=False)
    assert conn.session.partials.decodes >= 2
    sent, conn, _ = _realtime_turn(Settings(turn={"provider": "none"}, stt={"partials": "off"}), timeline=True)
    assert conn.session.partials.decodes == 0 and _deltas(sent) == []


AUTO = SessionConfig(output_rate=16000, partials="auto", turn=TurnConfig(mode="silence"))


def test_a_reader_that_appears_mid_turn_gets_the_next_partial() -> None:
    async def main() -> tuple[list[E.UserTranscriptDelta], Session, float]:
        s = Session(fake_stack(stt=ScriptedSTT(["hello there."])), AUTO)
        deltas: list[E.UserTranscriptDelta] = []
        s.bus.listen(lambda ev: deltas.append(ev) if isinstance(ev, E.UserTranscriptDelta) else None)
        reading = [False]
        s.partials.readers.add("a follower", lambda: reading[0])
        joined = s.clock.now() + 2.5

        async def join() -> None:
            await s.clock.sleep(joined - s.clock.now())
            reading[0] = True

        task = asyncio.ensure_future(join())
        await play_into_session(s, [quiet(0.3), tone(5.0), quiet(1.5)])
        await task
        await s.close()
        return deltas, s, joined

    deltas, s, joined = run_virtual(main())
    assert s.partials.unread >= 1 and s.partials.decodes >= 1
    assert deltas and all(d.t >= joined for d in deltas)


class CachingLLM(ScriptedLLM):
    """A scripted LLM with a prompt cache to prefill (it counts the words): the prefill reads
    partials only for an LLM that has one."""

    async def prefill(self, request, upto: str) -> int:
        return len(upto.split())


CachelessLLM = ScriptedLLM  # a remote LLM's stand-in: no prompt cache


def test_the_llm_prefill_reads_them() -> None:
    async def main(cfg: SessionConfig, llm: ScriptedLLM | None = None) -> Session:
        s = Session(fake_stack(stt=ScriptedSTT(["hello there, how are you."]), llm=llm or CachingLLM()), cfg)
        await play_into_session(s, [quiet(0.3), tone(SPEECH_S), quiet(1.5)])
        await s.close()
        return s

    assert run_virtual(main(AUTO.with_(llm_prefill=True))).partials.decodes >= 2
    assert run_virtual(main(AUTO)).partials.decodes == 0
    assert run_virtual(main(AUTO.with_(llm_prefill=True), CachelessLLM())).partials.decodes == 0


# --------------------------------------------------------------------------- a real server


def _speech_then_silence(speech_s: float) -> list[str]:
    rate = 24000
    t = np.arange(int(speech_s * rate)) / rate
    pcm = np.concatenate([0.3 * np.sin(2 * np.pi * 220 * t), np.zeros(int(1.5 * rate))])
    raw = (pcm * 32767).astype("<i2").tobytes()
    step = rate // 10 * 2
    return [base64.b64encode(raw[i:i + step]).decode() for i in range(0, len(raw), step)]


class _SSE:
    """Reads `text/event-stream` with httpx into a list of (event, data)."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.opened = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
                async with client.stream("GET", self.url, headers={"Authorization": f"Bearer {self.key}"}) as r:
                    assert r.status_code == 200
                    self.opened.set()
                    event, data = "message", []
                    async for line in r.aiter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif line == "" and data:
                            self.events.append((event, json.loads("\n".join(data))))
                            event, data = "message", []
        finally:
            self.opened.set()

    async def wait(self, typ: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e, d in self.events:
                if e == typ:
                    return d
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {typ} event; got {[e for e, _ in self.events]}")


async def _next(conn: Any, typ: str, timeout: float = 20.0) -> Any:
    async def read() -> Any:
        async for ev in conn:
            if ev.type == typ:
                return ev
            assert ev.type != "error", ev
        raise AssertionError("connection closed")

    return await asyncio.wait_for(read(), timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("partial-readers")
    port = free_port()
    srv = ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port, ready_path="/health",
                        cwd=tmp, env={"MOKSORI_SERVER_PORT": str(port), "MOKSORI_API_KEYS": KEY,
                                      "MOKSORI_DATA_DIR": str(tmp / "data"), "MOKSORI_TELEPHONY_STREAM_SECRET": SECRET,
                                      "MOKSORI_STT_PARTIAL_INTERVAL_MS": "400"}).start()
    try:
        yield srv
    finally:
        srv.stop()


async def test_a_live_events_follower_that_connects_mid_session_gets_deltas(server: ServerProcess) -> None:
    from openai import AsyncOpenAI

    key, port = KEY, server.port
    client = AsyncOpenAI(api_key=key, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
    conn = await client.realtime.connect(model="gpt-realtime").enter()
    follow: _SSE | None = None
    try:
        sid = (await _next(conn, "session.created")).session.id
        await conn.session.update(session={"type": "realtime",
                                           "audio": {"input": {"transcription": {"model": "whisper-1"}}}})
        await _next(conn, "session.updated")
        for chunk in _speech_then_silence(2.0):  # a turn nobody follows
            await conn.input_audio_buffer.append(audio=chunk)
        first = await _next(conn, "conversation.item.input_audio_transcription.completed")
        await _next(conn, "response.done")
        follow = _SSE(f"http://127.0.0.1:{port}/v1/conversations/{sid}/events", key)
        follow.task = asyncio.create_task(follow.run())
        await asyncio.wait_for(follow.opened.wait(), 10)
        await follow.wait("conversation.state")
        for chunk in _speech_then_silence(2.0):  # the same turn, followed, as a microphone sends it
            await conn.input_audio_buffer.append(audio=chunk)
            await asyncio.sleep(0.1)
        said = await _next(conn, "conversation.item.input_audio_transcription.completed")
        done = await follow.wait("transcript.done")
        assert done["item_id"] == said.item_id != first.item_id
        deltas = [d for e, d in follow.events if e == "transcript.delta"]
        assert deltas and {d["item_id"] for d in deltas} == {said.item_id}
        assert deltas[0]["text"] == "hello there." and deltas[0]["language"] == "en"
        assert [e for e, _ in follow.events].index("transcript.delta") < \
            [e for e, _ in follow.events].index("transcript.done")
    finally:
        await conn.close()
        if follow is not None and follow.task is not None:
            follow.task.cancel()
            await asyncio.gather(follow.task, return_exceptions=True)


async def test_a_follower_of_a_phone_call_gets_deltas(server: ServerProcess) -> None:
    from moksori.telephony.signatures import make_stream_token

    call_id = "CA" + "5" * 32
    token = make_stream_token(SECRET.encode(), call_id, carrier="twilio", now=int(time.time()))
    url = f"ws://127.0.0.1:{server.port}/telephony/twilio/stream"
    async with CarrierSim.connect(url, call_id=call_id, params={"token": token}) as call:
        await call.start()
        await call.wait_audio(timeout=10)  # the greeting
        follow = _SSE(f"http://127.0.0.1:{server.port}/v1/conversations/{call_id}/events", KEY)
        follow.task = asyncio.create_task(follow.run())
        try:
            await asyncio.wait_for(follow.opened.wait(), 10)
            await follow.wait("conversation.state")
            await call.wait_quiet(quiet_s=0.3)
            await call.speak(tone(2.0, rate=8000))
            await call.speak(quiet(1.5, rate=8000))
            done = await follow.wait("transcript.done")
            deltas = [d for e, d in follow.events if e == "transcript.delta"]
            assert deltas and deltas[0]["item_id"] == done["item_id"] and deltas[0]["text"] == "hello there."
        finally:
            follow.task.cancel()
            await asyncio.gather(follow.task, return_exceptions=True)
