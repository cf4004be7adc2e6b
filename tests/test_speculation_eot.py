"""When a pause's end-of-turn model runs (`turn.eot_start`), in virtual time with scripted fakes.

with_stt (the default): beside the transcript's decode; after_stt: after the transcript, beside
the reply's LLM call; after_first_token: once the reply's LLM has answered. The model sees the
same audio in every mode, the turn ends for the same reason, and the reply is the same. With
`eot_skip` "auto", a pause whose reply is expected after the text rule's time and whose
transcript ends like a sentence is not judged at all (the pace is seeded, or learned from turns).
tests/test_models_vad_turn.py runs the real smart-turn model on real speech.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from moksori.engine import events as E
from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.engine import reply_pace
from moksori.engine.turns import EotSkip, EotStart, TurnConfig
from moksori.testing.fakes import FixedTurn, ScriptedLLM, ScriptedSTT, fake_stack, quiet, tone
from moksori.testing.harness import play_into_session, settle
from moksori.testing.virtual_time import run_virtual

MODES: tuple[EotStart, ...] = ("after_stt", "with_stt", "after_first_token")


class TimedTurn(FixedTurn):
    """FixedTurn that notes when (virtual time) it was asked, and how much audio it judged."""

    def __init__(self, probability: float = 0.9, delay_s: float = 0.06) -> None:
        super().__init__(probability, delay_s)
        self.asked: list[float] = []
        self.audio: list[np.ndarray] = []

    async def complete_probability(self, audio: np.ndarray, *, language: str | None = None) -> float:
        self.asked.append(asyncio.get_running_loop().time())
        self.audio.append(np.array(audio, copy=True))
        return await super().complete_probability(audio, language=language)


def cfg(mode: EotStart, skip: EotSkip = "off") -> SessionConfig:
    return SessionConfig(output_rate=16000, partial_interval_ms=0, turn=TurnConfig(eot_start=mode, eot_skip=skip))


def converse(mode: EotStart, *, stt: ScriptedSTT, llm: ScriptedLLM, turn: TimedTurn, chunks: list,
             skip: EotSkip = "off"):
    async def main():
        s = Session(fake_stack(stt=stt, llm=llm, turn=turn), cfg(mode, skip))
        t0 = asyncio.get_running_loop().time()
        rec = await play_into_session(s, chunks)
        await settle(s)
        await s.close()
        return rec, s, t0

    return run_virtual(main())


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_ends_the_turn_by_the_model_and_replies_once(mode: EotStart) -> None:
    turn = TimedTurn(0.9, delay_s=0.06)
    stt = ScriptedSTT(["what time is it?"], delay_s=0.3)
    llm = ScriptedLLM("It is noon. Anything else?", first_token_s=0.15)
    rec, s, t0 = converse(mode, stt=stt, llm=llm, turn=turn, chunks=[quiet(0.5), tone(1.5), quiet(4.0)])
    ended = rec.of(E.UserTurnEnded)
    assert [e.reason for e in ended] == ["model"]
    assert len(turn.asked) == 1  # one pause, judged once
    assert [e.probability for e in rec.of(E.EotFinished)] == [0.9]
    done = [e for e in rec.of(E.AgentResponseDone) if e.status == "completed"]
    assert [d.text for d in done] == ["It is noon. Anything else?"]
    assert [(i.role, i.text) for i in s.memory.items] == [("user", "what time is it?"),
                                                          ("assistant", "It is noon. Anything else?")]
    stt_started, stt_done = rec.of(E.SttStarted)[0].t, rec.of(E.SttFinished)[0].t
    first_token = rec.of(E.LlmFirstToken)[0].t
    asked = turn.asked[0] - t0  # loop time -> session time (the session's clock starts with the loop's)
    if mode == "with_stt":
        assert asked == pytest.approx(stt_started, abs=1e-3)  # beside the decode, not after it
    elif mode == "after_stt":
        assert stt_done - 1e-3 <= asked < first_token
    else:
        assert asked >= first_token - 1e-3  # the LLM answered first
    # the reply's audio goes public after the turn ends, never before
    assert rec.of(E.AgentAudioStarted)[0].t >= ended[0].t


def test_the_model_judges_the_same_audio_in_every_mode() -> None:
    heard = {}
    for mode in MODES:
        turn = TimedTurn(0.9)
        converse(mode, stt=ScriptedSTT(["hello there."], delay_s=0.2), llm=ScriptedLLM("Hi."), turn=turn,
                 chunks=[quiet(0.5), tone(1.2), quiet(3.0)])
        assert len(turn.audio) == 1
        heard[mode] = turn.audio[0]
    for mode in MODES[1:]:
        assert np.array_equal(heard[mode], heard["after_stt"]), mode


@pytest.mark.parametrize("mode", MODES)
def test_unfinished_turn_waits_for_the_max_pause_in_every_mode(mode: EotStart) -> None:
    # the model says "not finished": the turn ends only at the max pause, whenever the model ran
    turn = TimedTurn(0.05)
    rec, s, _ = converse(mode, stt=ScriptedSTT(["so I was thinking"], delay_s=0.2), llm=ScriptedLLM("Go on."),
                         turn=turn, chunks=[quiet(0.5), tone(1.2), quiet(4.0)])
    ended = rec.of(E.UserTurnEnded)
    assert [e.reason for e in ended] == ["max_pause"]
    assert ended[0].silence_ms >= TurnConfig().max_pause_ms - 40


@pytest.mark.parametrize("mode", MODES)
def test_user_resuming_cancels_the_pause_and_its_model_call(mode: EotStart) -> None:
    # STT is slow: the user resumes while the first pause is still being decoded (and judged)
    stt = ScriptedSTT(["first half", "first half and second half."], delay_s=0.5)
    turn = TimedTurn(0.9, delay_s=0.06)
    rec, s, _ = converse(mode, stt=stt, llm=ScriptedLLM("Got it."), turn=turn,
                         chunks=[quiet(0.3), tone(1.0), quiet(0.35), tone(1.0), quiet(4.0)])
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert len(rec.of(E.AgentResponseStarted)) == 1
    assert [i.text for i in s.memory.items if i.role == "user"] == ["first half and second half."]
    # the first pause's model call ran only where it starts with the decode
    assert len(turn.asked) == (2 if mode == "with_stt" else 1)


def test_after_first_token_waits_for_a_slow_llm_and_the_audio_still_follows_the_turn_end() -> None:
    turn = TimedTurn(0.9, delay_s=0.06)
    llm = ScriptedLLM("Sure thing. Here you go.", first_token_s=1.0)
    rec, s, t0 = converse("after_first_token", stt=ScriptedSTT(["tell me"], delay_s=0.1), llm=llm, turn=turn,
                          chunks=[quiet(0.5), tone(1.2), quiet(4.0)])
    first_token = rec.of(E.LlmFirstToken)[0].t
    ended = rec.of(E.UserTurnEnded)
    assert [e.reason for e in ended] == ["model"]
    assert turn.asked[0] - t0 >= first_token - 1e-3
    assert ended[0].t >= first_token
    assert rec.of(E.AgentAudioStarted)[0].t >= ended[0].t


def test_after_first_token_with_no_reply_judges_after_the_transcript() -> None:
    # nothing was heard: no reply starts, so there is no first token to wait for
    turn = TimedTurn(0.9, delay_s=0.06)
    rec, s, t0 = converse("after_first_token", stt=ScriptedSTT([""], delay_s=0.1), llm=ScriptedLLM("Hm?"),
                          turn=turn, chunks=[quiet(0.5), tone(1.2), quiet(4.0)])
    assert len(turn.asked) == 1
    assert turn.asked[0] - t0 == pytest.approx(rec.of(E.SttFinished)[0].t, abs=1e-3)
    assert rec.of(E.AgentResponseStarted) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eot_delay_s", [0.0, 0.06])
def test_the_user_message_reaches_the_llm_once_however_soon_the_turn_ends(mode: EotStart, eot_delay_s: float) -> None:
    # An end-of-turn result that is already there when the reply starts (with_stt, or an instant
    # model) ends the turn before the reply has read its input: the user's item is then committed
    # to memory, and the reply must not add the speculative copy of the same message as well.
    # (The transcript comes after the 400 ms of silence a turn needs, as on 2 cores.)
    llm = ScriptedLLM("Noon.")
    rec, s, _ = converse(mode, stt=ScriptedSTT(["what time is it?"], delay_s=0.5), llm=llm,
                         turn=TimedTurn(0.9, delay_s=eot_delay_s), chunks=[quiet(0.5), tone(1.5), quiet(4.0)])
    assert len(llm.requests) == 1
    users = [m.content for m in llm.requests[0].messages if m.role == "user"]
    assert users == ["what time is it?"]
    assert [e.reason for e in rec.of(E.UserTurnEnded)] == ["model"]




# ---------------------------------------------------------------- eot_skip = "auto" (late replies)


def seed(stt: ScriptedSTT, *, decode_ms: float, reply_ms: float) -> None:
    """What this STT's earlier turns taught the pace: decodes and replies this long."""
    pace = reply_pace.for_stt(stt)
    for i in range(reply_pace.MIN_DECODES):
        pace.decoded(2.0 + i, decode_ms)
        pace.replied(reply_ms)


LATE = {"decode_ms": 450.0, "reply_ms": 300.0}  # ready ~0.8 s after the voice end: after 600 ms
SOON = {"decode_ms": 120.0, "reply_ms": 150.0}  # ready ~0.3 s after it


def one_long_turn(words: str, pace: dict, *, turn: TimedTurn, reply: str, stt_delay_s: float = 0.3,
                  mode: EotStart = "with_stt", skip: EotSkip = "auto"):
    """One 3 s turn and its pause, on an STT whose pace was seeded with `pace`."""
    stt = ScriptedSTT([words], delay_s=stt_delay_s)
    seed(stt, **pace)
    return converse(mode, stt=stt, llm=ScriptedLLM(reply), turn=turn, chunks=[quiet(0.5), tone(3.0), quiet(4.0)],
                    skip=skip)


@pytest.mark.parametrize("mode", MODES)
def test_a_late_reply_to_a_sentence_like_turn_is_left_to_the_text_rule(mode: EotStart) -> None:
    turn = TimedTurn(0.9, delay_s=0.06)
    rec, s, _ = one_long_turn("I walked all the way to the station today.", LATE, turn=turn,
                              reply="That is a long walk.", mode=mode)
    assert turn.asked == []  # never asked
    assert rec.of(E.EotFinished) == []
    ended = rec.of(E.UserTurnEnded)
    assert [e.reason for e in ended] == ["text"]
    t = TurnConfig()
    # the text rule's time: not sooner (the model could have ended it at 400 ms), and no later
    assert t.silence_duration_ms + t.text_grace_ms - 40 <= ended[0].silence_ms <= t.silence_duration_ms + t.text_grace_ms + 80
    assert [d.text for d in rec.of(E.AgentResponseDone) if d.status == "completed"] == ["That is a long walk."]
    assert rec.of(E.AgentAudioStarted)[0].t >= ended[0].t


def test_skip_off_judges_the_same_late_turn() -> None:
    turn = TimedTurn(0.9, delay_s=0.06)
    rec, s, _ = one_long_turn("I walked all the way to the station today.", LATE, turn=turn, reply="Long walk.",
                              skip="off")
    assert len(turn.asked) == 1 and [e.reason for e in rec.of(E.UserTurnEnded)] == ["model"]


def test_a_late_reply_to_words_that_do_not_end_like_a_sentence_is_judged_after_the_decode() -> None:
    # no full stop: the words cannot end the turn, so the model is asked, once the words are known
    turn = TimedTurn(0.9, delay_s=0.06)
    rec, s, t0 = one_long_turn("so then we went over to my sister's place", LATE, turn=turn, reply="Nice.")
    assert len(turn.asked) == 1
    assert turn.asked[0] - t0 == pytest.approx(rec.of(E.SttFinished)[0].t, abs=1e-3)  # after, not beside
    assert [e.reason for e in rec.of(E.UserTurnEnded)] == ["model"]


def test_a_late_unfinished_turn_still_waits_for_the_max_pause() -> None:
    turn = TimedTurn(0.05)
    rec, s, _ = one_long_turn("and then I said to him that", LATE, turn=turn, reply="Go on.", stt_delay_s=0.2)
    assert len(turn.asked) == 1
    ended = rec.of(E.UserTurnEnded)
    assert [e.reason for e in ended] == ["max_pause"]
    assert ended[0].silence_ms >= TurnConfig().max_pause_ms - 40


def test_a_reply_expected_soon_is_judged_beside_the_decode_as_before() -> None:
    turn = TimedTurn(0.9, delay_s=0.06)
    rec, s, t0 = one_long_turn("I walked all the way to the station today.", SOON, turn=turn, reply="Noon.",
                               stt_delay_s=0.1)
    assert len(turn.asked) == 1
    assert turn.asked[0] - t0 == pytest.approx(rec.of(E.SttStarted)[0].t, abs=1e-3)
    assert [e.reason for e in rec.of(E.UserTurnEnded)] == ["model"]


def test_a_short_pause_in_a_late_turn_does_not_end_it() -> None:
    # a 350 ms thinking pause after a sentence-like first half: the text rule needs 600 ms, so
    # the user goes on and the turn holds both halves
    stt = ScriptedSTT(["I walked to the station.", "I walked to the station. Then I took the train."], delay_s=0.2)
    seed(stt, **LATE)
    turn = TimedTurn(0.9, delay_s=0.06)
    rec, s, _ = converse("with_stt", stt=stt, llm=ScriptedLLM("Where to?"), turn=turn,
                         chunks=[quiet(0.3), tone(3.0), quiet(0.35), tone(1.0), quiet(4.0)], skip="auto")
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert [i.text for i in s.memory.items if i.role == "user"] == ["I walked to the station. Then I took the train."]
    assert turn.asked == []


@pytest.mark.parametrize(("stt_s", "first_token_s", "judged"), [(0.45, 0.3, 4), (0.05, 0.05, 6)])
def test_the_pace_is_learned_from_the_turns_themselves(stt_s: float, first_token_s: float, judged: int) -> None:
    # six sentence-like turns: with a slow decode and LLM, the model judges the first ones (too
    # few turns to know the pace), then no more; with fast ones it judges every turn
    turn = TimedTurn(0.9, delay_s=0.06)
    stt = ScriptedSTT([f"This is sentence number {i}." for i in range(6)], delay_s=stt_s)
    chunks = [quiet(0.5)]
    for _ in range(6):
        chunks += [tone(2.0), quiet(5.0)]
    rec, s, _ = converse("with_stt", stt=stt, llm=ScriptedLLM("Right.", first_token_s=first_token_s), turn=turn,
                         chunks=chunks, skip="auto")
    reasons = [e.reason for e in rec.of(E.UserTurnEnded)]
    assert len(reasons) == 6
    assert len(turn.asked) == judged
    assert reasons == ["model"] * judged + ["text"] * (6 - judged)
    assert len([d for d in rec.of(E.AgentResponseDone) if d.status == "completed"]) == 6


def test_the_pace_keeps_no_session_alive() -> None:
    # the pace outlives every session of the process: what it keeps of a reply is a number
    import gc
    import weakref

    stt = ScriptedSTT(["This is the first sentence.", "And this the second."], delay_s=0.3)
    seed(stt, **LATE)
    refs = []

    async def main():
        s = Session(fake_stack(stt=stt, llm=ScriptedLLM("Right."), turn=TimedTurn(0.9)), cfg("with_stt", "auto"))
        await play_into_session(s, [quiet(0.5), tone(2.0), quiet(3.0), tone(2.0), quiet(3.0)])
        await settle(s)
        await s.close()
        refs.append(weakref.ref(s))

    run_virtual(main())
    gc.collect()
    assert len(reply_pace.for_stt(stt).replies) == reply_pace.MIN_DECODES + 2  # seeded, then both replies
    assert refs[0]() is None
