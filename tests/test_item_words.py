"""A Realtime client's audio item (`conversation.item.create` with `input_audio`): in the
conversation at once, its words transcribed in the background (engine/item_words.py), in
virtual time with scripted fakes (ScriptedSTT, ScriptedLLM: they stand in for the models only to
control timing).

The connection's messages go through the server's own per-connection `Inbox`, one at a time as
on a socket, so "handled at once" means what a client sees. Before the fix the item's audio was
transcribed inside its handler: a `response.cancel` sent right after it waited for the whole
transcription. The real server with Whisper and another session's live turn is
test_realtime_waits.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import numpy as np

from moksori.audio.frames import concat
from moksori.audio.resample import resample
from moksori.engine.item_words import GIVE_WAY_TRIES, WINDOW_S
from moksori.protocols import realtime as rt
from moksori.errors import ProviderError
from moksori.providers.base import STT, STTCaps, STTOptions, Transcript
from moksori.server.realtime_conn import RealtimeConnection
from moksori.settings import Settings
from moksori.testing.fakes import ScriptedLLM, ScriptedSTT, fake_stack, quiet, tone
from moksori.testing.virtual_time import run_virtual
from moksori.transport import Inbox

STT_S = 10.0  # each window's decode, in virtual seconds
WORDS = "we are gathered to review the results"


def audio_item(seconds_of_speech: tuple[float, ...], *, item_id: str | None = None) -> dict[str, Any]:
    """A user item of pcm16 24 kHz: tones ("speech" for the EnergyVAD) with 1 s pauses between."""
    frames = [quiet(0.5)]
    for s in seconds_of_speech:
        frames += [tone(s), quiet(1.0)]
    pcm = resample(concat(frames), 24000).samples
    item: dict[str, Any] = {"type": "message", "role": "user", "content": [
        {"type": "input_audio", "audio": base64.b64encode(pcm.astype("<i2").tobytes()).decode()}]}
    if item_id:
        item["id"] = item_id
    return {"type": "conversation.item.create", "item": item}


def text_item(text: str) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                         "content": [{"type": "input_text", "text": text}]}}


class Wire:
    """A RealtimeConnection fed through an Inbox, as the server's route feeds it; every event
    sent is kept with the virtual time it was sent at."""

    def __init__(self, settings: Settings | None = None, *, stt: STT | None = None,
                 llm: ScriptedLLM | None = None) -> None:
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.llm = llm or ScriptedLLM("Here is my answer.")
        self.stt = stt or ScriptedSTT(delay_s=STT_S, by_duration=lambda s: WORDS)
        self.conn = RealtimeConnection(fake_stack(stt=self.stt, llm=self.llm), settings or Settings(),
                                       rt.Flavor.GA, self._send)
        self.inbox: Inbox[str | bytes] = Inbox(self.conn.on_message, name="test-inbox", limit=64)

    async def _send(self, ev: dict[str, Any]) -> None:
        self.sent.append((asyncio.get_running_loop().time(), ev))

    async def start(self) -> None:
        await self.conn.start()
        await self.put({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "transcription": {"model": "whisper-1"}, "turn_detection": None}}}})

    async def put(self, *events: dict[str, Any]) -> None:
        for ev in events:
            await self.inbox.put(json.dumps(ev))

    def of(self, typ: str) -> list[dict[str, Any]]:
        return [e for _, e in self.sent if e["type"] == typ]

    def at(self, typ: str, pred=lambda e: True) -> float:
        return next(t for t, e in self.sent if e["type"] == typ and pred(e))

    async def wait(self, typ: str, pred=lambda e: True, timeout: float = 300.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [e for _, e in self.sent if e["type"] == typ and pred(e)]
            if found:
                return found[0]
            assert loop.time() < deadline, f"no {typ}: {[e['type'] for _, e in self.sent][-12:]}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.inbox.close()
        await self.conn.close()


def errors(w: Wire) -> list[dict[str, Any]]:
    return [e["error"] for e in w.of("error")]


def user_audio_done(e: dict[str, Any]) -> bool:
    return e["item"]["role"] == "user" and e["item"]["content"][0]["type"] == "input_audio"


def test_an_audio_item_is_in_the_conversation_at_once_and_a_reply_waits_for_its_words() -> None:
    """item.create with 32 s of speech: `conversation.item.added` (transcript null) at once; a
    text item and a `response.create` right after are handled at once (the response is created,
    and waits); the words come in windows of at most WINDOW_S, as the transcription events and
    `conversation.item.done`; only then is the LLM asked, with them."""
    async def main() -> tuple[Wire, dict[str, float], list[Any]]:
        w = Wire()
        await w.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await w.put(audio_item((12.0, 9.0, 11.0), item_id="item_audio"), text_item("and one more thing"),
                    {"type": "conversation.item.retrieve", "item_id": "item_audio"}, {"type": "response.create"})
        created = await w.wait("response.created")
        done = await w.wait("response.done")
        times = {"added": w.at("conversation.item.added", lambda e: e["item"]["id"] == "item_audio") - t0,
                 "text_added": w.at("conversation.item.added", lambda e: e["item"]["id"] != "item_audio") - t0,
                 "created": w.at("response.created") - t0,
                 "words": w.at("conversation.item.done", user_audio_done) - t0,
                 "done": w.at("response.done") - t0}
        assert created["response"]["id"] == done["response"]["id"] and done["response"]["status"] == "completed"
        calls = list(w.stt.calls)
        await w.close()
        return w, times, calls

    w, times, calls = run_virtual(main())
    assert errors(w) == []
    assert times["added"] < 0.5 and times["text_added"] < 0.5 and times["created"] < 0.5, times
    assert len(calls) >= 2 and max(calls) <= WINDOW_S, calls  # in windows, not one 34 s job
    assert times["words"] >= len(calls) * STT_S - 0.5 and times["done"] > times["words"], times
    added = next(e for e in w.of("conversation.item.added") if e["item"]["id"] == "item_audio")
    assert added["item"]["content"][0]["transcript"] is None
    retrieved, = w.of("conversation.item.retrieved")
    assert retrieved["item"]["content"][0]["transcript"] is None  # not known yet
    text_added = next(e for e in w.of("conversation.item.added") if e["item"]["id"] != "item_audio")
    assert text_added["previous_item_id"] == "item_audio"  # its place is after the audio item
    completed, = w.of("conversation.item.input_audio_transcription.completed")
    assert completed["item_id"] == "item_audio" and completed["transcript"] == " ".join([WORDS] * len(calls))
    words_done = next(e for e in w.of("conversation.item.done") if user_audio_done(e))
    assert words_done["item"]["content"][0]["transcript"] == completed["transcript"]
    request, = w.llm.requests
    users = [m.content for m in request.messages if m.role == "user"]
    assert users == [f"{completed['transcript']} and one more thing"]  # the item's words, then the text


def test_a_cancel_right_after_an_audio_item_ends_the_reply_waiting_for_it_at_once() -> None:
    """The hunt's case: item.create, response.create, response.cancel sent together. The cancel
    took effect once the item was transcribed (19 s on the real server); now at once, the LLM is
    never asked, and the item's words still come."""
    async def main() -> tuple[Wire, float, float]:
        w = Wire()
        await w.start()
        t0 = asyncio.get_running_loop().time()
        await w.put(audio_item((8.0,)), {"type": "response.create"}, {"type": "response.cancel"})
        done = await w.wait("response.done")
        assert done["response"]["status"] == "cancelled"
        await w.wait("conversation.item.done", user_audio_done)
        cancelled_after = w.at("response.done") - t0
        words_after = w.at("conversation.item.done", user_audio_done) - t0
        await w.close()
        return w, cancelled_after, words_after

    w, cancelled_after, words_after = run_virtual(main())
    assert errors(w) == []
    assert cancelled_after < 0.5, cancelled_after
    assert words_after >= STT_S - 0.5
    assert w.llm.requests == []


def test_deleting_an_item_while_its_words_come_stops_them_and_nothing_waits_for_it() -> None:
    async def main() -> tuple[Wire, float, int]:
        w = Wire()
        await w.start()
        t0 = asyncio.get_running_loop().time()
        await w.put(audio_item((20.0, 8.0), item_id="item_gone"), text_item("hello"),
                    {"type": "conversation.item.delete", "item_id": "item_gone"}, {"type": "response.create"})
        await w.wait("response.done")
        answered = w.at("response.done") - t0
        await asyncio.sleep(3 * STT_S)  # long after its words would have come
        calls = len(w.stt.calls)
        running = len(w.conn.session._ctx.running_tasks())
        await w.close()
        assert running == 0, "the item's transcription went on"
        return w, answered, calls

    w, answered, calls = run_virtual(main())
    assert errors(w) == []
    assert answered < STT_S, answered  # the reply did not wait for the deleted item's words
    assert calls <= 1  # its first window had started; no other
    assert [e["item_id"] for e in w.of("conversation.item.deleted")] == ["item_gone"]
    assert w.of("conversation.item.input_audio_transcription.completed") == []
    assert not [e for e in w.of("conversation.item.done") if e["item"]["id"] == "item_gone"]
    request, = w.llm.requests
    assert [m.content for m in request.messages if m.role == "user"] == ["hello"]


def test_closing_the_session_while_words_come_leaves_nothing_running() -> None:
    async def main() -> tuple[Wire, list[str]]:
        w = Wire()
        await w.start()
        await w.put(audio_item((14.0, 14.0)), {"type": "response.create"})
        await w.wait("response.created")
        await asyncio.sleep(STT_S / 2)  # mid-window
        session = w.conn.session
        await w.close()
        await asyncio.sleep(3 * STT_S)
        left = [t.get_name() for t in asyncio.all_tasks()
                if t is not asyncio.current_task() and not t.done() and "item-words" in t.get_name()]
        assert session.closed and session._ctx.running_tasks() == []
        return w, left

    w, left = run_virtual(main())
    assert left == [] and errors(w) == []
    assert w.of("conversation.item.input_audio_transcription.completed") == []


def test_item_audio_waiting_for_its_words_is_bounded() -> None:
    """At most twice the item limit of audio may wait for its words (`audio_backlog_full`);
    once earlier words have come, there is room again."""
    async def main() -> Wire:
        w = Wire(Settings(server={"max_input_buffer_s": 10}))
        await w.start()
        await w.put(audio_item((7.0,)), audio_item((7.0,)), audio_item((7.0,)))  # 9.5 s each
        await w.wait("error")
        await w.wait("conversation.item.done", user_audio_done)
        await w.put(audio_item((7.0,)))
        while len(w.of("conversation.item.input_audio_transcription.completed")) < 3:
            await asyncio.sleep(1.0)
        await w.close()
        return w

    w = run_virtual(main())
    assert [e["code"] for e in errors(w)] == ["audio_backlog_full"]
    assert "at most 20 s may wait" in errors(w)[0]["message"]
    assert len(w.of("conversation.item.added")) == 3


class GivingWaySTT(STT):
    """Stands in for Whisper under live load: a preemptible decode gives way (yields nothing)
    `give_way` times in a row; a decode that may not give way always answers."""

    name = "giving-way"
    caps = STTCaps()

    def __init__(self, give_way: int) -> None:
        self.give_way = give_way
        self.calls: list[bool] = []  # preemptible?

    async def transcribe(self, audio: AsyncIterable[np.ndarray], opts: STTOptions) -> AsyncIterator[Transcript]:
        _ = [a async for a in audio]
        self.calls.append(opts.preemptible)
        await asyncio.sleep(1.0)
        if opts.preemptible and sum(self.calls) <= self.give_way:
            return
        yield Transcript("words", "en", True)


def test_a_window_gives_way_to_live_turns_but_is_never_starved() -> None:
    """Each window is preemptible (it gives way while a live turn's decode waits) and tried
    again; after GIVE_WAY_TRIES tries in a row it runs to its end."""
    async def main(give_way: int) -> tuple[list[bool], str, int]:
        w = Wire(stt=GivingWaySTT(give_way))
        await w.start()
        await w.put(audio_item((5.0,)))
        done = await w.wait("conversation.item.done", user_audio_done)
        gave_way = w.conn.session.item_words.gave_way
        await w.close()
        assert isinstance(w.stt, GivingWaySTT)
        return w.stt.calls, done["item"]["content"][0]["transcript"], gave_way

    calls, words, gave_way = run_virtual(main(2))
    assert calls == [True, True, True] and words == "words" and gave_way == 2
    calls, words, gave_way = run_virtual(main(100))
    assert calls == [True] * GIVE_WAY_TRIES + [False] and words == "words" and gave_way == GIVE_WAY_TRIES


def test_an_out_of_band_reply_naming_an_item_still_being_transcribed_reads_its_words() -> None:
    """`response.create` with `conversation: "none"` and the item by reference: it reads the
    item's words once they have come (not the empty text it has until then)."""
    async def main() -> Wire:
        w = Wire()
        await w.start()
        await w.put(audio_item((6.0,), item_id="item_named"),
                    {"type": "response.create", "response": {"conversation": "none", "input": [
                        {"type": "item_reference", "id": "item_named"}]}})
        await w.wait("response.done")
        await w.close()
        return w

    w = run_virtual(main())
    assert errors(w) == []
    request, = w.llm.requests
    assert [m.content for m in request.messages if m.role == "user"] == [WORDS]


class FailingSTT(STT):
    """Stands in for an STT provider that is down."""

    name = "failing"
    caps = STTCaps()

    async def transcribe(self, audio: AsyncIterable[np.ndarray], opts: STTOptions) -> AsyncIterator[Transcript]:
        _ = [a async for a in audio]
        await asyncio.sleep(1.0)
        raise ProviderError("the STT is down", retryable=False, provider=self.name)
        yield  # pragma: no cover - an async generator


def test_an_item_whose_words_cannot_be_had_is_a_failed_transcription_and_the_reply_goes_on() -> None:
    async def main() -> Wire:
        w = Wire(stt=FailingSTT())
        await w.start()
        await w.put(audio_item((5.0,)), text_item("are you there"), {"type": "response.create"})
        await w.wait("response.done")
        await w.close()
        return w

    w = run_virtual(main())
    assert errors(w) == [] and w.of("conversation.item.input_audio_transcription.completed") == []
    failed, = w.of("conversation.item.input_audio_transcription.failed")
    assert failed["content_index"] == 0 and failed["error"]["message"] == "the STT is down"
    done = next(e for e in w.of("conversation.item.done") if user_audio_done(e))
    assert done["item"]["content"][0]["transcript"] is None
    request, = w.llm.requests
    assert [m.content for m in request.messages if m.role == "user"] == ["are you there"]
    assert w.of("response.done")[0]["response"]["status"] == "completed"
