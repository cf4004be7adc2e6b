"""The backchannel policy in virtual time (plain numbers), and on real speech: Silero VAD and the
real TurnTaker over a recording with a long mid-sentence pause."""

from __future__ import annotations

import pytest

from moksori.engine.backchannel import Backchannel, BackchannelConfig, BackchannelPolicy
from moksori.engine.endpointing import text_cue
from moksori.engine.turns import Paused, SpeechStarted, TurnConfig, TurnEnded, TurnTaker
from moksori.settings import load_settings
from speech import load16k, requires_speech, utt


def talked(p: BackchannelPolicy, turn: int, start: float, end: float) -> None:
    t = start
    while t < end - 1e-9:
        p.on_speech(turn, t, min(end, t + 0.032))
        t += 0.032


def test_due_once_in_an_unfinished_pause() -> None:
    p = BackchannelPolicy()
    talked(p, 1, 0.0, 2.0)
    p.on_pause(1, 2.0)
    assert p.due(2.5, "en") is None  # no analysis yet, and too early anyway
    p.on_analysis(1, eot_prob=0.12)
    assert p.next_deadline(2.1) == pytest.approx(2.7)
    assert p.due(2.69, "en") is None
    bc = p.due(2.7, "en")
    assert bc == Backchannel(1, 2.7, "Mm-hmm.", "en")
    assert p.due(2.8, "en") is None and p.next_deadline(2.8) is None  # once per pause


@pytest.mark.parametrize("setup,why", [
    (lambda p: p.on_analysis(1, eot_prob=0.9), "the model says the turn is finished"),
    (lambda p: p.on_analysis(1, text_cue="complete"), "the transcript ends a sentence"),
    (lambda p: p.on_analysis(1, eot_prob=0.1, text_cue="complete"), "the transcript wins over the model"),
    (lambda p: None, "nothing known about the pause"),
    (lambda p: (p.on_analysis(1, eot_prob=0.1), p.set_agent_speaking(True)), "the agent is speaking"),
    (lambda p: (p.on_analysis(1, eot_prob=0.1), p.on_speech(1, 2.5, 2.532)), "the user speaks again"),
    (lambda p: p.on_analysis(2, eot_prob=0.1), "a stale result for another turn"),
    (lambda p: (p.on_analysis(1, eot_prob=0.1), p.on_turn_end(1)), "the turn ended"),
])
def test_not_due(setup, why) -> None:
    p = BackchannelPolicy()
    talked(p, 1, 0.0, 2.0)
    p.on_pause(1, 2.0)
    setup(p)
    assert p.due(2.8, "en") is None, why


def test_incomplete_transcript_is_enough() -> None:
    p = BackchannelPolicy()
    talked(p, 1, 0.0, 2.0)
    p.on_pause(1, 2.0)
    p.on_analysis(1, text_cue="incomplete")
    assert p.due(2.8, "ko").text == "네."


def test_not_after_a_short_utterance_nor_too_late_in_the_pause() -> None:
    p = BackchannelPolicy()
    talked(p, 1, 0.0, 0.5)
    p.on_pause(1, 0.5)
    p.on_analysis(1, eot_prob=0.1)
    assert p.due(1.3, "en") is None  # spoke only 0.5 s
    q = BackchannelPolicy(BackchannelConfig(latest_ms=1200))
    talked(q, 1, 0.0, 2.0)
    q.on_pause(1, 2.0)
    q.on_analysis(1, eot_prob=0.1)
    assert q.due(3.3, "en") is None  # 1.3 s into the pause: the turn may end any moment


def test_rate_limited_across_the_turn_and_capped() -> None:
    p = BackchannelPolicy(BackchannelConfig(min_gap_s=5.0, max_per_turn=2))
    said: list[Backchannel] = []
    t = 0.0
    for _ in range(6):  # six pauses, each after 2 s of speech: 2.8 s apart
        talked(p, 1, t, t + 2.0)
        p.on_pause(1, t + 2.0)
        p.on_analysis(1, eot_prob=0.1)
        for k in range(1, 10):
            bc = p.due(t + 2.0 + 0.1 * k, "en")
            if bc:
                said.append(bc)
        t += 2.8
    assert [round(b.t, 1) for b in said] == [2.7, 8.4]  # 5 s apart (first check past 0.7 s), then the cap
    assert [b.text for b in said] == ["Mm-hmm.", "Uh-huh."]  # phrases rotate
    talked(p, 2, 20.0, 22.0)  # a new turn resets the cap
    p.on_pause(2, 22.0)
    p.on_analysis(2, text_cue="incomplete")
    assert p.due(22.8, "en") is not None


def test_settings_keep_it_off_unless_asked(monkeypatch) -> None:
    off = BackchannelConfig.from_settings(load_settings().turn, max_pause_ms=1500)
    assert off.enabled is False
    p = BackchannelPolicy(off)
    talked(p, 1, 0.0, 2.0)
    p.on_pause(1, 2.0)
    p.on_analysis(1, eot_prob=0.0)
    assert p.due(2.8, "en") is None
    monkeypatch.setenv("MOKSORI_TURN_BACKCHANNEL", "on")
    monkeypatch.setenv("MOKSORI_TURN_BACKCHANNEL_AFTER_MS", "600")
    on = BackchannelConfig.from_settings(load_settings().turn, max_pause_ms=3000)
    assert on.enabled and on.after_ms == 600 and on.latest_ms == 2700


@requires_speech
def test_on_real_speech_a_long_mid_sentence_pause_gets_one_backchannel_and_the_turn_goes_on() -> None:
    """JFK (en_011): "And so my fellow Americans, <1.29 s pause> ask not ...". Silero VAD and the
    real TurnTaker (default eagerness) run over the recording; at each pause the transcript cue
    comes from the words spoken so far (the reference text up to the pause, as a partial
    transcript would give it)."""
    from moksori.providers.vad_silero import SileroVAD

    u = utt("en_011")
    audio = load16k(u.path)
    vad = SileroVAD().stream()
    tt = TurnTaker(TurnConfig())
    policy = BackchannelPolicy(BackchannelConfig.from_settings(
        load_settings(turn={"backchannel": "on"}).turn, max_pause_ms=tt.cfg.max_pause_ms))
    words_before_first_pause = "And so my fellow Americans,"
    said: list[Backchannel] = []
    ended: list[TurnEnded] = []
    pauses: list[float] = []
    n = 512
    for i in range(0, len(audio) - n + 1, n):
        t0, t1 = i / 16000, (i + n) / 16000
        prob = vad(audio[i:i + n])
        actions = tt.on_frame(t0, t1, prob)
        if prob >= tt.cfg.threshold and tt.confirmed:
            policy.on_speech(tt.turn_id, t0, t1)
        for a in actions:
            if isinstance(a, Paused):
                pauses.append(a.voice_end)
                policy.on_pause(a.turn_id, a.voice_end)
                cue = text_cue(words_before_first_pause if len(pauses) == 1 else "ask not what your country", "en")
                policy.on_analysis(a.turn_id, text_cue=cue)
                tt.on_analysis(a.turn_id, tt.spec_id, t1, text_cue=cue)
            elif isinstance(a, TurnEnded):
                ended.append(a)
                policy.on_turn_end(a.turn_id)
            elif isinstance(a, SpeechStarted):
                policy.on_speech(a.turn_id, a.onset, t1)
        bc = policy.due(t1, "en")
        if bc:
            said.append(bc)
    first_pause = pauses[0]
    assert 1.8 <= first_pause <= 2.3, pauses  # the manifest: a 1290 ms pause at 2.00 s
    assert said, "no backchannel in the long pause"
    assert first_pause + 0.69 <= said[0].t <= first_pause + 1.25 and said[0].text == "Mm-hmm."
    assert all(e.t > said[0].t + 0.5 for e in ended), "the turn ended at the backchannel's pause"
    assert not [e for e in ended if e.t < 3.3], "the mid-sentence pause ended the turn"
