"""What waits for what on the Realtime WebSocket, against a real `moksori serve` with the
official `openai` SDK (every event validated by test_realtime_clients' EventLog) and real
recorded speech:

* a client's `conversation.item.create` with ~108 s of speech as G.711 (under the 120 s item
  cap): another session's live turn is transcribed as if it were not there (it waited for the
  whole item: 24-54 s in the hunt), the same session's `response.cancel` right after it takes
  effect at once (19-24 s, after the reply had completed), and the item's words still come,
  whole, then reach the LLM and the store (engine/item_words.py);
* `interrupt_response: false`: a turn spoken over a long reply is answered once that reply is
  done, reading all of it (it started at once beside it; engine/responses.py).

Real components: `moksori serve` with Silero, Whisper base and Piper; the LLM is the scripted
OpenAI-compatible stand-in on loopback (tests/scripted_llm_server.py: replies of a known length,
the prompts recorded). The logic of both, in virtual time: test_item_words.py and
test_turn_reply_waits.py.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scripted_llm_server import LONG_REPLY, ScriptedLLM
from servers import ThreadedASGIServer
from test_realtime_clients import GA_ADAPTER, EventLog, b64, ga_client, moksori_serve, speech_end_ms, speech_pcm, \
    stream_realtime
from test_realtime_truncate import stored_items

from moksori.audio.g711 import ulaw_encode
from moksori.audio.resample import resample
from moksori.audio.wav import load_audio
from speech import prepared_data_dir, requires_speech, utt

pytestmark = [pytest.mark.models, requires_speech]

# ~108 s of real speech, the last clip's words checked at the end of the item's transcript
ITEM_CLIPS = ("en_031", "en_025", "en_030", "en_022", "en_011")
LIVE_TURN_LIMIT_S = 10.0  # the other session's transcript after its speech ended (24-54 s before)
ITEM_BEFORE_SPEECH_END_S = 0.2  # the item is sent this long before the other session's speech ends


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def scripted_llm():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module")
def served(data_dir, tmp_path_factory, scripted_llm):
    with moksori_serve(data_dir, tmp_path_factory.mktemp("serve-waits"), MOKSORI_LLM_PROVIDER="openai",
                       MOKSORI_LLM_BASE_URL=scripted_llm.url, MOKSORI_LLM_MODEL="scripted", MOKSORI_LANGUAGE="en",
                       MOKSORI_CONFIG="") as srv:
        yield srv


async def connect(port: int, *, user: str | None = None) -> tuple[Any, EventLog]:
    conn = await ga_client(port).realtime.connect(model="gpt-realtime",
                                                  extra_query={"user": user} if user else {}).enter()
    log = EventLog(conn.recv_bytes, adapter=GA_ADAPTER, parse=conn.parse_event)
    await log.wait("session.created")
    return conn, log


def long_item_ulaw() -> tuple[str, float]:
    pcm = np.concatenate([resample(load_audio(utt(name).path), 8000).samples for name in ITEM_CLIPS])
    return base64.b64encode(ulaw_encode(pcm)).decode(), len(pcm) / 8000


async def live_turn_delay(conn: Any, log: EventLog, at_transcript: Callable[[], Any] = lambda: None
                          ) -> tuple[float, str]:
    """Speak en_028 at real-time pace: seconds from the end of its speech to its transcript
    (`at_transcript` is called the moment it comes, before the rest of the audio is sent)."""
    n = len(log.of("conversation.item.input_audio_transcription.completed"))

    async def append(chunk: np.ndarray) -> None:
        await conn.input_audio_buffer.append(audio=b64(chunk))

    t0 = time.monotonic()
    feeder = log.spawn(stream_realtime(append, speech_pcm("en_028", pad_s=3.0)))
    while len(log.of("conversation.item.input_audio_transcription.completed")) <= n:
        assert time.monotonic() - t0 < 180, "no transcript"
        await asyncio.sleep(0.02)
    got = time.monotonic()
    at_transcript()
    await feeder
    return got - (t0 + speech_end_ms() / 1000), log.of("conversation.item.input_audio_transcription.completed")[n][
        "transcript"]


def is_user_audio(e: dict[str, Any]) -> bool:
    return e["item"]["role"] == "user" and e["item"]["content"][0]["type"] == "input_audio"


async def test_a_long_audio_item_holds_neither_another_sessions_turn_nor_its_own_cancel(served, scripted_llm):
    item_audio, item_s = long_item_ulaw()
    assert 100 < item_s < 120 and len(item_audio) > 1_000_000
    a, alog = await connect(served.port, user="waits-item")
    b, blog = await connect(served.port)
    try:
        await a.session.update(session={"type": "realtime", "instructions": "scripted:long", "audio": {"input": {
            "format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}, "turn_detection": None}}})
        await b.session.update(session={"type": "realtime", "audio": {"input": {
            "transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "create_response": False}}}})
        await alog.wait("session.updated")
        await blog.wait("session.updated")
        alone, _ = await live_turn_delay(b, blog)  # the same turn with nothing else going on

        # A: a long reply in progress, then the item, then a cancel of the reply; B meanwhile: a
        # live turn whose speech ends just after the item is sent, so its end and final decode
        # meet the item's transcription on any machine (was it still under way when B's words
        # came? checked then). Sent before B spoke, the item was done before B's turn ended on a
        # fast machine (108 s transcribed in under 3 s, with B's partial decodes beside it)
        await a.conversation.item.create(item={"type": "message", "role": "user",
                                               "content": [{"type": "input_text", "text": "Tell me a story."}]})
        await a.response.create()
        story = (await alog.wait("response.created", timeout=30))["response"]["id"]
        was_pending: list[bool] = []

        def item_pending() -> None:
            was_pending.append(not [e for e in alog.of("conversation.item.done") if e["item"]["id"] == "item_long_audio"])

        b_turn = asyncio.create_task(live_turn_delay(b, blog, item_pending))
        await asyncio.sleep(speech_end_ms() / 1000 - ITEM_BEFORE_SPEECH_END_S)
        await a.conversation.item.create(item={"type": "message", "role": "user", "id": "item_long_audio",
                                               "content": [{"type": "input_audio", "audio": item_audio}]})
        sent = time.monotonic()

        async def item_words() -> tuple[dict[str, Any], float]:
            done = await alog.wait("conversation.item.done", lambda e: e["item"]["id"] == "item_long_audio",
                                   timeout=300)
            return done, time.monotonic() - sent

        words_came = asyncio.create_task(item_words())
        await a.response.cancel()
        done = await alog.wait("response.done", lambda e: e["response"]["id"] == story, timeout=120)
        cancel_s = time.monotonic() - sent
        busy, words = await b_turn
        pending = was_pending == [True]
        item_done, item_words_s = await words_came
        print(f"\nlive turn alone {alone:.2f} s, beside the {item_s:.0f} s item {busy:.2f} s; cancel {cancel_s:.2f} s "
              f"({done['response']['status']}); the item's words after {item_words_s:.1f} s")
        added = alog.of("conversation.item.added")
        assert [e["item"]["content"][0]["transcript"] for e in added if e["item"]["id"] == "item_long_audio"] == [None]
        assert done["response"]["status"] == "cancelled", done["response"]["status"]
        assert cancel_s < 2.0, cancel_s
        assert "thousand" in words.lower()
        assert pending, "the live turn was measured after the item's words had come: nothing was beside it"
        assert busy < LIVE_TURN_LIMIT_S, (busy, alone)

        # the item's words: whole (its first clip's and its last clip's), in the events and the LLM's prompt
        text = item_done["item"]["content"][0]["transcript"].lower()
        assert "gathered" in text and "country" in text, text
        completed = alog.of("conversation.item.input_audio_transcription.completed")
        assert [e["transcript"] for e in completed if e["item_id"] == "item_long_audio"] == [
            item_done["item"]["content"][0]["transcript"]]
        n = len(scripted_llm.requests)
        await a.response.create()
        await alog.wait("response.done", lambda e: e["response"]["id"] != story, timeout=60)
        users = [m["content"] for m in scripted_llm.requests[n]["messages"] if m["role"] == "user"]
        assert users[-1].lower().endswith(text.split()[-1]) and "gathered" in users[-1].lower()
        stored = stored_items(served, "waits-item", {"item_long_audio": item_done["item"]["content"][0]["transcript"]})
        assert "item_long_audio" in stored
        alog.check_ids()
        blog.check_ids()
    finally:
        for conn, log in ((a, alog), (b, blog)):
            await log.close()
            await conn.close()


async def test_a_turn_over_a_reply_with_interrupt_off_is_answered_after_it(served, scripted_llm):
    conn, log = await connect(served.port)
    try:
        await conn.session.update(session={"type": "realtime", "instructions": "scripted:long", "audio": {"input": {
            "transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "create_response": True,
                               "interrupt_response": False}}}})
        await log.wait("session.updated")

        async def append(chunk: np.ndarray) -> None:
            await conn.input_audio_buffer.append(audio=b64(chunk))

        await stream_realtime(append, speech_pcm("en_028", pad_s=1.0))
        story = (await log.wait("response.created", timeout=60))["response"]["id"]
        await log.wait("response.output_audio.delta", timeout=60)
        n = len(scripted_llm.requests)
        # the second turn, spoken over the story (~15 s of speech), then a live mic's silence
        feeder = log.spawn(stream_realtime(append, np.concatenate([speech_pcm("en_010", pad_s=1.0),
                                                                   np.zeros(40 * 24000, dtype=np.int16)])))
        second = await log.wait("conversation.item.input_audio_transcription.completed",
                                lambda e: "thousand" not in e["transcript"].lower(), timeout=60)
        story_done = await log.wait("response.done", lambda e: e["response"]["id"] == story, timeout=90)
        answer = await log.wait("response.created", lambda e: e["response"]["id"] != story, timeout=20)
        answered = await log.wait("response.done", lambda e: e["response"]["id"] == answer["response"]["id"],
                                  timeout=60)
        feeder.cancel()
        types = [(e["type"], e.get("response", {}).get("id")) for e in log.events]
        assert types.index(("response.done", story)) < types.index(("response.created", answer["response"]["id"])), \
            "the turn's reply started beside the story"
        assert story_done["response"]["status"] == "completed"  # the user did not stop it
        assert answered["response"]["status"] == "completed"
        said = [(m["role"], m["content"]) for m in scripted_llm.requests[-1]["messages"] if m["role"] != "system"]
        assert said[-2] == ("assistant", LONG_REPLY) and said[-1] == ("user", second["transcript"])
        assert len(scripted_llm.requests) == n + 1  # one reply for the turn, after the story
        log.check_ids()
    finally:
        await log.close()
        await conn.close()
