"""Where the time from the LLM's first token to the first reply audio goes, hop by hop.

One engine session per LibriVox utterance (engine_latency.py's `one`, real time, embedded stack),
with probes (wrappers, perf_counter) on:

  llm_thread  the token leaving llama-cpp's generator, in the LLM's thread
  loop        the same token reaching `Response._add_text` on the event loop
  clause      the token that completed the first clause (the chunker released it)
  tts_started `tts.started` (the speaking task took the clause)
  encoder     Piper's encoder starting on its thread (`StreamingVoice.latent`)
  window      Piper's first window of audio leaving `StreamingVoice.decode`
  first_audio `tts.first_audio`

and counts the tokens the LLM's thread produced while the first clause was in TTS (between
`tts.started` and `tts.first_audio`): the backpressure's overlap with Piper. Variants as in
engine_latency.py (`--ab KEY=VALUE`), interleaved.

    python benchmarks/release_hops.py [--reps 2] [--ab tts.first_clause_pause=now] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _stats import cold_llm, pct
from engine_latency import SPEECH, UTTERANCES, one, overrides

PROBES: list[tuple[str, float, str]] = []


def probe(kind: str, text: str = "") -> None:
    PROBES.append((kind, time.perf_counter(), text))


def install() -> None:
    from moksori.engine import events as E
    from moksori.engine.response import Response
    from moksori.providers.llm_llamacpp import LlamaCppLLM
    from moksori.providers.piper_stream import StreamingVoice

    gen = LlamaCppLLM._generate

    def _generate(self, request, stop):
        for item in gen(self, request, stop):
            if isinstance(item, str):
                probe("llm_thread", item)
            yield item

    LlamaCppLLM._generate = _generate  # type: ignore[method-assign]
    add = Response._add_text

    def _add_text(self, delta, clauses, chunker, **kw):
        probe("loop", delta)
        first = add(self, delta, clauses, chunker, **kw)
        if first:
            probe("clause", delta)
        return first

    Response._add_text = _add_text  # type: ignore[method-assign]
    emit = Response.emit

    def _emit(self, ev):
        if isinstance(ev, E.TtsStarted):
            probe("tts_started", ev.text)
        elif isinstance(ev, E.TtsFirstAudio):
            probe("first_audio")
        return emit(self, ev)

    Response.emit = _emit  # type: ignore[method-assign]
    latent = StreamingVoice.latent

    def _latent(self, ids, scales):
        probe("encoder")
        return latent(self, ids, scales)

    StreamingVoice.latent = _latent  # type: ignore[method-assign]
    decode = StreamingVoice.decode

    def _decode(self, z_p, mask, stop=None):
        for k, out in enumerate(decode(self, z_p, mask, stop)):
            if k == 0:
                probe("window")
            yield out

    StreamingVoice.decode = _decode  # type: ignore[method-assign]


def hops(probes: list[tuple[str, float, str]]) -> dict:
    def first(kind: str, after: float = 0.0) -> float | None:
        return next((t for k, t, _ in probes if k == kind and t >= after), None)

    t_tok = first("llm_thread")
    t_clause = first("clause")
    t_ts = first("tts_started")
    t_fa = first("first_audio")
    if None in (t_tok, t_clause, t_ts, t_fa):
        return {}
    assert t_tok is not None and t_clause is not None and t_ts is not None and t_fa is not None
    # the clause-completing token in the thread: the last llm_thread probe before it reached the loop
    n_clause = sum(1 for k, t, _ in probes if k == "loop" and t <= t_clause)
    thread_toks = [t for k, t, _ in probes if k == "llm_thread"]
    loop_toks = [t for k, t, _ in probes if k == "loop"]
    t_enc = first("encoder", t_ts)
    t_win = first("window", t_ts)
    row = {
        "tokens_to_clause": n_clause,
        "first_token_to_clause_ms": 1000 * (t_clause - t_tok),
        "llm_to_loop_ms": statistics.median(1000 * (b - a) for a, b in zip(thread_toks[:n_clause],
                                                                            loop_toks[:n_clause], strict=False)),
        "clause_to_tts_started_ms": 1000 * (t_ts - t_clause),
        "tts_started_to_encoder_ms": 1000 * ((t_enc or t_ts) - t_ts),
        "encoder_to_window_ms": 1000 * ((t_win or t_ts) - (t_enc or t_ts)),
        "window_to_first_audio_ms": 1000 * (t_fa - (t_win or t_fa)),
        "tts_started_to_first_audio_ms": 1000 * (t_fa - t_ts),
        "llm_tokens_during_tts": sum(1 for t in thread_toks if t_ts < t < t_fa),
        "llm_tokens_after_clause_before_audio": sum(1 for t in thread_toks if t_clause < t < t_fa),
    }
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


async def run(args) -> dict:
    from moksori.engine.prompts import system_prompt
    from moksori.providers.registry import build_stack
    from moksori.settings import load_settings

    install()
    settings = load_settings(**overrides(args.set))
    variants = {"A": settings}
    for i, extra in enumerate(args.ab):
        variants[chr(ord("B") + i)] = load_settings(**overrides(args.set + extra.split(",")))
    load_before = os.getloadavg()
    stack = build_stack(settings)
    system = system_prompt(settings.agent.instructions, stack.llm.caps.languages)
    await stack.warm(system)
    rows: list[dict] = []
    n = 0
    for rep in range(args.reps):
        for u in UTTERANCES:
            names = list(variants)
            order = names[n % len(names):] + names[:n % len(names)]
            n += 1
            for name in order:
                await cold_llm(stack.llm, system)
                PROBES.clear()
                r = await one(stack, variants[name], SPEECH / u)
                row = {"file": u, "rep": rep, "variant": name, "latency_ms": r.get("latency_ms"),
                       "first_clause": r.get("first_clause"), **hops(list(PROBES))}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    keys = [k for k in rows[0] if k not in ("file", "rep", "variant", "first_clause")] if rows else []
    summary: dict = {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                     "loadavg_after": [round(x, 2) for x in os.getloadavg()], "ab": args.ab}
    for name in variants:
        rs = [r for r in rows if r["variant"] == name]
        summary[name] = {"n": len(rs), **{f"{k}_p50": round(pct([r[k] for r in rs if r.get(k) is not None], 0.5), 1)
                                          for k in keys if any(r.get(k) is not None for r in rs)}}
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--ab", action="append", default=[])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
