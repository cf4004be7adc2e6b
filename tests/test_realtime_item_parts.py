"""Realtime conversation items as OpenAI's Realtime API shows them, driven by the official SDKs
(`openai` GA and beta, `azure-ai-voicelive`) against a real `moksori serve`:

* a user item of several content parts (`input_text` + `input_audio`, two `input_text`) is echoed
  part by part in `conversation.item.added|created`, `.done` and `conversation.item.retrieved`;
  the audio part shows its own transcript once Whisper has it (the audio bytes are not sent back),
  while the LLM reads the item's words joined;
* when an item's audio cannot be transcribed (the server's STT is a remote URL where nothing
  listens: a real refused connection), the client gets
  `conversation.item.input_audio_transcription.failed` with the item, the part and an `error`
  object, not an `error` event and an empty completed transcript; the text parts still count;
  so does a live turn's item (server VAD on streamed speech), with no reply made to it;
* a beta transcription connection (`OpenAI-Beta: realtime=v1`, `?intent=transcription`) hears
  `transcription_session.created|updated` with the beta transcription session object.

The LLM is `tests/scripted_llm_server.py` (it records what it was asked). Speech:
/work/shared/speech/en/en_028.wav ("i have a thousand thoughts about that thing").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.beta import realtime as beta_types
from realtime_speech import b64, speech_pcm
from scripted_llm_server import ScriptedLLM
from speech import requires_speech
import test_realtime_clients
from test_realtime_clients import BETA_ADAPTER, GA_ADAPTER, KEY, EventLog, moksori_serve, stream_realtime

pytestmark = [pytest.mark.models, requires_speech]

data_dir, scripted_llm = test_realtime_clients.data_dir, test_realtime_clients.scripted_llm  # (module fixtures)

TEXT = "Please answer in one word."


def serve(data_dir, cwd, llm: ScriptedLLM, **env: str):
    return moksori_serve(data_dir, cwd, MOKSORI_LLM_PROVIDER="openai", MOKSORI_LLM_BASE_URL=llm.url,
                         MOKSORI_LLM_MODEL="scripted", MOKSORI_SERVER_SHED_LOOP_LAG_MS="5000", **env)


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory, scripted_llm):
    with serve(data_dir, tmp_path_factory.mktemp("serve"), scripted_llm) as srv:
        yield srv


@pytest.fixture(scope="module")
def deaf_server(data_dir, tmp_path_factory, scripted_llm):
    """Its STT is a remote one: another `moksori serve`'s `/v1/audio/transcriptions` (real
    Whisper), stopped once this server has started (it warms its STT up at start): from then on
    every transcription fails, the connection refused."""
    stt = serve(data_dir, tmp_path_factory.mktemp("serve-stt"), scripted_llm).start()
    try:
        srv = serve(data_dir, tmp_path_factory.mktemp("serve-deaf"), scripted_llm, MOKSORI_STT_PROVIDER="openai",
                    MOKSORI_STT_BASE_URL=f"{stt.url}/v1", MOKSORI_STT_API_KEY=KEY).start()
    finally:
        stt.stop()
    try:
        yield srv
    finally:
        srv.stop()


async def connect(port: int, *, beta: bool = False, query: dict[str, str] | None = None) -> tuple[Any, EventLog]:
    client = openai.AsyncOpenAI(api_key=KEY, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
    realtime = client.beta.realtime if beta else client.realtime
    conn = await realtime.connect(model="gpt-realtime", extra_query=query or {}).enter()
    adapter = None if query else BETA_ADAPTER if beta else GA_ADAPTER  # (beta transcription: checked by hand)
    return conn, EventLog(conn.recv_bytes, adapter=adapter, parse=conn.parse_event)


@contextlib.asynccontextmanager
async def items_session(port: int, *, beta: bool = False,
                        transcription: bool = True) -> AsyncIterator[tuple[Any, EventLog]]:
    """A conversation session without turn detection (items only), transcribing them or not."""
    conn, log = await connect(port, beta=beta)
    try:
        await log.wait("session.created")
        heard = {"model": "whisper-1", "language": "en"} if transcription else None
        await conn.session.update(session={"input_audio_transcription": heard, "turn_detection": None} if beta else {
            "type": "realtime", "audio": {"input": {"transcription": heard, "turn_detection": None}}})
        await log.wait("session.updated")
        yield conn, log
    finally:
        await log.close()
        await conn.close()


def mixed_item(item_id: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "role": "user", "content": [
        {"type": "input_text", "text": TEXT}, {"type": "input_audio", "audio": b64(speech_pcm(pad_s=0.5))}]}


async def stored_user_texts(url: str, conversation_id: str, item_id: str, timeout: float = 20.0) -> list[str]:
    """The stored texts of item `item_id` (the Conversations API), waiting for the store's writer."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        while True:
            r = await http.get(f"/v1/conversations/{conversation_id}/items", params={"order": "asc"})
            items = r.json().get("data", []) if r.status_code == 200 else []
            texts = [p.get("text") for it in items if it.get("id") == item_id for p in it.get("content", [])]
            if texts or asyncio.get_running_loop().time() > deadline:
                return texts
            await asyncio.sleep(0.2)


def user_words(llm: ScriptedLLM, asked: int) -> list[str]:
    request, = llm.requests[asked:]
    return [m.get("content") or "" for m in request["messages"] if m["role"] == "user"]


# --------------------------------------------------------------------------- several content parts


async def test_openai_ga_item_keeps_its_content_parts(server, scripted_llm):
    async with items_session(server.port) as (conn, log):
        await conn.conversation.item.create(item=mixed_item("item_mixed"))
        added = await log.wait("conversation.item.added", lambda e: e["item"]["id"] == "item_mixed")
        assert added["item"]["content"] == [{"type": "input_text", "text": TEXT},
                                            {"type": "input_audio", "transcript": None}], added
        done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == "item_mixed", timeout=60)
        text, audio = done["item"]["content"]
        assert text == {"type": "input_text", "text": TEXT} and set(audio) == {"type", "transcript"}, done
        assert audio["type"] == "input_audio" and "thousand" in audio["transcript"].lower(), done
        completed = await log.wait("conversation.item.input_audio_transcription.completed")
        # the audio part's own words, at its place: not the typed part's
        assert completed["item_id"] == "item_mixed" and completed["content_index"] == 1, completed
        assert completed["transcript"] == audio["transcript"] and TEXT not in completed["transcript"], completed

        await conn.conversation.item.create(item={"type": "message", "id": "item_two", "role": "user", "content": [
            {"type": "input_text", "text": "First part."}, {"type": "input_text", "text": "Second part."}]})
        two = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == "item_two")
        assert [p["text"] for p in two["item"]["content"]] == ["First part.", "Second part."], two

        for item_id, want in (("item_mixed", done["item"]["content"]), ("item_two", two["item"]["content"])):
            await conn.conversation.item.retrieve(item_id=item_id)
            got = await log.wait("conversation.item.retrieved", lambda e, i=item_id: e["item"]["id"] == i)
            assert got["item"]["content"] == want, got

        asked = len(scripted_llm.requests)
        await conn.response.create(response={"output_modalities": ["text"]})
        await log.wait("response.done", timeout=60)
        # the LLM reads each item's words joined (and the two user items as one message)
        words, = user_words(scripted_llm, asked)
        assert words.startswith(TEXT + " ") and "thousand" in words.lower(), words
        assert words.endswith(" First part. Second part."), words
        assert not log.of("error")
        log.check_ids()


async def test_openai_beta_and_voicelive_items_keep_their_content_parts(server):
    async with items_session(server.port, beta=True) as (conn, log):
        await conn.conversation.item.create(item=mixed_item("item_beta"))
        created = await log.wait("conversation.item.created", lambda e: e["item"]["id"] == "item_beta")
        assert created["item"]["content"] == [{"type": "input_text", "text": TEXT},
                                              {"type": "input_audio", "transcript": None}], created
        completed = await log.wait("conversation.item.input_audio_transcription.completed", timeout=60)
        assert completed["item_id"] == "item_beta"
        await conn.conversation.item.retrieve(item_id="item_beta")
        got = await log.wait("conversation.item.retrieved")
        text, audio = got["item"]["content"]
        assert text == {"type": "input_text", "text": TEXT} and "thousand" in audio["transcript"].lower(), got
        log.check_ids()

    from azure.ai.voicelive.aio import connect as voicelive_connect
    from azure.ai.voicelive.models import InputAudioContentPart, InputTextContentPart, RequestSession, UserMessageItem
    from azure.core.credentials import AzureKeyCredential

    async with voicelive_connect(endpoint=f"http://127.0.0.1:{server.port}", credential=AzureKeyCredential(KEY),
                                 model="gpt-realtime") as vl:
        log = EventLog(vl.recv)
        try:
            await log.wait("session.created")
            await vl.session.update(session=RequestSession(turn_detection=None))
            await log.wait("session.updated")
            await vl.conversation.item.create(item=UserMessageItem(id="item_azure", content=[
                InputTextContentPart(text=TEXT), InputAudioContentPart(audio=b64(speech_pcm(pad_s=0.5)))]))
            created = await log.wait("conversation.item.created", lambda e: e["item"]["id"] == "item_azure")
            assert [p["type"] for p in created["item"]["content"]] == ["input_text", "input_audio"], created
            for _ in range(120):  # its words come in the background
                n = len(log.events)
                await vl.conversation.item.retrieve(item_id="item_azure")
                got = await log.wait("conversation.item.retrieved", start=n)
                if got["item"]["content"][1].get("transcript"):
                    break
                await asyncio.sleep(0.5)
            text, audio = got["item"]["content"]
            assert text["text"] == TEXT and "thousand" in audio["transcript"].lower(), got
            assert not log.of("error")
        finally:
            await log.close()


# --------------------------------------------------------------------------- a failed transcription


async def test_openai_ga_and_beta_hear_a_failed_transcription(deaf_server, scripted_llm):
    async with items_session(deaf_server.port) as (conn, log):
        await conn.conversation.item.create(item=mixed_item("item_unheard"))
        failed = await log.wait("conversation.item.input_audio_transcription.failed", timeout=90)
        assert failed["item_id"] == "item_unheard" and failed["content_index"] == 1, failed
        assert set(failed["error"]) == {"type", "code", "message", "param"} and failed["error"]["message"], failed
        done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == "item_unheard")
        assert done["item"]["content"] == [{"type": "input_text", "text": TEXT},
                                           {"type": "input_audio", "transcript": None}], done
        asked = len(scripted_llm.requests)
        await conn.response.create(response={"output_modalities": ["text"]})
        await log.wait("response.done", timeout=60)
        assert user_words(scripted_llm, asked) == [TEXT]  # the words the item has: its text part's
        assert not log.of("error") and not log.of("conversation.item.input_audio_transcription.completed")
        log.check_ids()
        session_id = log.of("session.created")[0]["session"]["id"]
    # what the LLM read is what the conversation's history keeps: the item's text part
    assert await stored_user_texts(deaf_server.url, session_id, "item_unheard") == [TEXT]

    async with items_session(deaf_server.port, beta=True) as (conn, log):
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_audio", "audio": b64(speech_pcm(pad_s=0.5))}]})
        created = await log.wait("conversation.item.created")
        failed = await log.wait("conversation.item.input_audio_transcription.failed", timeout=90)
        assert failed["item_id"] == created["item"]["id"] and failed["content_index"] == 0, failed
        assert isinstance(BETA_ADAPTER.validate_python(failed),
                          beta_types.ConversationItemInputAudioTranscriptionFailedEvent)
        await asyncio.sleep(0.5)
        assert not log.of("error") and not log.of("conversation.item.input_audio_transcription.completed")
        log.check_ids()


async def test_without_transcription_a_failed_item_is_an_error(deaf_server):
    """A session that asked for no transcription hears of its unheard audio as an `error`."""
    async with items_session(deaf_server.port, transcription=False) as (conn, log):
        await conn.conversation.item.create(item=mixed_item("item_quiet"))
        err = await log.wait("error", timeout=90)
        assert err["error"]["type"] == "server_error" and "item_quiet" in err["error"]["message"], err
        done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == "item_quiet")
        assert done["item"]["content"][1] == {"type": "input_audio", "transcript": None}
        assert not log.of("conversation.item.input_audio_transcription.failed")


async def test_a_live_turn_whose_transcription_fails_hears_failed(deaf_server, scripted_llm):
    """A turn spoken on the input audio buffer (server VAD) whose STT fails: its item hears
    `...input_audio_transcription.failed` and is done, with no `error` and no empty transcript;
    no reply is made to a turn with no words."""
    conn, log = await connect(deaf_server.port)
    try:
        await log.wait("session.created")
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        await log.wait("session.updated")
        asked = len(scripted_llm.requests)

        async def append(chunk):
            await conn.input_audio_buffer.append(audio=b64(chunk))

        feeder = log.spawn(stream_realtime(append, speech_pcm()))
        committed = await log.wait("input_audio_buffer.committed", timeout=20)
        failed = await log.wait("conversation.item.input_audio_transcription.failed", timeout=60)
        assert failed["item_id"] == committed["item_id"] and failed["content_index"] == 0, failed
        assert failed["error"]["message"], failed
        done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == committed["item_id"])
        assert done["item"]["content"] == [{"type": "input_audio", "transcript": None}], done
        await feeder
        await asyncio.sleep(1.0)
        assert not log.of("error") and not log.of("conversation.item.input_audio_transcription.completed")
        assert not log.of("response.created") and len(scripted_llm.requests) == asked
        log.check_ids()
    finally:
        await log.close()
        await conn.close()


# --------------------------------------------------------------------------- beta transcription sessions


async def test_openai_beta_transcription_session(server):
    conn, log = await connect(server.port, beta=True, query={"intent": "transcription"})
    try:
        created = await log.wait("transcription_session.created")
        session = created["session"]
        assert session["object"] == "realtime.transcription_session" and "instructions" not in session, session
        await conn.transcription_session.update(session={
            "input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}})
        updated = await log.wait("transcription_session.updated")
        # as the SDK reads it (its model wants a `client_secret`, which only a REST-created session has)
        event = conn.parse_event(json.dumps(updated))
        assert isinstance(event, beta_types.TranscriptionSessionUpdatedEvent)
        assert event.session.input_audio_transcription is not None
        assert event.session.input_audio_transcription.language == "en"
        assert event.session.turn_detection is not None and event.session.turn_detection.type == "server_vad"
        await stream_realtime(lambda chunk: conn.input_audio_buffer.append(audio=b64(chunk)), speech_pcm(pad_s=2.0))
        done = await log.wait("conversation.item.input_audio_transcription.completed", timeout=60)
        assert "thousand" in done["transcript"].lower(), done
        types = log.types()
        assert "session.created" not in types and "session.updated" not in types, types
        assert not any(t.startswith("response.") for t in types) and not log.of("error"), types
    finally:
        await log.close()
        await conn.close()
