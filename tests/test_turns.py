"""The turn-taking policy as plain numbers: frames of (time, P(speech)) in, decisions out."""

from __future__ import annotations

from moksori.engine import turns as T

F = 0.032  # one VAD frame


def q(seconds: float) -> float:
    """`seconds` rounded to whole frames, as `feed` plays it."""
    return round(seconds / F) * F


def feed(tt: T.TurnTaker, pattern: list[tuple[float, float]], t0: float = 0.0) -> tuple[list[T.Action], float]:
    """pattern: [(seconds, prob)] -> all actions, end time."""
    out: list[T.Action] = []
    t = t0
    for seconds, prob in pattern:
        for _ in range(int(round(seconds / F))):
            out += tt.on_frame(t, t + F, prob)
            t += F
    return out, t


def kinds(actions: list[T.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_speech_then_silence_ends_turn_once_model_agrees() -> None:
    tt = T.TurnTaker(T.TurnConfig(silence_duration_ms=400))
    acts, t = feed(tt, [(0.3, 0.0), (1.0, 0.9), (0.2, 0.0)])
    assert kinds(acts) == ["SpeechStarted", "Paused", "Speculate"]
    spec = acts[-1]
    assert abs(spec.voice_end - (q(0.3) + q(1.0))) < 1e-6
    # the analysis says "complete" before the silence minimum: nothing yet
    assert tt.on_analysis(spec.turn_id, spec.spec_id, t, eot_prob=0.9, text_cue="complete") == []
    acts, t = feed(tt, [(0.25, 0.0)], t)
    ended = [a for a in acts if isinstance(a, T.TurnEnded)]
    assert len(ended) == 1 and ended[0].reason == "model"
    assert 0.4 <= ended[0].t - ended[0].voice_end < 0.4 + F + 1e-6
    assert tt.state == "idle" and tt.turn_id == 2


def test_thinking_pause_of_300ms_does_not_end_the_turn() -> None:
    tt = T.TurnTaker(T.TurnConfig(silence_duration_ms=400))
    acts, t = feed(tt, [(1.0, 0.9), (0.3, 0.0), (1.0, 0.9), (0.1, 0.0)])
    assert not any(isinstance(a, T.TurnEnded) for a in acts)
    assert kinds(acts).count("SpeechStarted") == 1
    # the pause was speculated on and then abandoned
    assert "Resumed" in kinds(acts)


def test_incomplete_model_waits_for_max_pause() -> None:
    cfg = T.TurnConfig(silence_duration_ms=400, eagerness="auto")
    tt = T.TurnTaker(cfg)
    acts, t = feed(tt, [(1.0, 0.9), (0.2, 0.0)])
    spec = [a for a in acts if isinstance(a, T.Speculate)][0]
    tt.on_analysis(spec.turn_id, spec.spec_id, t, eot_prob=0.05, text_cue="unknown")
    acts, t2 = feed(tt, [(1.0, 0.0)], t)
    assert not any(isinstance(a, T.TurnEnded) for a in acts)  # 1.2 s of silence, still waiting
    acts, _ = feed(tt, [(0.4, 0.0)], t2)
    ended = [a for a in acts if isinstance(a, T.TurnEnded)]
    assert ended and ended[0].reason == "max_pause"
    assert abs((ended[0].t - ended[0].voice_end) - cfg.max_pause_ms / 1000) <= F + 1e-6


def test_text_cue_rescues_a_flat_but_finished_sentence() -> None:
    cfg = T.TurnConfig(silence_duration_ms=400)
    tt = T.TurnTaker(cfg)
    acts, t = feed(tt, [(1.0, 0.9), (0.2, 0.0)])
    spec = [a for a in acts if isinstance(a, T.Speculate)][0]
    tt.on_analysis(spec.turn_id, spec.spec_id, t, eot_prob=0.1, text_cue="complete")
    acts, _ = feed(tt, [(0.8, 0.0)], t)
    ended = [a for a in acts if isinstance(a, T.TurnEnded)][0]
    assert ended.reason == "text"
    silence = ended.t - ended.voice_end
    assert cfg.silence_duration_ms + cfg.text_grace_ms <= silence * 1000 < cfg.max_pause_ms


def test_transcript_ending_mid_phrase_vetoes_the_model() -> None:
    tt = T.TurnTaker(T.TurnConfig(silence_duration_ms=400))
    acts, t = feed(tt, [(1.0, 0.9), (0.2, 0.0)])
    spec = [a for a in acts if isinstance(a, T.Speculate)][0]
    tt.on_analysis(spec.turn_id, spec.spec_id, t, eot_prob=0.99, text_cue="incomplete")
    acts, _ = feed(tt, [(1.0, 0.0)], t)
    assert not any(isinstance(a, T.TurnEnded) for a in acts)


def test_stale_analysis_is_ignored() -> None:
    tt = T.TurnTaker(T.TurnConfig(silence_duration_ms=400))
    acts, t = feed(tt, [(1.0, 0.9), (0.2, 0.0)])
    old = [a for a in acts if isinstance(a, T.Speculate)][0]
    acts, t = feed(tt, [(0.5, 0.9), (0.2, 0.0)], t)  # the user went on: a second pause
    assert tt.on_analysis(old.turn_id, old.spec_id, t + 1.0, eot_prob=1.0) == []
    assert tt.state == "paused"


def test_silence_mode_ignores_the_model() -> None:
    tt = T.TurnTaker(T.TurnConfig(mode="silence", silence_duration_ms=500))
    acts, _ = feed(tt, [(1.0, 0.9), (0.6, 0.0)])
    ended = [a for a in acts if isinstance(a, T.TurnEnded)]
    assert ended and ended[0].reason == "silence"


def test_short_blip_is_discarded_and_cough_does_not_barge_in() -> None:
    tt = T.TurnTaker(T.TurnConfig(interrupt_min_speech_ms=160))
    tt.set_agent_speaking(True)
    acts, _ = feed(tt, [(0.5, 0.0), (0.128, 0.95), (0.6, 0.0)])
    assert kinds(acts) == ["Discarded"]
    assert tt.state == "idle"


def test_sustained_speech_over_the_agent_barges_in() -> None:
    tt = T.TurnTaker(T.TurnConfig(interrupt_min_speech_ms=160))
    tt.set_agent_speaking(True)
    acts, _ = feed(tt, [(0.2, 0.0), (0.4, 0.95)])
    assert kinds(acts)[:2] == ["SpeechStarted", "BargeIn"]
    barge = acts[1]
    assert abs(barge.onset - q(0.2)) < 1e-6  # backdated to the first voiced frame


def test_interrupt_response_false_never_barges_in() -> None:
    tt = T.TurnTaker(T.TurnConfig(interrupt_response=False))
    tt.set_agent_speaking(True)
    acts, _ = feed(tt, [(0.5, 0.95)])
    assert "BargeIn" not in kinds(acts) and "SpeechStarted" in kinds(acts)


def test_manual_mode_only_commit_ends_a_turn() -> None:
    tt = T.TurnTaker(T.TurnConfig(mode="manual"))
    acts, t = feed(tt, [(1.0, 0.95), (3.0, 0.0)])
    assert acts == []
    ended = tt.commit(t)
    assert len(ended) == 1 and ended[0].reason == "commit"


def test_very_long_turn_is_cut_at_max_turn() -> None:
    tt = T.TurnTaker(T.TurnConfig(max_turn_s=5.0))
    acts, _ = feed(tt, [(6.0, 0.95)])
    ended = [a for a in acts if isinstance(a, T.TurnEnded)]
    assert ended and ended[0].reason == "max_length"


def test_deadline_reports_next_decision_time() -> None:
    cfg = T.TurnConfig(silence_duration_ms=400)
    tt = T.TurnTaker(cfg)
    _, t = feed(tt, [(1.0, 0.9), (0.1, 0.0)])
    d = tt.next_deadline(t)
    assert d is not None and abs(d - (q(1.0) + 0.4)) < 1e-6
    assert tt.next_deadline(1.0 + cfg.max_pause_ms / 1000 + 0.01) is None


def test_eagerness_orders_the_waits() -> None:
    low, high = T.TurnConfig(eagerness="low"), T.TurnConfig(eagerness="high")
    assert high.eot_threshold < low.eot_threshold
    assert high.max_pause_ms < low.max_pause_ms


def test_speculate_after_one_frame_speculates_on_the_first_silent_frame() -> None:
    """speculate_after_ms counts from the end of the last voiced frame: 32 ms (one frame) or less
    speculates on the first silent frame; the default 48 ms on the second, as before."""
    for after_ms, frames in ((0, 1), (32, 1), (48, 2), (64, 2), (96, 3)):
        tt = T.TurnTaker(T.TurnConfig(silence_duration_ms=400, speculate_after_ms=after_ms))
        acts, t = feed(tt, [(1.0, 0.9)])
        voice_end = t
        spec_at = None
        for i in range(4):
            out = tt.on_frame(t, t + F, 0.0)
            t += F
            if any(isinstance(a, T.Speculate) for a in out):
                spec_at = i + 1
                break
        assert spec_at == frames, (after_ms, spec_at)
        assert abs(t - voice_end - frames * F) < 1e-9
        # one speculation per pause, and a resume cancels it
        assert not any(isinstance(a, T.Speculate) for a in tt.on_frame(t, t + F, 0.0))
        assert kinds(tt.on_frame(t + F, t + 2 * F, 0.9)) == ["Resumed"]


# Silero's probability decays over a few frames after the voice stops: frames between
# silence_threshold (0.35) and threshold (0.5) that are the VAD's tail, not the voice.
_TAIL = [(F, 0.45), (F, 0.4)]


def _ended(acts: list[T.Action]) -> list[T.TurnEnded]:
    return [a for a in acts if isinstance(a, T.TurnEnded)]


def test_voice_end_prob_counts_silence_from_the_last_confident_frame() -> None:
    for prob, voice_end in ((None, q(1.0) + 2 * F), (0.5, q(1.0))):
        tt = T.TurnTaker(T.TurnConfig(silence_duration_ms=400, voice_end_prob=prob))
        acts, t = feed(tt, [(1.0, 0.9), *_TAIL, (0.1, 0.0)])
        spec = [a for a in acts if isinstance(a, T.Speculate)][0]
        assert abs(spec.voice_end - voice_end) < 1e-6
        tt.on_analysis(spec.turn_id, spec.spec_id, t, eot_prob=0.9, text_cue="complete")
        acts, _ = feed(tt, [(0.6, 0.0)], t)
        ended = _ended(acts)[0]
        assert ended.reason == "model" and abs(ended.voice_end - voice_end) < 1e-6
        # the decision comes on the first frame at or after 400 ms of silence from that voice end
        assert 0.4 - 1e-6 <= ended.t - voice_end < 0.4 + F


def test_voice_end_prob_does_not_pause_on_a_dip_inside_speech() -> None:
    # a tail frame in the middle of a word does not pause the turn: only P < 0.35 does
    tt = T.TurnTaker(T.TurnConfig(voice_end_prob=0.5))
    acts, _ = feed(tt, [(0.5, 0.9), *_TAIL, (0.5, 0.9), (0.1, 0.0)])
    assert kinds(acts)[:2] == ["SpeechStarted", "Paused"] and "Resumed" not in kinds(acts)
    assert abs([a for a in acts if isinstance(a, T.Paused)][0].voice_end - (q(0.5) + 2 * F + q(0.5))) < 1e-6


def test_voice_end_prob_moves_the_cut_in_boundary_by_the_tail() -> None:
    """The cost: a pause of 352 ms plus a 64 ms tail is 416 ms of silence when the tail does not
    count, so a model that says complete ends the turn there; by default it stays one turn."""
    for prob, cut in ((None, False), (0.5, True)):
        tt = T.TurnTaker(T.TurnConfig(silence_duration_ms=400, voice_end_prob=prob))
        acts, t = feed(tt, [(1.0, 0.9), *_TAIL, (0.1, 0.0)])
        spec = [a for a in acts if isinstance(a, T.Speculate)][0]
        acts = tt.on_analysis(spec.turn_id, spec.spec_id, t, eot_prob=0.9, text_cue="complete")
        more, _ = feed(tt, [(0.352 - q(0.1), 0.0), (0.5, 0.9)], t)
        assert bool(_ended(acts + more)) is cut


def test_confident_end_needs_a_sure_model_and_a_complete_transcript() -> None:
    cfg = T.TurnConfig(silence_duration_ms=400, confident_eot=0.9, confident_silence_ms=250)
    for eot, cue, reason, after in ((0.95, "complete", "confident", 0.25), (0.85, "complete", "model", 0.4),
                                    (0.95, "unknown", "model", 0.4), (0.95, "incomplete", "max_pause", 1.5)):
        tt = T.TurnTaker(cfg)
        acts, t = feed(tt, [(1.0, 0.9), (0.1, 0.0)])
        spec = [a for a in acts if isinstance(a, T.Speculate)][0]
        assert tt.on_analysis(spec.turn_id, spec.spec_id, t, eot_prob=eot, text_cue=cue) == []
        # the session's timer (engine/timers.py) calls check() 1 ms after each next_deadline
        ended: list[T.TurnEnded] = []
        while not ended:
            d = tt.next_deadline(t)
            assert d is not None
            t = d + 0.001
            ended = _ended(tt.check(t))
        assert ended[0].reason == reason, (eot, cue)
        assert abs(ended[0].t - ended[0].voice_end - after) < 0.002


def test_confident_end_is_off_by_default_and_a_late_analysis_ends_at_once() -> None:
    tt = T.TurnTaker(T.TurnConfig())
    acts, t = feed(tt, [(1.0, 0.9), (0.3, 0.0)])
    spec = [a for a in acts if isinstance(a, T.Speculate)][0]
    assert tt.on_analysis(spec.turn_id, spec.spec_id, t, eot_prob=0.99, text_cue="complete") == []
    tt = T.TurnTaker(T.TurnConfig(confident_eot=0.9))
    acts, t = feed(tt, [(1.0, 0.9), (0.3, 0.0)])
    spec = [a for a in acts if isinstance(a, T.Speculate)][0]
    ended = _ended(tt.on_analysis(spec.turn_id, spec.spec_id, t, eot_prob=0.99, text_cue="complete"))
    assert ended and ended[0].reason == "confident" and ended[0].t == t


def test_confident_end_does_not_cut_a_pause_shorter_than_its_silence() -> None:
    tt = T.TurnTaker(T.TurnConfig(confident_eot=0.9, confident_silence_ms=250))
    acts, t = feed(tt, [(1.0, 0.9), (0.1, 0.0)])
    spec = [a for a in acts if isinstance(a, T.Speculate)][0]
    acts = tt.on_analysis(spec.turn_id, spec.spec_id, t, eot_prob=0.99, text_cue="complete")
    more, _ = feed(tt, [(0.2 - q(0.1), 0.0), (0.5, 0.9), (0.1, 0.0)], t)
    assert not _ended(acts + more) and "Resumed" in kinds(more)
