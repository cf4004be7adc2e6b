"""Azure Voice Live's `response.create` with `pre_generated_assistant_message`, with the
`azure-ai-voicelive` SDK against a real `moksori serve`: the message's text is spoken as the
reply (synthesised by the server's TTS, no LLM asked) and kept in the conversation.

The server's LLM is `tests/scripted_llm_server.py`, whose recorded requests show that the LLM
was not asked for this reply. The reply's audio is transcribed back by the same server's Whisper
(`/v1/audio/transcriptions`) to show the text was spoken.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from scripted_llm_server import ScriptedLLM
from servers import ThreadedASGIServer
from speech import prepared_data_dir
from test_realtime_clients import KEY, moksori_serve

from moksori.audio.frames import Frame
from moksori.audio.wav import wav_bytes

pytestmark = [pytest.mark.models]

TEXT = "Your parcel ships on Tuesday morning."


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


async def test_pre_generated_assistant_message_is_spoken(server, scripted_llm):
    from azure.ai.voicelive.aio import connect
    from azure.ai.voicelive.models import (AssistantMessageItem, AzureStandardVoice, Modality, OutputTextContentPart,
                                           RequestSession, ResponseCreateParams)
    from azure.core.credentials import AzureKeyCredential
    from test_realtime_clients import EventLog

    async with connect(endpoint=f"http://127.0.0.1:{server.port}", credential=AzureKeyCredential(KEY),
                       model="gpt-realtime") as conn:
        log = EventLog(conn.recv)
        try:
            await log.wait("session.created")
            await conn.session.update(session=RequestSession(
                modalities=[Modality.TEXT, Modality.AUDIO], voice=AzureStandardVoice(name="en-US-AvaNeural"),
                turn_detection=None))
            await log.wait("session.updated")
            asked = len(scripted_llm.requests)
            await conn.response.create(response=ResponseCreateParams(
                pre_generated_assistant_message=AssistantMessageItem(content=[OutputTextContentPart(text=TEXT)])))
            done = await log.wait("response.done", timeout=60)
            assert done["response"]["status"] == "completed", done
            part = done["response"]["output"][0]["content"][0]
            assert part["transcript"] == TEXT, done
            assert len(scripted_llm.requests) == asked  # spoken as given: the LLM was not asked
            assert not log.of("warning") and not log.of("error"), log.of("warning") + log.of("error")
            added = [e["item"] for e in log.of("conversation.item.created") if e["item"]["role"] == "assistant"]
            assert added and added[0]["id"] == done["response"]["output"][0]["id"]
            audio = b"".join(base64.b64decode(e["delta"]) for e in log.of("response.audio.delta"))
            assert len(audio) / 2 / 24000 > 1.0
            # the reply is in the conversation: retrieved as the assistant said it
            await conn.conversation.item.retrieve(item_id=added[0]["id"])
            got = await log.wait("conversation.item.retrieved")
            assert got["item"]["content"][0]["transcript"] == TEXT
        finally:
            await log.close()
    wav = wav_bytes(Frame(np.frombuffer(audio, dtype="<i2").astype(np.int16), 24000))
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        r = await http.post(f"{server.url}/v1/audio/transcriptions", data={"model": "whisper-1", "language": "en"},
                            files={"file": ("reply.wav", wav)})
    heard = r.json()["text"].lower()
    assert "tuesday" in heard and "parcel" in heard, heard
