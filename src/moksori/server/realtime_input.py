"""A Realtime client's input audio as the connection counts it.

* Where a moment of the session clock falls in the audio the client has sent (`ms_at`): the
  `audio_start_ms` / `audio_end_ms` of the VAD events are positions in the client's audio.
* In manual mode (`turn_detection: null`), how much audio waits for a commit, and the limit
  (`server.max_input_buffer_s`) past which the client is told once that the buffer is full and
  further audio is dropped until it commits or clears.
"""

from __future__ import annotations

from collections import deque

from moksori.errors import ProtocolError

__all__ = ["ClientAudio"]

MARKS = 512  # (session time, audio ms) pairs kept: the recent past the VAD events can name


class ClientAudio:
    def __init__(self, max_buffer_s: float) -> None:
        self.max_buffer_s = max_buffer_s
        self.manual_ms = 0.0  # manual mode: audio since the last commit or clear
        self._total_ms = 0.0  # audio received so far
        self._marks: deque[tuple[float, float]] = deque(maxlen=MARKS)
        self._full_reported = False

    def take(self, ms: float, now: float, *, manual: bool) -> bool:
        """Count `ms` of audio that arrived at session time `now`. False: the manual buffer is
        full and this audio is dropped (the first time, `input_audio_buffer_full` is raised)."""
        if manual:
            if self.manual_ms + ms > 1000 * self.max_buffer_s:
                if not self._full_reported:
                    self._full_reported = True
                    raise ProtocolError(f"input audio buffer is full ({self.max_buffer_s:.0f} s): "
                                        "commit or clear it", code="input_audio_buffer_full")
                return False
            self.manual_ms += ms
        self._total_ms += ms
        self._marks.append((now, self._total_ms))
        return True

    def emptied(self) -> None:
        """The buffer was committed or cleared."""
        self.manual_ms, self._full_reported = 0.0, False

    def ms_at(self, t: float) -> int:
        """Session time -> position in the client's input audio (ms)."""
        marks = self._marks
        if not marks:
            return 0
        for (t0, a0), (t1, a1) in zip(marks, list(marks)[1:]):
            if t0 <= t <= t1:
                return int(a0 + (a1 - a0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0))
        t_last, a_last = marks[-1]
        if t >= t_last:
            return int(a_last)
        return int(max(0.0, marks[0][1] - 1000 * (marks[0][0] - t)))
