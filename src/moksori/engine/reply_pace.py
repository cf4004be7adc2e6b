"""How soon a reply is ready after a pause, learned from this process's own recent turns.

For `turn.eot_skip = "auto"` (engine/speculation.py): the end-of-turn model can only make a
reply start sooner if the reply is ready before the text rule would end the turn anyway
(`silence_duration_ms` + the eagerness' grace, 600 ms by default). Where it is not (a slow CPU, a
long turn, a loaded server), the model beside the decode only slows the decode. The estimate:

    ready after the voice end ~ the decode's start + decode(audio seconds) + reply

with decode(s) a least-squares line through the last turns' (audio seconds, decode ms) and reply
the median time from a transcript to its reply's first audio. One `ReplyPace` per STT provider
instance (`for_stt`), so every session of a process that shares the models shares what it
learned; with too few turns there is no estimate and nothing is skipped.
"""

from __future__ import annotations

import statistics
import weakref
from collections import deque
from typing import Any

MIN_DECODES = 4
MIN_REPLIES = 3
KEEP = 32


class ReplyPace:
    def __init__(self) -> None:
        self.decodes: deque[tuple[float, float]] = deque(maxlen=KEEP)  # (audio s, decode ms)
        self.replies: deque[float] = deque(maxlen=KEEP)  # transcript -> first audio, ms

    def decoded(self, audio_s: float, decode_ms: float) -> None:
        self.decodes.append((audio_s, decode_ms))

    def replied(self, ms: float) -> None:
        """A reply's first audio came `ms` after its transcript (a held reply's too)."""
        self.replies.append(ms)

    def decode_ms(self, audio_s: float) -> float | None:
        if len(self.decodes) < MIN_DECODES:
            return None
        xs = [a for a, _ in self.decodes]
        ys = [d for _, d in self.decodes]
        if max(xs) - min(xs) < 0.5:  # all turns about as long: no slope to fit
            return statistics.median(ys)
        fit = statistics.linear_regression(xs, ys)
        slope = min(max(fit.slope, 0.0), 200.0)  # ms per second of audio; noise must not bend it wild
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        return max(0.0, mean_y + slope * (audio_s - mean_x))

    def ready_ms(self, audio_s: float, decode_start_ms: float) -> float | None:
        """The reply's expected first audio after the voice end, or None (too few turns yet)."""
        decode = self.decode_ms(audio_s)
        if decode is None or len(self.replies) < MIN_REPLIES:
            return None
        return decode_start_ms + decode + statistics.median(self.replies)


_by_stt: weakref.WeakKeyDictionary[Any, ReplyPace] = weakref.WeakKeyDictionary()


def for_stt(stt: Any) -> ReplyPace:
    """The pace of replies decoded by this STT provider instance (shared by its sessions)."""
    pace = _by_stt.get(stt)
    if pace is None:
        pace = _by_stt[stt] = ReplyPace()
    return pace
