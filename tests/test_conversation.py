"""Conversations with the real embedded models on real recorded speech, spliced by the tests.

Sessions run on the virtual-time loop: the audio clock is exact and model inference takes
zero session time, so turn-taking decisions depend only on the audio, and the whole file runs
in well under a minute. (Latency is measured in real time by benchmarks/engine_latency.py.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from moksori.audio.frames import Frame, concat
from moksori.audio.wav import load_audio
from moksori.engine import events as E
from moksori.engine.config import config_from_settings
from moksori.engine.session import Session
from moksori.settings import load_settings
from moksori.testing.fakes import ScriptedLLM
from moksori.testing.harness import Recording, play_into_session, settle
from moksori.testing.virtual_time import run_virtual

pytestmark = pytest.mark.models

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "speech"


def speech(name: str) -> Frame:
    return load_audio(SPEECH / name, rate=16000)


def silence(seconds: float) -> Frame:
    return Frame.silence(seconds, 16000)


def converse(stack, audio: list[Frame], **cfg) -> tuple[Recording, Session]:
    settings = load_settings()
    config = config_from_settings(settings, output_rate=16000, output_lead_ms=0, partial_interval_ms=0, **cfg)

    async def main():
        session = Session(stack, config)
        rec = await play_into_session(session, audio)
        await settle(session, 30)
        await session.close()
        return rec, session

    return run_virtual(main())


def completed(rec: Recording) -> list:
    return [e for e in rec.of(E.AgentResponseDone) if e.status == "completed"]


def test_two_user_turns_get_two_replies(stack) -> None:
    # short replies and a long gap, so the first reply is over before the second turn (40 tokens
    # at temperature 0.5 were up to ~10 s of speech: one ran into the second turn)
    audio = [silence(0.5), speech("en/en_002.wav"), silence(9.0), speech("en/en_028.wav"), silence(9.0)]
    rec, session = converse(stack, audio, max_output_tokens=24)
    second_turn = sum(f.duration for f in audio[:3])
    assert rec.of(E.AgentAudioDone) and rec.of(E.AgentAudioDone)[0].t < second_turn, \
        "premise not met: the first reply was still playing when the second turn began"
    assert rec.of(E.AgentInterrupted) == []
    transcripts = [e.text.lower() for e in rec.of(E.UserTranscript)]
    assert len(transcripts) == 2
    assert "young man" in transcripts[0] and "thousand" in transcripts[1]
    assert len(completed(rec)) == 2
    roles = [i.role for i in session.memory.items if i.type == "message"]
    assert roles == ["user", "assistant", "user", "assistant"]
    reply = rec.reply_audio()
    assert np.abs(reply.samples).max() > 1000  # the agent actually spoke


# Stands in for the packaged LLM where its reply's length is the test's premise: SmolLM2's reply to
# the same words depends on the CPU and on what its KV cache held before (160 tokens alone on an
# AVX2 machine, 3 tokens, "The thing.", after this file's earlier tests), and a reply over before
# the user speaks over it tests nothing. VAD, Whisper, smart-turn and Piper stay the real ones.
LONG_REPLY = ("That is a lot to think about, so let us take it slowly, one thought at a time. "
              "Start with the one that keeps coming back, and tell me what it is about.")


def test_speaking_over_a_reply_interrupts_and_truncates(stack) -> None:
    # the reply to en_028 starts ~0.5 s after it ends; en_002 starts 1.6 s later, mid-reply. The
    # reply is scripted (LONG_REPLY): the packaged SmolLM2's was over before en_002 once in CI
    talker = dataclasses.replace(stack, llm=ScriptedLLM(LONG_REPLY))
    audio = [silence(0.5), speech("en/en_028.wav"), silence(1.6), speech("en/en_002.wav"), silence(5.0)]
    rec, session = converse(talker, audio, max_output_tokens=120)
    # the premise: the agent is audible when en_002 starts
    over_it = sum(f.duration for f in audio[:3])
    assert rec.of(E.AgentAudioStarted)[0].t < over_it
    assert all(e.t > over_it for e in rec.of(E.AgentAudioDone)), "the reply was over before en_002"
    interrupted = rec.of(E.AgentInterrupted)
    assert len(interrupted) == 1, rec.types()
    ev = interrupted[0]
    first = next(e for e in rec.of(E.AgentResponseDone) if e.response_id == ev.response_id)
    assert first.interrupted and first.status == "cancelled"
    heard, full = first.text.split(), first.generated_text.split()
    assert len(heard) < len(full), "the stored reply must be cut to what was heard"
    assert full[:len(heard)] == heard
    stored = session.memory.get(ev.item_id)
    assert stored is not None and stored.text == first.text and stored.status == "incomplete"
    assert rec.of(E.AgentAudioCleared)
    # the interruption is itself a user turn, and it is answered
    assert "young man" in rec.of(E.UserTranscript)[-1].text.lower()
    assert completed(rec)


def _with_pause(frame: Frame, pause_s: float) -> Frame:
    """Insert a pause at the quietest 50 ms near the middle of the speech."""
    x = frame.samples.astype(np.float32)
    mid = len(x) // 2
    win = frame.rate // 20
    lo, hi = mid - frame.rate, mid + frame.rate
    energies = [float(np.mean(x[i:i + win] ** 2)) for i in range(lo, hi, win // 2)]
    cut = lo + int(np.argmin(energies)) * (win // 2) + win // 2
    return concat([Frame(frame.samples[:cut], frame.rate), Frame.silence(pause_s, frame.rate),
                   Frame(frame.samples[cut:], frame.rate)])


def test_a_300ms_thinking_pause_keeps_one_turn(stack) -> None:
    utterance = _with_pause(speech("en/en_001.wav"), 0.3)
    rec, _ = converse(stack, [silence(0.5), utterance, silence(5.0)])
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert len(rec.of(E.UserTranscript)) == 1
    text = rec.of(E.UserTranscript)[0].text.lower()
    assert "dashwood" in text and "them" in text  # both halves in the one turn
    assert len(completed(rec)) == 1


def test_a_comma_pause_after_a_when_clause_keeps_one_turn(stack) -> None:
    # tel_010: "When you hear the bell, come quickly." read with a natural 600 ms pause at the comma
    # (8 kHz telephone speech). The audio model scores "When you hear the bell" as finished; the
    # words say a main clause is still to come, so the pause is not the end of the turn.
    rec, _ = converse(stack, [silence(0.5), speech("tel/tel_010.wav"), silence(5.0)])
    assert len(rec.of(E.UserTurnEnded)) == 1, [e.text for e in rec.of(E.UserTranscript)]
    text = rec.of(E.UserTranscript)[0].text.lower()
    assert "bell" in text and "quickly" in text
    assert rec.of(E.AgentInterrupted) == []
    assert len(completed(rec)) == 1


def test_cough_length_bursts_during_a_reply_do_not_interrupt(stack) -> None:
    voiced = speech("en/en_002.wav")
    burst = Frame(voiced.samples[8000:8000 + 1920], 16000)  # 120 ms of real voice: the VAD fires on it
    rng = np.random.default_rng(7)
    noise = Frame.from_float(rng.normal(0, 0.3, 2400) * np.hanning(2400), 16000)  # 150 ms broadband burst
    talker = dataclasses.replace(stack, llm=ScriptedLLM(LONG_REPLY))
    audio = [silence(0.5), speech("en/en_028.wav"), silence(1.8), burst, silence(0.7), noise, silence(6.0)]
    rec, _ = converse(talker, audio)
    first_burst, bursts_end = sum(f.duration for f in audio[:3]), sum(f.duration for f in audio[:6])
    # the premise: the agent is audible from before the first burst until after the second
    assert rec.of(E.AgentAudioStarted)[0].t < first_burst and rec.of(E.AgentAudioDone)[0].t > bursts_end
    assert rec.of(E.AgentInterrupted) == []
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert len(completed(rec)) == 1


def test_resuming_after_speculation_started_gives_one_reply(stack) -> None:
    # a 250 ms pause: long enough that the engine starts transcribing and replying
    # speculatively, short enough that it is not the end of the turn
    utterance = _with_pause(speech("en/en_004.wav"), 0.25)
    rec, _ = converse(stack, [silence(0.5), utterance, silence(5.0)])
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert len(rec.of(E.AgentResponseStarted)) == 1
    assert len(completed(rec)) == 1
    assert len(rec.of("stt.started")) == 1  # the abandoned speculation left no public trace


def test_korean_turn_is_transcribed_as_korean(stack) -> None:
    rec, _ = converse(stack, [silence(0.5), speech("ko/ko_001.wav"), silence(4.0)])
    tr = rec.of(E.UserTranscript)
    assert tr and tr[0].language == "ko"
    assert "걸어갔다" in tr[0].text


def test_converse_reply_audio_is_time_aligned(stack) -> None:
    audio = [silence(0.5), speech("en/en_006.wav"), silence(4.0)]
    rec, _ = converse(stack, audio)
    reply = rec.reply_audio(min_seconds=sum(f.duration for f in audio))
    started = rec.of(E.AgentAudioStarted)[0].t
    # the first 10 ms at or above -40 dBFS RMS (what `_speak`'s trim keeps the reply's start to; a
    # soft first sound, "h" or "s", can stay under a peak of 500 for 0.2 s)
    win = reply.rate // 100
    x = reply.samples[: len(reply.samples) // win * win].astype(np.float32).reshape(-1, win) / 32768.0
    first_loud = int(np.argmax(np.sqrt((x ** 2).mean(axis=1)) >= 0.01)) * win / reply.rate
    assert abs(first_loud - started) < 0.15  # the reply sits where the agent spoke
    assert reply.duration >= sum(f.duration for f in audio) - 0.01
