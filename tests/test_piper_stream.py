"""Piper streamed window by window (`providers/piper_stream.py`): the stitched audio is the one-shot
audio, and the first window reaches the caller before the rest of the sentence is made.

English: the packaged en_US joe voice on the LibriVox transcripts. Korean: no Korean Piper voice
ships (MODELS.md), so the same voice reads espeak-ng's Korean phonemes, standing in for a user's
Korean voice (`MOKSORI_TTS_VOICE_KO`): the same graph, other latents and lengths.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from speech import manifest, requires_speech

from moksori.providers.base import TTSOptions
from moksori.providers.piper_stream import Leveller, soft_limit, windows

pytestmark = [pytest.mark.models]

NOISE_OFF = np.asarray([0.0, 1.0, 0.0], dtype=np.float32)  # Piper's sampling off: deterministic


@pytest.fixture(scope="module")
def piper():
    from moksori.providers.tts_piper import PiperTTS

    tts = PiperTTS(threads=1)
    assert tts.streaming is not None, "the packaged voice's graph should cut"
    return tts


@pytest.fixture(scope="module")
def one_shot(piper):
    from moksori.providers.onnx import open_session

    return open_session(piper.path, threads=1, what="Piper voice")


def phonemizer(piper, language: str):
    """A PiperVoice that phonemizes for `language` (espeak-ng), over the same voice."""
    from piper.config import PiperConfig
    from piper.voice import PiperVoice

    cfg = json.loads(Path(str(piper.path) + ".json").read_text(encoding="utf-8"))
    cfg["espeak"]["voice"] = {"en": "en-us", "ko": "ko"}[language]
    return PiperVoice(config=PiperConfig.from_dict(cfg), session=None)  # type: ignore[arg-type]


def sentences(language: str, n: int) -> list[str]:
    out = [u.transcript for u in manifest().values()
           if u.language == language and u.transcript and not u.transcript.startswith("[")]
    return out[:n]


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    err = float(np.sum((ref.astype(np.float64) - got) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / err)


@requires_speech
@pytest.mark.parametrize("language", ["en", "ko"])
def test_stitched_windows_equal_the_one_shot_output(piper, one_shot, language):
    """The whole graph in one run against the cut graph in windows, on the same phoneme ids with
    the noise off: the samples agree to float rounding at every seam."""
    voice = phonemizer(piper, language)
    checked = 0
    for text in sentences(language, 6 if language == "en" else 2):
        for phonemes in voice.phonemize(text):
            ids = voice.phonemes_to_ids(phonemes)
            feed = {"input": np.asarray([ids], dtype=np.int64), "input_lengths": np.asarray([len(ids)]),
                    "scales": NOISE_OFF}
            whole = np.asarray(one_shot.run(None, feed)[0]).reshape(-1)
            parts = list(piper.streaming.audio(ids, NOISE_OFF))
            stitched = np.concatenate(parts)
            assert len(parts) >= 2, f"{text!r}: one window only ({len(whole)} samples)"
            assert len(stitched) == len(whole)
            diff = float(np.max(np.abs(stitched - whole)))
            print(f"\n{language} {len(parts)} windows, {len(whole) / 22050:.2f} s: max |diff| {diff:.1e}, "
                  f"SNR {snr_db(whole, stitched):.0f} dB  {text[:40]!r}")
            assert diff < 1e-4 and snr_db(whole, stitched) > 80
            checked += 1
    assert checked >= (6 if language == "en" else 2)


@requires_speech
def test_windowed_decode_equals_whole_decode_with_the_noise_on(piper):
    """With Piper's sampling on (its default), one latent decoded whole and in windows."""
    s = piper.streaming
    voice = phonemizer(piper, "en")
    ids = voice.phonemes_to_ids(voice.phonemize(sentences("en", 1)[0])[0])
    z_p, mask = s.latent(ids, piper.scales(1.0))
    whole = s._decode(s._flow(z_p, mask, 0, z_p.shape[2]))
    stitched = np.concatenate(list(s.decode(z_p, mask)))
    assert len(stitched) == len(whole) and snr_db(whole, stitched) > 80


def test_windows_tile_the_sentence():
    for frames in (1, 15, 16, 17, 40, 63, 64, 200, 1000):
        plan = windows(frames, 16, 3)
        assert plan[0][0] == 0 and plan[-1][1] == frames
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(plan, plan[1:]))
        assert plan[0][1] == min(frames, 16) or frames < 24
    assert windows(200, 16, 3) == [(0, 16), (16, 64), (64, 200)]


def test_soft_limit_is_continuous_and_bounded():
    x = np.linspace(-3, 3, 60001, dtype=np.float32)
    y = soft_limit(x, 0.9)
    assert np.all(np.abs(y) <= 1.0)
    assert np.array_equal(y[np.abs(x) <= 0.9], x[np.abs(x) <= 0.9])
    assert np.max(np.abs(np.diff(y))) <= np.max(np.abs(np.diff(x))) * 1.0001  # no step anywhere
    lv = Leveller(peak_ref=0.6)
    lv.observe(0.9)
    assert 0.6 < lv.peak_ref < 0.9
    before = lv.peak_ref
    lv.observe(0.3)
    assert 0.3 < lv.peak_ref < before
    lv.observe(float("nan"))
    lv.observe(0.0)
    assert lv.peak_ref < before


@requires_speech
async def test_the_first_window_arrives_before_the_sentence_is_made(piper):
    """The second window's decode waits until the caller holds the first frame: if the provider
    kept its audio until the sentence was done, the first frame would never arrive and the
    decode would give up waiting (then the test fails)."""
    s = piper.streaming
    got_first = threading.Event()
    calls = {"n": 0}
    original = s._decode

    def gated(z):
        calls["n"] += 1
        if calls["n"] == 2:
            calls["waited"] = got_first.wait(timeout=60)
        return original(z)

    s._decode = gated
    try:
        frames = []
        async for f in piper.synthesize(sentences("en", 1)[0], TTSOptions(language="en")):
            if not frames:
                got_first.set()
            frames.append(f)
            await asyncio.sleep(0)
    finally:
        del s._decode
    assert calls["n"] >= 2 and calls.get("waited") is True
    assert len(frames) >= 2 and all(len(f) for f in frames)
