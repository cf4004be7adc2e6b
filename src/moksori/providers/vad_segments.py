"""Speech regions of a whole recording, from a VAD (for offline transcription of long files)."""

from __future__ import annotations

import numpy as np

from moksori.providers.base import VAD


def speech_probabilities(vad: VAD, audio16k: np.ndarray) -> np.ndarray:
    n = vad.caps.frame_samples
    stream = vad.stream()
    frames = len(audio16k) // n
    return np.array([stream(audio16k[i * n:(i + 1) * n]) for i in range(frames)], dtype=np.float32)


def speech_regions(vad: VAD, audio16k: np.ndarray, *, threshold: float = 0.5, min_silence_ms: int = 500,
                   min_speech_ms: int = 90, pad_ms: int = 100, max_region_s: float = 25.0) -> list[tuple[float, float]]:
    """[(start_s, end_s)] of speech, merged across short gaps, padded, split if too long."""
    n = vad.caps.frame_samples
    frame_s = n / vad.caps.sample_rate
    probs = speech_probabilities(vad, audio16k)
    low = max(0.05, threshold - 0.15)
    regions: list[list[float]] = []
    start = None
    last_voiced = 0.0
    for i, p in enumerate(probs):
        t0, t1 = i * frame_s, (i + 1) * frame_s
        if start is None:
            if p >= threshold:
                start, last_voiced = t0, t1
        elif p >= low:
            if p >= threshold:
                last_voiced = t1
        elif t1 - last_voiced >= min_silence_ms / 1000:
            regions.append([start, last_voiced])
            start = None
    if start is not None:
        regions.append([start, last_voiced])
    pad = pad_ms / 1000
    total = len(audio16k) / vad.caps.sample_rate
    out: list[tuple[float, float]] = []
    for a, b in regions:
        if b - a < min_speech_ms / 1000:
            continue
        a, b = max(0.0, a - pad), min(total, b + pad)
        while b - a > max_region_s:
            out.append((a, a + max_region_s))
            a += max_region_s
        out.append((a, b))
    return out
