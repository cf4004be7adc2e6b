"""End of speech -> first reply audio, through the engine, with the embedded stack, in real time.

Each LibriVox utterance (../shared/speech/en/en_001..005, real read speech) is played into a
fresh session at real-time pace, followed by silence. The figure is the time from
`user.speech_stopped` (end of the last voiced audio) to `agent.audio_started` (first reply
sample leaves the engine), read from the session timeline. Stage times are relative to the
same `user.speech_stopped`; `tts_started` is when the chunker released the first clause to TTS
(`benchmarks/first_clause.py` splits first token -> first audio further, per first-clause cap).

    python benchmarks/engine_latency.py [--reps 2] [--set turn.speculate_after_ms=64 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from _stats import pct

HERE = Path(__file__).resolve().parent
SPEECH = HERE.parent.parent / "shared" / "speech"
UTTERANCES = [f"en/en_00{i}.wav" for i in range(1, 6)]



def overrides(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        group, field = key.split(".", 1) if "." in key else (None, key)
        v: object = value
        for cast in (int, float):
            try:
                v = cast(value)
                break
            except ValueError:
                pass
        if group:
            out.setdefault(group, {})[field] = v
        else:
            out[field] = v
    return out


async def one(stack, settings, path: Path) -> dict:
    from moksori.audio.frames import Frame, concat
    from moksori.audio.wav import load_audio
    from moksori.engine.config import config_from_settings
    from moksori.engine.session import Session
    from moksori.testing.harness import play_into_session, settle

    speech = load_audio(path, rate=16000)
    audio = concat([Frame.silence(0.6, 16000), speech, Frame.silence(3.5, 16000)])
    session = Session(stack, config_from_settings(settings, output_rate=24000, output_lead_ms=0))
    rec = await play_into_session(session, audio)
    await settle(session, 10)
    await session.close()
    first = {}  # the first event of each type
    for e in rec.events:
        first.setdefault(e.type, e)
    stop = first.get("user.speech_stopped")
    started = first.get("agent.audio_started")
    row = {"file": path.name, "turns": len(rec.of("user.turn_ended"))}
    if stop and started:
        row["latency_ms"] = round(1000 * (started.t - stop.t))
        for name, typ in (("turn_end", "user.turn_ended"), ("stt_done", "stt.finished"),
                          ("eot_done", "eot.finished"), ("llm_first_token", "llm.first_token"),
                          ("tts_started", "tts.started"), ("tts_first_audio", "tts.first_audio")):
            if typ in first:
                row[name] = round(1000 * (first[typ].t - stop.t))
        row["turn_reason"] = getattr(first.get("user.turn_ended"), "reason", None)
        row["transcript"] = getattr(first.get("user.transcript"), "text", "")
        row["first_clause"] = getattr(first.get("tts.started"), "text", "")
    return row


async def run(args) -> dict:
    from moksori.engine.prompts import system_prompt
    from moksori.providers.registry import build_stack
    from moksori.settings import load_settings

    settings = load_settings(**overrides(args.set))
    t0 = time.perf_counter()
    stack = build_stack(settings)
    await stack.warm(system_prompt(settings.agent.instructions, stack.llm.caps.languages))
    load_s = time.perf_counter() - t0
    rows = []
    for rep in range(args.reps):
        for u in UTTERANCES:
            row = await one(stack, settings, SPEECH / u)
            row["rep"] = rep
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), file=sys.stderr)
    lat = [r["latency_ms"] for r in rows if "latency_ms" in r]
    summary = {
        "what": "engine: user.speech_stopped -> agent.audio_started, embedded stack, real time",
        "samples": len(lat), "missing": len(rows) - len(lat),
        "p50_ms": round(pct(lat, 0.5)), "p95_ms": round(pct(lat, 0.95)),
        "mean_ms": round(statistics.mean(lat)) if lat else None, "load_s": round(load_s, 1),
        "stages_p50_ms": {k: round(pct([r[k] for r in rows if k in r], 0.5))
                          for k in ("turn_end", "stt_done", "eot_done", "llm_first_token", "tts_started", "tts_first_audio")},
        "settings": args.set,
    }
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="setting override, e.g. turn.silence_duration_ms=500")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
