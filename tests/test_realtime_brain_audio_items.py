"""The realtime brain: a client's audio item is transcribed off the connection's handler.

A Realtime client's `conversation.item.create` with `input_audio` is transcribed by Moksori's own
STT where there is one (the upstream hears the item's audio itself: test_realtime_brain_audio_upstream;
the words are the item's transcript and memory). With the pipeline
brain that is background work (engine/item_words.py): the item is in the conversation at once,
its words follow, and the connection handles the next events meanwhile. The realtime brain did it
inside the handler: the client's next events (a `session.update`, a `response.cancel`) waited for
the whole item's transcription. Checked, with ~73 s of real speech as G.711:

* the client's next event (`session.update`) is answered before the item's words come;
* the item's events in the pipeline's order: `conversation.item.added` (no transcript yet), then
  `conversation.item.input_audio_transcription.completed`, then `conversation.item.done` with
  the words;
* a `response.create` sent while the words are still coming: the upstream gets the item, as
  audio, before the `response.create` (the reply waits for the words, as the pipeline's does);
* without a local STT (the upstream's turn detection) and an upstream that does not transcribe
  the item: the item is in the conversation without words, `...input_audio_transcription.failed`
  says why once the brain's wait is over (it was an `error` and no item), the upstream got the
  audio, and the session goes on.

Real components: `moksori serve` with the realtime brain (Silero and Whisper base for the item),
the official `openai` SDK's Realtime client (every event validated against its union), real
recorded speech. The upstream is the scripted stand-in of test_realtime_brain_tool_items (not a
model), served over a real WebSocket on loopback.
"""

from __future__ import annotations

import base64
from typing import Any
from collections.abc import Iterator

import numpy as np
import pytest
from servers import ServerProcess
from test_realtime_brain_tool_items import Upstream, upstream  # noqa: F401 - the module's fixture
from test_realtime_clients import GA_ADAPTER, EventLog, ga_client, moksori_serve

from moksori.audio.g711 import ulaw_encode
from moksori.audio.resample import resample
from moksori.audio.wav import load_audio
from speech import prepared_data_dir, requires_speech, utt

pytestmark = [pytest.mark.models, requires_speech]

ITEM_CLIPS = ("en_031", "en_025")  # ~73 s of speech


@pytest.fixture(scope="module")
def front(tmp_path_factory, upstream: Upstream) -> Iterator[ServerProcess]:  # noqa: F811
    with moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("serve-brain-items"),
                       MOKSORI_BRAIN="realtime",
                       MOKSORI_REALTIME_URL=f"ws://127.0.0.1:{upstream.port}/v1/realtime?model=gpt-realtime",
                       MOKSORI_REALTIME_API_KEY="sk-fake-upstream", MOKSORI_REALTIME_RESPONSE_TIMEOUT_S="60",
                       MOKSORI_REALTIME_TURN_DETECTION="moksori",  # (the local STT is loaded with it)
                       MOKSORI_STORE_URL="none", MOKSORI_LANGUAGE="en", MOKSORI_CONFIG="") as srv:
        yield srv


def item_ulaw() -> tuple[str, float]:
    pcm = np.concatenate([resample(load_audio(utt(name).path), 8000).samples for name in ITEM_CLIPS])
    return base64.b64encode(ulaw_encode(pcm)).decode(), len(pcm) / 8000


def index(log: EventLog, typ: str, item_id: str) -> int:
    return next(i for i, e in enumerate(log.events) if e["type"] == typ
                and (e.get("item_id") or (e.get("item") or {}).get("id")) == item_id)


async def create_audio_item(conn: Any, log: EventLog, item_id: str, audio: str) -> int:
    """A text-only G.711 session with transcription and no turn detection, then a user item of
    `audio`: the log's length before the item was created."""
    await log.wait("session.created")
    await conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "audio": {"input": {
        "format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}, "turn_detection": None}}})
    await log.wait("session.updated")
    n = len(log.events)
    await conn.conversation.item.create(item={"type": "message", "role": "user", "id": item_id,
                                              "content": [{"type": "input_audio", "audio": audio}]})
    return n


async def still_answers(conn: Any, log: EventLog, start: int) -> None:
    """The session goes on: a text turn after `start` is answered."""
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": "Hello?"}]})
    await conn.response.create()
    reply = await log.wait("response.done", start=start, timeout=60)
    assert reply["response"]["status"] == "completed", reply["response"]


async def test_an_audio_item_is_transcribed_off_the_handler(front, upstream: Upstream) -> None:  # noqa: F811
    audio, seconds = item_ulaw()
    assert 60 < seconds < 90, seconds
    conn = await ga_client(front.port).realtime.connect(model="gpt-realtime").enter()
    log = EventLog(conn.recv_bytes, adapter=GA_ADAPTER, parse=conn.parse_event)
    try:
        n = await create_audio_item(conn, log, "item_brain_audio", audio)
        await conn.session.update(session={"type": "realtime", "instructions": "Answer briefly."})
        await conn.response.create()
        updated = await log.wait("session.updated", start=n, timeout=120)
        assert not log.of("error"), log.of("error")
        done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == "item_brain_audio", timeout=120)
        words = done["item"]["content"][0]["transcript"]
        assert "gathered" in words.lower(), words
        # the next event was answered while the words were still coming
        assert log.events.index(updated) < index(log, "conversation.item.done", "item_brain_audio"), log.types()[n:]
        # the item's events in the pipeline's order
        added = index(log, "conversation.item.added", "item_brain_audio")
        completed = index(log, "conversation.item.input_audio_transcription.completed", "item_brain_audio")
        assert added < completed < index(log, "conversation.item.done", "item_brain_audio"), log.types()[n:]
        assert log.events[added]["item"]["content"][0]["transcript"] is None
        assert log.events[completed]["transcript"] == words
        # the reply asked for meanwhile: the upstream had the item, with its words, before it was asked
        reply = await log.wait("response.done", start=n, timeout=60)
        assert reply["response"]["status"] == "completed", reply["response"]
        sent = upstream.received("conversation.item.create", "response.create")
        kinds = [(e["type"], (e.get("item") or {}).get("id")) for e in sent]
        assert kinds[-2:] == [("conversation.item.create", "item_brain_audio"), ("response.create", None)], kinds
        item = next(e["item"] for e in sent if (e.get("item") or {}).get("id") == "item_brain_audio")
        assert [p["type"] for p in item["content"]] == ["input_audio"], item["content"]
        assert item["content"][0]["audio"] == audio  # (G.711 μ-law, as the client sent it)
        assert not log.problems, log.problems
        log.check_ids()
    finally:
        await log.close()
        await conn.close()
    assert "Traceback" not in front.log_text()


@pytest.fixture(scope="module")
def no_stt(tmp_path_factory, upstream: Upstream) -> Iterator[ServerProcess]:  # noqa: F811
    """The front with the upstream's turn detection: no local STT is loaded."""
    with moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("serve-brain-no-stt"),
                       MOKSORI_BRAIN="realtime",
                       MOKSORI_REALTIME_URL=f"ws://127.0.0.1:{upstream.port}/v1/realtime?model=gpt-realtime",
                       MOKSORI_REALTIME_API_KEY="sk-fake-upstream", MOKSORI_STORE_URL="none", MOKSORI_LANGUAGE="en",
                       MOKSORI_CONFIG="") as srv:
        yield srv


async def test_without_a_local_stt_an_audio_item_is_a_failed_transcription(no_stt, upstream: Upstream) -> None:  # noqa: F811
    """Its words cannot be had (this upstream does not transcribe items): the item is in the
    conversation without them, the client is told (`...input_audio_transcription.failed`), the
    upstream heard the audio, and the session goes on."""
    audio, _ = item_ulaw()
    conn = await ga_client(no_stt.port).realtime.connect(model="gpt-realtime").enter()
    log = EventLog(conn.recv_bytes, adapter=GA_ADAPTER, parse=conn.parse_event)
    try:
        n = await create_audio_item(conn, log, "item_unheard", audio)
        failed = await log.wait("conversation.item.input_audio_transcription.failed", start=n, timeout=30)
        done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == "item_unheard", start=n)
        assert failed["item_id"] == "item_unheard"
        assert done["item"]["content"][0]["transcript"] is None, done["item"]
        assert "did not transcribe" in failed["error"]["message"], failed
        sent = [e["item"] for e in upstream.received("conversation.item.create") if e["item"].get("id") == "item_unheard"]
        assert [[p["type"] for p in i["content"]] for i in sent] == [["input_audio"]], sent
        assert sent[0]["content"][0]["audio"] == audio
        await still_answers(conn, log, n)
        log.check_ids()
    finally:
        await log.close()
        await conn.close()
    assert "Traceback" not in no_stt.log_text()
