"""Incremental STT's background decodes never hold the turn's final decode for long.

A split try (two decodes of the speech so far) or a confirming decode may still be running when
the user stops. They are preemptible background work (`stt.partial_yield`): between their steps
they give way once the pause's decode (interactive) waits for the model, and the try is dropped.
In virtual time with `OneModelSTT` (Whisper's timing, not its words: one decode at a time, an
encoder step then a decoder step, giving way between them), made to run like a model thread: a
decode that has started runs on when its caller is cancelled (the pause cancels the split task,
but not the thread), one that has not started yet is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

import numpy as np
import pytest
from test_partials_give_way import Call, OneModelSTT

from moksori.engine import events as E
from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.providers import threads
from moksori.providers.base import STTCaps, STTOptions, Transcript
from moksori.providers.threads import BACKGROUND, INTERACTIVE
from moksori.testing.fakes import FixedTurn, fake_stack, quiet, tone
from moksori.testing.harness import Recording, play_into_session, settle
from moksori.testing.virtual_time import run_virtual


class IncrementalModelSTT(OneModelSTT):
    caps = STTCaps(incremental=True)

    async def transcribe(self, audio: AsyncIterable[np.ndarray], opts: STTOptions) -> AsyncIterator[Transcript]:
        seconds = sum(len(a) for a in [a async for a in audio]) / 16000
        call = Call(threads.current_priority(), opts.preemptible, seconds, self._now())
        self.calls.append(call)
        started = asyncio.Event()
        job = asyncio.ensure_future(self._job(call, started))
        try:
            done = await asyncio.shield(job)
        except asyncio.CancelledError:
            if not started.is_set():
                job.cancel()  # not started: dropped (run_blocking's future is cancelled)
            raise
        if done:
            yield Transcript(self.text_for(seconds), opts.language or "en", True, seconds)

    async def _job(self, call: Call, started: asyncio.Event) -> bool:
        await self._acquire(call.priority)
        started.set()
        try:
            call.start = self._now()
            await asyncio.sleep(self.enc_s * call.seconds)
            if call.preemptible and call.priority > INTERACTIVE and self._interactive_waiting():
                call.gave_way, call.end = True, self._now()
                return False
            await asyncio.sleep(self.dec_s)
            call.end = self._now()
            return True
        finally:
            self._release()


def _words(seconds: float) -> str:
    return " ".join(["word"] * max(1, int(3 * seconds)))


async def _turn(speech_s: float, partial_yield: bool) -> tuple[Recording, IncrementalModelSTT, Session]:
    stt = IncrementalModelSTT(_words)
    s = Session(fake_stack(stt=stt), SessionConfig(output_rate=16000, partial_interval_ms=0,
                                                    partial_yield=partial_yield, stt_incremental=True))
    stt.clock = s.clock
    rec = await play_into_session(s, [quiet(0.3), tone(speech_s), quiet(3.0)])
    await settle(s)
    await s.close()
    return rec, stt, s


def _final_and_running(rec: Recording, stt: OneModelSTT) -> tuple[Call, Call | None]:
    stopped = rec.of(E.UserSpeechStopped)[0].t
    finals = [c for c in stt.calls if c.priority == INTERACTIVE and c.queued >= stopped]
    assert len(finals) == 1, stt.calls  # one pause, one speculation, which ends the turn
    final = finals[0]
    running = [c for c in stt.calls if c.priority == BACKGROUND and c.start <= final.queued < c.end]
    return final, running[0] if running else None


@pytest.mark.parametrize("speech_s", [3.3, 3.5, 3.7, 3.9, 4.1, 4.3, 4.5, 4.7])
def test_a_running_try_gives_way_to_the_final_decode(speech_s: float) -> None:
    rec_off, stt_off, s_off = run_virtual(_turn(speech_s, partial_yield=False))
    rec_on, stt_on, s_on = run_virtual(_turn(speech_s, partial_yield=True))
    assert s_off.incremental.tries >= 1 and s_on.incremental.tries >= 1  # the turn is long enough to try
    assert all(not c.preemptible for c in stt_off.calls)
    final_off, running_off = _final_and_running(rec_off, stt_off)
    final_on, running_on = _final_and_running(rec_on, stt_on)
    assert all(c.preemptible == (c.priority == BACKGROUND) for c in stt_on.calls)
    if running_off is not None:  # without give-way the final waits for the whole running decode
        assert final_off.start >= running_off.end - 1e-6
    if running_on is not None:
        assert running_on.preemptible
        step_end = running_on.start + stt_on.enc_s * running_on.seconds
        if final_on.queued < step_end:  # caught in its encoder: it gives way after it
            assert running_on.gave_way
            assert final_on.start == pytest.approx(step_end)
        else:  # caught in its decoder (one step, not interruptible here)
            assert final_on.start == pytest.approx(running_on.end)
    else:
        assert final_on.start == pytest.approx(final_on.queued)
    # a try that gave way starts no other decode: nothing background runs after the final is queued
    assert not [c for c in stt_on.calls if c.priority == BACKGROUND and c.start > final_on.queued]
    assert [e.text for e in rec_on.of(E.UserTranscript)] and len(rec_on.of(E.UserTurnEnded)) == 1


def test_some_try_is_caught_in_its_encoder() -> None:
    """The scenario above must exercise giving way at least once (else it proves nothing)."""
    caught = 0
    for speech_s in (3.3, 3.5, 3.7, 3.9, 4.1, 4.3, 4.5, 4.7):
        rec, stt, s = run_virtual(_turn(speech_s, partial_yield=True))
        _, running = _final_and_running(rec, stt)
        caught += bool(running is not None and running.gave_way)
    assert caught >= 1


def test_commits_are_announced_and_the_final_decode_hears_only_the_tail() -> None:
    stt = IncrementalModelSTT(_words)
    got: list[tuple[int, str]] = []

    async def main() -> tuple[Recording, Session]:
        s = Session(fake_stack(stt=stt), SessionConfig(output_rate=16000, partial_interval_ms=0,
                                                        stt_incremental=True))
        stt.clock = s.clock
        s.incremental.on_commit = lambda turn_id, text: got.append((turn_id, text))
        rec = await play_into_session(s, [quiet(0.3), tone(6.0), quiet(3.0)])
        await settle(s)
        await s.close()
        return rec, s

    rec, s = run_virtual(main())
    assert s.incremental.commits >= 1 and len(got) == s.incremental.commits
    turn_id = rec.of(E.UserSpeechStopped)[0].turn_id
    final = rec.of(E.UserTranscript)[0].text
    for tid, text in got:  # each announcement: all the turn's committed words so far, never taken back
        assert tid == turn_id and text and final.startswith(text)
    assert [len(t) for _, t in got] == sorted(len(t) for _, t in got)
    assert s.incremental.last_tail_s < 6.0 - 1.0


def test_no_confirming_decode_runs_in_the_pause_that_ends_the_turn() -> None:
    """A pause's candidate whose confirmation falls due after the user has stopped: the decode of
    the final pause already heard past the cut; another decode would only compete with the reply."""
    stt = IncrementalModelSTT(_words)

    async def main() -> tuple[Recording, Session]:
        # the end-of-turn model doubts it, so the turn ends only at the longest pause allowed
        s = Session(fake_stack(stt=stt, turn=FixedTurn(0.1)),
                    SessionConfig(output_rate=16000, partial_interval_ms=0, stt_incremental=True))
        stt.clock = s.clock
        rec = await play_into_session(s, [quiet(0.3), tone(2.0), quiet(0.25), tone(0.5), quiet(4.0)])
        await settle(s)
        await s.close()
        return rec, s

    rec, s = run_virtual(main())
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert s.incremental.candidates >= 1  # the first pause's decode was offered as a candidate
    final, _ = _final_and_running(rec, stt)
    assert not [c for c in stt.calls if c.priority == BACKGROUND and c.queued > final.queued], stt.calls
