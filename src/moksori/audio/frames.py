"""PCM16 mono audio that always carries its sample rate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moksori.errors import AudioFormatError

SUPPORTED_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass(frozen=True, slots=True)
class Frame:
    """A block of mono 16-bit PCM. `samples` is a 1-D int16 array."""

    samples: np.ndarray
    rate: int

    def __post_init__(self) -> None:
        if self.samples.dtype != np.int16 or self.samples.ndim != 1:
            raise AudioFormatError("audio frames must be 1-D int16 PCM")
        if not 1000 <= self.rate <= 192000:
            raise AudioFormatError(f"unsupported sample rate {self.rate} Hz")

    @classmethod
    def from_bytes(cls, data: bytes, rate: int) -> "Frame":
        if len(data) % 2:
            raise AudioFormatError("PCM16 audio must have an even number of bytes")
        return cls(np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False), rate)

    @classmethod
    def from_float(cls, samples: np.ndarray, rate: int) -> "Frame":
        return cls(float_to_pcm16(samples), rate)

    @classmethod
    def silence(cls, seconds: float, rate: int) -> "Frame":
        return cls(np.zeros(int(round(seconds * rate)), dtype=np.int16), rate)

    def to_bytes(self) -> bytes:
        return self.samples.astype("<i2", copy=False).tobytes()

    def to_float(self) -> np.ndarray:
        return pcm16_to_float(self.samples)

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate

    def __len__(self) -> int:
        return len(self.samples)


def pcm16_to_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return np.round(x * 32767.0).astype(np.int16)


def concat(frames: list[Frame]) -> Frame:
    if not frames:
        raise AudioFormatError("nothing to concatenate")
    rate = frames[0].rate
    if any(f.rate != rate for f in frames):
        raise AudioFormatError("cannot concatenate frames with different sample rates")
    return Frame(np.concatenate([f.samples for f in frames]), rate)


def trim_leading_silence(frame: Frame, *, threshold: float = 0.01, keep_ms: int = 10,
                         max_ms: int = 200) -> Frame:
    """Drop the near-silence (10 ms windows under `threshold` RMS, -40 dBFS) before the first
    sound, keeping `keep_ms` of it; at most `max_ms` goes. Silence throughout: unchanged.
    (A reply's first clause: Piper starts each sentence with 20-50 ms of it, heard as latency.)"""
    win = max(1, frame.rate // 100)
    x = frame.samples.astype(np.float32) / 32768.0
    limit = min(len(x) // win, max(0, max_ms) * frame.rate // 1000 // win)
    k = 0
    while k < limit and float(np.sqrt(np.mean(x[k * win:(k + 1) * win] ** 2))) < threshold:
        k += 1
    if k == len(x) // win:
        return frame  # nothing but silence
    start = max(0, k * win - keep_ms * frame.rate // 1000)
    return Frame(frame.samples[start:], frame.rate) if start else frame
