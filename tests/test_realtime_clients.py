"""Real client SDKs against a real `moksori serve` on 127.0.0.1, with real speech at real-time pace.

Clients: the official `openai` SDK (GA `client.realtime.connect` and beta
`client.beta.realtime.connect`), `openai-agents` `RealtimeRunner` (validates every server event
with pydantic and reports any it cannot parse), and `azure-ai-voicelive` `connect(...)`.

Speech: /work/shared/speech/en/en_028.wav ("i have a thousand thoughts about that thing"),
resampled to 24 kHz PCM16 with `moksori.audio.resample`, padded with 4 s of silence, and sent in
40 ms appends paced by the wall clock.

Two servers, one each per module, both with API keys configured (so every client authenticates
the way it does in the field):

* `server` — the embedded default stack (Silero, smart-turn, Whisper base, SmolLM2, Piper);
* `scripted_server` — the same, except the LLM is `tests/scripted_llm_server.py` on loopback
  (`MOKSORI_LLM_PROVIDER=openai MOKSORI_LLM_BASE_URL=http://127.0.0.1:<p>/v1`): a deterministic
  chat server that calls tools when offered and can give a long reply on request. It serves the
  function-call turn (SmolLM2 is too weak to call tools) and the protocol tests that need replies
  of a known length (manual turns, cancel, barge-in).

Besides what each client sees, every GA/beta event received is validated against the `openai`
SDK's own strict pydantic union, and event ids are checked to be present and unique.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pydantic
import pytest
from openai.types import realtime as ga_types
from openai.types.beta import realtime as beta_types
from scripted_llm_server import LONG_REPLY, SHORT_REPLY, ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir, requires_speech, utt

pytestmark = [pytest.mark.models, requires_speech]

KEY = "sk-moksori-clients-0123"
RATE = 24000
CHUNK_MS = 40
GA_ADAPTER = pydantic.TypeAdapter(ga_types.RealtimeServerEvent)
BETA_ADAPTER = pydantic.TypeAdapter(beta_types.RealtimeServerEvent)
SHORT = "Answer in one short sentence."


# --------------------------------------------------------------------------- servers


def moksori_serve(data_dir, cwd, **env: str) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=180, cwd=cwd,
                         env={"MOKSORI_DATA_DIR": str(data_dir), "MOKSORI_API_KEYS": KEY, "PYTHONUNBUFFERED": "1",
                              **env})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory):
    # greedy decoding: SmolLM2's short replies are the same every run
    with moksori_serve(data_dir, tmp_path_factory.mktemp("serve-embedded"), MOKSORI_LLM_TEMPERATURE="0") as srv:
        yield srv


@pytest.fixture(scope="module")
def scripted_llm():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module")
def scripted_server(data_dir, tmp_path_factory, scripted_llm):
    with moksori_serve(data_dir, tmp_path_factory.mktemp("serve-scripted"), MOKSORI_LLM_PROVIDER="openai",
                       MOKSORI_LLM_BASE_URL=scripted_llm.url, MOKSORI_LLM_MODEL="scripted") as srv:
        yield srv


# --------------------------------------------------------------------------- speech


def speech_pcm(name: str = "en_028", *, pad_s: float = 4.0) -> np.ndarray:
    from moksori.audio.resample import resample
    from moksori.audio.wav import load_audio

    frame = resample(load_audio(utt(name).path), RATE)
    return np.concatenate([frame.samples, np.zeros(int(pad_s * RATE), dtype=np.int16)])


def speech_end_ms(name: str = "en_028") -> float:
    u = utt(name)
    lead_trail = u.lead_trail
    assert lead_trail is not None
    return 1000 * (u.duration - lead_trail[1])


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode()


async def stream_realtime(append: Callable[[np.ndarray], Awaitable[None]], pcm: np.ndarray,
                          chunk_ms: int = CHUNK_MS) -> None:
    """Send `pcm` in `chunk_ms` pieces, paced by the wall clock (never ahead of real time)."""
    step = RATE * chunk_ms // 1000
    t0 = time.monotonic()
    for start in range(0, len(pcm), step):
        await append(pcm[start:start + step])
        delay = t0 + (start + step) / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


# --------------------------------------------------------------------------- event log


class EventLog:
    """Reads a connection in the background; every event is validated and kept in order."""

    def __init__(self, recv: Callable[[], Awaitable[Any]], *, adapter: pydantic.TypeAdapter | None = None,
                 parse: Callable[[bytes], Any] | None = None) -> None:
        self.recv, self.adapter, self.parse = recv, adapter, parse
        self.events: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.closed = False
        self._new = asyncio.Event()
        self._helpers: list[asyncio.Task] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                raw = await self.recv()
                if isinstance(raw, (bytes, str)):
                    d = json.loads(raw)
                    if self.parse is not None:
                        self.parse(raw)  # the SDK's own parser must accept it
                else:
                    d = raw.as_dict() if hasattr(raw, "as_dict") else dict(raw)
                if self.adapter is not None:
                    try:
                        self.adapter.validate_python(d)
                    except pydantic.ValidationError as e:
                        self.problems.append(f"{d.get('type')}: {str(e)[:300]}")
                if not d.get("event_id"):
                    self.problems.append(f"{d.get('type')} without event_id")
                self.events.append(d)
                self._new.set()
        except Exception:  # noqa: BLE001 - closed
            self.closed = True
            self._new.set()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, typ: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == typ]

    async def wait(self, typ: str, pred: Callable[[dict[str, Any]], bool] = lambda e: True, *,
                   timeout: float = 30.0, start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            for e in self.events[seen:]:
                seen += 1
                if e["type"] == typ and pred(e):
                    return e
            if self.closed:
                raise AssertionError(f"connection closed before {typ}; got {self.types()[-15:]}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {typ} within {timeout:g} s; got {self.types()[-25:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except asyncio.TimeoutError:
                pass

    def check_ids(self) -> None:
        ids = [e["event_id"] for e in self.events]
        assert len(ids) == len(set(ids)), "duplicate server event_ids"
        assert self.events and self.events[0]["type"] == "session.created"
        assert not self.problems, self.problems[:5]

    def spawn(self, coro) -> asyncio.Task:
        """A helper task (e.g. the audio feeder) that ends with this log, whatever happens."""
        task = asyncio.create_task(coro)
        self._helpers.append(task)
        return task

    async def close(self) -> None:
        for task in [*self._helpers, self._task]:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - a feeder may fail on a closed socket
                pass


def audio_seconds(events: list[dict[str, Any]]) -> float:
    return sum(len(base64.b64decode(e["delta"])) for e in events) / 2 / RATE


def ga_client(port: int, key: str = KEY):
    from openai import AsyncOpenAI

    return AsyncOpenAI(api_key=key, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)


async def ga_connect(port: int, beta: bool = False):
    client = ga_client(port)
    rt = client.beta.realtime if beta else client.realtime
    conn = await rt.connect(model="gpt-realtime").enter()
    log = EventLog(conn.recv_bytes, adapter=BETA_ADAPTER if beta else GA_ADAPTER, parse=conn.parse_event)
    return conn, log


# --------------------------------------------------------------------------- openai GA


async def test_openai_ga_voice_turn(server):
    conn, log = await ga_connect(server.port)
    try:
        created = await log.wait("session.created")
        assert created["session"]["type"] == "realtime"
        await conn.session.update(session={
            "type": "realtime", "instructions": SHORT, "max_output_tokens": 12,
            "audio": {"input": {"transcription": {"model": "whisper-1"},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        updated = await log.wait("session.updated")
        assert updated["session"]["audio"]["input"]["transcription"]["model"] == "whisper-1"
        assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"

        async def append(chunk):
            await conn.input_audio_buffer.append(audio=b64(chunk))

        feeder = log.spawn(stream_realtime(append, speech_pcm()))
        started = await log.wait("input_audio_buffer.speech_started", timeout=10)
        stopped = await log.wait("input_audio_buffer.speech_stopped", timeout=15)
        committed = await log.wait("input_audio_buffer.committed", timeout=15)
        assert started["item_id"] == stopped["item_id"] == committed["item_id"]
        # the audio positions are in the client's own stream: speech ends at ~2.15 s in the file
        lead, _ = utt("en_028").lead_trail
        assert 0 <= started["audio_start_ms"] <= 1000 * lead + 500, started
        assert abs(stopped["audio_end_ms"] - speech_end_ms()) < 800, stopped
        transcript = await log.wait("conversation.item.input_audio_transcription.completed", timeout=20)
        assert "thousand" in transcript["transcript"].lower()
        assert transcript["item_id"] == committed["item_id"]
        resp = await log.wait("response.created", timeout=20)
        assert resp["response"]["status"] == "in_progress"
        done = await log.wait("response.done", timeout=60)
        feeder.cancel()
        r = done["response"]
        assert r["id"] == resp["response"]["id"] and r["status"] == "completed"
        assert r["usage"] is not None and r["usage"]["output_tokens"] > 0 and r["usage"]["total_tokens"] > 0
        assert r["output"] and r["output"][0]["type"] == "message"
        deltas = log.of("response.output_audio.delta")
        assert audio_seconds(deltas) > 0.3
        text = "".join(e["delta"] for e in log.of("response.output_audio_transcript.delta"))
        assert text.strip()
        tdone = await log.wait("response.output_audio_transcript.done")
        assert tdone["transcript"] == text
        assert r["output"][0]["content"][0]["transcript"] == text
        types = log.types()
        order = [types.index(t) for t in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                                          "input_audio_buffer.committed", "response.created",
                                          "response.output_item.added", "response.output_audio.delta",
                                          "response.output_audio.done", "response.done")]
        assert order == sorted(order), types
        # GA names only
        assert not any(t.startswith(("response.audio.", "response.text.")) for t in types)
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


# --------------------------------------------------------------------------- openai beta


async def test_openai_beta_voice_turn(server):
    conn, log = await ga_connect(server.port, beta=True)
    try:
        created = await log.wait("session.created")
        s = created["session"]
        assert s["input_audio_format"] == "pcm16" and s["output_audio_format"] == "pcm16"
        assert "modalities" in s and "audio" not in s  # the flat beta shape
        await conn.session.update(session={"instructions": SHORT, "max_response_output_tokens": 12,
                                           "input_audio_transcription": {"model": "whisper-1"},
                                           "turn_detection": {"type": "server_vad"}})
        updated = await log.wait("session.updated")
        assert updated["session"]["input_audio_transcription"]["model"] == "whisper-1"

        async def append(chunk):
            await conn.input_audio_buffer.append(audio=b64(chunk))

        feeder = log.spawn(stream_realtime(append, speech_pcm()))
        await log.wait("input_audio_buffer.speech_started", timeout=10)
        await log.wait("input_audio_buffer.speech_stopped", timeout=15)
        committed = await log.wait("input_audio_buffer.committed", timeout=15)
        user_item = await log.wait("conversation.item.created", lambda e: e["item"]["role"] == "user")
        assert user_item["item"]["id"] == committed["item_id"]
        transcript = await log.wait("conversation.item.input_audio_transcription.completed", timeout=20)
        assert "thousand" in transcript["transcript"].lower()
        done = await log.wait("response.done", timeout=60)
        feeder.cancel()
        assert done["response"]["status"] == "completed"
        assert done["response"]["usage"]["total_tokens"] > 0
        types = log.types()
        assert "response.audio.delta" in types and "response.audio_transcript.delta" in types
        assert "response.audio.done" in types and "response.audio_transcript.done" in types
        assert await log.wait("conversation.item.created", lambda e: e["item"]["role"] == "assistant")
        # no GA-only names on the beta dialect
        assert not any(t.startswith(("response.output_audio", "response.output_text")) for t in types)
        assert "conversation.item.added" not in types and "conversation.item.done" not in types
        assert audio_seconds(log.of("response.audio.delta")) > 0.3
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


# --------------------------------------------------------------------------- openai-agents


async def test_openai_agents_runner_voice_turn_with_tool(scripted_server, scripted_llm, caplog):
    """A full voice turn through `RealtimeRunner`, with a function tool call (scripted LLM)."""
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    caplog.set_level(logging.WARNING, logger="openai.agents")
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    agent = RealtimeAgent(name="Assistant", instructions="You are brief.", tools=[get_weather])
    runner = RealtimeRunner(agent)
    url = f"ws://127.0.0.1:{scripted_server.port}/v1/realtime?model=gpt-realtime"
    session = await runner.run(model_config={
        "url": url, "api_key": KEY,
        "initial_model_settings": {"input_audio_transcription": {"model": "whisper-1"},
                                   "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}})
    seen: list[Any] = []
    errors: list[Any] = []
    raw: list[dict[str, Any]] = []
    async with session:
        async def append(chunk):
            await session.send_audio(chunk.astype("<i2").tobytes())

        feeder = asyncio.create_task(stream_realtime(append, speech_pcm()))

        async def consume() -> None:
            tool_done = False
            async for ev in session:
                seen.append(ev)
                if ev.type == "error":
                    errors.append(ev.error)
                elif ev.type == "tool_end":
                    tool_done = True
                elif ev.type == "raw_model_event":
                    data = ev.data
                    if data.type == "raw_server_event":
                        raw.append(data.data)
                    elif data.type == "error":
                        errors.append(data.error)
                    elif data.type == "exception":
                        errors.append(f"{data.context}: {data.exception!r}")
                    elif data.type == "turn_ended" and tool_done and \
                            sum(1 for e in raw if e.get("type") == "response.done") >= 2:
                        return  # the response that answered with the tool's result is over

        try:
            await asyncio.wait_for(consume(), 60)
        finally:
            feeder.cancel()
    types = [e.type for e in seen]
    raw_types = [e.get("type") for e in raw]
    assert not errors, errors
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, bad[:3]
    assert calls == ["Seoul"]
    assert "tool_start" in types and "tool_end" in types
    assert "audio" in types  # the spoken answer after the tool result
    transcripts = [e for e in raw if e.get("type") == "conversation.item.input_audio_transcription.completed"]
    assert transcripts and "thousand" in transcripts[0]["transcript"].lower()
    assert "response.function_call_arguments.done" in raw_types
    args = next(e for e in raw if e.get("type") == "response.function_call_arguments.done")
    assert json.loads(args["arguments"]) == {"city": "Seoul"}
    # the answer to the tool result came from a second response, which read the tool output
    assert any(m.get("role") == "tool" and "sunny in Seoul" in (m.get("content") or "")
               for req in scripted_llm.requests for m in req["messages"])
    dones = [e for e in raw if e.get("type") == "response.done"]
    assert len(dones) >= 2 and all(d["response"]["status"] == "completed" for d in dones)
    for e in raw:  # and the strict GA union agrees with the runner
        GA_ADAPTER.validate_python(e)


# --------------------------------------------------------------------------- azure-ai-voicelive


async def test_azure_voicelive_voice_turn_and_avatar_warning(server):
    from azure.ai.voicelive.aio import connect
    from azure.ai.voicelive.models import (AudioInputTranscriptionOptions, AvatarConfig, AzureSemanticVad,
                                           AzureStandardVoice, InputAudioFormat, Modality, OutputAudioFormat,
                                           RequestSession, ServerEventType)
    from azure.core.credentials import AzureKeyCredential

    async with connect(endpoint=f"http://127.0.0.1:{server.port}", credential=AzureKeyCredential(KEY),
                       model="gpt-realtime") as conn:
        log = EventLog(conn.recv)
        try:
            created = await log.wait("session.created")
            assert created["session"]["input_audio_format"] == "pcm16"
            session = RequestSession(
                modalities=[Modality.TEXT, Modality.AUDIO], instructions=SHORT,
                voice=AzureStandardVoice(name="en-US-AvaNeural"),
                input_audio_format=InputAudioFormat.PCM16, output_audio_format=OutputAudioFormat.PCM16,
                turn_detection=AzureSemanticVad(), max_response_output_tokens=12,
                input_audio_transcription=AudioInputTranscriptionOptions(model="whisper-1"))
            await conn.session.update(session=session)
            updated = await log.wait("session.updated")
            s = updated["session"]
            assert s["voice"]["name"] == "en-US-AvaNeural"
            assert s["turn_detection"]["type"] == "azure_semantic_vad"
            assert not log.of("warning"), log.of("warning")  # everything asked for is honoured

            async def append(chunk):
                await conn.input_audio_buffer.append(audio=b64(chunk))

            feeder = log.spawn(stream_realtime(append, speech_pcm()))
            await log.wait("input_audio_buffer.speech_started", timeout=10)
            transcript = await log.wait("conversation.item.input_audio_transcription.completed", timeout=25)
            assert "thousand" in transcript["transcript"].lower()
            done = await log.wait("response.done", timeout=60)
            feeder.cancel()
            assert done["response"]["status"] == "completed"
            assert audio_seconds(log.of("response.audio.delta")) > 0.3
            assert log.of("response.audio_transcript.delta")

            # avatar is an Azure extra the engine does not do: a warning, never a silent drop
            n = len(log.events)
            await conn.session.update(session=RequestSession(avatar=AvatarConfig(character="lisa", style="casual-sitting",
                                                                                 customized=False)))
            warning = await log.wait("warning", start=n)
            assert "avatar" in warning["warning"]["message"]
            await log.wait("session.updated", start=n)
            # every event the server sent parses as the SDK's typed event (not the generic base)
            from azure.ai.voicelive.models import ServerEvent

            for e in log.events:
                typed = ServerEvent._deserialize(e, [])
                assert type(typed) is not ServerEvent, e["type"]
                assert typed.type in {t.value for t in ServerEventType} or typed.type == "warning"
            log.check_ids()
        finally:
            await log.close()


# --------------------------------------------------------------------------- manual turns (GA SDK)


async def manual_session(port: int, **session: Any):
    conn, log = await ga_connect(port)
    await log.wait("session.created")
    await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None,
                                                                                "transcription": {"model": "whisper-1"}}},
                                       **session})
    updated = await log.wait("session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    return conn, log


async def test_manual_commit_then_response(scripted_server):
    """turn_detection null: append (faster than real time is fine here), commit, response.create."""
    conn, log = await manual_session(scripted_server.port)
    try:
        pcm = speech_pcm(pad_s=0.3)
        for start in range(0, len(pcm), 4800):
            await conn.input_audio_buffer.append(audio=b64(pcm[start:start + 4800]))
        await conn.input_audio_buffer.commit()
        committed = await log.wait("input_audio_buffer.committed", timeout=15)
        transcript = await log.wait("conversation.item.input_audio_transcription.completed", timeout=20)
        assert "thousand" in transcript["transcript"].lower()
        assert not log.of("response.created")  # manual: no response until asked
        assert not log.of("input_audio_buffer.speech_started")
        await conn.response.create()
        done = await log.wait("response.done", timeout=30)
        assert done["response"]["status"] == "completed"
        text = "".join(e["delta"] for e in log.of("response.output_audio_transcript.delta"))
        assert text == SHORT_REPLY
        assert audio_seconds(log.of("response.output_audio.delta")) > 0.5
        # the committed item is in the conversation
        await conn.conversation.item.retrieve(item_id=committed["item_id"])
        got = await log.wait("conversation.item.retrieved")
        assert got["item"]["role"] == "user" and "thousand" in got["item"]["content"][0]["transcript"].lower()
        # too-short commit -> error, session alive
        await conn.input_audio_buffer.append(audio=b64(np.zeros(240, np.int16)))
        n = len(log.events)
        await conn.input_audio_buffer.commit()
        err = await log.wait("error", start=n)
        assert err["error"]["code"] == "input_audio_buffer_commit_empty"
        await conn.input_audio_buffer.clear()
        await log.wait("input_audio_buffer.cleared")
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_text_item_text_only_response_and_item_ops(scripted_server):
    conn, log = await manual_session(scripted_server.port, output_modalities=["text"])
    try:
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Hello there!"}]})
        added = await log.wait("conversation.item.added")
        user_id = added["item"]["id"]
        assert added["item"]["content"][0] == {**added["item"]["content"][0], "type": "input_text",
                                               "text": "Hello there!"}
        await log.wait("conversation.item.done")
        await conn.response.create()
        done = await log.wait("response.done", timeout=30)
        r = done["response"]
        assert r["status"] == "completed" and r["output_modalities"] == ["text"]
        assert "response.output_audio.delta" not in log.types()
        text = "".join(e["delta"] for e in log.of("response.output_text.delta"))
        assert text == SHORT_REPLY
        assert (await log.wait("response.output_text.done"))["text"] == SHORT_REPLY
        assistant_id = r["output"][0]["id"]
        assert r["output"][0]["content"][0]["text"] == SHORT_REPLY

        # per-response override: audio for this one only
        n = len(log.events)
        await conn.response.create(response={"output_modalities": ["audio"], "instructions": "Be brief."})
        done2 = await log.wait("response.done", start=n, timeout=30)
        assert done2["response"]["output_modalities"] == ["audio"]
        audio_item = done2["response"]["output"][0]["id"]
        assert audio_seconds([e for e in log.events[n:] if e["type"] == "response.output_audio.delta"]) > 0.5

        # retrieve, truncate, delete
        await conn.conversation.item.retrieve(item_id=assistant_id)
        got = await log.wait("conversation.item.retrieved")
        assert got["item"]["id"] == assistant_id and got["item"]["role"] == "assistant"
        await conn.conversation.item.truncate(item_id=audio_item, content_index=0, audio_end_ms=300)
        tr = await log.wait("conversation.item.truncated")
        assert tr["item_id"] == audio_item and tr["audio_end_ms"] == 300
        n = len(log.events)
        await conn.conversation.item.truncate(item_id=user_id, content_index=0, audio_end_ms=10)
        assert (await log.wait("error", start=n))["error"]["param"] == "item_id"
        await conn.conversation.item.delete(item_id=user_id)
        assert (await log.wait("conversation.item.deleted"))["item_id"] == user_id
        n = len(log.events)
        await conn.conversation.item.retrieve(item_id=user_id)
        err = await log.wait("error", start=n)
        assert err["error"]["code"] == "item_not_found"
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_response_cancel(scripted_server):
    conn, log = await manual_session(scripted_server.port, instructions="scripted:long")
    try:
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Tell me a story."}]})
        await conn.response.create()
        created = await log.wait("response.created", timeout=20)
        await log.wait("response.output_audio.delta", timeout=20)
        await conn.response.cancel()
        done = await log.wait("response.done", timeout=10)
        r = done["response"]
        assert r["id"] == created["response"]["id"]
        assert r["status"] == "cancelled" and r["status_details"]["reason"] == "client_cancelled"
        # The transcript deltas follow the LLM, which may finish the text before the cancel lands on
        # a loaded machine; what the item keeps is what was heard, and that must be cut short.
        heard = [c.get("transcript") or "" for item in r["output"] if item.get("type") == "message"
                 for c in item.get("content", [])]
        assert heard and len(heard[0]) < len(LONG_REPLY)
        n = len(log.events)
        await conn.response.cancel()  # nothing left to cancel
        assert (await log.wait("error", start=n))["error"]["code"] == "response_cancel_not_active"
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


async def test_barge_in_over_reply(scripted_server):
    """Speak, let the (long) reply start, then speak again over it."""
    conn, log = await ga_connect(scripted_server.port)
    try:
        await log.wait("session.created")
        await conn.session.update(session={"type": "realtime", "instructions": "scripted:long", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "interrupt_response": True}}}})
        await log.wait("session.updated")

        async def append(chunk):
            await conn.input_audio_buffer.append(audio=b64(chunk))

        first = speech_pcm(pad_s=0.0)
        silence = np.zeros(RATE * CHUNK_MS // 1000, np.int16)

        async def talk() -> None:
            await stream_realtime(append, first)
            # keep the line live (silence) until the reply's audio is arriving
            while not log.of("response.output_audio.delta"):
                await stream_realtime(append, silence)
            await stream_realtime(append, np.zeros(int(RATE * 0.8), np.int16))
            await stream_realtime(append, speech_pcm(pad_s=2.0))

        feeder = log.spawn(talk())
        resp = await log.wait("response.created", timeout=25)
        item_id = (await log.wait("response.output_item.added"))["item"]["id"]
        assert len(log.of("input_audio_buffer.speech_started")) == 1
        start = len(log.events)
        await log.wait("input_audio_buffer.speech_started", start=start, timeout=20)
        done = await log.wait("response.done", lambda e: e["response"]["id"] == resp["response"]["id"], timeout=15)
        assert done["response"]["status"] == "cancelled", done["response"]
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        truncated = await log.wait("conversation.item.truncated", lambda e: e["item_id"] == item_id, timeout=5)
        assert 0 < truncated["audio_end_ms"] < 15000
        cleared = await log.wait("output_audio_buffer.cleared", timeout=5)
        assert cleared["response_id"] == resp["response"]["id"]
        # the reply stopped: no more of its audio after response.done
        idx = log.events.index(done)
        assert not [e for e in log.events[idx:] if e["type"] == "response.output_audio.delta"
                    and e["response_id"] == resp["response"]["id"]]
        # and the interruption itself becomes the next user turn
        await log.wait("input_audio_buffer.committed", start=idx, timeout=15)
        feeder.cancel()
        log.check_ids()
    finally:
        await log.close()
        await conn.close()
