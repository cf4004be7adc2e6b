"""A user item of several audio parts (`conversation.item.create`, engine/item_words.py,
server/realtime_items.py) is heard of part by part, as the official `openai` client reads it
from a real `moksori serve` with the embedded Whisper and real recorded speech:

* each audio part the server transcribes gets its own
  `conversation.item.input_audio_transcription.delta` and `.completed`, in content order, with
  its own `content_index` (its true place: a text part between counts) and its own recording's
  words; `conversation.item.done` and `.retrieved` show the same words part by part, while the
  LLM reads all the item's words joined;
* each `.completed` reports the seconds of its own part's audio as usage, so the usage of the
  parts sums to the item's audio (before: every part said the whole item's seconds);
* an item whose parts partly fail (the server's STT is a remote one: another `moksori serve`
  whose uploads may last at most 6 s, so the 11 s recording is refused with a real 413) hears
  `.completed` for the parts that were transcribed and `.failed` for the one that was not, each
  at its own `content_index`, in content order (before: only the `.failed`, and the transcribed
  parts' words never announced); the LLM and the stored history read the words there are.

The LLM is `tests/scripted_llm_server.py` (it records what it was asked).
"""

from __future__ import annotations

from typing import Any

import pytest
from realtime_speech import RATE, b64, speech_pcm
from speech import requires_speech, utt, wer
import test_realtime_clients
from test_realtime_clients import KEY
from test_realtime_item_parts import items_session, serve, stored_user_texts, user_words

from moksori.engine.item_words import HeardPart, joined_words
from moksori.engine.memory import Item
from moksori.protocols import realtime as rt
from moksori.server.realtime_items import transcription_events

pytestmark = [pytest.mark.models, requires_speech]

data_dir, scripted_llm = test_realtime_clients.data_dir, test_realtime_clients.scripted_llm  # (module fixtures)

TRANSCRIPTION = "conversation.item.input_audio_transcription."
BETWEEN = "And then:"


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory, scripted_llm):
    with serve(data_dir, tmp_path_factory.mktemp("serve"), scripted_llm) as srv:
        yield srv


@pytest.fixture(scope="module")
def picky_server(data_dir, tmp_path_factory, scripted_llm):
    """Its STT is a remote one: another `moksori serve`'s `/v1/audio/transcriptions` (real
    Whisper) that refuses uploads longer than 6 s (HTTP 413, not retried)."""
    with serve(data_dir, tmp_path_factory.mktemp("serve-stt"), scripted_llm,
               MOKSORI_SERVER_MAX_UPLOAD_SECONDS="6") as stt:
        with serve(data_dir, tmp_path_factory.mktemp("serve-picky"), scripted_llm, MOKSORI_STT_PROVIDER="openai",
                   MOKSORI_STT_BASE_URL=f"{stt.url}/v1", MOKSORI_STT_API_KEY=KEY) as srv:
            yield srv


def audio_part(name: str) -> tuple[dict[str, Any], float]:
    """An `input_audio` part of recording `name` (half a second of silence after it), and its seconds."""
    pcm = speech_pcm(name, pad_s=0.5)
    return {"type": "input_audio", "audio": b64(pcm)}, len(pcm) / RATE


def item_events(log, item_id: str) -> list[dict[str, Any]]:
    return [e for e in log.events if e["type"].startswith(TRANSCRIPTION) and e["item_id"] == item_id]


def heard_words(name: str, said: str) -> bool:
    return wer(utt(name).transcript, said) <= 0.25


async def test_each_audio_part_hears_its_own_transcription(server, scripted_llm):
    async with items_session(server.port) as (conn, log):
        for item_id, names, between in (("item_two", ("en_028", "en_002"), False),
                                        ("item_three", ("en_005", "en_027"), True)):
            (first, first_s), (second, second_s) = audio_part(names[0]), audio_part(names[1])
            content = [first, {"type": "input_text", "text": BETWEEN}, second] if between else [first, second]
            indexes = (0, 2) if between else (0, 1)
            await conn.conversation.item.create(item={"type": "message", "id": item_id, "role": "user",
                                                      "content": content})
            done = await log.wait("conversation.item.done", lambda e, i=item_id: e["item"]["id"] == i, timeout=90)
            events = item_events(log, item_id)
            # per part, in content order: its delta, then its completed transcript
            assert [(e["type"].rsplit(".", 1)[1], e["content_index"]) for e in events] == [
                ("delta", indexes[0]), ("completed", indexes[0]), ("delta", indexes[1]), ("completed", indexes[1])], events
            completed = [e for e in events if e["type"].endswith(".completed")]
            deltas = [e for e in events if e["type"].endswith(".delta")]
            for name, event, delta in zip(names, completed, deltas):
                assert heard_words(name, event["transcript"]), (name, event)
                assert delta["delta"] == event["transcript"], (delta, event)
            # each part's own audio as usage: the parts' usage sums to the item's audio, once
            for event, seconds in zip(completed, (first_s, second_s)):
                assert event["usage"]["type"] == "duration", event
                assert event["usage"]["seconds"] == pytest.approx(seconds, abs=0.01), (event, seconds)
            assert sum(e["usage"]["seconds"] for e in completed) == pytest.approx(first_s + second_s, abs=0.01)
            # the item shows each part's own words, as done and when retrieved
            audio = [p for p in done["item"]["content"] if p["type"] == "input_audio"]
            assert [p["transcript"] for p in audio] == [e["transcript"] for e in completed], done
            if between:
                assert done["item"]["content"][1] == {"type": "input_text", "text": BETWEEN}, done
            await conn.conversation.item.retrieve(item_id=item_id)
            got = await log.wait("conversation.item.retrieved", lambda e, i=item_id: e["item"]["id"] == i)
            assert got["item"]["content"] == done["item"]["content"], got

        asked = len(scripted_llm.requests)
        await conn.response.create(response={"output_modalities": ["text"]})
        await log.wait("response.done", timeout=60)
        # the LLM reads the items' words joined (the two user items as one message)
        said = [e["transcript"] for e in log.of(TRANSCRIPTION + "completed")]
        words, = user_words(scripted_llm, asked)
        assert words == joined_words([said[0], said[1], said[2], BETWEEN, said[3]]), (words, said)
        assert not log.of("error") and not log.of(TRANSCRIPTION + "failed")
        log.check_ids()


async def test_an_item_whose_parts_partly_fail_hears_each_part(picky_server, scripted_llm):
    async with items_session(picky_server.port) as (conn, log):
        (short, short_s), (long, _), (last, last_s) = audio_part("en_028"), audio_part("en_011"), audio_part("en_002")
        await conn.conversation.item.create(item={"type": "message", "id": "item_partly", "role": "user", "content": [
            short, {"type": "input_text", "text": BETWEEN}, long, last]})
        done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == "item_partly", timeout=120)
        events = item_events(log, "item_partly")
        assert [(e["type"].rsplit(".", 1)[1], e["content_index"]) for e in events] == [
            ("delta", 0), ("completed", 0), ("failed", 2), ("delta", 3), ("completed", 3)], events
        first, failed, second = (e for e in events if not e["type"].endswith(".delta"))
        assert heard_words("en_028", first["transcript"]) and heard_words("en_002", second["transcript"]), events
        assert "413" in failed["error"]["message"] and set(failed["error"]) == {"type", "code", "message", "param"}
        assert first["usage"]["seconds"] == pytest.approx(short_s, abs=0.01), first
        assert second["usage"]["seconds"] == pytest.approx(last_s, abs=0.01), second
        assert [p.get("transcript", p.get("text")) for p in done["item"]["content"]] == [
            first["transcript"], BETWEEN, None, second["transcript"]], done

        asked = len(scripted_llm.requests)
        await conn.response.create(response={"output_modalities": ["text"]})
        await log.wait("response.done", timeout=60)
        want = joined_words([first["transcript"], BETWEEN, second["transcript"]])
        assert user_words(scripted_llm, asked) == [want]  # the words the item has
        assert not log.of("error")
        log.check_ids()
        session_id = log.of("session.created")[0]["session"]["id"]
    assert await stored_user_texts(picky_server.url, session_id, "item_partly") == [want]


def test_the_events_of_an_items_parts() -> None:
    """The same, pure: each part's words and seconds; a live turn's item is one part, all its audio."""
    item = Item(id="item_1", text="hello there friend", audio=True,
                parts=[("audio", "hello"), ("text", "there"), ("audio", None), ("audio", "friend")])
    heard = (HeardPart(0, 1.5, "hello"), HeardPart(2, 4.0, None, "provider_error", "HTTP 413"),
             HeardPart(3, 2.25, "friend"))
    events = transcription_events(rt.ServerEvents(rt.Flavor.GA), "item_1", item, item.text, 7.75, heard)
    assert [(e["type"].rsplit(".", 1)[1], e["content_index"]) for e in events] == [
        ("delta", 0), ("completed", 0), ("failed", 2), ("delta", 3), ("completed", 3)]
    assert [e["usage"]["seconds"] for e in events if "usage" in e] == [1.5, 2.25]
    assert events[2]["error"]["message"] == "HTTP 413" and events[4]["transcript"] == "friend"
    turn = transcription_events(rt.ServerEvents(rt.Flavor.GA), "item_2", Item(id="item_2", text="hi", audio=True),
                                "hi", 3.0, None)
    assert [(e["type"].rsplit(".", 1)[1], e["content_index"], e.get("usage")) for e in turn] == [
        ("delta", 0, None), ("completed", 0, {"type": "duration", "seconds": 3.0})]
