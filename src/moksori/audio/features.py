"""Whisper-style log-mel spectrogram in numpy (80 mel bands, 25 ms window, 10 ms hop, 16 kHz).

Used by the smart-turn end-of-turn model, which was trained on these features. The recipe is
the published Whisper front end: centred STFT with a periodic Hann window, power spectrum,
Slaney-normalised triangular mel filters on the Slaney mel scale, log10, a floor 8 decades
under the peak, then (x + 4) / 4.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    linear = 3.0 * f / 200.0
    log_part = 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(f < 1000.0, linear, log_part)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    linear = 200.0 * m / 3.0
    log_part = 1000.0 * np.exp((m - 15.0) * (np.log(6.4) / 27.0))
    return np.where(m < 15.0, linear, log_part)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) filter matrix."""
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(rate / 2.0), n_mels + 2))
    bins_hz = np.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bins_hz[None, :]) / (upper - centre)
    weights: np.ndarray = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (upper - lower))  # equal area per band (Slaney)
    return weights.astype(np.float32)


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    n = np.arange(N_FFT)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)  # periodic


def log_mel(audio: np.ndarray) -> np.ndarray:
    """float32 16 kHz audio -> (80, len(audio) // 160) log-mel features."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError("log_mel expects 1-D audio")
    if len(x) < N_FFT // 2 + 1:
        x = np.pad(x, (0, N_FFT // 2 + 1 - len(x)))
    padded = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2  # (T+1, bins)
    mel = mel_filters() @ power[:-1].T.astype(np.float32)  # drop the last frame, as Whisper does
    logm: np.ndarray = np.log10(np.maximum(mel, 1e-10))
    logm = np.maximum(logm, logm.max() - 8.0)
    return ((logm + 4.0) / 4.0).astype(np.float32)
