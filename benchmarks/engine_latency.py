"""End of speech -> first reply audio, through the engine, with the embedded stack, in real time.

Each LibriVox utterance (../shared/speech/en/en_001..005, real read speech) is played into a
fresh session at real-time pace, followed by silence. The figure is the time from
`user.speech_stopped` (end of the last voiced audio) to `agent.audio_started` (first reply
sample leaves the engine), read from the session timeline. Stage times are relative to the
same `user.speech_stopped`; `tts_started` is when the chunker released the first clause to TTS
(`benchmarks/first_clause.py` splits first token -> first audio further, per first-clause cap);
`stt_start` is when the released speculation's decode started
(its pause's `speculate_after_ms`, plus any wait), `llm_start` when its reply asked the LLM.
`prompt_tokens` / `cached_tokens`: the reply's first LLM call, and how much of its prompt
llama.cpp found in its KV cache.

`--ab KEY=VALUE[,KEY=VALUE]` runs one more variant (B, then C, ...: repeat the option) with
those session settings, interleaved with A file by file (the order rotating), on the same loaded
stack: an A/B in one run. Before each session the LLM's KV cache is set back to the system
prompt alone, so no variant inherits the previous session's prompt for the same utterance.
A variant whose Whisper is built differently (`stt.threads`, `stt.partial_abandon`,
`stt.compute_type`, `stt.beam_size`, `stt.model`) gets its own Whisper, loaded and warmed beside
A's in the same process (the other providers are shared); sessions run one at a time, so the
two never decode at once.

`--files` picks other utterances (paths or globs under ../shared/speech, comma-separated), e.g.
ones with pauses inside the turn, where a speculation on a gap between words is cancelled
(`spec_cancelled`; `spec_cancelled_decoding`: its decode was still running, and CTranslate2 runs
it to its end) and `stt_ms` (the released decode's start -> transcript) shows what the final
decode waited for. `paired_median_ms`: each variant's latency minus A's on the same file and rep.

    python benchmarks/engine_latency.py [--reps 2] [--set turn.speculate_after_ms=64 ...]
    python benchmarks/engine_latency.py --reps 3 --ab llm.prefill=true --json out.json
    python benchmarks/engine_latency.py --files 'tel/tel_01[14].wav,en/en_01[46].wav' --ab stt.threads=1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from _stats import cold_llm, pct
from server_latency import manifest

HERE = Path(__file__).resolve().parent
SPEECH = HERE.parent.parent / "shared" / "speech"
UTTERANCES = [f"en/en_00{i}.wav" for i in range(1, 6)]
# settings read when Whisper is built, not per session: a variant that changes one gets its own
STT_BUILD = ("threads", "partial_abandon", "compute_type", "beam_size", "model")
LLM_BUILD = ("provider", "model", "threads", "context_tokens", "weights", "parallel")
LEAD_S = 0.6  # silence played before each utterance
TRAIL = {name: m["trail"] for name, m in manifest().items()}
STAGES = ("stt_start", "stt_done", "stt_ms", "eot_done", "turn_end", "llm_start", "llm_first_token", "tts_started",
          "tts_first_audio")


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
    audio = concat([Frame.silence(LEAD_S, 16000), speech, Frame.silence(3.5, 16000)])
    session = Session(stack, config_from_settings(settings, output_rate=24000, output_lead_ms=0))
    t_play = session.clock.now()
    rec = await play_into_session(session, audio)
    await settle(session, 10)
    await session.close()
    first = {}  # the first event of each type
    for e in rec.events:
        first.setdefault(e.type, e)
    stop = first.get("user.speech_stopped")
    started = first.get("agent.audio_started")
    row = {"file": path.name, "turns": len(rec.of("user.turn_ended"))}
    trail = TRAIL.get(path.stem)
    # the true end of speech (MANIFEST trailing silence, as server_latency.py reads it) on the session
    # clock: a variant that moves the VAD's voice end moves `user.speech_stopped` with it
    true_end = t_play + LEAD_S + speech.duration - trail if trail is not None else None
    if stop and started:
        row["latency_ms"] = round(1000 * (started.t - stop.t))
        if true_end is not None:
            row["true_latency_ms"] = round(1000 * (started.t - true_end))
            row["voice_end_lag_ms"] = round(1000 * (stop.t - true_end))
            if "user.turn_ended" in first:
                row["true_turn_end_ms"] = round(1000 * (first["user.turn_ended"].t - true_end))
        item = first["user.turn_ended"].item_id
        # the released speculation's events (cancelled pauses' ones never go public)
        stt = [e for e in rec.of("stt.started") if e.item_id == item]
        if stt:
            row["stt_start"] = round(1000 * (stt[-1].t - stop.t))
            done_stt = [e for e in rec.of("stt.finished") if e.item_id == item]
            if done_stt:  # the released decode's own time, queueing behind a running one included
                row["stt_ms"] = round(1000 * (done_stt[-1].t - stt[-1].t))
        for name, typ in (("turn_end", "user.turn_ended"), ("stt_done", "stt.finished"),
                          ("eot_done", "eot.finished"), ("llm_start", "llm.started"),
                          ("llm_first_token", "llm.first_token"), ("tts_started", "tts.started"),
                          ("tts_first_audio", "tts.first_audio")):
            if typ in first:
                row[name] = round(1000 * (first[typ].t - stop.t))
        done = rec.of("agent.response_done")
        if done and done[0].usage is not None:
            row["prompt_tokens"] = done[0].usage.input_tokens
            row["cached_tokens"] = done[0].usage.cached_tokens
        # a live partial's decode still running when the final decode was queued: how long after
        # that it ended (finished, or gave way: `partials_gave_way`); the final waited about as long
        span = session.partials.last_span
        row["partial_decodes"], row["partials_gave_way"] = session.partials.decodes, session.partials.gave_way
        if span is not None and stt and span[0] <= stt[-1].t < span[1]:
            row["partial_wait"] = round(1000 * (span[1] - stt[-1].t))
        specs = session.speculations
        row["speculations"], row["spec_cancelled"] = specs.started, specs.cancelled
        row["spec_cancelled_decoding"] = specs.cancelled_decoding
        row["prefilled_tokens"] = session.prefill.evaluated
        row["prefill_calls"] = session.prefill.calls
        row["turn_reason"] = getattr(first.get("user.turn_ended"), "reason", None)
        # the end-of-turn model's verdict on the pause that ended the turn (turn.eot_start must not change it)
        eots = [e for e in rec.of("eot.finished") if e.item_id == item]
        if eots:
            row["eot_probability"] = eots[-1].probability
        row["transcript"] = getattr(first.get("user.transcript"), "text", "")
        row["first_clause"] = getattr(first.get("tts.started"), "text", "")
    return row


def summarise(rows: list[dict], settings: list[str]) -> dict:
    lat = [r["latency_ms"] for r in rows if "latency_ms" in r]

    def p(k: str, q: float) -> int | None:
        xs = [r[k] for r in rows if k in r]
        return round(pct(xs, q)) if xs else None

    return {
        "samples": len(lat), "missing": len(rows) - len(lat),
        "p50_ms": p("latency_ms", 0.5), "p95_ms": p("latency_ms", 0.95),
        # from the true end of speech (MANIFEST), not the VAD's voice end
        "true_p50_ms": p("true_latency_ms", 0.5), "true_p95_ms": p("true_latency_ms", 0.95),
        "voice_end_lag_p50_ms": p("voice_end_lag_ms", 0.5), "true_turn_end_p50_ms": p("true_turn_end_ms", 0.5),
        "mean_ms": round(statistics.mean(lat)) if lat else None,
        "stages_p50_ms": {k: p(k, 0.5) for k in STAGES},
        "stages_p95_ms": {k: p(k, 0.95) for k in STAGES},
        "prompt_tokens_p50": p("prompt_tokens", 0.5), "cached_tokens_p50": p("cached_tokens", 0.5),
        # turns whose final decode was queued while a live partial's decode ran, and how long after
        # that the partial ended (with stt.partial_yield: gave way); the final waited about that long
        "partial_running_at_final": len([r for r in rows if "partial_wait" in r]),
        "partial_wait_p50_ms": p("partial_wait", 0.5), "partial_wait_max_ms": p("partial_wait", 1.0),
        "speculations": sum(r.get("speculations", 0) for r in rows),
        "spec_cancelled": sum(r.get("spec_cancelled", 0) for r in rows),
        "spec_cancelled_decoding": sum(r.get("spec_cancelled_decoding", 0) for r in rows),
        "turn_reasons": dict(sorted(Counter(str(r.get("turn_reason")) for r in rows).items())),
        "settings": settings,
    }


def paired(rows: list[dict], base: list[dict], key: str = "latency_ms") -> dict:
    """This variant's value minus A's on the same (rep, file): median, and how many were lower."""
    a = {(r["rep"], r["file"]): r[key] for r in base if key in r}
    d = [r[key] - a[(r["rep"], r["file"])] for r in rows if key in r and (r["rep"], r["file"]) in a]
    if not d:
        return {}
    return {"pairs": len(d), "median_ms": round(statistics.median(d)), "lower": sum(x < 0 for x in d),
            "higher": sum(x > 0 for x in d)}


def same_turns(rows: list[dict], base: list[dict]) -> dict:
    """Pairs whose transcript / end reason differ from A's (turn-taking must not change)."""
    a = {(r["rep"], r["file"]): r for r in base}
    out = {"transcript": 0, "turn_reason": 0, "turns": 0}
    for r in rows:
        b = a.get((r["rep"], r["file"]))
        if b is not None:
            for k in out:
                out[k] += r.get(k) != b.get(k)
    return out


def files(spec: str | None) -> list[str]:
    if not spec:
        return UTTERANCES
    out: list[str] = []
    for part in spec.split(","):
        found = sorted(str(p.relative_to(SPEECH)) for p in SPEECH.glob(part.strip()))
        if not found:
            raise SystemExit(f"--files: nothing matches {part!r} under {SPEECH}")
        out += found
    return out


async def run(args) -> dict:
    from moksori.engine.prompts import system_prompt
    from moksori.providers.registry import build_llm, build_stack, build_stt
    from moksori.settings import load_settings

    settings = load_settings(**overrides(args.set))
    variants = {"A": (settings, args.set)}
    for i, extra in enumerate(args.ab):
        pairs = args.set + extra.split(",")
        variants[chr(ord("B") + i)] = (load_settings(**overrides(pairs)), pairs)
    utterances = files(args.files)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    stack = build_stack(settings)
    await stack.warm(system_prompt(settings.agent.instructions, stack.llm.caps.languages))
    stacks = {"A": stack}
    for name, (vs, _) in variants.items():
        if name != "A" and any(getattr(vs.stt, k) != getattr(settings.stt, k) for k in STT_BUILD):
            # a Whisper built with this variant's settings, beside A's; VAD, turn, LLM and TTS shared
            stacks[name] = dataclasses.replace(stack, stt=build_stt(vs), settings=vs)
            await stacks[name].warm(None)
        if name != "A" and any(getattr(vs.llm, k, None) != getattr(settings.llm, k, None) for k in LLM_BUILD):
            # an LLM built with this variant's settings (another model file, say), beside A's
            base = stacks.get(name, stack)
            stacks[name] = dataclasses.replace(base, llm=build_llm(vs), settings=vs)
            await stacks[name].warm(system_prompt(vs.agent.instructions, stacks[name].llm.caps.languages))
    load_s = time.perf_counter() - t0
    rows: dict[str, list[dict]] = {k: [] for k in variants}
    n = 0
    for rep in range(args.reps):
        for u in utterances:
            names = list(variants)
            order = names[n % len(names):] + names[:n % len(names)]
            n += 1
            for name in order:
                # the same KV cache state for every variant: the system prompt only (as after
                # start-up), not an earlier session's prompt for this very utterance, which the
                # batched LLM's other slots would still hold
                llm = stacks.get(name, stack).llm
                await cold_llm(llm, system_prompt(settings.agent.instructions, llm.caps.languages))
                row = await one(stacks.get(name, stack), variants[name][0], SPEECH / u)
                row["rep"], row["variant"] = rep, name
                rows[name].append(row)
                print(json.dumps(row, ensure_ascii=False), file=sys.stderr)
    summary = {
        "what": "engine: user.speech_stopped -> agent.audio_started, embedded stack, real time",
        "load_s": round(load_s, 1), "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "files": utterances, "reps": args.reps,
        **summarise(rows["A"], variants["A"][1]),
    }
    for name in list(variants)[1:]:
        summary[name] = summarise(rows[name], variants[name][1])
        summary[name]["own_whisper"] = name in stacks
        summary[name]["paired_median_ms"] = paired(rows[name], rows["A"])
        summary[name]["paired_true_ms"] = paired(rows[name], rows["A"], "true_latency_ms")
        summary[name]["paired_true_turn_end_ms"] = paired(rows[name], rows["A"], "true_turn_end_ms")
        summary[name]["paired_stt_ms"] = paired(rows[name], rows["A"], "stt_ms")
        summary[name]["differs_from_A"] = same_turns(rows[name], rows["A"])
    return {"summary": summary, "rows": [r for v in rows.values() for r in v]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="setting override, e.g. turn.silence_duration_ms=500")
    ap.add_argument("--ab", action="append", default=[],
                    help="one more variant's settings, e.g. llm.prefill=true (interleaved with A)")
    ap.add_argument("--files", help="utterances under ../shared/speech, comma-separated paths or globs "
                    "(default: en/en_001..005)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
