"""The second turn of a conversation through the engine: end of speech -> first reply audio.

`engine_latency.py` measures a session's first turn, whose prompt prefix `Stack.warm` already
left in llama.cpp's cache (`<|im_start|>user\\n` included). A later turn is different: the cache
ends inside the last reply, so `<|im_end|>\\n<|im_start|>user\\n` (and any of the reply that the
chat template re-renders as other tokens) is left to evaluate after the transcript, unless
`llm.prefill_history` evaluated it when the turn started. Each session here hears utterance i,
gets a short reply (`llm.max_tokens`, 12 by default here, so it has ended before the next
utterance), then utterance i+1 after `--gap` seconds of silence; the second turn is measured.
Temperature 0 for every variant, so their replies can be compared word for word.

    python benchmarks/engine_second_turn.py [--reps 3] --ab llm.prefill_history=true [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

from _stats import cold_llm, pct
from engine_latency import SPEECH, UTTERANCES, overrides


async def one(stack, settings, first: Path, second: Path, gap_s: float) -> dict:
    from moksori.audio.frames import Frame, concat
    from moksori.audio.wav import load_audio
    from moksori.engine.config import config_from_settings
    from moksori.engine.session import Session
    from moksori.testing.harness import play_into_session, settle

    audio = concat([Frame.silence(0.6, 16000), load_audio(first, rate=16000), Frame.silence(gap_s, 16000),
                    load_audio(second, rate=16000), Frame.silence(3.5, 16000)])
    session = Session(stack, config_from_settings(settings, output_rate=24000, output_lead_ms=0))
    rec = await play_into_session(session, audio)
    await settle(session, 10)
    await session.close()
    stops = rec.of("user.speech_stopped")
    starts = rec.of("agent.audio_started")
    done = [e for e in rec.of("agent.response_done")]
    row: dict = {"first": first.name, "second": second.name, "turns": len(rec.of("user.turn_ended")),
                 "replies": [e.generated_text for e in done], "interrupted": sum(e.interrupted for e in done)}
    if len(stops) >= 2:
        later = [e for e in starts if e.t > stops[-1].t]
        if later:
            row["latency_ms"] = round(1000 * (later[0].t - stops[-1].t))
        for name, typ in (("llm_start", "llm.started"), ("llm_first_token", "llm.first_token"),
                          ("tts_first_audio", "tts.first_audio")):
            evs = [e for e in rec.of(typ) if e.t > stops[-1].t - 1.0]
            if evs:
                row[name] = round(1000 * (evs[0].t - stops[-1].t))
        if len(done) >= 2 and done[-1].usage is not None:
            row["new_tokens"] = done[-1].usage.input_tokens - done[-1].usage.cached_tokens
    row["prefilled_tokens"] = session.prefill.evaluated
    return row


async def run(args) -> dict:
    from moksori.engine.prompts import system_prompt
    from moksori.providers.registry import build_stack
    from moksori.settings import load_settings

    base = ["llm.temperature=0", f"llm.max_tokens={args.max_tokens}", *args.set]
    variants = {"A": load_settings(**overrides(base))}
    for i, extra in enumerate(args.ab):
        variants[chr(ord("B") + i)] = load_settings(**overrides(base + extra.split(",")))
    load_before = os.getloadavg()
    settings = variants["A"]
    stack = build_stack(settings)
    system = system_prompt(settings.agent.instructions, stack.llm.caps.languages)
    await stack.warm(system)
    rows: list[dict] = []
    n = 0
    for rep in range(args.reps):
        for i, u in enumerate(UTTERANCES):
            names = list(variants)
            order = names[n % len(names):] + names[:n % len(names)]
            n += 1
            for name in order:
                await cold_llm(stack.llm, system)
                row = await one(stack, variants[name], SPEECH / u, SPEECH / UTTERANCES[(i + 1) % len(UTTERANCES)],
                                args.gap)
                row["rep"], row["variant"] = rep, name
                rows.append(row)
                print(json.dumps(row, ensure_ascii=False), file=sys.stderr)
    summary: dict = {"what": "engine, second turn: user.speech_stopped -> agent.audio_started",
                     "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                     "loadavg_after": [round(x, 2) for x in os.getloadavg()], "base": base, "ab": args.ab}
    a = {(r["first"], r["rep"]): r for r in rows if r["variant"] == "A"}
    for name in variants:
        rs = [r for r in rows if r["variant"] == name]

        def p(k: str, q: float, rs: list[dict] = rs) -> float | None:
            xs = [r[k] for r in rs if k in r]
            return round(pct(xs, q), 1) if xs else None

        paired = [r["latency_ms"] - a[(r["first"], r["rep"])]["latency_ms"] for r in rs
                  if "latency_ms" in r and "latency_ms" in a[(r["first"], r["rep"])]]
        summary[name] = {"n": len(rs), "measured": len([r for r in rs if "latency_ms" in r]),
                         "p50_ms": p("latency_ms", 0.5), "p95_ms": p("latency_ms", 0.95),
                         "llm_first_token_minus_start_p50_ms": round(pct(
                             [r["llm_first_token"] - r["llm_start"] for r in rs
                              if "llm_first_token" in r and "llm_start" in r], 0.5), 1),
                         "new_tokens_p50": p("new_tokens", 0.5),
                         "paired_median_diff_ms": round(statistics.median(paired), 1) if paired else None,
                         "lower_in": sum(1 for d in paired if d < 0),
                         "same_replies_as_A": sum(1 for r in rs if r["replies"] == a[(r["first"], r["rep"])]["replies"]),
                         "interrupted": sum(r["interrupted"] for r in rs)}
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gap", type=float, default=6.0, help="seconds of silence between the two utterances")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--ab", action="append", default=[])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
