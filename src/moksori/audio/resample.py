"""Resampling with libsoxr: one-shot for whole buffers, streaming for live audio."""

from __future__ import annotations

import numpy as np
import soxr

from moksori.audio.frames import Frame


def resample(frame: Frame, rate: int, *, quality: str = "HQ") -> Frame:
    """Whole-buffer resample (offline use: files, a finished TTS clause)."""
    if frame.rate == rate or len(frame) == 0:
        return Frame(frame.samples, rate) if len(frame) == 0 else frame
    out = soxr.resample(frame.samples, frame.rate, rate, quality=quality)
    return Frame(np.asarray(out, dtype=np.int16), rate)


def resample_float(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """float32 -> float32 at another rate."""
    if src_rate == dst_rate:
        return samples.astype(np.float32, copy=False)
    return np.asarray(soxr.resample(samples.astype(np.float32, copy=False), src_rate, dst_rate, quality="HQ"),
                      dtype=np.float32)


class StreamResampler:
    """Stateful resampler for a live stream: feed chunks, get chunks, no clicks at chunk edges.

    libsoxr keeps a few ms of filter history, so output lags input slightly; `flush()` drains it.
    """

    def __init__(self, src_rate: int, dst_rate: int, *, quality: str = "HQ") -> None:
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._passthrough = src_rate == dst_rate
        self._stream = None if self._passthrough else soxr.ResampleStream(
            src_rate, dst_rate, 1, dtype="int16", quality=quality)

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self._stream is None:  # passthrough
            return samples
        if len(samples) == 0:
            return np.zeros(0, dtype=np.int16)
        return np.asarray(self._stream.resample_chunk(samples.astype(np.int16, copy=False)), dtype=np.int16)

    def flush(self) -> np.ndarray:
        if self._stream is None:  # passthrough
            return np.zeros(0, dtype=np.int16)
        out = np.asarray(self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True), dtype=np.int16)
        self._stream = soxr.ResampleStream(self.src_rate, self.dst_rate, 1, dtype="int16", quality="HQ")
        return out
