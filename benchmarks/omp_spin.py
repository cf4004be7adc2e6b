"""OpenMP spin-wait (GOMP_SPINCOUNT) compared in one run: reply latency under load on 2 cores.

CTranslate2 (Whisper) and llama.cpp each run their own libgomp thread pool. After a parallel
region, libgomp's idle threads spin for GOMP_SPINCOUNT iterations before sleeping; on 2 cores the
spinning threads of one runtime take the cores the other needs (the LLM's first token comes right
after Whisper's last call). GOMP_SPINCOUNT is read once, when libgomp loads, so each setting runs
in its own child process; the children alternate (A B A B ...), so both see the same machine.

Each child builds the embedded stack and plays the LibriVox utterances (shared/speech
en_001..005) into `--callers` sessions at once (the second caller starts 1.3 s after the first:
the callers' turns overlap, which is the load), at real-time pace. Per setting: end of speech
(`user.speech_stopped`) -> STT done, LLM start, LLM first token, first clause to TTS, first
reply audio, p50/p95 (rows: also the first clause's text).

    python benchmarks/omp_spin.py [--settings 0,100000] [--rounds 2] [--callers 2] [--json out.json]

`--var NAME` compares another environment variable the same way, e.g. the LLM prefill with
overlapping callers (does one caller's prefill delay the other's reply?):

    python benchmarks/omp_spin.py --var MOKSORI_LLM_PREFILL --settings off,on
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _stats import pct

HERE = Path(__file__).resolve().parent
SPEECH = HERE.parent.parent / "shared" / "speech"
UTTERANCES = [f"en/en_00{i}.wav" for i in range(1, 6)]
STAGES = (("stt_done", "stt.finished"), ("llm_start", "llm.started"), ("llm_first_token", "llm.first_token"),
          ("tts_started", "tts.started"), ("first_audio", "agent.audio_started"))


async def caller(stack, settings, path: Path, delay: float) -> dict:
    from moksori.audio.frames import Frame, concat
    from moksori.audio.wav import load_audio
    from moksori.engine.config import config_from_settings
    from moksori.engine.session import Session
    from moksori.testing.harness import play_into_session, settle

    await asyncio.sleep(delay)
    speech = load_audio(path, rate=16000)
    audio = concat([Frame.silence(0.6, 16000), speech, Frame.silence(3.5, 16000)])
    session = Session(stack, config_from_settings(settings, output_rate=24000, output_lead_ms=0))
    rec = await play_into_session(session, audio)
    await settle(session, 15)
    await session.close()
    first: dict = {}
    for e in rec.events:
        first.setdefault(e.type, e)
    stop = first.get("user.speech_stopped")
    row: dict = {"file": path.name}
    if stop is not None:
        for name, typ in STAGES:
            if typ in first:
                row[name] = round(1000 * (first[typ].t - stop.t))
        row["first_clause"] = getattr(first.get("tts.started"), "text", "")
    return row


async def child(callers: int, reps: int) -> list[dict]:
    from moksori.engine.prompts import system_prompt
    from moksori.providers.registry import build_stack
    from moksori.settings import load_settings

    settings = load_settings()
    stack = build_stack(settings)
    await stack.warm(system_prompt(settings.agent.instructions, stack.llm.caps.languages))
    rows: list[dict] = []
    for _ in range(reps):
        for i in range(len(UTTERANCES)):
            paths = [SPEECH / UTTERANCES[(i + k) % len(UTTERANCES)] for k in range(callers)]
            rows += await asyncio.gather(*(caller(stack, settings, p, 1.3 * k) for k, p in enumerate(paths)))
    return rows


def summarize(rows: list[dict]) -> dict:
    out: dict = {"samples": len(rows)}
    for name, _ in STAGES:
        xs = [r[name] for r in rows if name in r]
        out[name] = {"p50": round(pct(xs, 0.5)) if xs else None, "p95": round(pct(xs, 0.95)) if xs else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--var", default="GOMP_SPINCOUNT", help="the environment variable compared")
    ap.add_argument("--settings", default="0,100000", help="its values to compare")
    ap.add_argument("--rounds", type=int, default=2, help="children per setting (alternating)")
    ap.add_argument("--callers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1, help="passes over the utterances per child")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.callers, args.reps))))
        return
    values = [v.strip() for v in args.settings.split(",") if v.strip()]
    rows: dict[str, list[dict]] = {v: [] for v in values}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for rnd in range(args.rounds):
        for v in values if rnd % 2 == 0 else list(reversed(values)):
            env = dict(os.environ, **{args.var: v})
            out = subprocess.run([sys.executable, __file__, "--child", "--callers", str(args.callers),
                                  "--reps", str(args.reps)], env=env, capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({args.var: v, "round": rnd, "rows": got}), file=sys.stderr)
            rows[v] += got
    summary = {"what": f"{args.var} compared, {args.callers} overlapping callers, embedded stack, real time",
               "load_avg_before": [round(x, 2) for x in load_before],
               "load_avg_after": [round(x, 2) for x in os.getloadavg()],
               "seconds": round(time.perf_counter() - t0),
               "by_setting": {v: summarize(r) for v, r in rows.items()}}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
