"""Transcription over Realtime and REST with the official SDKs, on a real `moksori serve`.

* transcription-only connections (`/v1/realtime?intent=transcription`, or an ephemeral key minted
  for a `transcription` session) take the GA `session.update` of a transcription session and say
  `type: "transcription"` in `session.created` / `session.updated`: `openai-agents`'
  `VoicePipeline` with `StreamedAudioInput` (its STT websocket client sends exactly that) gets its
  transcript back, and so does the `openai` SDK's raw `session.update`;
* the transcription `prompt` reaches Whisper: en_001 says "and Mr. John Dashwood had then leisure
  ..."; with the prompt "Mister Jon Dashwud." Whisper spells it "Mister Jon Dashwud" (the
  prompt's spelling), so a transcript that spells it so shows the prompt was used;
* a transcription `language` the stack does not transcribe is refused, as REST refuses it.

The server's LLM is `tests/scripted_llm_server.py` (nothing here needs replies; it spares the
server loading SmolLM2). Speech: /work/shared/speech/en (en_028 "i have a thousand thoughts about
that thing", en_001 above), sent at real-time pace.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np
import pydantic
import pytest
from openai.types import realtime as ga_types
from realtime_speech import Client, b64, speech_pcm
from scripted_llm_server import ScriptedLLM
from servers import ThreadedASGIServer
from speech import prepared_data_dir, requires_speech, utt
from test_realtime_clients import KEY, moksori_serve


pytestmark = [pytest.mark.models, requires_speech]

RATE = 24000
GA_ADAPTER = pydantic.TypeAdapter(ga_types.RealtimeServerEvent)
PROMPT = "Mister Jon Dashwud."  # en_001 is "Mr. John Dashwood" without it


@pytest.fixture(scope="module")
def scripted_llm():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module")
def server(tmp_path_factory, scripted_llm):
    with moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("serve"),
                       MOKSORI_LLM_PROVIDER="openai", MOKSORI_LLM_BASE_URL=scripted_llm.url,
                       MOKSORI_LLM_MODEL="scripted",
                       MOKSORI_SERVER_SHED_LOOP_LAG_MS="5000") as srv:  # a busy test machine is no reason to refuse a session
        yield srv


def validated(events: list[dict[str, Any]]) -> None:
    """Every event parses as the openai SDK's strict GA union."""
    for e in events:
        GA_ADAPTER.validate_python(e)


def transcription_session(**transcription: Any) -> dict[str, Any]:
    """A GA transcription session, as the SDKs send it."""
    return {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": RATE},
        "transcription": {"model": "whisper-1", **transcription},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}


async def transcript_of(client: Client, name: str, *, after: int = 0) -> str:
    """Speak `name` into the session and wait for its completed transcription."""
    await client.speak(speech_pcm(name, pad_s=2.0))
    done = await client.wait("conversation.item.input_audio_transcription.completed",
                             lambda e: client.events.index(e) >= after, timeout=60)
    return done["transcript"]


# --------------------------------------------------------------------------- A: the GA transcription session


async def test_openai_agents_voice_pipeline_with_streamed_audio(server):
    """`VoicePipeline` + `StreamedAudioInput`: its STT websocket client opens
    `?intent=transcription` and sends the GA `session.update` of a transcription session (the
    agents' default semantic_vad); the transcript reaches the workflow, whose answer is spoken by
    the server's `/v1/audio/speech`."""
    from agents.voice import (OpenAIVoiceModelProvider, StreamedAudioInput, VoicePipeline, VoicePipelineConfig,
                              VoiceWorkflowBase)

    heard: list[str] = []

    class Heard(VoiceWorkflowBase):
        """Stands in for an agent: says one fixed sentence per transcript."""

        async def run(self, transcription: str):
            heard.append(transcription)
            yield "I heard you."

    provider = OpenAIVoiceModelProvider(api_key=KEY, base_url=f"{server.url}/v1")
    pipeline = VoicePipeline(workflow=Heard(), stt_model="gpt-4o-transcribe", tts_model="tts-1",
                             config=VoicePipelineConfig(model_provider=provider, tracing_disabled=True))
    audio_in = StreamedAudioInput()
    result = await pipeline.run(audio_in)
    pcm = speech_pcm("en_028", pad_s=3.0)

    async def feed() -> None:
        step = RATE * 40 // 1000
        t0 = time.monotonic()
        for start in range(0, len(pcm), step):
            await audio_in.add_audio(pcm[start:start + step])
            await asyncio.sleep(max(0.0, t0 + (start + step) / RATE - time.monotonic()))
        while not heard and time.monotonic() - t0 < 60:  # the turn's transcript, then the end of input
            await asyncio.sleep(0.1)
        await audio_in.add_audio(None)

    feeder = asyncio.create_task(feed())
    spoken = bytearray()
    lifecycle: list[str] = []
    try:
        async with asyncio.timeout(90):
            async for event in result.stream():
                if event.type == "voice_stream_event_audio" and event.data is not None:
                    spoken += np.asarray(event.data, dtype=np.int16).tobytes()
                elif event.type == "voice_stream_event_lifecycle":
                    lifecycle.append(event.event)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    assert len(heard) == 1 and "thousand" in heard[0].lower(), heard
    assert lifecycle[-1] == "session_ended" and "turn_ended" in lifecycle, lifecycle
    assert len(spoken) / 2 / RATE > 0.3  # "I heard you." from the server's TTS


async def test_openai_sdk_transcription_session_update(server):
    """The raw GA `session.update` of a transcription session on `?intent=transcription`."""
    client = await Client.open(server.port, KEY, query={"intent": "transcription"})
    try:
        created = await client.wait("session.created", timeout=10)
        assert created["session"]["type"] == "transcription", created
        assert created["session"]["object"] == "realtime.transcription_session"
        await client.conn.session.update(session=transcription_session(language="en"))
        updated = await client.wait("session.updated", timeout=10)
        s = updated["session"]
        assert s["type"] == "transcription" and "instructions" not in s and "output" not in s["audio"], s
        assert s["audio"]["input"]["transcription"] == {"model": "whisper-1", "language": "en"}
        assert s["audio"]["input"]["turn_detection"]["create_response"] is False  # no replies here
        assert "thousand" in (await transcript_of(client, "en_028")).lower()
        # a conversation session cannot be asked for on a transcription connection
        n = len(client.events)
        await client.conn.session.update(session={"type": "realtime", "instructions": "x"})
        err = await client.wait("error", lambda e: client.events.index(e) >= n, timeout=10)
        assert err["error"]["param"] == "session.type", err
        await asyncio.sleep(1.0)
        types = [e["type"] for e in client.events]
        assert not any(t.startswith("response.") for t in types), types
        validated(client.events)
    finally:
        await client.close()


async def test_ephemeral_key_minted_for_transcription(server):
    """A key minted with `session={"type": "transcription", ...}` opens a transcription session:
    its `session.created` says so and the GA transcription `session.update` is taken."""
    from openai import AsyncOpenAI

    api = AsyncOpenAI(api_key=KEY, base_url=f"{server.url}/v1", max_retries=0)
    try:
        secret = await api.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 60}, session=transcription_session(language="en"))
    finally:
        await api.close()
    assert secret.session.type == "transcription"
    client = await Client.open(server.port, secret.value)
    try:
        created = await client.wait("session.created", timeout=10)
        assert created["session"]["type"] == "transcription", created
        assert created["session"]["audio"]["input"]["transcription"]["language"] == "en"
        await client.conn.session.update(session=transcription_session(language="ko"))
        updated = await client.wait("session.updated", timeout=10)
        assert updated["session"]["audio"]["input"]["transcription"]["language"] == "ko"
        assert not [e for e in client.events if e["type"] == "error"]
        validated(client.events)
    finally:
        await client.close()


# --------------------------------------------------------------------------- B: language, as REST


@pytest.mark.parametrize("language", ["de", "xx-nonsense", "en,zh"])
async def test_unsupported_language_is_refused_as_rest_refuses_it(server, language):
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        r = await http.post(f"{server.url}/v1/audio/transcriptions", data={"model": "whisper-1", "language": language},
                            files={"file": ("a.wav", utt("en_028").path.read_bytes())})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_language", r.text
    client = await Client.open(server.port, KEY)
    try:
        await client.wait("session.created", timeout=10)
        good = {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}}}
        await client.conn.session.update(session=good)
        await client.wait("session.updated", timeout=10)
        bad = {"type": "realtime", "instructions": "changed",
               "audio": {"input": {"transcription": {"model": "whisper-1", "language": language}}}}
        await client.conn.session.update(session=bad, event_id="bad-language")
        err = await client.wait("error", timeout=10)
        assert err["error"]["code"] == "unsupported_language", err
        assert err["error"]["param"] == "session.audio.input.transcription.language", err
        assert err["error"]["event_id"] == "bad-language"
        # the session is as it was: the whole update was refused
        await client.conn.session.update(session={"type": "realtime"})
        after = await client.wait("session.updated", lambda e: client.events.index(e) > client.events.index(err))
        assert after["session"]["audio"]["input"]["transcription"]["language"] == "en"
        assert after["session"]["instructions"] != "changed"
    finally:
        await client.close()


# --------------------------------------------------------------------------- B: the prompt reaches Whisper


async def test_rest_prompt_reaches_whisper(server):
    from openai import AsyncOpenAI

    api = AsyncOpenAI(api_key=KEY, base_url=f"{server.url}/v1", max_retries=0)
    try:
        with open(utt("en_001").path, "rb") as fh:
            plain = await api.audio.transcriptions.create(model="whisper-1", file=fh, language="en")
        with open(utt("en_001").path, "rb") as fh:
            prompted = await api.audio.transcriptions.create(model="whisper-1", file=fh, language="en", prompt=PROMPT)
    finally:
        await api.close()
    assert "Dashwood" in plain.text and "Dashwud" not in plain.text, plain.text
    assert "Dashwud" in prompted.text, prompted.text
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        r = await http.post(f"{server.url}/v1/audio/transcriptions", data={"model": "whisper-1", "prompt": "x" * 5000},
                            files={"file": ("a.wav", utt("en_028").path.read_bytes())})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text


async def test_live_turn_prompt_reaches_whisper(server):
    """The same clip spoken twice into a transcription session: without the prompt, then with it."""
    client = await Client.open(server.port, KEY, query={"intent": "transcription"})
    try:
        await client.wait("session.created", timeout=10)
        await client.conn.session.update(session=transcription_session(language="en"))
        await client.wait("session.updated", timeout=10)
        plain = await transcript_of(client, "en_001")
        assert "Dashwood" in plain and "Dashwud" not in plain, plain
        n = len(client.events)
        await client.conn.session.update(session=transcription_session(language="en", prompt=PROMPT))
        updated = await client.wait("session.updated", lambda e: client.events.index(e) >= n, timeout=10)
        assert updated["session"]["audio"]["input"]["transcription"]["prompt"] == PROMPT
        prompted = await transcript_of(client, "en_001", after=len(client.events))
        assert "Dashwud" in prompted, prompted
    finally:
        await client.close()


async def test_item_audio_prompt_reaches_whisper(server):
    """`conversation.item.create` with an `input_audio` part: transcribed with the session's prompt."""
    client = await Client.open(server.port, KEY)
    try:
        await client.wait("session.created", timeout=10)
        await client.conn.session.update(session={"type": "realtime", "audio": {"input": {
            "transcription": {"model": "whisper-1", "language": "en", "prompt": PROMPT}, "turn_detection": None}}})
        await client.wait("session.updated", timeout=10)
        await client.conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_audio", "audio": b64(speech_pcm("en_001", pad_s=0.5))}]})
        done = await client.wait("conversation.item.done", timeout=60)
        transcript = done["item"]["content"][0]["transcript"]
        assert "Dashwud" in transcript, transcript
    finally:
        await client.close()
