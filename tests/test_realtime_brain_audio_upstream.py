"""The realtime brain: a client's audio item is heard by the upstream as audio, not as words.

A speech-to-speech upstream hears tone, names and language in the audio itself, as OpenAI's own
server would. A Realtime client's `conversation.item.create` with `input_audio` goes upstream as
a `conversation.item.create` with an `input_audio` part in the upstream's input format (the
audio bytes the client sent, after format conversion), under the item's id. Checked:

* with a local STT (`MOKSORI_REALTIME_TURN_DETECTION=moksori`), a G.711 μ-law client: the
  upstream gets the item as μ-law audio (its input format follows the client's), the bytes as the
  client sent them; the item's transcript and memory (`conversation.item.retrieve`) are the local
  STT's words, not the upstream's own transcript of it; a reply asked for is made;
* without a local STT (the upstream's turn detection), a 24 kHz PCM client: the upstream gets the
  very bytes; its transcription of the item is the item's words (the client's
  `...input_audio_transcription.completed` and `conversation.item.done`, and memory); when its
  transcription fails, `...input_audio_transcription.failed` with its reason; when it never
  comes, `.failed` after the brain's wait (`TRANSCRIPT_WAIT_S`);
* an upstream that refuses the audio item (an `error` answering its `conversation.item.create`):
  with a local STT the item goes up as words once they have come (the text path), and the client
  hears no `error`; without one, `...input_audio_transcription.failed` says the upstream refused it;
* bad input is still a clean `error` and never reaches the upstream: audio that is not base64,
  audio longer than `MOKSORI_SERVER_MAX_INPUT_BUFFER_S`.
* an out-of-band `response.create` whose own `input` has audio (with and without a local STT):
  the upstream's `response.create` carries that audio as an `input_audio` part (converted to its
  input format), not words, and the response is made.
* one whose `input` names an audio item (`item_reference`, with and without a local STT): the
  upstream's `response.create` names the upstream's own item (its id there, not the client's),
  not a transcript of it, and the response is made; naming an assistant reply (the upstream's
  item, under its own id) and an item an input guardrail had deleted upstream: the reply is named,
  the deleted item goes as the words memory has of it, and the response is made (the stand-in
  refuses a reference to an item it does not hold).

Real components: `moksori serve` with the realtime brain (Silero, and Whisper base with the local
STT), the official `openai` SDK's Realtime client (every event validated against its union), real
recorded speech. The upstream is the scripted stand-in of test_realtime_brain_tool_items served
over a real WebSocket on loopback, taught here to transcribe an audio item as OpenAI's does
(`...input_audio_transcription.completed` for the item's audio part, after the item).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from servers import ServerProcess
from test_realtime_brain_audio_items import still_answers
from test_realtime_brain_tool_items import Upstream
from test_realtime_clients import GA_ADAPTER, EventLog, ga_client, moksori_serve

from moksori.audio.frames import Frame
from moksori.audio.g711 import ulaw_decode, ulaw_encode
from moksori.audio.resample import resample
from moksori.audio.wav import load_audio
from moksori.brains.realtime.words import TRANSCRIPT_WAIT_S
from moksori.engine.memory import BLOCKED_TEXT
from moksori.testing.fake_realtime import FakeRealtimeServer
from speech import prepared_data_dir, requires_speech, utt

pytestmark = [pytest.mark.models, requires_speech]

CLIP = "en_003"  # "unless to be rather cold hearted and rather selfish is to be ill disposed"
HEARD = "The upstream heard a voice."  # what the stand-in's transcription of an audio item says
BLOCKED_WORD = "zebrafish"  # the guarded server's input guardrail blocks a turn that says it


class TranscribingUpstream(FakeRealtimeServer):
    """The scripted upstream, transcribing a client's audio item as OpenAI's does: after the
    item, `...input_audio_transcription.completed` for each of its audio parts (or `.failed`,
    or nothing at all, as the test asks)."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "transcribe"  # transcribe | fail | silent | refuse (an audio item is an `error`)

    def on_client(self, conn: Any, e: dict[str, Any]) -> None:
        if self.mode == "refuse" and e.get("type") == "conversation.item.create" and any(
                p.get("type") == "input_audio" for p in e["item"].get("content") or []):
            conn.sess.received.append(dict(e))
            self._error(conn, "audio content is not supported here", "invalid_value", e.get("event_id"),
                        param="item.content")
            return
        before = len(conn.sess.items)
        super().on_client(conn, e)
        if e.get("type") != "conversation.item.create" or len(conn.sess.items) == before:
            return
        item = e["item"]
        for index, part in enumerate(item.get("content") or []):
            if part.get("type") != "input_audio" or not part.get("audio") or self.mode == "silent":
                continue
            ev = self._ev(conn)
            if self.mode == "fail":
                self._emit(conn, ev.input_audio_transcription_failed(item["id"], index, "the audio is unclear",
                                                                     code="audio_unintelligible"))
            else:
                self._emit(conn, ev.input_audio_transcription_completed(item["id"], index, HEARD, audio_seconds=5.3))


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    up.fake = TranscribingUpstream()
    with up:
        yield up


def _serve(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, name: str, **env: str) -> Any:
    return moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp(name),
                         MOKSORI_BRAIN="realtime",
                         MOKSORI_REALTIME_URL=f"ws://127.0.0.1:{upstream.port}/v1/realtime?model=gpt-realtime",
                         MOKSORI_REALTIME_API_KEY="sk-fake-upstream", MOKSORI_REALTIME_RESPONSE_TIMEOUT_S="60",
                         MOKSORI_STORE_URL="none", MOKSORI_LANGUAGE="en", MOKSORI_CONFIG="",
                         MOKSORI_SERVER_MAX_INPUT_BUFFER_S="20", **env)


@pytest.fixture(scope="module")
def local_stt(tmp_path_factory, upstream: Upstream) -> Iterator[ServerProcess]:
    """Moksori's own turn detection: the local STT (Whisper base) is loaded."""
    with _serve(tmp_path_factory, upstream, "serve-audio-up-local", MOKSORI_REALTIME_TURN_DETECTION="moksori") as srv:
        yield srv


@pytest.fixture(scope="module")
def no_stt(tmp_path_factory, upstream: Upstream) -> Iterator[ServerProcess]:
    """The upstream's turn detection: no local STT."""
    with _serve(tmp_path_factory, upstream, "serve-audio-up-no-stt") as srv:
        yield srv


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, upstream: Upstream) -> Iterator[ServerProcess]:
    """No local STT, and an input guardrail blocking a word (BLOCKED_WORD)."""
    with _serve(tmp_path_factory, upstream, "serve-audio-up-guarded", MOKSORI_GUARDRAILS_BLOCK_TERMS_EN=BLOCKED_WORD) \
            as srv:
        yield srv


def clip(rate: int) -> np.ndarray:
    return resample(load_audio(utt(CLIP).path), rate).samples


@asynccontextmanager
async def session(served: ServerProcess, fmt: dict[str, Any], upstream: Upstream) -> AsyncIterator[tuple[Any, EventLog]]:
    """A text-only session with transcription, no turn detection, input audio in `fmt`; its
    upstream connection is the stand-in's latest (`upstream.received`). On the way out the
    stand-in transcribes again, and the server must have logged no traceback."""
    connections = len(upstream.fake.sessions)
    conn = await ga_client(served.port).realtime.connect(model="gpt-realtime").enter()
    log = EventLog(conn.recv_bytes, adapter=GA_ADAPTER, parse=conn.parse_event)
    try:
        await log.wait("session.created")
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "audio": {"input": {
            "format": fmt, "transcription": {"model": "whisper-1"}, "turn_detection": None}}})
        await log.wait("session.updated")
        for _ in range(200):
            if len(upstream.fake.sessions) > connections:
                break
            await asyncio.sleep(0.05)
        assert len(upstream.fake.sessions) == connections + 1
        yield conn, log
    finally:
        upstream.fake.mode = "transcribe"
        await log.close()
        await conn.close()
    assert "Traceback" not in served.log_text()


async def sent_upstream(upstream: Upstream, item_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The `conversation.item.create` of `item_id` the upstream received (as sent: audio and all)."""
    for _ in range(int(timeout / 0.05)):
        for e in upstream.received("conversation.item.create"):
            if e["item"].get("id") == item_id:
                return e
        await asyncio.sleep(0.05)
    raise AssertionError(f"the upstream never got item {item_id}: {upstream.received('conversation.item.create')}")


async def retrieved(conn: Any, log: EventLog, item_id: str) -> dict[str, Any]:
    n = len(log.events)
    await conn.conversation.item.retrieve(item_id=item_id)
    return (await log.wait("conversation.item.retrieved", start=n))["item"]


async def add_audio_item(conn: Any, item_id: str, audio: bytes) -> None:
    """A user item of one audio part, in the session's input format."""
    await conn.conversation.item.create(item={"type": "message", "role": "user", "id": item_id, "content": [
        {"type": "input_audio", "audio": base64.b64encode(audio).decode()}]})


async def sent_as_audio(upstream: Upstream, audio: bytes, timeout: float = 10.0) -> dict[str, Any]:
    """The `conversation.item.create` the upstream received with this audio (under whatever id)."""
    for _ in range(int(timeout / 0.05)):
        for e in upstream.received("conversation.item.create"):
            parts = e["item"].get("content") or []
            if any(p.get("type") == "input_audio" and base64.b64decode(p.get("audio") or "") == audio for p in parts):
                return e
        await asyncio.sleep(0.05)
    raise AssertionError("the upstream never got the audio item")


def audio_part(event: dict[str, Any]) -> bytes:
    parts = event["item"]["content"]
    assert [p["type"] for p in parts] == ["input_audio"], parts
    return base64.b64decode(parts[0]["audio"])


async def test_with_a_local_stt_the_upstream_hears_the_audio_and_the_words_are_local(local_stt, upstream) -> None:
    ulaw = ulaw_encode(clip(8000))
    async with session(local_stt, {"type": "audio/pcmu"}, upstream) as (conn, log):
        n = len(log.events)
        await add_audio_item(conn, "item_local_words", ulaw)
        await conn.response.create()
        sent = await sent_upstream(upstream, "item_local_words")
        # the upstream's input format followed the client's (G.711 μ-law), the bytes as they came
        fmt = [e["session"]["audio"]["input"]["format"] for e in upstream.received("session.update")
               if "format" in ((e.get("session") or {}).get("audio") or {}).get("input", {})]
        assert fmt and fmt[-1]["type"] == "audio/pcmu", fmt
        assert audio_part(sent) == ulaw_encode(ulaw_decode(ulaw))
        assert audio_part(sent) == ulaw
        done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == "item_local_words", start=n,
                              timeout=120)
        words = done["item"]["content"][0]["transcript"]
        assert "selfish" in words.lower() and HEARD not in words, words
        completed = await log.wait("conversation.item.input_audio_transcription.completed",
                                   lambda e: e["item_id"] == "item_local_words", start=n)
        assert completed["transcript"] == words
        assert (await retrieved(conn, log, "item_local_words"))["content"][0]["transcript"] == words
        reply = await log.wait("response.done", start=n, timeout=120)
        assert reply["response"]["status"] == "completed", reply["response"]
        kinds = [(e["type"], (e.get("item") or {}).get("id"))
                 for e in upstream.received("conversation.item.create", "response.create")]
        assert kinds[-2:] == [("conversation.item.create", "item_local_words"), ("response.create", None)], kinds
        assert not log.of("error"), log.of("error")
        assert not log.problems, log.problems
        log.check_ids()


async def test_without_a_local_stt_the_upstream_hears_the_audio_and_its_words_are_the_item_s(no_stt, upstream) -> None:
    upstream.fake.mode = "transcribe"
    pcm = clip(24000).astype("<i2").tobytes()
    async with session(no_stt, {"type": "audio/pcm", "rate": 24000}, upstream) as (conn, log):
        n = len(log.events)
        await add_audio_item(conn, "item_upstream_words", pcm)
        sent = await sent_upstream(upstream, "item_upstream_words")
        assert audio_part(sent) == pcm  # the very bytes the client sent
        completed = await log.wait("conversation.item.input_audio_transcription.completed",
                                   lambda e: e["item_id"] == "item_upstream_words", start=n, timeout=30)
        assert completed["transcript"] == HEARD and completed["content_index"] == 0, completed
        done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == "item_upstream_words", start=n)
        assert done["item"]["content"][0]["transcript"] == HEARD, done["item"]
        assert log.events.index(completed) < log.events.index(done)
        assert not log.of("conversation.item.input_audio_transcription.failed"), log.types()[n:]
        assert (await retrieved(conn, log, "item_upstream_words"))["content"][0]["transcript"] == HEARD
        await conn.response.create()
        reply = await log.wait("response.done", start=n, timeout=60)
        assert reply["response"]["status"] == "completed", reply["response"]
        assert not log.of("error"), log.of("error")
        assert not log.problems, log.problems
        log.check_ids()


@pytest.mark.parametrize("mode", ["fail", "silent"])
async def test_without_a_local_stt_a_failed_upstream_transcription_is_told(no_stt, upstream, mode) -> None:
    """The upstream heard the audio but gave no words: `...failed` (its reason, or the brain's
    wait ran out), the item in the conversation without words, and the session goes on."""
    upstream.fake.mode = mode
    pcm = clip(24000).astype("<i2").tobytes()
    item_id = f"item_unheard_{mode}"
    async with session(no_stt, {"type": "audio/pcm", "rate": 24000}, upstream) as (conn, log):
        n = len(log.events)
        await add_audio_item(conn, item_id, pcm)
        assert audio_part(await sent_upstream(upstream, item_id)) == pcm
        failed = await log.wait("conversation.item.input_audio_transcription.failed",
                                lambda e: e["item_id"] == item_id, start=n, timeout=TRANSCRIPT_WAIT_S + 20)
        if mode == "fail":
            assert failed["error"]["message"] == "the audio is unclear", failed
        else:
            assert "did not transcribe" in failed["error"]["message"], failed
        done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == item_id, start=n)
        assert done["item"]["content"][0]["transcript"] is None, done["item"]
        assert not log.of("conversation.item.input_audio_transcription.completed")
        await still_answers(conn, log, n)
        log.check_ids()


async def test_an_item_reference_to_audio_without_words_still_names_it_upstream(no_stt, upstream) -> None:
    """An audio item whose words could not be had (the upstream's transcription failed, and there
    is no local STT) is still in the upstream's conversation: a response naming it names the
    upstream's copy, the model hears it, and the response is made (the pipeline, which needs the
    words, fails such a response: test_realtime_input_transcription_failures.py)."""
    upstream.fake.mode = "fail"
    pcm = clip(24000).astype("<i2").tobytes()
    item_id = "item_unheard_named"
    async with session(no_stt, {"type": "audio/pcm", "rate": 24000}, upstream) as (conn, log):
        n = len(log.events)
        await add_audio_item(conn, item_id, pcm)
        up_id = (await sent_as_audio(upstream, pcm))["item"]["id"]
        await log.wait("conversation.item.input_audio_transcription.failed", lambda e: e["item_id"] == item_id,
                       start=n, timeout=30)
        n = len(log.events)
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"],
                                             "input": [{"type": "item_reference", "id": item_id}]})
        done = await log.wait("response.done", start=n, timeout=60)
        assert done["response"]["status"] == "completed", done["response"]
        assert upstream.fake.sessions[-1].response_inputs()[-1] == [{"type": "item_reference", "id": up_id}]
        assert not log.of("error"), log.of("error")
        log.check_ids()


async def test_bad_audio_items_are_a_clean_error_and_never_go_upstream(no_stt, upstream) -> None:
    async with session(no_stt, {"type": "audio/pcm", "rate": 24000}, upstream) as (conn, log):
        before = len(upstream.received("conversation.item.create"))
        n = len(log.events)
        await conn.conversation.item.create(item={"type": "message", "role": "user", "id": "item_not_b64",
                                                  "content": [{"type": "input_audio", "audio": "%%% not base64"}]})
        bad = await log.wait("error", start=n)
        assert bad["error"]["code"] == "invalid_value", bad
        long = np.zeros(24000 * 25, dtype="<i2").tobytes()  # 25 s: over MOKSORI_SERVER_MAX_INPUT_BUFFER_S=20
        n = len(log.events)
        await add_audio_item(conn, "item_too_long", long)
        too_long = await log.wait("error", start=n)
        assert too_long["error"]["code"] == "audio_too_long", too_long
        # the session goes on: a good item still goes up, as audio
        pcm = clip(24000).astype("<i2").tobytes()
        await add_audio_item(conn, "item_after_bad", pcm)
        assert audio_part(await sent_upstream(upstream, "item_after_bad")) == pcm
        ids = [e["item"].get("id") for e in upstream.received("conversation.item.create")[before:]]
        assert ids == ["item_after_bad"], ids
        assert not log.of("conversation.item.added") or all(
            e["item"]["id"] == "item_after_bad" for e in log.of("conversation.item.added")), log.types()


@pytest.mark.parametrize("server", ["local_stt", "no_stt"])
async def test_a_response_s_own_input_audio_goes_upstream_as_audio(request, upstream, server) -> None:
    """An out-of-band `response.create` whose `input` is a user message of text and audio: the
    upstream's `response.create` has that message, its text and its audio in order, the audio in
    the upstream's input format (the client's μ-law resampled to 24 kHz PCM; or 24 kHz PCM as it
    came), and the response is made (without a local STT it failed: no words)."""
    served = request.getfixturevalue(server)
    upstream.fake.mode = "transcribe"
    if server == "local_stt":
        fmt: dict[str, Any] = {"type": "audio/pcmu"}
        raw = ulaw_encode(clip(8000))
        expected = resample(Frame(ulaw_decode(raw), 8000), 24000).to_bytes()
    else:
        fmt = {"type": "audio/pcm", "rate": 24000}
        raw = expected = clip(24000).astype("<i2").tobytes()
    async with session(served, fmt, upstream) as (conn, log):
        n = len(log.events)
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"], "input": [
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Who says this?"},
                {"type": "input_audio", "audio": base64.b64encode(raw).decode()}]}]})
        done = await log.wait("response.done", start=n, timeout=120)
        assert done["response"]["status"] == "completed", done["response"]
        asked = upstream.received("response.create")
        assert len(asked) == 1, asked
        sent = asked[0]["response"]
        assert sent["conversation"] == "none"
        parts = sent["input"][0]["content"]
        assert [p["type"] for p in parts] == ["input_text", "input_audio"], parts
        assert parts[0]["text"] == "Who says this?"
        assert base64.b64decode(parts[1]["audio"]) == expected
        assert not upstream.received("conversation.item.create")  # (out of band: not in the conversation)
        assert not log.of("error"), log.of("error")
        log.check_ids()


@pytest.mark.parametrize("server", ["local_stt", "no_stt"])
async def test_an_upstream_that_refuses_the_audio_gets_the_words(request, upstream, server) -> None:
    served = request.getfixturevalue(server)
    upstream.fake.mode = "refuse"
    pcm = clip(24000).astype("<i2").tobytes()
    item_id = f"item_refused_{server}"
    async with session(served, {"type": "audio/pcm", "rate": 24000}, upstream) as (conn, log):
        n = len(log.events)
        await add_audio_item(conn, item_id, pcm)
        assert audio_part(await sent_upstream(upstream, item_id)) == pcm  # (tried as audio first)
        if server == "local_stt":
            done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == item_id, start=n, timeout=120)
            words = done["item"]["content"][0]["transcript"]
            assert "selfish" in words.lower(), words
            for _ in range(200):
                texts = [e["item"] for e in upstream.received("conversation.item.create")
                         if e["item"].get("id") == item_id and e["item"]["content"][0]["type"] == "input_text"]
                if texts:
                    break
                await asyncio.sleep(0.05)
            assert [i["content"] for i in texts] == [[{"type": "input_text", "text": words}]], texts
            await asyncio.sleep(0.5)
            assert not log.of("error"), log.of("error")
        else:
            failed = await log.wait("conversation.item.input_audio_transcription.failed",
                                    lambda e: e["item_id"] == item_id, start=n, timeout=30)
            assert "refused" in failed["error"]["message"], failed
            done = await log.wait("conversation.item.done", lambda e: e["item"]["id"] == item_id, start=n)
            assert done["item"]["content"][0]["transcript"] is None, done["item"]
        log.check_ids()


@pytest.mark.parametrize("server", ["local_stt", "no_stt"])
async def test_an_item_reference_in_a_response_s_input_names_the_upstream_s_item(request, upstream, server) -> None:
    """An out-of-band `response.create` whose `input` names an audio item of the conversation:
    the upstream's `response.create` names the upstream's own item (the client's id is over the
    32 characters OpenAI takes, so the upstream's id of it is another one), so the model hears the
    audio, not a transcript of it; and the response is made."""
    served = request.getfixturevalue(server)
    upstream.fake.mode = "transcribe"
    pcm = clip(24000).astype("<i2").tobytes()
    item_id = f"item_referenced_{server}_{'x' * 30}"
    async with session(served, {"type": "audio/pcm", "rate": 24000}, upstream) as (conn, log):
        n = len(log.events)
        await add_audio_item(conn, item_id, pcm)
        up_id = (await sent_as_audio(upstream, pcm))["item"]["id"]
        assert up_id != item_id
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"],
                                             "input": [{"type": "item_reference", "id": item_id}]})
        done = await log.wait("response.done", start=n, timeout=120)
        assert done["response"]["status"] == "completed", done["response"]
        assert upstream.fake.sessions[-1].response_inputs() == [[{"type": "item_reference", "id": up_id}]]
        assert not log.of("error"), log.of("error")
        log.check_ids()


async def test_a_response_naming_an_item_the_upstream_holds_does_not_wait_for_its_local_words(
        local_stt, upstream) -> None:
    """With a local STT, an audio item's words take the STT's time (here 15 s of speech), but the
    upstream holds the item and hears it: a response naming it is made at once, named upstream,
    before the local words come (they still come, as the item's transcript)."""
    upstream.fake.mode = "transcribe"
    pcm = np.tile(clip(24000), 3).astype("<i2").tobytes()
    item_id = "item_named_before_words"
    async with session(local_stt, {"type": "audio/pcm", "rate": 24000}, upstream) as (conn, log):
        n = len(log.events)
        await add_audio_item(conn, item_id, pcm)
        up_id = (await sent_as_audio(upstream, pcm))["item"]["id"]
        await log.wait("conversation.item.added", lambda e: e["item"]["id"] == item_id, start=n)
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"],
                                             "input": [{"type": "item_reference", "id": item_id}]})
        done = await log.wait("response.done", start=n, timeout=60)
        assert done["response"]["status"] == "completed", done["response"]
        assert upstream.fake.sessions[-1].response_inputs()[-1] == [{"type": "item_reference", "id": up_id}]
        words = log.of("conversation.item.input_audio_transcription.completed")
        assert not [e for e in words if e["item_id"] == item_id], "the response waited for the local words"
        heard = await log.wait("conversation.item.input_audio_transcription.completed",
                               lambda e: e["item_id"] == item_id, start=n, timeout=60)
        assert "cold" in heard["transcript"].lower(), heard  # the local STT's words, not the stand-in's
        assert not log.of("error"), log.of("error")
        log.check_ids()


async def test_an_item_reference_to_an_item_the_upstream_does_not_have_goes_as_its_words(guarded, upstream) -> None:
    """A reply of the upstream is named by the upstream's id of it; a user item the input
    guardrail blocked (deleted upstream, `BLOCKED_TEXT` here) cannot be named there, so the words
    memory has of it go instead; the response is made."""
    upstream.fake.mode = "transcribe"
    async with session(guarded, {"type": "audio/pcm", "rate": 24000}, upstream) as (conn, log):
        n = len(log.events)
        await conn.conversation.item.create(item={"type": "message", "role": "user", "id": "item_hello", "content": [
            {"type": "input_text", "text": "Hello there."}]})
        await conn.response.create()
        reply = (await log.wait("response.done", start=n, timeout=60))["response"]
        assert reply["status"] == "completed", reply
        reply_id = reply["output"][0]["id"]
        up_reply = next(i["id"] for i in upstream.fake.sessions[-1].items if i.get("role") == "assistant")
        assert up_reply != reply_id
        n = len(log.events)
        await conn.conversation.item.create(item={"type": "message", "role": "user", "id": "item_blocked", "content": [
            {"type": "input_text", "text": f"Tell me about the {BLOCKED_WORD}."}]})
        await conn.response.create()
        safe = (await log.wait("response.done", start=n, timeout=60))["response"]
        assert safe["status"] == "completed", safe
        assert [e["item_id"] for e in upstream.received("conversation.item.delete")] == ["item_blocked"]
        assert upstream.fake.sessions[-1].item("item_blocked") is None
        n = len(log.events)
        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"], "input": [
            {"type": "item_reference", "id": reply_id}, {"type": "item_reference", "id": "item_blocked"}]})
        done = await log.wait("response.done", start=n, timeout=60)
        assert done["response"]["status"] == "completed", done["response"]
        assert upstream.fake.sessions[-1].response_inputs()[-1] == [
            {"type": "item_reference", "id": up_reply},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": BLOCKED_TEXT}]}]
        assert not log.of("error"), log.of("error")
        log.check_ids()
