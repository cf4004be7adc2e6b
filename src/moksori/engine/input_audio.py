"""Caller audio on its way in: any rate -> 16 kHz float VAD frames stamped on the session clock.

Also keeps what later stages read back: the recent frames (`AudioRing`: ~1 s while idle, up to
40 s during a turn) and, in manual mode, everything since the last commit.
"""

from __future__ import annotations

import numpy as np

from moksori.audio.frames import Frame
from moksori.audio.resample import StreamResampler
from moksori.engine.audio_ring import AudioRing

VAD_RATE = 16000
RING_SECONDS = 40.0  # audio kept while a turn is in progress (max turn + prefix padding)
IDLE_KEEP_SECONDS = 1.0  # while nobody speaks: enough for the prefix padding of the next turn
# Manual mode keeps everything since the last commit, up to this; transports set a lower limit
# and tell the client (Realtime: input_audio_buffer_full) before this one is ever reached.
MANUAL_MAX_SECONDS = 300.0


class InputAudio:
    def __init__(self, frame_samples: int) -> None:
        self._frame_len = frame_samples
        self._resamplers: dict[int, StreamResampler] = {}
        self._pending = np.zeros(0, dtype=np.float32)
        self._ring = AudioRing()
        self._manual: list[np.ndarray] = []
        self._manual_samples = 0

    def frames(self, frame: Frame, now: float) -> list[tuple[float, float, np.ndarray]] | None:
        """Split `frame` (which ended at `now`) into VAD frames: (t_start, t_end, samples).
        A partial frame waits for the next call. None: the resampler gave nothing back yet."""
        rs = self._resamplers.get(frame.rate)
        if rs is None:
            rs = self._resamplers[frame.rate] = StreamResampler(frame.rate, VAD_RATE)
        x = np.multiply(rs.process(frame.samples), 1.0 / 32768.0, dtype=np.float32)
        if len(x) == 0:
            return None
        buf = np.concatenate([self._pending, x]) if len(self._pending) else x
        n = self._frame_len
        count = len(buf) // n
        self._pending = buf[count * n:].copy()
        tail = len(self._pending) / VAD_RATE
        out = []
        for i in range(count):
            t_end = now - tail - (count - 1 - i) * n / VAD_RATE
            out.append((t_end - n / VAD_RATE, t_end, buf[i * n:(i + 1) * n]))
        return out

    # -------------------------------------------------------------- recent audio

    def remember(self, t0: float, t1: float, chunk: np.ndarray, *, in_turn: bool) -> None:
        # An idle session keeps ~1 s, not 40 s: with hundreds of listening sessions the full ring
        # cost 2.5 MB each and gave the garbage collector ~1,000 objects per session to walk.
        self._ring.append(t0, t1, chunk, keep_s=RING_SECONDS if in_turn else IDLE_KEEP_SECONDS)

    def between(self, t0: float, t1: float) -> np.ndarray:
        return self._ring.between(t0, t1)

    def span(self, t0: float, t1: float) -> tuple[np.ndarray, float, float]:
        """The audio between t0 and t1, with its first frame's start and its last frame's end."""
        return self._ring.span(t0, t1)

    # -------------------------------------------------------------- manual mode

    def keep(self, chunk: np.ndarray) -> None:
        if self._manual_samples + len(chunk) <= MANUAL_MAX_SECONDS * VAD_RATE:
            self._manual.append(chunk)
            self._manual_samples += len(chunk)

    def take(self) -> np.ndarray | None:
        """Everything kept since the last commit (and forget it), or None."""
        if not self._manual:
            return None
        audio = np.concatenate(self._manual)
        self._manual, self._manual_samples = [], 0
        return audio

    def clear(self) -> None:
        self._manual, self._manual_samples = [], 0
        self._pending = np.zeros(0, dtype=np.float32)
