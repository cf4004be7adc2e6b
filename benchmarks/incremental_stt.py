"""Incremental transcription off vs on, in one run: latency after the end of speech, and WER.

Each file is played into a fresh engine session at real-time pace (0.6 s of silence, the speech,
3.5 s of silence), once with `stt.incremental` off and once on, the order alternating per file so
that both modes see the same machine load. Files: the LibriVox utterances (shared/speech
en_001..005) and the 8 kHz telephone set (tel/8k/tel_001..016, played at 8 kHz as a carrier
would send it). Per mode:

* final transcript: `user.speech_stopped` -> the released speculation's `stt.finished`;
* first reply audio: `user.speech_stopped` -> `agent.audio_started`;
* WER of the session's final transcripts (all user turns of the file joined) on each set;
* how many pieces were committed while the user spoke, and the final decode's audio length;
* split tries started, background decodes that gave way, final decodes whose overlap missed;
* how long the final decode waited in the model's queue, and whether the model was busy (a try, a
  confirmation, an earlier pause's decode) when it began.

    python benchmarks/incremental_stt.py [--reps 1] [--sets en,tel] [--partials 1200] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from _stats import pct

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/speech.py: corpus paths and WER


def files(sets: list[str]) -> list[tuple[str, Path, str, str]]:
    from speech import utt

    out = []
    if "en" in sets:
        out += [("en", utt(f"en_{i:03d}").path, utt(f"en_{i:03d}").transcript, f"en_{i:03d}") for i in range(1, 6)]
    if "tel" in sets:
        out += [("tel", utt(f"tel_{i:03d}").path_8k, utt(f"tel_{i:03d}").transcript, f"tel_{i:03d}")
                for i in range(1, 17)]
    return out


async def one(stack, settings, path: Path, incremental: bool, partials: int) -> dict:
    from moksori.audio.frames import Frame, concat
    from moksori.audio.wav import load_audio
    from moksori.engine.config import config_from_settings
    from moksori.engine.session import Session
    from moksori.testing.harness import play_into_session, settle

    speech = load_audio(path)
    rate = speech.rate
    audio = concat([Frame.silence(0.6, rate), speech, Frame.silence(3.5, rate)])
    cfg = config_from_settings(settings, output_rate=24000, output_lead_ms=0, stt_incremental=incremental,
                               partial_interval_ms=partials)
    session = Session(stack, cfg)
    rec = await play_into_session(session, audio)
    await settle(session, 10)
    await session.close()
    first: dict = {}
    for e in rec.events:
        first.setdefault(e.type, e)
    stop, started = first.get("user.speech_stopped"), first.get("agent.audio_started")
    row: dict = {"turns": len(rec.of("user.turn_ended")),
                 "transcript": " ".join(e.text for e in rec.of("user.transcript")),
                 "commits": session.incremental.commits,
                 "tail_s": round(session.incremental.last_tail_s, 2) if incremental else None}
    if incremental:
        inc = session.incremental
        row.update({"tries": inc.tries, "gave_way": inc.gave_way, "overlap_misses": inc.overlap_misses,
                    "final_wait_ms": round(1000 * inc.last_wait_s), "model_busy": inc.last_model_busy})
    if stop is not None:
        done = [e for e in rec.of("stt.finished") if e.turn_id == stop.turn_id]
        if done:
            row["final_transcript_ms"] = round(1000 * (done[0].t - stop.t))
        if started is not None:
            row["first_audio_ms"] = round(1000 * (started.t - stop.t))
        if "llm.first_token" in first:
            row["llm_first_token_ms"] = round(1000 * (first["llm.first_token"].t - stop.t))
    return row


def summarize(rows: list[dict], wer_of) -> dict:
    out: dict = {}
    for key in ("final_transcript_ms", "llm_first_token_ms", "first_audio_ms"):
        xs = [r[key] for r in rows if key in r]
        out[key] = {"p50": round(pct(xs, 0.5)) if xs else None, "p95": round(pct(xs, 0.95)) if xs else None,
                    "n": len(xs)}
    for s in ("en", "tel"):
        sel = [r for r in rows if r["set"] == s]
        if sel:
            errs = [wer_of(r["reference"], r["transcript"]) for r in sel]
            out[f"wer_{s}"] = round(sum(e for e, _ in errs) / max(1, sum(n for _, n in errs)), 4)
    out["turns_with_commits"] = sum(1 for r in rows if r["commits"] > 0)
    out["commits_per_turn"] = round(sum(r["commits"] for r in rows) / max(1, sum(r["turns"] for r in rows)), 2)
    if any("final_wait_ms" in r for r in rows):
        waits = [r["final_wait_ms"] for r in rows if "final_wait_ms" in r]
        waited = [w for w in waits if w >= 20]
        out["final_waited"] = {"n": len(waited), "of": len(waits), "p50_ms": round(pct(waited, 0.5)) if waited else 0,
                               "max_ms": max(waited, default=0),
                               "model_busy": sum(1 for r in rows if r.get("model_busy"))}
        out["tries"] = sum(r["tries"] for r in rows)
        out["gave_way"] = sum(r["gave_way"] for r in rows)
        out["overlap_misses"] = sum(r["overlap_misses"] for r in rows)
    out["files"] = len(rows)
    return out


def machine() -> dict:
    model = ""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "avx512": " avx512f" in flags, "avx2": " avx2" in flags}


async def run(args) -> dict:
    from speech import word_errors

    from moksori.engine.prompts import system_prompt
    from moksori.providers.registry import build_stack
    from moksori.settings import load_settings

    settings = load_settings()
    stack = build_stack(settings)
    await stack.warm(system_prompt(settings.agent.instructions, stack.llm.caps.languages))
    rows: list[dict] = []
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    i = 0
    for rep in range(args.reps):
        for set_name, path, ref, name in files(args.sets.split(",")):
            order = (False, True) if i % 2 == 0 else (True, False)
            i += 1
            for inc in order:
                row = await one(stack, settings, path, inc, args.partials)
                row.update({"set": set_name, "file": name, "mode": "on" if inc else "off", "rep": rep,
                            "reference": ref})
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "reference"}, ensure_ascii=False),
                      file=sys.stderr)
    summary = {
        "what": "incremental STT off vs on, engine, embedded stack, real time, interleaved",
        "machine": machine(), "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()], "seconds": round(time.perf_counter() - t0),
        "partial_interval_ms": args.partials,
        "off": summarize([r for r in rows if r["mode"] == "off"], word_errors),
        "on": summarize([r for r in rows if r["mode"] == "on"], word_errors),
    }
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--sets", default="en,tel")
    ap.add_argument("--partials", type=int, default=0,
                    help="live partial transcripts every N ms (0: off, as on telephone calls)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
