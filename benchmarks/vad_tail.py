"""The VAD's tail: true end of speech -> the turn-taker's voice end, and -> each end-of-turn rule.

Every file of the shared speech sets (en: 16 kHz; tel: the 8 kHz copies, tel/8k; ko: 16 kHz) is
streamed through the session's own input path, frame by frame: 20 ms chunks at the file's own
rate, each stamped with its capture time (its end), into `InputAudio` (resampled to 16 kHz, 32 ms
frames), the Silero stream and a `TurnTaker`, then 2.5 s of silence. The true end of speech is
the one server_latency.py and telephony_latency.py use: duration - trailing silence from
MANIFEST.tsv (`server_latency.manifest`). A file whose trailing silence is under 50 ms was cut
mid-speech by its source and is left out of the summary.

One VAD pass per file; the turn-takers are then replayed on its (t_start, t_end, P) frames, one
per variant (`TurnConfig.voice_end_prob`: which frames move the voice end that silence is counted
from; None is the default, any frame with P >= threshold - 0.15). Their end-of-turn analysis is
never given, so only the max pause ends a turn and every pause is seen whole:

* lag_ms: the final pause's voice end - the true end (the VAD's tail);
* spec_ms: when that pause's speculation starts (its decode, end-of-turn model and reply);
* fire_ms[rule]: the earliest the turn can end there by each rule (confident 250 ms, model
  400 ms, text 600 ms of silence), counted from the true end; the analysis comes on top where
  it is late;
* internal pauses (the user went on after them): how many reach each rule's silence, per
  variant; a rule that needs the models ends the turn there only if they say complete, which
  `--models` asks (smart-turn and Whisper on the audio the speculation would get, as
  engine/speculation.py cuts it), so a new rule's extra early ends are counted, not guessed.

Energy: the 10 ms RMS envelope against the recording's noise floor tells real trailing sound (a
fading nasal, a breath, reverb) from the VAD's own inertia (P still high over the floor).
`sound_end_ms`: where the sound falls to within 6 dB of the floor, after the true end;
`vad_inertia_ms`: the voice end after that.

    python benchmarks/vad_tail.py [--sets en,tel,ko] [--models] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from _stats import pct
from server_latency import SPEECH, manifest

CHUNK_MS = 20
TAIL_S = 2.5
SETS = {"en": ("en", None), "tel": ("tel/8k", 8000), "ko": ("ko", None)}
LIBRIVOX = {f"en_00{i}" for i in range(1, 6)}
RULES = {"confident": 250, "model": 400, "text": 600}
VARIANTS = {"base": None, "p50": 0.5, "p70": 0.7, "p90": 0.9}
ENERGY_WIN = 160  # 10 ms at 16 kHz
FLOOR_MARGIN_DB = 6.0


def vad_pass(vad, path: Path) -> tuple[list[tuple[float, float, float]], np.ndarray]:
    """The file streamed as a client would, through the session's own input path."""
    from moksori.audio.frames import Frame
    from moksori.audio.wav import load_audio
    from moksori.engine.input_audio import InputAudio

    audio = load_audio(path)
    samples = np.concatenate([audio.samples, np.zeros(int(TAIL_S * audio.rate), dtype=np.int16)])
    step = audio.rate * CHUNK_MS // 1000
    inp = InputAudio(vad.caps.frame_samples)
    stream = vad.stream()
    frames: list[tuple[float, float, float]] = []
    pcm: list[np.ndarray] = []
    for i in range(0, len(samples) - step + 1, step):
        got = inp.frames(Frame(samples[i:i + step], audio.rate), (i + step) / audio.rate)
        for t0, t1, chunk in got or []:
            frames.append((t0, t1, stream(chunk)))
            pcm.append(chunk)
    return frames, np.concatenate(pcm)


def replay(cfg, frames: list[tuple[float, float, float]]) -> dict:
    """A turn-taker without analyses over the frames: every pause, its voice end, its speculation."""
    from moksori.engine import turns as T

    tt = T.TurnTaker(replace(cfg, eagerness="auto"))
    pauses: list[dict] = []
    for t0, t1, p in frames:
        before = tt.state
        for a in tt.on_frame(t0, t1, p):
            if isinstance(a, T.Paused):
                pauses.append({"voice_end": a.voice_end, "paused_at": t1, "resume": None, "spec": None,
                               "onset": tt._onset, "ended": None})
            elif isinstance(a, T.Speculate) and pauses:
                pauses[-1]["spec"] = t1
            elif isinstance(a, T.TurnEnded) and pauses and a.reason == "max_pause":
                pauses[-1]["ended"] = t1
        if before == "paused" and tt.state == "speaking" and pauses and pauses[-1]["resume"] is None:
            pauses[-1]["resume"] = t0
    return {"pauses": pauses}


def envelope_db(pcm: np.ndarray) -> np.ndarray:
    """10 ms RMS levels in dBFS (the samples are floats in -1..1)."""
    n = len(pcm) // ENERGY_WIN
    x = pcm[:n * ENERGY_WIN].astype(np.float64).reshape(n, ENERGY_WIN)
    return np.asarray(10 * np.log10(np.mean(x * x, axis=1) + 1e-12))


def energy_facts(pcm: np.ndarray, lead: float, true_end: float, voice_end: float) -> dict:
    """Is the audio between the true end and the voice end real sound or the floor?

    floor: the recording's noise floor, the 5th percentile of the 10 ms levels from the file's
    lead-in on (digital silence, under -80 dBFS, left out: some files are padded with it).
    sound_end: from 50 ms before the true end on, the start of the first 60 ms that all stay
    within FLOOR_MARGIN_DB of the floor (the voice has faded into the room).
    """
    db = envelope_db(pcm)
    w = ENERGY_WIN / 16000
    rec = db[int(lead / w):]
    rec = rec[rec > -80]
    if not len(rec):
        return {}
    floor = float(np.percentile(rec, 5))
    quiet = db < floor + FLOOR_MARGIN_DB
    i = max(0, int((true_end - 0.05) / w))
    while i + 6 <= len(db) and not quiet[i:i + 6].all():
        i += 1
    sound_end = i * w
    lo, hi = int(true_end / w), int(voice_end / w)
    gap = db[lo:hi] - floor
    return {"floor_dbfs": round(floor, 1),
            "sound_end_ms": round(1000 * (sound_end - true_end)),  # > 0: real sound after the true end
            "vad_inertia_ms": round(1000 * (voice_end - sound_end)),  # the voice end after the sound's end
            "gap_median_db_over_floor": round(float(np.median(gap)), 1) if len(gap) else None}


_CACHE: dict[tuple[int, int, int, int], dict] = {}


async def analyse(stack, pcm: np.ndarray, onset: float, spec_t: float, padding_s: float) -> dict:
    """The end-of-turn model and the transcript cue on the audio a speculation would get."""
    from moksori.engine.endpointing import text_cue
    from moksori.providers.base import STTOptions, one_chunk

    key = (id(pcm), len(pcm), round(onset * 1000), round(spec_t * 1000))
    if key in _CACHE:  # another variant's pause with the same audio
        return _CACHE[key]
    a = max(0, int((onset - padding_s) * 16000))
    audio = pcm[a:int(spec_t * 16000)].astype(np.float32)
    eot = await stack.turn.complete_probability(audio)
    text, lang = "", None
    async for tr in stack.stt.transcribe(one_chunk(audio), STTOptions(languages=("en", "ko"))):
        if tr.final:
            text, lang = tr.text, tr.language
    _CACHE[key] = {"eot": round(eot, 3), "text": text, "cue": text_cue(text, lang)}
    return _CACHE[key]


def summarise(rows: list[dict]) -> dict:
    def q(xs: list[float]) -> dict:
        return {"n": len(xs), "p50": round(pct(xs, 0.5)) if xs else None, "p95": round(pct(xs, 0.95)) if xs else None}

    out: dict = {}
    energy = [r["energy"] for r in rows if not r["cut"] and r.get("energy")]
    if energy:
        out["energy"] = {k: {"p50": round(pct([e[k] for e in energy], 0.5)), "p95": round(pct([e[k] for e in energy], 0.95)),
                             "n": len(energy)} for k in ("sound_end_ms", "vad_inertia_ms")}
    for v in VARIANTS:
        finals = [r["variants"][v]["final"] for r in rows if not r["cut"] and r["variants"][v]["final"]]
        out[v] = {"lag_ms": q([f["lag_ms"] for f in finals]),
                  "spec_ms": q([f["spec_ms"] for f in finals if f["spec_ms"] is not None]),
                  "fire_ms": {k: q([f["fire_ms"][k] for f in finals]) for k in RULES},
                  "internal_pauses": sum(len(r["variants"][v]["internal"]) for r in rows),
                  "internal_reaching": {k: sum(sum(p["silence_ms"] >= ms for p in r["variants"][v]["internal"])
                                               for r in rows) for k, ms in RULES.items()}}
        judged = [p for r in rows for p in r["variants"][v]["internal"] if "eot" in p]
        if judged:
            out[v]["internal_model_complete"] = {
                k: sum(p["silence_ms"] >= ms and p["eot"] >= 0.5 and p["cue"] != "incomplete" for p in judged)
                for k, ms in (("model", 400),)}
            out[v]["internal_text_complete"] = sum(p["silence_ms"] >= 600 and p["cue"] == "complete" for p in judged)
            for thr in (0.8, 0.9, 0.95):
                out[v][f"internal_confident_{thr}"] = sum(
                    p["silence_ms"] >= 250 and p["eot"] >= thr and p["cue"] == "complete" for p in judged)
    return out


async def run(args) -> dict:
    from moksori.engine.turns import TurnConfig
    from moksori.providers.registry import build_stt, build_turn, build_vad
    from moksori.settings import load_settings

    settings = load_settings()
    vad = build_vad(settings)
    stack = None
    if args.models:
        from types import SimpleNamespace

        stack = SimpleNamespace(turn=build_turn(settings), stt=build_stt(settings))
    info = manifest()
    base_cfg = TurnConfig()
    out: dict = {"what": "true end of speech -> voice end / speculation / each end rule, ms",
                 "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                 "rules_ms": RULES, "variants": VARIANTS, "sets": {}}
    for set_name in args.sets.split(","):
        folder, _ = SETS[set_name]
        rows = []
        for path in sorted((SPEECH / folder).glob("*.wav")):
            m = info.get(path.stem)
            if m is None or m["trail"] is None:
                continue
            frames, pcm = vad_pass(vad, path)
            true_end = m["duration"] - m["trail"]
            row: dict = {"file": str(path.relative_to(SPEECH)), "true_end": round(true_end, 3),
                         "cut": m["trail"] < 0.05, "variants": {}}
            for v, prob in VARIANTS.items():
                rep = replay(replace(base_cfg, voice_end_prob=prob), frames)
                final, internal = None, []
                for p in rep["pauses"]:
                    if p["resume"] is None and p["voice_end"] > true_end - 0.3:
                        final = p
                    elif p["resume"] is not None and p["resume"] < true_end:
                        internal.append({"voice_end": round(p["voice_end"], 3),
                                         "silence_ms": round(1000 * (p["resume"] - p["voice_end"])),
                                         "spec": p["spec"], "onset": p["onset"]})
                    elif p["ended"] is not None:
                        internal.append({"voice_end": round(p["voice_end"], 3), "silence_ms": 99999,
                                         "spec": p["spec"], "onset": p["onset"]})
                f = None
                if final is not None:
                    ve = final["voice_end"]
                    f = {"voice_end": round(ve, 3), "lag_ms": round(1000 * (ve - true_end)),
                         "detected_ms": round(1000 * (final["paused_at"] - true_end)),
                         "spec_ms": round(1000 * (final["spec"] - true_end)) if final["spec"] else None,
                         "fire_ms": {k: round(1000 * (ve + ms / 1000 - true_end)) for k, ms in RULES.items()}}
                    if args.models and stack is not None and final["spec"] and v in args.model_variants.split(","):
                        f.update(await analyse(stack, pcm, final["onset"], final["spec"],
                                               base_cfg.prefix_padding_ms / 1000))
                if args.models and stack is not None and v in args.model_variants.split(","):
                    for p in internal:
                        if p["spec"] and p["silence_ms"] >= 200:
                            p.update(await analyse(stack, pcm, p["onset"], p["spec"], base_cfg.prefix_padding_ms / 1000))
                for p in internal:
                    p.pop("onset", None)
                    p["spec"] = round(p["spec"], 3) if p["spec"] else None
                row["variants"][v] = {"final": f, "internal": internal}
            base_final = row["variants"]["base"]["final"]
            if base_final:
                row["energy"] = energy_facts(pcm, m["lead"] or 0.0, true_end, base_final["voice_end"])
            rows.append(row)
            brief = {v: (row["variants"][v]["final"] or {}).get("lag_ms") for v in VARIANTS}
            print(json.dumps({"file": row["file"], "lag_ms": brief, "energy": row.get("energy"),
                              "internal": [p["silence_ms"] for p in row["variants"]["base"]["internal"]]},
                             ensure_ascii=False), file=sys.stderr)
        out["sets"][set_name] = {"summary": summarise(rows), "rows": rows}
        if set_name == "en":
            lv = [r for r in rows if Path(r["file"]).stem in LIBRIVOX]
            out["sets"]["en_librivox"] = {"summary": summarise(lv), "files": [r["file"] for r in lv]}
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="en,tel,ko", help="comma-separated: en, tel (the 8 kHz copies), ko")
    ap.add_argument("--models", action="store_true",
                    help="judge pauses with smart-turn and Whisper (what the speculation would see)")
    ap.add_argument("--model-variants", default="base,p50,p90", help="the variants whose pauses --models judges")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    res = asyncio.run(run(args))
    for name, s in res["sets"].items():
        print(f"\n{name}  energy (ms, p50/p95): {s['summary'].get('energy')}")
        for v, x in s["summary"].items():
            if v == "energy":
                continue
            fire = "  ".join(f"{k} {d['p50']}/{d['p95']}" for k, d in x["fire_ms"].items())
            extra = {k: val for k, val in x.items() if k.startswith("internal_")}
            print(f"  {v:5s} lag p50/p95 {x['lag_ms']['p50']}/{x['lag_ms']['p95']} (n={x['lag_ms']['n']})  "
                  f"spec {x['spec_ms']['p50']}/{x['spec_ms']['p95']}  fire {fire}  {extra}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
