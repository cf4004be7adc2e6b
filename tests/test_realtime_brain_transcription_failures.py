"""The realtime brain when a user turn's words cannot be had, driven by the official `openai` SDK:

    client (openai SDK, GA) -> front: `moksori serve` with MOKSORI_BRAIN=realtime
                            -> upstream: a second `moksori serve` (pipeline brain: Silero, Whisper
                               base, Piper; its LLM the scripted stand-in), the speech-to-speech upstream

* the upstream's own transcription fails (the upstream's STT is a remote URL where nothing
  listens: a real refused connection; it says `conversation.item.input_audio_transcription.failed`
  for its item): the client hears `...input_audio_transcription.failed` for the front's item
  (`content_index` 0, an `error` object with the upstream's message), then `conversation.item.done`
  with a null transcript; not an empty `.completed` transcript;
* MOKSORI_REALTIME_TURN_DETECTION=moksori with the front's own STT failing (a remote URL where
  nothing listens): the turn is not taken for a noise (it was: empty local words), no `error`
  event; the upstream hears the turn and answers it; its item's words are the upstream's
  transcript when the upstream transcribes, else the client hears `.failed` for it;
* `response.create` with audio in its own `input` (with the upstream's turn detection the front
  loads no STT): the front sends the input's audio upstream, which cannot transcribe it here, so
  the response fails cleanly (`response.done` `failed`, `input_audio_transcription_failed`), no
  `error` event.

Speech: /work/shared/speech/en/en_028.wav at 24 kHz ("i have a thousand thoughts about that
thing"), streamed at real-time pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from realtime_speech import b64, speech_pcm
from scripted_llm_server import SHORT_REPLY, ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir, requires_speech
from test_realtime_clients import GA_ADAPTER, EventLog, stream_realtime

pytestmark = [pytest.mark.models, pytest.mark.slow, requires_speech]

KEY = "sk-moksori-brain-stt-failures"


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def scripted_llm() -> Iterator[ScriptedLLM]:
    llm = ScriptedLLM(token_delay_s=0.005)
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_data_dir(tmp_path_factory)


def moksori(data_dir, cwd, **env: str) -> ServerProcess:
    port = free_port()
    return ServerProcess([sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)],
                         port=port, ready_path="/health", ready_timeout_s=240, cwd=cwd,
                         env={"MOKSORI_DATA_DIR": str(data_dir), "MOKSORI_API_KEYS": KEY, "MOKSORI_STORE_URL": "none",
                              "MOKSORI_LANGUAGE": "en", "MOKSORI_CONFIG": "", "PYTHONUNBUFFERED": "1", **env})


def dead_stt() -> dict[str, str]:
    """A remote STT where nothing listens: every transcription fails, the connection refused."""
    return {"MOKSORI_STT_PROVIDER": "openai", "MOKSORI_STT_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
            "MOKSORI_STT_API_KEY": KEY}


def pipeline(data_dir, cwd, llm: ScriptedLLM, **env: str) -> ServerProcess:
    return moksori(data_dir, cwd, MOKSORI_LLM_PROVIDER="openai", MOKSORI_LLM_BASE_URL=llm.url,
                   MOKSORI_LLM_MODEL="scripted", **env)


def brain(data_dir, cwd, upstream: ServerProcess, **env: str) -> ServerProcess:
    return moksori(data_dir, cwd, MOKSORI_BRAIN="realtime",
                   MOKSORI_REALTIME_URL=f"ws://127.0.0.1:{upstream.port}/v1/realtime?model=gpt-realtime",
                   MOKSORI_REALTIME_API_KEY=KEY, MOKSORI_REALTIME_RESPONSE_TIMEOUT_S="30", **env)


@pytest.fixture(scope="module")
def upstream(data_dir, tmp_path_factory, scripted_llm):
    with pipeline(data_dir, tmp_path_factory.mktemp("upstream"), scripted_llm) as srv:
        yield srv


@pytest.fixture(scope="module")
def deaf_upstream(data_dir, tmp_path_factory, scripted_llm):
    with pipeline(data_dir, tmp_path_factory.mktemp("upstream-deaf"), scripted_llm, **dead_stt()) as srv:
        yield srv


# --------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def voice_session(front: ServerProcess) -> AsyncIterator[tuple[Any, EventLog]]:
    """A GA session with server VAD, transcribing the user's turns."""
    client = openai.AsyncOpenAI(api_key=KEY, websocket_base_url=f"ws://127.0.0.1:{front.port}/v1", max_retries=0)
    conn = await client.realtime.connect(model="gpt-realtime").enter()
    log = EventLog(conn.recv_bytes, adapter=GA_ADAPTER, parse=conn.parse_event)
    try:
        await log.wait("session.created")
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"], "audio": {"input": {
            "transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        await log.wait("session.updated")
        yield conn, log
    finally:
        await log.close()
        await conn.close()


async def speak(conn: Any, log: EventLog) -> dict[str, Any]:
    """Say one turn at real-time pace; its `input_audio_buffer.committed`."""
    async def append(chunk):
        await conn.input_audio_buffer.append(audio=b64(chunk))

    log.spawn(stream_realtime(append, speech_pcm()))
    return await log.wait("input_audio_buffer.committed", timeout=40)


def assert_failed(log: EventLog, item_id: str) -> None:
    failed = [e for e in log.of("conversation.item.input_audio_transcription.failed") if e["item_id"] == item_id]
    assert len(failed) == 1 and failed[0]["content_index"] == 0, failed
    error = failed[0]["error"]
    assert set(error) == {"type", "code", "message", "param"} and error["message"] and error["code"], error
    done = [e for e in log.of("conversation.item.done") if e["item"]["id"] == item_id]
    assert done and done[-1]["item"]["content"] == [{"type": "input_audio", "transcript": None}], done
    assert log.events.index(failed[0]) < log.events.index(done[-1])
    assert not [e for e in log.of("conversation.item.input_audio_transcription.completed") if e["item_id"] == item_id]


# --------------------------------------------------------------------------- the upstream's transcription fails


@pytest.fixture(scope="module")
def vad_front(data_dir, tmp_path_factory, deaf_upstream):
    """The upstream's VAD ends turns and the upstream transcribes them (or fails to)."""
    with brain(data_dir, tmp_path_factory.mktemp("front-vad"), deaf_upstream,
               MOKSORI_REALTIME_TRANSCRIPTION_MODEL="whisper-1") as srv:
        yield srv


async def test_the_upstreams_failed_transcription_is_a_failed_transcription(vad_front):
    async with voice_session(vad_front) as (conn, log):
        committed = await speak(conn, log)
        item_id = committed["item_id"]
        await log.wait("conversation.item.input_audio_transcription.failed",
                       lambda e: e["item_id"] == item_id, timeout=40)
        await log.wait("conversation.item.done", lambda e: e["item"]["id"] == item_id, timeout=10)
        assert_failed(log, item_id)
        # the upstream's own words for it, passed on (its STT's refused connection)
        error, = [e["error"] for e in log.of("conversation.item.input_audio_transcription.failed")]
        assert "127.0.0.1" in error["message"] or "connect" in error["message"].lower(), error
        # the item, retrieved: no words, not empty ones
        await conn.conversation.item.retrieve(item_id=item_id)
        got = await log.wait("conversation.item.retrieved")
        assert got["item"]["content"] == [{"type": "input_audio", "transcript": None}], got
        await asyncio.sleep(1.0)
        assert not log.of("error"), log.of("error")
        log.check_ids()


async def test_a_response_input_the_brain_cannot_transcribe_fails_the_response(vad_front):
    """`response.create` with audio in its own `input`: with the upstream's turn detection the
    front has no local STT and sends the audio upstream, which cannot transcribe it here, so that
    response fails cleanly, unstarted."""
    async with voice_session(vad_front) as (conn, log):
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"], "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": b64(speech_pcm(pad_s=0.5))}]}]})
        done = await log.wait("response.done", timeout=30)
        r = done["response"]
        assert r["status"] == "failed" and r["output"] == [], r
        error = r["status_details"]["error"]
        assert error["code"] == "input_audio_transcription_failed", error
        assert log.types()[-2:] == ["response.created", "response.done"], log.types()
        assert not log.of("error"), log.of("error")
        log.check_ids()


# --------------------------------------------------------------------------- moksori turns, the local STT fails


async def test_moksori_turns_whose_local_stt_fails_still_reach_the_upstream(data_dir, tmp_path, upstream,
                                                                           scripted_llm):
    """The upstream transcribes: its words are the item's, and it answers the turn; no `error`."""
    with brain(data_dir, tmp_path, upstream, MOKSORI_REALTIME_TURN_DETECTION="moksori",
               MOKSORI_REALTIME_TRANSCRIPTION_MODEL="whisper-1", **dead_stt()) as front:
        async with voice_session(front) as (conn, log):
            committed = await speak(conn, log)
            item_id = committed["item_id"]
            done = await log.wait("response.done", timeout=60)
            assert done["response"]["status"] == "completed", done
            assert done["response"]["output"][0]["content"][0]["transcript"] == SHORT_REPLY, done
            completed = await log.wait("conversation.item.input_audio_transcription.completed",
                                       lambda e: e["item_id"] == item_id, timeout=30)
            assert "thousand" in completed["transcript"].lower(), completed
            assert not log.of("conversation.item.input_audio_transcription.failed")
            assert not log.of("error"), log.of("error")
            log.check_ids()


async def test_moksori_turns_without_any_words_hear_a_failed_transcription(data_dir, tmp_path, upstream,
                                                                          scripted_llm):
    """The upstream does not transcribe and the local STT fails: the item's transcription failed
    (not empty words, not a noise); the upstream answers the turn all the same."""
    with brain(data_dir, tmp_path, upstream, MOKSORI_REALTIME_TURN_DETECTION="moksori",
               MOKSORI_REALTIME_TRANSCRIPTION_MODEL="", **dead_stt()) as front:
        async with voice_session(front) as (conn, log):
            committed = await speak(conn, log)
            item_id = committed["item_id"]
            await log.wait("conversation.item.input_audio_transcription.failed",
                           lambda e: e["item_id"] == item_id, timeout=40)
            done = await log.wait("response.done", timeout=60)
            assert done["response"]["status"] == "completed", done
            assert done["response"]["output"][0]["content"][0]["transcript"] == SHORT_REPLY, done
            assert_failed(log, item_id)
            assert not log.of("error"), log.of("error")
            log.check_ids()
