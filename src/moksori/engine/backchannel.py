"""When to say "mm-hmm" while the user thinks aloud: a pure policy, times in, decisions out.

A backchannel is a short acknowledgment ("mm-hmm", "uh-huh", "네", "음") spoken in the
session's language and voice while the user pauses mid-thought. It is due when all hold:

* the user is paused (not speaking) and the agent is not speaking;
* the pause has lasted `after_ms`, and not so long that the turn is about to end (`latest_ms`);
* the turn is not finished: the transcript ends mid-phrase (`text_cue == "incomplete"`) or the
  end-of-turn model says so (`eot_prob < eot_threshold`); with neither known, it waits;
* the user has spoken at least `min_speech_s` in this turn (no "mm-hmm" after one word);
* at most once per pause, at most `max_per_turn` per turn, `min_gap_s` apart.

It never ends the user's turn and never enters the history: the session (phase 2) plays it as
audio outside any response, does not count it as the agent speaking for barge-in purposes,
and keeps it out of memory. Like `TurnTaker`, it reads no clock: the session hands in times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

TextCue = Literal["complete", "incomplete", "unknown"]

PHRASES: dict[str, tuple[str, ...]] = {
    "en": ("Mm-hmm.", "Uh-huh.", "Mm-hmm.", "Right."),
    "ko": ("네.", "음.", "네네.", "아, 네."),
}


@dataclass(frozen=True)
class BackchannelConfig:
    enabled: bool = True
    after_ms: int = 700
    latest_ms: int = 1200  # past this the turn-taker may end the turn any moment: stay quiet
    min_gap_s: float = 5.0
    max_per_turn: int = 3
    min_speech_s: float = 1.5
    eot_threshold: float = 0.5

    @classmethod
    def from_settings(cls, turn: object, *, max_pause_ms: int | None = None) -> BackchannelConfig:
        """From `TurnSettings` (`backchannel`, `backchannel_after_ms`, `backchannel_min_gap_s`);
        `max_pause_ms` is the turn-taker's, so an acknowledgment never lands as the turn ends."""
        after = int(getattr(turn, "backchannel_after_ms", 700))
        latest = max(after + 100, (max_pause_ms or 1500) - 300)
        return cls(enabled=getattr(turn, "backchannel", "off") == "on", after_ms=after, latest_ms=latest,
                   min_gap_s=float(getattr(turn, "backchannel_min_gap_s", 5.0)))


@dataclass(frozen=True)
class Backchannel:
    turn_id: int
    t: float  # when it became due
    text: str
    language: str


class BackchannelPolicy:
    def __init__(self, cfg: BackchannelConfig | None = None,
                 phrases: Mapping[str, Sequence[str]] | None = None) -> None:
        self.cfg = cfg or BackchannelConfig()
        self.phrases = {k: tuple(v) for k, v in (phrases or PHRASES).items()}
        self._turn = 0
        self._paused_at: float | None = None  # voice end of the current pause
        self._speech_s = 0.0
        self._acked_this_pause = False
        self._count = 0
        self._last_t: float | None = None
        self._eot: float | None = None
        self._cue: TextCue | None = None
        self._agent_speaking = False
        self._next_phrase: dict[str, int] = {}

    # ------------------------------------------------------------------ inputs

    def on_speech(self, turn_id: int, t_start: float, t_end: float) -> None:
        """A voiced frame of the user (ends any pause)."""
        if turn_id != self._turn:
            self._new_turn(turn_id)
        self._speech_s += max(0.0, t_end - t_start)
        self._paused_at = None
        self._acked_this_pause = False
        self._eot, self._cue = None, None

    def on_pause(self, turn_id: int, voice_end: float) -> None:
        if turn_id != self._turn:
            self._new_turn(turn_id)
        self._paused_at = voice_end
        self._acked_this_pause = False
        self._eot, self._cue = None, None

    def on_analysis(self, turn_id: int, *, eot_prob: float | None = None, text_cue: TextCue | None = None) -> None:
        if turn_id != self._turn or self._paused_at is None:
            return  # stale: a result for another turn or pause
        if eot_prob is not None:
            self._eot = eot_prob
        if text_cue is not None:
            self._cue = text_cue

    def on_turn_end(self, turn_id: int) -> None:
        if turn_id == self._turn:
            self._paused_at = None

    def set_agent_speaking(self, speaking: bool) -> None:
        self._agent_speaking = speaking

    # ------------------------------------------------------------------ decision

    def _unfinished(self) -> bool:
        if self._cue == "incomplete":
            return True
        if self._cue == "complete":
            return False
        return self._eot is not None and self._eot < self.cfg.eot_threshold

    def due(self, t: float, language: str) -> Backchannel | None:
        """The acknowledgment to say now, if one is due (then it is counted as said)."""
        cfg = self.cfg
        if not cfg.enabled or self._paused_at is None or self._agent_speaking or self._acked_this_pause:
            return None
        pause_ms = (t - self._paused_at) * 1000
        if pause_ms < cfg.after_ms or pause_ms > cfg.latest_ms:
            return None
        if self._count >= cfg.max_per_turn or self._speech_s < cfg.min_speech_s:
            return None
        if self._last_t is not None and t - self._last_t < cfg.min_gap_s:
            return None
        if not self._unfinished():
            return None
        self._acked_this_pause = True
        self._count += 1
        self._last_t = t
        return Backchannel(self._turn, t, self._phrase(language), language)

    def next_deadline(self, t: float) -> float | None:
        """When `due` could next say yes without new input (for the session's timer)."""
        if not self.cfg.enabled or self._paused_at is None or self._acked_this_pause:
            return None
        at = self._paused_at + self.cfg.after_ms / 1000
        if self._last_t is not None:
            at = max(at, self._last_t + self.cfg.min_gap_s)
        if at > self._paused_at + self.cfg.latest_ms / 1000:
            return None
        return at if at > t + 1e-9 else None

    # ------------------------------------------------------------------ internals

    def _new_turn(self, turn_id: int) -> None:
        self._turn = turn_id
        self._speech_s = 0.0
        self._count = 0
        self._paused_at = None
        self._acked_this_pause = False
        self._eot, self._cue = None, None

    def _phrase(self, language: str) -> str:
        lang = language if language in self.phrases else "en"
        options = self.phrases[lang]
        i = self._next_phrase.get(lang, 0)
        self._next_phrase[lang] = i + 1
        return options[i % len(options)]
