"""The recent input audio of a session: 32 ms VAD frames with their session times."""

from __future__ import annotations

from collections import deque

import numpy as np

RATE = 16000


class AudioRing:
    def __init__(self) -> None:
        self._frames: deque[tuple[float, float, np.ndarray]] = deque()
        self._samples = 0

    def append(self, t0: float, t1: float, chunk: np.ndarray, *, keep_s: float) -> None:
        """Add a frame and drop the oldest ones beyond `keep_s` seconds."""
        self._frames.append((t0, t1, chunk))
        self._samples += len(chunk)
        while self._samples > keep_s * RATE:
            self._samples -= len(self._frames.popleft()[2])

    def between(self, t0: float, t1: float) -> np.ndarray:
        parts = [c for (a, b, c) in self._frames if b > t0 and a < t1]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def span(self, t0: float, t1: float) -> tuple[np.ndarray, float, float]:
        """Like `between`, with the start time of its first frame and the end time of its last."""
        frames = [(a, b, c) for (a, b, c) in self._frames if b > t0 and a < t1]
        if not frames:
            return np.zeros(0, dtype=np.float32), t0, t0
        return np.concatenate([c for _, _, c in frames]), frames[0][0], frames[-1][1]

    @property
    def seconds(self) -> float:
        return self._samples / RATE
