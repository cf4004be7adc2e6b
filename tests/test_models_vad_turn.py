"""Silero VAD and smart-turn v3.2 on real recorded speech (references from shared/speech/MANIFEST.tsv)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from speech import load16k, requires_speech, utt

from moksori.errors import ModelError
from moksori.providers.vad_segments import speech_probabilities, speech_regions
from moksori.settings import load_settings

pytestmark = [pytest.mark.models, requires_speech]

# Files whose manifest lead/trail silence the VAD should reproduce within 100 ms (16 kHz and 8 kHz copies).
VAD_EN = ["en_002", "en_004", "en_006", "en_010", "en_011", "ko_001"]
VAD_TEL = ["tel_001", "tel_004", "tel_006", "tel_008", "tel_011", "tel_012", "tel_014", "tel_015",
           "tel_016"]

# Finished sentences that smart-turn scores as complete, and that score as incomplete when cut at 55%
# (measured on the float path every CPU takes: complete 0.89-0.99, cut 0.008-0.074).
TURN_FILES = ["tel_001", "tel_003", "tel_006", "tel_011", "tel_012", "tel_013", "tel_015", "tel_016", "ko_001",
              "en_003", "en_004"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return load_settings(data_dir=tmp_path_factory.mktemp("vad-turn-data"))


@pytest.fixture(scope="module")
def vad(settings):
    from moksori.providers.registry import build_vad

    return build_vad(settings)


@pytest.fixture(scope="module")
def turn(settings):
    from moksori.providers.registry import build_turn

    return build_turn(settings)


# --------------------------------------------------------------------------- VAD


def reference_span(name: str) -> tuple[float, float]:
    u = utt(name)
    lead, trail = u.lead_trail
    return lead, u.duration - trail


@pytest.mark.parametrize("name,eight_k", [(n, False) for n in VAD_EN + VAD_TEL] + [(n, True) for n in VAD_TEL])
def test_vad_speech_span_matches_reference(vad, name, eight_k):
    u = utt(name)
    audio = load16k(u.path_8k if eight_k else u.path)
    regions = speech_regions(vad, audio, pad_ms=0)
    assert regions, "no speech found"
    start, end = regions[0][0], regions[-1][1]
    ref_start, ref_end = reference_span(name)
    print(f"\n{name}{' 8k' if eight_k else ''}: VAD {start:.2f}-{end:.2f} s, reference {ref_start:.2f}-{ref_end:.2f} s")
    assert abs(start - ref_start) <= 0.1
    assert abs(end - ref_end) <= 0.1


def test_vad_padding_extends_regions(vad):
    audio = load16k(utt("en_004").path)
    raw = speech_regions(vad, audio, pad_ms=0)
    padded = speech_regions(vad, audio)  # 100 ms by default
    assert len(raw) == len(padded) == 1
    assert padded[0][0] == pytest.approx(max(0.0, raw[0][0] - 0.1), abs=1e-6)
    assert padded[0][1] == pytest.approx(min(len(audio) / 16000, raw[0][1] + 0.1), abs=1e-6)


def test_vad_splits_at_a_known_pause(vad):
    u = utt("en_011")  # JFK: "1290 ms pause at 2.00 s", "1120 ms pause at 4.29 s"
    regions = speech_regions(vad, load16k(u.path), pad_ms=0)
    print("\nen_011 regions:", [(round(a, 2), round(b, 2)) for a, b in regions])
    long_pauses = [(at, length) for at, length in u.pauses if length >= 1.0]
    assert (2.0, 1.29) in long_pauses
    for at, length in long_pauses:
        gaps = [(b, c) for (_, b), (c, _) in zip(regions, regions[1:]) if b <= at + 0.3 and c >= at + length - 0.15]
        assert gaps, f"no region boundary around the pause at {at} s"
        b, c = gaps[0]
        assert c - b >= length - 0.4  # most of the pause is outside any region
    assert len(regions) >= 3


def test_vad_min_silence_merges_short_gaps(vad):
    audio = load16k(utt("en_011").path)
    merged = speech_regions(vad, audio, pad_ms=0, min_silence_ms=1500)
    split = speech_regions(vad, audio, pad_ms=0, min_silence_ms=500)
    assert len(merged) < len(split)


@pytest.mark.parametrize("kind", ["zeros", "noise-0.01", "noise-0.1", "noise-0.3", "hum"])
def test_vad_no_regions_without_speech(vad, kind):
    rng = np.random.default_rng(7)
    n = 16000 * 8
    if kind == "zeros":
        audio = np.zeros(n, dtype=np.float32)
    elif kind == "hum":
        audio = (0.2 * np.sin(2 * np.pi * 50 * np.arange(n) / 16000)).astype(np.float32)
    else:
        audio = (float(kind.split("-")[1]) * rng.standard_normal(n)).astype(np.float32)
    assert speech_regions(vad, audio) == []
    assert float(speech_probabilities(vad, audio).max()) < 0.5


def test_vad_streams_are_independent_and_resettable(vad):
    audio = load16k(utt("en_002").path)
    frames = [audio[i:i + 512] for i in range(0, len(audio) - 512, 512)]
    a, b = vad.stream(), vad.stream()
    pa = [a(f) for f in frames]
    b(np.zeros(512, dtype=np.float32))
    b.reset()
    pb = [b(f) for f in frames]
    assert np.allclose(pa, pb, atol=1e-6)
    assert max(pa) > 0.9 and min(pa) < 0.1


# --------------------------------------------------------------------------- smart-turn


@pytest.fixture(scope="module")
def turn_scores(turn):
    scores = {}
    for name in TURN_FILES:
        audio = load16k(utt(name).path)
        cut = audio[: int(0.55 * len(audio))]
        scores[name] = (turn._predict(audio), turn._predict(cut))
    print("\nsmart-turn P(complete): full / cut at 55%")
    for name, (full, cut) in scores.items():
        print(f"  {name}: {full:.3f} / {cut:.3f}")
    return scores


def test_smart_turn_finished_sentences_are_complete(turn_scores):
    for name, (full, _) in turn_scores.items():
        assert full > 0.5, (name, full)


def test_smart_turn_cut_sentences_are_incomplete(turn_scores):
    for name, (_, cut) in turn_scores.items():
        assert cut < 0.2, (name, cut)


def test_smart_turn_separates_by_a_wide_margin(turn_scores):
    full = np.mean([f for f, _ in turn_scores.values()])
    cut = np.mean([c for _, c in turn_scores.values()])
    print(f"\nmean complete {full:.3f}, mean cut {cut:.3f}")
    assert full - cut > 0.7


async def test_smart_turn_async_api(turn):
    audio = load16k(utt("tel_003").path)
    t0 = time.perf_counter()
    p = await turn.complete_probability(audio, language="en")
    assert time.perf_counter() - t0 < 2.0
    assert p == pytest.approx(turn._predict(audio), abs=1e-6)
    assert await turn.complete_probability(audio[:1000]) == 0.0  # under 0.1 s: nothing to judge


def test_smart_turn_uses_only_the_last_8_seconds(turn):
    audio = load16k(utt("tel_006").path)
    longer = np.concatenate([load16k(utt("en_011").path), audio])  # 11 s of other speech in front
    assert len(longer) > 8 * 16000 + len(audio)
    assert turn._predict(longer) == pytest.approx(turn._predict(longer[-8 * 16000:]), abs=1e-6)


# --------------------------------------------------------------------------- broken model files


def test_corrupt_or_missing_onnx(tmp_path):
    from moksori.providers.registry import build_turn, build_vad

    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(np.random.default_rng(1).bytes(200_000))
    missing = tmp_path / "missing.onnx"
    for build, group in ((build_vad, "vad"), (build_turn, "turn")):
        for path, words in ((garbage, "corrupt"), (missing, "not found")):
            with pytest.raises(ModelError, match=words) as ei:
                build(load_settings(data_dir=tmp_path, **{group: {"model": str(path)}}))
            assert "\n" not in str(ei.value) and str(path) in str(ei.value)
