"""A remote upstream that is down when `moksori serve` starts does not stop the server.

* remote STT (`MOKSORI_STT_PROVIDER=openai`) at a port where nothing listens: the server starts,
  logs one warning naming the provider and its URL (no traceback), `/ready` answers 200 (it
  reports admission, not upstream health, as with a remote TTS); an item's audio gets
  `conversation.item.input_audio_transcription.failed` while the upstream is down, and is
  transcribed once a real STT (another `moksori serve`'s `/v1/audio/transcriptions`, real
  Whisper) listens on that port, without a restart;
* remote LLM at a port where nothing listens: the server starts (a remote LLM is not asked
  anything at warm-up) and a reply fails with a clear `response.done` status.

The LLM of the running servers is `tests/scripted_llm_server.py`. Speech:
/work/shared/speech/en/en_028.wav ("i have a thousand thoughts about that thing").
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from realtime_speech import b64, speech_pcm
from scripted_llm_server import ScriptedLLM
from servers import free_port
from speech import requires_speech
import test_realtime_clients
from test_realtime_clients import KEY
from test_realtime_item_parts import items_session, serve

pytestmark = [pytest.mark.models, requires_speech]

data_dir, scripted_llm = test_realtime_clients.data_dir, test_realtime_clients.scripted_llm  # (module fixtures)


def audio_item(item_id: str) -> dict:
    return {"type": "message", "id": item_id, "role": "user",
            "content": [{"type": "input_audio", "audio": b64(speech_pcm(pad_s=0.5))}]}


def assert_ready(url: str) -> None:
    r = httpx.get(f"{url}/ready", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text


async def test_remote_stt_down_at_start_then_back(data_dir, tmp_path_factory, scripted_llm: ScriptedLLM):
    stt = serve(data_dir, tmp_path_factory.mktemp("serve-stt"), scripted_llm)  # its port chosen, not started yet
    srv = serve(data_dir, tmp_path_factory.mktemp("serve-stt-down"), scripted_llm, MOKSORI_STT_PROVIDER="openai",
                MOKSORI_STT_BASE_URL=f"{stt.url}/v1", MOKSORI_STT_API_KEY=KEY).start()
    try:
        started = srv.log_text()
        warnings = [line for line in started.splitlines() if "STT warm-up skipped" in line]
        assert len(warnings) == 1, started[-3000:]
        assert f"openai-stt at {stt.url}/v1/audio/transcriptions" in warnings[0], warnings
        assert "Traceback" not in started, started[-3000:]
        assert_ready(srv.url)

        async with items_session(srv.port) as (conn, log):
            await conn.conversation.item.create(item=audio_item("item_down"))
            failed = await log.wait("conversation.item.input_audio_transcription.failed", timeout=90)
            assert failed["item_id"] == "item_down" and failed["error"]["message"], failed

            # the upstream is back: the same server, the same session, no restart (started off this
            # loop: a start takes seconds, and a loop blocked that long answers no keepalive ping, so
            # the server would rightly close this session)
            await asyncio.to_thread(stt.start)
            await conn.conversation.item.create(item=audio_item("item_back"))
            done = await log.wait("conversation.item.input_audio_transcription.completed",
                                  lambda e: e["item_id"] == "item_back", timeout=90)
            assert "thousand" in done["transcript"].lower(), done
            assert not log.of("error"), log.of("error")
    finally:
        srv.stop()
        stt.stop()


async def test_remote_llm_down_at_start(data_dir, tmp_path_factory):
    down = f"http://127.0.0.1:{free_port()}/v1"
    srv = test_realtime_clients.moksori_serve(data_dir, tmp_path_factory.mktemp("serve-llm-down"),
                                              MOKSORI_LLM_PROVIDER="openai", MOKSORI_LLM_BASE_URL=down,
                                              MOKSORI_LLM_MODEL="scripted", MOKSORI_LLM_MAX_RETRIES="0").start()
    try:
        assert "Traceback" not in srv.log_text()
        assert_ready(srv.url)
        async with items_session(srv.port, transcription=False) as (conn, log):
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": "Hello?"}]})
            await conn.response.create(response={"output_modalities": ["text"]})
            done = await log.wait("response.done", timeout=60)
            assert done["response"]["status"] == "failed", done
    finally:
        srv.stop()
