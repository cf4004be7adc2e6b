"""A live partial transcript never delays the turn's final transcript (engine/partials.py).

Partials decode the turn so far every 1.2 s; the decode running when the user stops used to
hold the model until its end, and the final decode queued behind it. Now a partial's decode is
preemptible background work: between its steps it gives way once interactive work (the final
decode) waits for the same model (`threads.should_yield`).

* in virtual time, with `OneModelSTT`, a fake that stands in for Whisper's timing only (one
  decode at a time, interactive calls first, an encoder step then a decoder step, giving way
  between them like WhisperSTT): the final decode starts when the partial's current step ends,
  not when the whole partial ends; the captions are still published while the user speaks;
* with real threads: `should_yield` is true only inside a background job whose model has
  interactive work queued;
* on real speech with the real Whisper model: a preemptible decode caught in its encoder when
  a final decode is queued gives way after the encoder (its decoder never runs), and the final
  transcript is the one the model gives alone.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, replace

import numpy as np
import pytest
from speech import load16k, prepared_data_dir, requires_speech, utt

from moksori.engine import events as E
from moksori.engine.clock import Clock
from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.providers import threads
from moksori.providers.base import STT, STTCaps, STTOptions, Transcript, one_chunk
from moksori.providers.threads import BACKGROUND, INTERACTIVE, ModelExecutor, run_blocking
from moksori.testing.fakes import fake_stack, quiet, tone
from moksori.testing.harness import Recording, play_into_session, settle
from moksori.testing.virtual_time import run_virtual

T = 10.0  # upper bound for any real wait in these tests

# --------------------------------------------------------------------------- virtual time


@dataclass
class Call:
    priority: int
    preemptible: bool
    seconds: float
    queued: float
    start: float = -1.0
    end: float = -1.0
    gave_way: bool = False


class OneModelSTT(STT):
    """Stands in for Whisper's timing in virtual time (not its words): one decode at a time,
    interactive calls before background ones, `enc_s` of encoder per second of audio then
    `dec_s` of decoder; a preemptible background call gives way after its encoder step if an
    interactive call is waiting (what WhisperSTT does between its steps)."""

    name = "one-model-stt"
    caps = STTCaps()

    def __init__(self, text_for: Callable[[float], str], *, enc_s: float = 0.15, dec_s: float = 0.25) -> None:
        self.text_for, self.enc_s, self.dec_s = text_for, enc_s, dec_s
        self.clock: Clock | None = None
        self.calls: list[Call] = []
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def _now(self) -> float:
        assert self.clock is not None
        return self.clock.now()

    async def _acquire(self, priority: int) -> None:
        if not self._busy:
            self._busy = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # it was handed the model just as it was cancelled
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)  # the model passes to it
                return
        self._busy = False

    def _interactive_waiting(self) -> bool:
        return any(p == INTERACTIVE and not f.done() for p, _, f in self._waiting)

    async def transcribe(self, audio: AsyncIterable[np.ndarray], opts: STTOptions) -> AsyncIterator[Transcript]:
        seconds = sum(len(a) for a in [a async for a in audio]) / 16000
        call = Call(threads.current_priority(), opts.preemptible, seconds, self._now())
        self.calls.append(call)
        await self._acquire(call.priority)
        try:
            call.start = self._now()
            await asyncio.sleep(self.enc_s * seconds)
            if opts.preemptible and call.priority > INTERACTIVE and self._interactive_waiting():
                call.gave_way, call.end = True, self._now()
                return
            await asyncio.sleep(self.dec_s)
            call.end = self._now()
        finally:
            self._release()
        yield Transcript(self.text_for(seconds), opts.language or "en", True, seconds)


def _words(seconds: float) -> str:
    return " ".join(["word"] * max(1, int(2 * seconds)))


async def _one_turn(partial_yield: bool) -> tuple[Recording, OneModelSTT, list[E.UserTranscriptDelta]]:
    stt = OneModelSTT(_words)
    s = Session(fake_stack(stt=stt), SessionConfig(output_rate=16000, partial_interval_ms=1200,
                                                    partial_yield=partial_yield))
    stt.clock = s.clock
    deltas: list[E.UserTranscriptDelta] = []  # stream events: not in the Recording's timeline
    s.bus.listen(lambda ev: deltas.append(ev) if isinstance(ev, E.UserTranscriptDelta) else None)
    rec = await play_into_session(s, [quiet(0.3), tone(3.0), quiet(3.0)])
    await settle(s)
    await s.close()
    return rec, stt, deltas


def _final_call(stt: OneModelSTT, stopped: float) -> Call:
    finals = [c for c in stt.calls if c.priority == INTERACTIVE and c.queued >= stopped]
    assert len(finals) == 1, stt.calls  # one pause, one speculation, which ends the turn
    return finals[0]


def _partial_at(stt: OneModelSTT, t: float) -> Call:
    running = [c for c in stt.calls if c.priority == BACKGROUND and c.start <= t < c.end]
    assert len(running) == 1, stt.calls  # the scenario is built so that one is running then
    return running[0]


def test_final_decode_waits_for_a_running_partial_without_give_way() -> None:
    rec, stt, _ = run_virtual(_one_turn(partial_yield=False))
    stopped = rec.of(E.UserSpeechStopped)[0].t
    final = _final_call(stt, stopped)
    partial = _partial_at(stt, final.queued)
    assert not partial.gave_way
    assert final.start == pytest.approx(partial.end)  # after the partial's encoder *and* decoder
    assert final.start - final.queued > stt.dec_s


def test_a_running_partial_gives_way_to_the_final_decode() -> None:
    rec_on, stt_on, deltas = run_virtual(_one_turn(partial_yield=True))
    rec_off, _, deltas_off = run_virtual(_one_turn(partial_yield=False))
    stopped = rec_on.of(E.UserSpeechStopped)[0].t
    final = _final_call(stt_on, stopped)
    partial = _partial_at(stt_on, final.queued)
    assert partial.gave_way and partial.preemptible
    assert final.start == pytest.approx(partial.start + stt_on.enc_s * partial.seconds)  # its encoder only
    # the final transcript is the same, and comes one partial decoder step sooner
    assert rec_on.of(E.UserTranscript)[0].text == rec_off.of(E.UserTranscript)[0].text
    done_on = rec_on.of(E.UserTranscript)[0].t - stopped
    done_off = rec_off.of(E.UserTranscript)[0].t - rec_off.of(E.UserSpeechStopped)[0].t
    assert done_on == pytest.approx(done_off - stt_on.dec_s)
    # captions still flow while the user speaks: the partials with no final waiting finished
    assert deltas and all(d.t < stopped for d in deltas)
    assert [d.text for d in deltas] == [d.text for d in deltas_off]
    partials = [c for c in stt_on.calls if c.priority == BACKGROUND]
    assert [c.gave_way for c in partials] == [False] * (len(partials) - 1) + [True]


# --------------------------------------------------------------------------- real threads


def test_should_yield_only_in_a_background_job_with_interactive_work_waiting() -> None:
    ex = ModelExecutor("test-yield")
    started, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def background_job() -> bool:
        started.set()
        seen.append(threads.should_yield())  # nothing queued yet
        assert release.wait(T)
        return threads.should_yield()

    def interactive_job() -> bool:
        return threads.should_yield()

    async def main() -> tuple[bool, bool]:
        assert not threads.should_yield()  # not in a model's thread at all
        with threads.background():
            bg = asyncio.ensure_future(run_blocking(background_job, executor=ex))
        assert await asyncio.to_thread(started.wait, T)
        fg = asyncio.ensure_future(run_blocking(interactive_job, executor=ex))  # queued behind it
        while ex.stats.queued_interactive == 0:
            await asyncio.sleep(0.001)
        release.set()
        return await asyncio.wait_for(bg, T), await asyncio.wait_for(fg, T)

    bg_yields, fg_yields = asyncio.run(main())
    assert seen == [False]
    assert bg_yields is True
    assert fg_yields is False  # interactive work never gives way
    ex.shutdown()


# --------------------------------------------------------------------------- real speech


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    from moksori.providers.registry import build_stt
    from moksori.settings import load_settings

    return build_stt(load_settings(data_dir=prepared_data_dir(tmp_path_factory)))


@pytest.mark.models
@requires_speech
def test_whisper_partial_caught_in_its_encoder_gives_way_on_real_speech(whisper) -> None:
    audio = load16k(utt("en_002").path)
    opts = STTOptions(language="en")
    alone = whisper.transcribe_array(audio, opts)
    assert alone.text.strip()

    in_encoder = threading.Event()
    decodes: list[int] = []
    real_encode, real_decode = whisper._encode, whisper._decode
    first = [True]

    def encode(feats):  # the partial's encoder is still running when the user stops
        if first[0]:
            first[0] = False
            in_encoder.set()
            for _ in range(int(T / 0.005)):
                if whisper.executor.stats.queued_interactive:
                    break
                threading.Event().wait(0.005)
        return real_encode(feats)

    def decode(*a, **kw):
        decodes.append(1)
        return real_decode(*a, **kw)

    whisper._encode, whisper._decode = encode, decode

    async def main() -> tuple[list[Transcript], list[Transcript]]:
        async def partial() -> list[Transcript]:
            threads.set_background()
            return [tr async for tr in whisper.transcribe(one_chunk(audio), replace(opts, preemptible=True))]

        p = asyncio.ensure_future(partial())
        assert await asyncio.to_thread(in_encoder.wait, T)
        final = [tr async for tr in whisper.transcribe(one_chunk(audio), opts)]
        return await asyncio.wait_for(p, T), final

    try:
        partial_out, final_out = asyncio.run(main())
    finally:
        del whisper._encode, whisper._decode
    assert partial_out == []  # it gave way: nothing (a caption is skipped, never a wrong one)
    assert len(decodes) == 1  # only the final decode ran the decoder
    assert [tr.text for tr in final_out] == [alone.text]
