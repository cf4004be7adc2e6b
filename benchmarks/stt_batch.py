"""Two or three turns' final Whisper decodes: one after the other, or as one batch?

With real models each turn's final decode runs alone on the model (`ModelExecutor`, one call at
a time), so when N sessions stop speaking together the N-th waits for the N-1 decodes before
it. CTranslate2's `encode` and `generate` take a batch, and at batch 1 a decoder step is
memory-bound, so two turns decoded as one batch might cost much less than two decodes in a row.

For pairs (and triples) of real turns (LibriVox en_*, the 8 kHz telephone files tel_* resampled
to 16 kHz as the server does, Korean ko_*), each rep runs two arms, interleaved (the order
alternates pair by pair):

* `sequential`: today's path, `WhisperSTT.transcribe_array` on each turn in turn;
* `batch`: one encoder call on the turns' features stacked and padded with silence to the
  longest window (the longest turn + 3 s, as `stt_whisper.py` pads one turn: every turn then
  has at least 3 s of padding, the shorter ones more), language detection on that batch, and
  one `generate` with one prompt per turn; each transcript is cut at its own turn's length
  (`parse_segments`). A degenerate result (a loop) is decoded again alone, as the provider
  does with its 30 s window.

Reported per arm: each turn's "done" time (when its transcript is ready, from the moment all of
them were asked for: sequential, the k-th decode's end; batch, the batch's end, since
CTranslate2 completes a batch's results together), the process CPU time, and whether each
batched transcript is identical to the turn's single decode. For each turn whose batched
transcript differs, a third decode, not timed, runs it alone but padded to the batch's window,
so the difference can be put down to the longer padding or to the batch itself.

    python benchmarks/stt_batch.py [--reps 5] [--threads auto|N] [--json out.json]

Run it alone on the machine (`flock /work/bench.lock ...`). CT2_FORCE_CPU_ISA=AVX2 (with
MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2) holds CTranslate2 to its AVX2 kernels.
Uses MOKSORI_DATA_DIR if set, otherwise a temporary data dir (Whisper is joined there, ~1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _stats import pct

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/speech.py: corpus paths, the 16 kHz reader

# Turns that could end together: conversational lengths (1-13 s), mixed sets and lengths.
PAIRS = [
    ("en_002", "en_005"), ("en_001", "en_003"), ("en_004", "tel_001"), ("tel_002", "tel_003"),
    ("tel_004", "tel_005"), ("tel_006", "tel_007"), ("en_010", "tel_008"), ("en_012", "en_014"),
    ("ko_001", "en_018"), ("ko_001", "tel_009"), ("en_006", "en_013"), ("en_011", "tel_010"),
    ("tel_011", "tel_012"), ("en_016", "en_017"), ("ko_003", "tel_013"), ("en_008", "en_009"),
]
TRIPLES = [
    ("tel_001", "tel_002", "tel_003"), ("en_002", "en_005", "tel_014"), ("en_003", "en_004", "en_013"),
    ("ko_001", "en_018", "tel_016"),
]


def load(name: str) -> np.ndarray:
    from speech import load16k, utt

    u = utt(name)
    return load16k(u.path_8k if name.startswith("tel_") else u.path)


def decode_batch(stt: Any, audios: list[np.ndarray], opts: Any, window: int | None = None) -> list[Any]:
    """The turns as one batch (see the module docstring) -> their Transcripts. `window`: pad to
    that many frames instead of the longest turn + 3 s (one turn alone at a batch's window)."""
    import ctranslate2

    from moksori.providers import stt_whisper as sw
    from moksori.providers.base import Transcript

    fe = stt._wm.feature_extractor
    model = stt._wm.model
    ns = [max(1, len(a) // 160) for a in audios]
    w = window or min(sw.FULL_FRAMES, max(ns) + sw.PAD_FRAMES)
    feats = np.stack([fe(a, padding=160 * (w - n) + 160)[:, :w] for a, n in zip(audios, ns)])
    enc = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)), to_cpu=False)
    allowed = tuple(lang for lang in opts.languages if lang in stt.caps.languages) or ("en",)
    if opts.language:
        langs = [(opts.language, 1.0)] * len(audios)
    else:
        langs = []
        for probs in model.detect_language(enc):
            scored = [(tok[2:-2], p) for tok, p in probs if tok[2:-2] in allowed]
            total = sum(p for _, p in scored) or 1.0
            lang, p = max(scored, key=lambda kv: kv[1])
            langs.append((lang, p / total))
    toks = [stt._tokenizer(lang) for lang, _ in langs]
    prompts = [list(t.sot_sequence) for t in toks]
    max_len = max(min(440, 24 + int(n / 100 * 9)) for n in ns)
    res = model.generate(enc, prompts, beam_size=stt.beam_size, max_length=max_len, return_scores=True,
                         return_no_speech_prob=True, suppress_blank=True, suppress_tokens=stt._suppress,
                         max_initial_timestamp_index=50)
    out = []
    for audio, n, tok, (lang, lang_p), r in zip(audios, ns, toks, langs, res):
        ids = r.sequences_ids[0]
        avg_lp = r.scores[0] * (len(ids) or 1) / ((len(ids) or 1) + 1) if r.scores else 0.0
        d = sw._Decoded(sw.parse_segments(ids, tok, n / 100.0), float(r.no_speech_prob), float(avg_lp))
        if d.degenerate:  # a loop: decoded again alone, as the provider does (its 30 s retry)
            out.append(stt.transcribe_array(audio, opts))
            continue
        text = d.text()
        if (d.no_speech > 0.6 and d.avg_logprob < -1.0) or d.no_speech > 0.9 or sw._looks_looped(text):
            text = ""
        out.append(Transcript(text, lang, True, len(audio) / 16000, no_speech_prob=d.no_speech, language_prob=lang_p))
    return out


def run_arm(arm: str, stt: Any, audios: list[np.ndarray], opts: Any, clock: Any) -> tuple[list[float], float, list[str]]:
    """-> (each turn's done time in ms, process CPU ms, texts); `clock` records the stages."""
    clock.reset()
    c0, t0 = time.process_time(), time.perf_counter()
    if arm == "sequential":
        done, texts = [], []
        for a in audios:
            texts.append(stt.transcribe_array(a, opts).text)
            done.append(1000 * (time.perf_counter() - t0))
    else:
        texts = [tr.text for tr in decode_batch(stt, audios, opts)]
        done = [1000 * (time.perf_counter() - t0)] * len(audios)
    return done, 1000 * (time.process_time() - c0), texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", default="auto", help="Whisper intra-op threads (auto: as stt.threads=auto)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from whisper_stages import instrument, whisper_settings

    from moksori.providers import cpu
    from moksori.providers.base import STTOptions
    from moksori.providers.stt_whisper import FULL_FRAMES, PAD_FRAMES, WhisperSTT

    settings, _tmp = whisper_settings()
    from moksori.providers.models import prepare_whisper

    threads = cpu.whisper_threads(cpu.detect()) if args.threads == "auto" else int(args.threads)
    stt = WhisperSTT(prepare_whisper(settings.data_dir), threads=threads)
    clock = instrument(stt)  # times features, encoder, language detection and decoder per call
    opts = STTOptions()  # language auto: detected among en/ko, as the server's default
    groups = [list(p) for p in PAIRS] + [list(t) for t in TRIPLES]
    audio = {n: load(n) for g in groups for n in g}
    stt.transcribe_array(audio["en_001"], opts)  # warm up
    decode_batch(stt, [audio["en_001"], audio["en_002"]], opts)

    # the reference transcripts: each turn alone, and alone at each of its groups' batch window
    alone = {n: stt.transcribe_array(a, opts).text for n, a in audio.items()}
    rows: list[dict] = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    k = 0
    for rep in range(args.reps):
        for g in groups:
            arms = ["sequential", "batch"] if k % 2 == 0 else ["batch", "sequential"]
            k += 1
            for arm in arms:
                done, cpu_ms, texts = run_arm(arm, stt, [audio[n] for n in g], opts, clock)
                rows.append({"arm": arm, "rep": rep, "turns": g, "k": len(g),
                             "audio_s": [round(len(audio[n]) / 16000, 2) for n in g],
                             "done_ms": [round(x, 1) for x in done], "cpu_ms": round(cpu_ms, 1),
                             **{f"{key}_ms": round(v, 1) for key, v in clock.rec.items()}, "tokens": sum(clock.tokens),
                             "same_as_alone": [t == alone[n] for n, t in zip(g, texts)], "texts": texts})
                print(json.dumps(rows[-1], ensure_ascii=False), file=sys.stderr)

    diffs = []
    for g in groups:
        ns = [len(audio[n]) // 160 for n in g]
        w = min(FULL_FRAMES, max(ns) + PAD_FRAMES)
        batch_rows = [r for r in rows if r["arm"] == "batch" and r["turns"] == g]
        for i, n in enumerate(g):
            got = {r["texts"][i] for r in batch_rows}
            if got != {alone[n]}:
                padded = decode_batch(stt, [audio[n]], opts, window=w)[0].text
                diffs.append({"group": g, "turn": n, "alone": alone[n], "batched": sorted(got),
                              "alone_at_batch_window": padded, "window_frames": w, "own_window_frames": ns[i] + PAD_FRAMES})

    summary: dict = {"threads": threads, "cpus": os.cpu_count(), "cpu": cpu.detect().summary(),
                     "isa_env": {k: os.environ[k] for k in ("CT2_FORCE_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                                             "ONEDNN_MAX_CPU_ISA") if k in os.environ},
                     "reps": args.reps, "loadavg_before": load_before,
                     "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    for size in (2, 3):
        for arm in ("sequential", "batch"):
            mine = [r for r in rows if r["arm"] == arm and r["k"] == size]
            firsts = [r["done_ms"][0] for r in mine]
            lasts = [r["done_ms"][-1] for r in mine]
            means = [sum(r["done_ms"]) / size for r in mine]
            cpus = [r["cpu_ms"] for r in mine]
            summary[f"{size}_{arm}"] = {
                "runs": len(mine),
                "first_done_p50": round(pct(firsts, 0.5), 1), "last_done_p50": round(pct(lasts, 0.5), 1),
                "last_done_p95": round(pct(lasts, 0.95), 1), "mean_done_p50": round(pct(means, 0.5), 1),
                "cpu_ms_p50": round(pct(cpus, 0.5), 1),
                **{f"{key}_ms_p50": round(pct([r.get(f"{key}_ms", 0.0) for r in mine], 0.5), 1)
                   for key in ("features", "encoder", "detect", "decoder")}, "cpu_ms_total": round(sum(cpus), 1),
                "turns_same_as_alone": sum(sum(r["same_as_alone"]) for r in mine),
                "turns": sum(r["k"] for r in mine)}
        # paired: the same group and rep, batch vs sequential
        ratio = []
        for r in rows:
            if r["arm"] == "batch" and r["k"] == size:
                s = next(x for x in rows if x["arm"] == "sequential" and x["turns"] == r["turns"] and x["rep"] == r["rep"])
                ratio.append(r["done_ms"][-1] / s["done_ms"][-1])
        summary[f"{size}_last_done_batch_over_sequential_p50"] = round(pct(ratio, 0.5), 3)
    by_group = []
    for g in groups:
        seq = [r for r in rows if r["arm"] == "sequential" and r["turns"] == g]
        bat = [r for r in rows if r["arm"] == "batch" and r["turns"] == g]
        by_group.append({"turns": "+".join(g), "audio_s": seq[0]["audio_s"],
                         "sequential_first_done_p50": round(pct([r["done_ms"][0] for r in seq], 0.5), 1),
                         "sequential_last_done_p50": round(pct([r["done_ms"][-1] for r in seq], 0.5), 1),
                         "batch_done_p50": round(pct([r["done_ms"][-1] for r in bat], 0.5), 1),
                         "cpu_batch_over_sequential": round(pct([r["cpu_ms"] for r in bat], 0.5)
                                                            / pct([r["cpu_ms"] for r in seq], 0.5), 2)})
    summary["by_group"] = by_group
    out = {"summary": summary, "differences": diffs, "rows": rows}
    print(json.dumps({"summary": summary, "differences": diffs}, indent=1, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
