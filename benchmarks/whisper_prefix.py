"""Does forcing the words live partials agreed on as the final decode's prefix cut its time?

The idea: the final transcript is decoded after the end of speech; live partials (every
`stt.partial_interval_ms` = 1.2 s of speech, engine/partials.py) have already decoded most of
the turn. Force the words two partials agree on as Whisper's prefix, so that the decoder only
generates the tail. It pays only if CTranslate2 evaluates a forced prefix cheaper than it
generates the same tokens.

For each turn (LibriVox en_001..005 at 16 kHz, the 8 kHz telephone files tel_001..016) this
simulates the partials on the truncated audio (speech onset and end from the manifest's
lead/trail silence; partial k hears [0, onset + 1.2 k s] while that is before the end of
speech, decoded as a partial is, language en), takes the agreed prefix LocalAgreement-2 style
(the longest common word prefix of the last two partials, minus `--drop` last words; words
compared as engine/stable_prefix.norm_words does, raw text from the later partial), then times
the final decode of the whole turn on one shared encoder output, variants interleaved with the
order rotating file by file:

* `plain`: today's decode (`WhisperSTT._decode`: SOT sequence, timestamps on);
* `ts_prefix`: SOT sequence + `<|0.00|>` + the agreed text's tokens as a forced prefix,
  timestamps on (the model closes that segment with a timestamp and opens a new one, or goes
  on in the same segment: both parse as today, `stt_whisper.parse_segments`);
* `nots`: SOT sequence + `<|notimestamps|>`, no prefix, a tight length cap (8 + 4.5 tokens per
  second of audio: without timestamps a loop in the padding is not cut by the segment filter);
* `nots_prefix`: `nots` + the agreed text as a forced prefix.

A decode that looks degenerate (a repeated segment, gzip ratio > 2.4) is decoded again with the
30 s window as `_transcribe_window` does (its time added, counted as a retry).

Reported per variant: decoder and total (encoder + decoder + retry) p50/p95 ms, tokens in the
result (forced prefix included) p50, decoder ms per result token, WER on the en and tel sets
(tests/speech.py), transcripts that differ from `plain`'s, retries; and how many turns had a
prefix and its length.

    flock /work/bench.lock python benchmarks/whisper_prefix.py [--reps 3] [--json out.json]

Result (2026-12-04, results/whisper_prefix.json; docs/LATENCY.md): it does not pay.
CTranslate2 runs one decoder step per forced prefix token, as for a generated one.

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

from _stats import pct

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/speech.py: corpus paths and WER

VARIANTS = ("plain", "ts_prefix", "nots", "nots_prefix")


def agreed_prefix(partials: list[str], drop: int = 1) -> str:
    """LocalAgreement-2 over the last two partials (engine/stable_prefix.local_agreement)."""
    from moksori.engine.stable_prefix import local_agreement

    return local_agreement(partials[-2], partials[-1], drop=drop) if len(partials) >= 2 else ""


def turns(quick: bool) -> list[dict]:
    from speech import load16k, utt

    names = [f"en_{i:03d}" for i in range(1, 6)] + [f"tel_{i:03d}" for i in (range(1, 6) if quick else range(1, 17))]
    out = []
    for name in names:
        u = utt(name)
        group = "en" if name.startswith("en") else "tel"
        audio = load16k(u.path if group == "en" else u.path_8k)
        lead, trail = u.lead_trail or (0.0, 0.0)
        out.append({"file": name, "group": group, "audio": audio, "ref": u.transcript,
                    "onset": lead, "speech_end": len(audio) / 16000 - trail})
    return out


def simulate_partials(stt: Any, turn: dict, interval: float) -> list[str]:
    from moksori.providers.base import STTOptions

    texts = []
    k = 1
    while turn["onset"] + k * interval < turn["speech_end"]:
        end = int(16000 * (turn["onset"] + k * interval))
        texts.append(stt.transcribe_array(turn["audio"][:end], STTOptions(language="en")).text)
        k += 1
    return texts


def decode(stt: Any, enc: Any, n_frames: int, variant: str, prefix: str) -> tuple[Any, list[int], float]:
    """One decoder call of `variant` -> (the parsed `_Decoded`, result ids, decoder ms)."""
    from moksori.providers.stt_whisper import _Decoded, parse_segments

    tok = stt._tokenizer("en")
    if variant == "plain":
        ids: list[int] = []
        real = stt._wm.model

        class Keep:  # the plain path through WhisperSTT._decode itself, keeping the ids
            def generate(self, *a: Any, **kw: Any) -> Any:
                out = real.generate(*a, **kw)
                ids.extend(out[0].sequences_ids[0])
                return out

        stt._wm.model = Keep()
        try:
            t0 = time.perf_counter()
            out = stt._decode(enc, "en", n_frames, None)
            ms = 1000 * (time.perf_counter() - t0)
        finally:
            stt._wm.model = real
        return out, ids, ms
    forced = tok.encode(" " + prefix.strip()) if prefix.strip() else []
    duration = n_frames / 100.0
    if variant.startswith("ts"):
        prompt = list(tok.sot_sequence) + ([tok.timestamp_begin] + forced if forced else [])
        # CTranslate2 counts the forced tokens among the new ones (at most max_length / 2)
        max_len = min(440, 24 + int(duration * 9)) + 2 * (len(forced) + 1)
    else:
        prompt = list(tok.sot_sequence) + [tok.no_timestamps] + forced
        max_len = 2 * (8 + int(duration * 4.5)) + 2 * len(forced)
    t0 = time.perf_counter()
    res = stt._wm.model.generate(
        enc, [prompt], beam_size=stt.beam_size, max_length=max_len, return_scores=True,
        return_no_speech_prob=True, suppress_blank=True, suppress_tokens=stt._suppress,
        max_initial_timestamp_index=50)[0]
    ms = 1000 * (time.perf_counter() - t0)
    ids = res.sequences_ids[0]
    avg_lp = res.scores[0] * (len(ids) or 1) / ((len(ids) or 1) + 1) if res.scores else 0.0
    return _Decoded(parse_segments(ids, tok, duration), float(res.no_speech_prob), float(avg_lp)), ids, ms


def run(args: argparse.Namespace, settings: Any) -> dict:
    from speech import word_errors

    from moksori.providers.registry import build_stt
    from moksori.providers.stt_whisper import FULL_FRAMES, PAD_FRAMES, _looks_looped

    stt: Any = build_stt(settings)
    corpus = turns(args.quick)
    from moksori.providers.base import STTOptions

    stt.transcribe_array(corpus[0]["audio"], STTOptions(language="en"))  # warm
    for turn in corpus:
        turn["partials"] = simulate_partials(stt, turn, args.interval)
        turn["prefix"] = agreed_prefix(turn["partials"], args.drop)
        print(json.dumps({k: turn[k] for k in ("file", "partials", "prefix")}), file=sys.stderr)
    fe = stt._wm.feature_extractor
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows: list[dict] = []
    n = 0
    for rep in range(args.reps):
        for turn in corpus:
            audio = turn["audio"]
            n_frames = max(1, len(audio) // 160)
            window = min(FULL_FRAMES, n_frames + PAD_FRAMES)
            t0 = time.perf_counter()
            feats = fe(audio, padding=160 * (window - n_frames) + 160)
            enc = stt._encode(feats[:, :window])
            enc_ms = 1000 * (time.perf_counter() - t0)
            order = list(VARIANTS[n % len(VARIANTS):] + VARIANTS[:n % len(VARIANTS)])
            n += 1
            for variant in order:
                prefix = turn["prefix"] if variant.endswith("prefix") else ""
                out, ids, dec_ms = decode(stt, enc, n_frames, variant, prefix)
                retry_ms = 0.0
                if out.degenerate:  # as _transcribe_window: the standard 30 s window, plain
                    t0 = time.perf_counter()
                    full = stt._encode(fe(audio, padding=160 * FULL_FRAMES)[:, :FULL_FRAMES])
                    out = stt._decode(full, "en", n_frames, None)
                    retry_ms = 1000 * (time.perf_counter() - t0)
                text = out.text()
                if (out.no_speech > 0.6 and out.avg_logprob < -1.0) or out.no_speech > 0.9 or _looks_looped(text):
                    text = ""
                errors, words = word_errors(turn["ref"], text)
                tok = stt._tokenizer("en")
                row = {"variant": variant, "rep": rep, "file": turn["file"], "group": turn["group"],
                       "encoder_ms": round(enc_ms, 1), "decoder_ms": round(dec_ms, 1), "retry_ms": round(retry_ms, 1),
                       "total_ms": round(enc_ms + dec_ms + retry_ms, 1), "tokens": len(ids),
                       "forced": len(tok.encode(" " + prefix)) if prefix else 0, "errors": errors, "words": words,
                       "text": text, "raw": tok.decode_with_timestamps(ids)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    summary: dict = {"loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                     "cpus": os.cpu_count(), "reps": args.reps, "turns": len(corpus),
                     "turns_with_prefix": sum(1 for t in corpus if t["prefix"]),
                     "prefix_words_p50": pct([len(t["prefix"].split()) for t in corpus if t["prefix"]], 0.5),
                     "partials_per_turn_p50": pct([len(t["partials"]) for t in corpus], 0.5)}
    ref_text = {(r["file"], r["rep"]): r["text"] for r in rows if r["variant"] == "plain"}
    with_prefix = {t["file"] for t in corpus if t["prefix"]}
    for name in VARIANTS:
        mine = [r for r in rows if r["variant"] == name]
        s: dict = {}
        for key in ("decoder_ms", "total_ms", "tokens"):
            vals = [r[key] for r in mine]
            s[f"{key}_p50"] = round(pct(vals, 0.5), 1)
            s[f"{key}_p95"] = round(pct(vals, 0.95), 1)
        pre = [r["decoder_ms"] for r in mine if r["file"] in with_prefix]
        s["decoder_ms_p50_turns_with_prefix"] = round(pct(pre, 0.5), 1)
        s["decoder_ms_per_token_p50"] = round(pct([r["decoder_ms"] / (r["tokens"] + 1) for r in mine], 0.5), 2)
        for group in ("en", "tel"):
            g = [r for r in mine if r["group"] == group]
            s[f"wer_{group}"] = round(sum(r["errors"] for r in g) / max(1, sum(r["words"] for r in g)), 4)
        s["retries_30s"] = sum(1 for r in mine if r["retry_ms"] > 0)
        s["differs_from_plain"] = sum(1 for r in mine if r["text"] != ref_text[(r["file"], r["rep"])])
        summary[name] = s
    return {"summary": summary, "turns": [{k: t[k] for k in ("file", "onset", "speech_end", "partials", "prefix")}
                                          for t in corpus], "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--interval", type=float, default=1.2, help="seconds of speech between partials")
    ap.add_argument("--drop", type=int, default=1, help="agreed words left out at the end of the prefix")
    ap.add_argument("--quick", action="store_true", help="tel_001..005 only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from whisper_stages import whisper_settings

    from moksori.providers.cpu import detect

    settings, tmp = whisper_settings()
    out = run(args, settings)
    out["summary"]["cpu"] = detect().summary()
    print(json.dumps(out["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
