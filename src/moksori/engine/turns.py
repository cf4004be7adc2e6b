"""Turn-taking as a pure state machine: VAD probabilities and times in, decisions out.

No clock, no I/O, no models: the session hands in `(t_start, t_end, p_speech)` per 32 ms frame
and the results of the end-of-turn analysis, and acts on the returned actions. That makes the
whole policy testable with plain numbers, in virtual time.

User-side states: idle -> speaking -> paused -> (speaking | turn ended -> idle).

End of turn, in "semantic" mode (the default):
  silence >= silence_duration_ms AND the end-of-turn model says complete (and the transcript
  does not end mid-phrase)                                   -> end ("model")
  silence >= silence_duration_ms + text_grace_ms AND the transcript ends like a sentence
                                                             -> end ("text")
  silence >= max_pause_ms                                    -> end ("max_pause")
  optional (`confident_eot`, off by default): silence >= confident_silence_ms AND the model says
  complete with at least that probability AND the transcript ends like a sentence -> end ("confident")
In "silence" mode (OpenAI `server_vad`): silence >= silence_duration_ms -> end.
In "manual" mode nothing ends a turn but `commit()`.

Speech only counts once it has lasted `min_speech_ms` (clicks and blips are dropped); while the
agent is audible it must last `interrupt_min_speech_ms`, so a cough does not cut the agent off.

Silence is counted from the voice end: the end of the last frame that was not silence
(P >= `silence_threshold`, 0.15 below `threshold`), or with `voice_end_prob` set, of the last
frame with P >= that. Silero's probability decays over a few frames after the voice stops, and
the frames of that decay sit between the two thresholds (benchmarks/vad_tail.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["semantic", "silence", "manual"]
Eagerness = Literal["low", "medium", "high", "auto"]
EotStart = Literal["after_stt", "with_stt", "after_first_token"]
EotSkip = Literal["off", "auto"]
TextCue = Literal["complete", "incomplete", "unknown"]

# eagerness -> (model threshold, extra wait when only the transcript says complete, max pause)
_EAGERNESS = {
    "high": (0.3, 150, 900),
    "auto": (0.5, 200, 1500),
    "medium": (0.5, 200, 1500),
    "low": (0.7, 600, 3000),
}


@dataclass(frozen=True)
class TurnConfig:
    mode: Mode = "semantic"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 400
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: Eagerness = "auto"
    interrupt_min_speech_ms: int = 128
    min_speech_ms: int = 90
    speculate_after_ms: int = 48
    # when a pause's end-of-turn model runs beside the speculation's STT and reply (see
    # engine/speculation.py): after_stt | with_stt | after_first_token
    eot_start: EotStart = "with_stt"
    # "auto": a pause whose reply is expected after the text rule's time (engine/reply_pace.py) is
    # judged by the model only when its transcript does not end like a sentence (then after the
    # decode, never beside it); one that does is ended by the text rule, at silence_duration_ms +
    # the eagerness' grace. "off": every pause is judged
    eot_skip: EotSkip = "auto"
    max_turn_s: float = 30.0
    # after the agent's audio ends, this much silence commits an empty turn and asks for a reply
    idle_timeout_ms: int | None = None
    # a frame moves the voice end (where silence is counted from) only if P(speech) >= this;
    # None: any frame that is not silence (P >= silence_threshold) does
    voice_end_prob: float | None = None
    # the "confident" early end: the model at or above this AND the transcript complete end the
    # turn at confident_silence_ms of silence, before silence_duration_ms; None: off
    confident_eot: float | None = None
    confident_silence_ms: int = 250

    @property
    def eot_threshold(self) -> float:
        return _EAGERNESS[self.eagerness][0]

    @property
    def text_grace_ms(self) -> int:
        return _EAGERNESS[self.eagerness][1]

    @property
    def max_pause_ms(self) -> int:
        return max(self.silence_duration_ms, _EAGERNESS[self.eagerness][2])

    @property
    def silence_threshold(self) -> float:
        return max(0.05, self.threshold - 0.15)


# ------------------------------------------------------------------ actions


@dataclass(frozen=True)
class SpeechStarted:
    turn_id: int
    onset: float  # start of the first voiced frame


@dataclass(frozen=True)
class BargeIn:
    turn_id: int
    onset: float


@dataclass(frozen=True)
class Paused:
    """Confirmed speech fell silent (the session state becomes user_paused)."""

    turn_id: int
    voice_end: float


@dataclass(frozen=True)
class Resumed:
    turn_id: int
    spec_id: int  # the speculation to throw away


@dataclass(frozen=True)
class Speculate:
    turn_id: int
    spec_id: int
    onset: float
    voice_end: float


@dataclass(frozen=True)
class TurnEnded:
    turn_id: int
    spec_id: int
    onset: float
    voice_end: float  # end of the last voiced frame
    t: float  # when the decision was made
    reason: str


@dataclass(frozen=True)
class Discarded:
    """A blip that never became speech (too short)."""

    onset: float
    was_agent_speaking: bool


Action = SpeechStarted | BargeIn | Paused | Resumed | Speculate | TurnEnded | Discarded


# ------------------------------------------------------------------ machine


@dataclass
class TurnTaker:
    cfg: TurnConfig = field(default_factory=TurnConfig)
    state: Literal["idle", "speaking", "paused"] = "idle"
    turn_id: int = 1
    spec_id: int = 0
    agent_speaking: bool = False
    _onset: float = 0.0
    _speech_s: float = 0.0
    _confirmed: bool = False
    _voice_end: float = 0.0
    _speculated: bool = False
    _eot_prob: float | None = None
    _text_cue: TextCue | None = None
    _candidate_agent_speaking: bool = False

    @property
    def confirmed(self) -> bool:
        """The current candidate has lasted long enough to be speech."""
        return self._confirmed

    # -------------------------------------------------------------- inputs

    def on_frame(self, t_start: float, t_end: float, prob: float) -> list[Action]:
        cfg = self.cfg
        if cfg.mode == "manual":
            return []
        is_speech = prob >= cfg.threshold
        is_silence = prob < cfg.silence_threshold
        out: list[Action] = []
        if self.state == "idle":
            if is_speech:
                self.state = "speaking"
                self._onset, self._speech_s, self._confirmed = t_start, t_end - t_start, False
                self._voice_end = t_end
                self._candidate_agent_speaking = self.agent_speaking
                out += self._maybe_confirm()
            return out
        if self.state == "speaking":
            if is_silence:
                self.state = "paused"
                if self._confirmed:
                    out.append(Paused(self.turn_id, self._voice_end))
                    out += self._maybe_speculate(t_end)  # a speculate_after_ms of one frame or less
            else:
                if is_speech:
                    self._speech_s += t_end - t_start
                if cfg.voice_end_prob is None or prob >= cfg.voice_end_prob:
                    self._voice_end = t_end
                out += self._maybe_confirm()
                if self._confirmed and t_end - self._onset >= cfg.max_turn_s:
                    out += self._end(t_end, "max_length")
            return out
        # paused
        if is_speech:
            self.state = "speaking"
            self._speech_s += t_end - t_start
            self._voice_end = t_end
            if self._speculated:
                out.append(Resumed(self.turn_id, self.spec_id))
                self._speculated = False
            self._eot_prob, self._text_cue = None, None
            out += self._maybe_confirm()
            return out
        silence_s = t_end - self._voice_end
        if not self._confirmed:
            if silence_s >= min(0.3, cfg.silence_duration_ms / 1000):
                self.state = "idle"
                out.append(Discarded(self._onset, self._candidate_agent_speaking))
            return out
        return out + self._maybe_speculate(t_end) + self.check(t_end)

    def on_analysis(self, turn_id: int, spec_id: int, t: float, *, eot_prob: float | None = None,
                    text_cue: TextCue | None = None) -> list[Action]:
        """Results of the speculative analysis for pause `spec_id` (stale ones are ignored)."""
        if turn_id != self.turn_id or spec_id != self.spec_id or self.state != "paused":
            return []
        if eot_prob is not None:
            self._eot_prob = eot_prob
        if text_cue is not None:
            self._text_cue = text_cue
        return self.check(t)

    def check(self, t: float) -> list[Action]:
        """Re-evaluate the end-of-turn rule at time t (also call this from a timer)."""
        if self.state != "paused" or not self._confirmed or self.cfg.mode == "manual":
            return []
        cfg = self.cfg
        silence_ms = (t - self._voice_end) * 1000
        if (cfg.confident_eot is not None and cfg.mode == "semantic" and self._text_cue == "complete"
                and self._eot_prob is not None and self._eot_prob >= cfg.confident_eot
                and silence_ms >= min(cfg.confident_silence_ms, cfg.silence_duration_ms)):
            return self._end(t, "confident")
        if silence_ms < cfg.silence_duration_ms:
            return []
        if cfg.mode == "silence":
            return self._end(t, "silence")
        if (self._eot_prob is not None and self._eot_prob >= cfg.eot_threshold
                and self._text_cue != "incomplete"):
            return self._end(t, "model")
        if self._text_cue == "complete" and silence_ms >= cfg.silence_duration_ms + cfg.text_grace_ms:
            return self._end(t, "text")
        if silence_ms >= cfg.max_pause_ms:
            return self._end(t, "max_pause")
        return []

    def next_deadline(self, t: float) -> float | None:
        """The next time after t at which `check` could change its answer without new input."""
        if self.state != "paused" or not self._confirmed or self.cfg.mode == "manual":
            return None
        cfg = self.cfg
        rules = [cfg.silence_duration_ms, cfg.silence_duration_ms + cfg.text_grace_ms, cfg.max_pause_ms]
        if cfg.confident_eot is not None:
            rules.append(min(cfg.confident_silence_ms, cfg.silence_duration_ms))
        for ms in sorted(rules):
            deadline = self._voice_end + ms / 1000
            if deadline > t + 1e-6:
                return deadline
        return None

    def commit(self, t: float) -> list[Action]:
        """End the current turn now (manual mode, or an explicit commit)."""
        if self.state == "idle" or not self._confirmed:
            if self.cfg.mode == "manual":
                tid, self.turn_id = self.turn_id, self.turn_id + 1
                self._reset()
                return [TurnEnded(tid, self.spec_id, t, t, t, "commit")]
            return []
        return self._end(t, "commit")

    def idle_timeout(self, t: float) -> TurnEnded | None:
        """Nobody spoke for the idle timeout: an empty turn ends now (only while idle)."""
        if self.state != "idle" or self.cfg.mode == "manual":
            return None
        tid, self.turn_id = self.turn_id, self.turn_id + 1
        return TurnEnded(tid, self.spec_id, t, t, t, "idle_timeout")

    def reset(self) -> None:
        """Drop whatever speech is in progress (the client cleared its input buffer)."""
        self._reset()

    def set_agent_speaking(self, speaking: bool) -> None:
        self.agent_speaking = speaking

    def set_config(self, cfg: TurnConfig) -> None:
        self.cfg = cfg

    # -------------------------------------------------------------- internals

    def _maybe_confirm(self) -> list[Action]:
        if self._confirmed:
            return []
        protect = self.agent_speaking and self.cfg.interrupt_response
        need_s = (self.cfg.interrupt_min_speech_ms if protect else self.cfg.min_speech_ms) / 1000
        if self._speech_s + 1e-9 < need_s:
            return []
        self._confirmed = True
        out: list[Action] = [SpeechStarted(self.turn_id, self._onset)]
        if protect:
            out.append(BargeIn(self.turn_id, self._onset))
        return out

    def _maybe_speculate(self, t: float) -> list[Action]:
        """Paused long enough (`speculate_after_ms`, counted from the end of the last voiced
        frame, so from the first silent frame on) to start speculating on this pause?"""
        cfg = self.cfg
        if self._speculated or (t - self._voice_end) * 1000 + 1e-6 < min(cfg.speculate_after_ms,
                                                                          cfg.silence_duration_ms):
            return []
        self.spec_id += 1
        self._speculated = True
        self._eot_prob, self._text_cue = None, None
        return [Speculate(self.turn_id, self.spec_id, self._onset, self._voice_end)]

    def _end(self, t: float, reason: str) -> list[Action]:
        ended = TurnEnded(self.turn_id, self.spec_id, self._onset, self._voice_end, t, reason)
        self.turn_id += 1
        self._reset()
        return [ended]

    def _reset(self) -> None:
        self.state = "idle"
        self._speech_s, self._confirmed, self._speculated = 0.0, False, False
        self._eot_prob, self._text_cue = None, None
