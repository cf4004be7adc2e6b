"""LLM first token -> first clause audio, stage by stage, with first-clause policies A/B'd in one run.

Each LibriVox utterance (../shared/speech/en/en_0XX) is played into a fresh session at real-time
pace, as in `engine_latency.py`; for every utterance and rep each variant (a cap on the first
clause's length, `SessionConfig.first_clause_max_chars`, with an `r` suffix also
`first_clause_ramp`: the following clauses' caps double from it; with an `o` suffix Piper's
one-shot path, `MOKSORI_TTS_PIPER_STREAM=off`, instead of its windows; with a `w` suffix the LLM
resumes at the first clause's first piece of audio, not when the clause is all made) runs once, in rotated order, so the
variants share the machine's load. With `--temperature 0` (the default here) the LLM writes the
same reply for the same turn whatever the variant, so the comparison is paired: only the
chunking differs.

Stages, from the session timeline (ms):
  tokens  `llm.first_token` -> `tts.started`  (LLM tokens until the chunker releases the clause)
  piper   `tts.started` -> `tts.first_audio`  (TTS of the first clause, until its first frame)
  speaker `tts.first_audio` -> `agent.audio_started` (release of a speculative reply, pacing)
Naturalness, from the reply's paced audio (`agent.audio` chunks, `offset` and `play_at`):
  seam_gap  silence the listener hears between the first clause's audio and the second's
  underrun  all such silences inside the reply (gaps > 20 ms between consecutive chunks)
            (with `output_lead_ms=0` this includes the event loop's pacing jitter under load)
  tts_stall_in_clause / _at_seams  how late a piece of audio came after the listener had heard
            all that was queued, inside a clause (a streamed clause's next window) or at a seam
  seam_pause  the whole pause heard at that seam: the first clause's trailing quiet, the gap,
            the second clause's leading quiet (10 ms windows under -40 dBFS); a comma inside one
            clause gets Piper's own pause, a cut without punctuation gets only what this adds up to
  cut_mid_phrase  the first clause ends without punctuation (the cap cut it, not a boundary)
  clauses_cut_mid_phrase  the same over all the reply's clauses (the chunker re-run on its text)

    python benchmarks/first_clause.py [--caps 50,32,24,24r] [--reps 1] [--files 10] [--json out.json]
    python benchmarks/first_clause.py --caps 50o,50  # Piper one-shot vs streamed, same cap
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

import numpy as np
from _stats import pct
from engine_latency import overrides

HERE = Path(__file__).resolve().parent
SPEECH = HERE.parent.parent / "shared" / "speech"
GAP_S = 0.020  # below this a gap between chunks is scheduling jitter, not a pause anyone hears
STAGES = ("llm_first_token", "tokens", "piper", "speaker", "first_token_to_audio", "latency")


def naturalness(chunks: list[tuple[int, float, int]], rate: int, first_samples: int) -> dict[str, float]:
    """chunks: (offset, play_at, samples) of one reply's paced audio, in order."""
    seam = 0.0
    underrun = 0.0
    for (off0, at0, n0), (off1, at1, _) in zip(chunks, chunks[1:]):
        gap = at1 - (at0 + n0 / rate)
        if gap > GAP_S:
            underrun += gap
            if off0 < first_samples <= off1:
                seam = gap
    return {"seam_gap_ms": round(1000 * seam), "underrun_ms": round(1000 * underrun)}


def seam_pause_ms(pieces: list[tuple[int, float, np.ndarray]], rate: int, first_samples: int) -> int | None:
    """The pause heard around the first clause's end: quiet windows before it, the gap, quiet after."""
    seam = next((i for i, (off, _, _) in enumerate(pieces) if off >= first_samples), None)
    if not seam:
        return None
    win = rate // 100

    def quiet(x: np.ndarray) -> bool:
        return bool(len(x) == 0 or np.sqrt(np.mean(x.astype(np.float64) ** 2)) < 327.0)  # -40 dBFS

    before = np.concatenate([p for _, _, p in pieces[:seam]])
    after = np.concatenate([p for _, _, p in pieces[seam:]])
    tail = next((k for k in range(len(before) // win) if not quiet(before[len(before) - (k + 1) * win:
                                                                            len(before) - k * win])), 0)
    head = next((k for k in range(len(after) // win) if not quiet(after[k * win:(k + 1) * win])), 0)
    _, at0, p0 = pieces[seam - 1]
    gap = max(0.0, pieces[seam][1] - (at0 + len(p0) / rate))
    return round(10 * (tail + head) + 1000 * gap)


def _ends_phrase(chunk: str) -> bool:
    return chunk.rstrip("\"')]”’")[-1:] in ".!?…,;:—。！？，、；："


def chunks_of(reply: str, cap: int, ramp: bool) -> list[str]:
    """The clauses a reply was spoken in (the chunker depends on the text only)."""
    from moksori.text.chunker import ClauseChunker

    c = ClauseChunker(first_min_chars=4, first_max_chars=cap, ramp=ramp)
    return c.push(reply) + c.flush()


def parse_variant(v: str) -> tuple[int, bool]:
    v = v.removesuffix("w").removesuffix("o")
    return (int(v[:-1]), True) if v.endswith("r") else (int(v), False)


def one_shot(v: str) -> bool:
    return v.removesuffix("w").endswith("o")


async def one(stack, settings, path: Path, variant: str) -> dict:
    from moksori.audio.frames import Frame, concat
    from moksori.audio.wav import load_audio
    from moksori.engine import events as E
    from moksori.engine.config import config_from_settings
    from moksori.engine.session import Session
    from moksori.engine import response
    from moksori.engine.speaker import Playback
    from moksori.testing.harness import play_into_session, settle

    speech = load_audio(path, rate=16000)
    audio = concat([Frame.silence(0.6, 16000), speech, Frame.silence(3.5, 16000)])
    rate = 24000
    cap, ramp = parse_variant(variant)
    if one_shot(variant):
        stack = stack.one_shot
    session = Session(stack, config_from_settings(settings, output_rate=rate, output_lead_ms=0,
                                                  first_clause_max_chars=cap, first_clause_ramp=ramp))
    paced: dict[str, list[tuple[int, float, int]]] = {}
    pieces: dict[str, list[tuple[int, float, np.ndarray]]] = {}

    def on_audio(ev: E.Event) -> None:
        if isinstance(ev, E.AgentAudio):
            paced.setdefault(ev.response_id, []).append((ev.offset, ev.play_at, len(ev.frame)))
            pieces.setdefault(ev.response_id, []).append((ev.offset, ev.play_at, ev.frame.samples))

    session.bus.listen(on_audio)
    clause_samples: dict[str, list[int]] = {}  # response -> samples of each clause (a streamed one in pieces)
    # response -> [in a clause, at a seam]: how long the listener had already heard everything
    # queued when the next piece of audio came (the TTS was late: a gap it made, not pacing jitter)
    stalls: dict[str, list[float]] = {}
    add = Playback.add

    def counting_add(pb: Playback, frame: Frame, text: str, *, more: bool = False) -> None:
        n = clause_samples.setdefault(pb.response_id, [])
        if more and n:
            n[-1] += len(frame)
        else:
            n.append(len(frame))
        if pb.chunks and pb.queue.empty() and len(n) + more > 1:
            late = session.speaker.clock.now() - pb.play_end
            late = late if late > GAP_S else 0.0  # under 20 ms: the pacing's own jitter
            stalls.setdefault(pb.response_id, [0.0, 0.0])[0 if more else 1] += late
        add(pb, frame, text, more=more)

    Playback.add = counting_add  # type: ignore[method-assign]
    response.LLM_RESUMES_AT_FIRST_PIECE = variant.endswith("w")
    try:
        rec = await play_into_session(session, audio)
        await settle(session, 15)
    finally:
        Playback.add = add  # type: ignore[method-assign]
        response.LLM_RESUMES_AT_FIRST_PIECE = False
    await session.close()
    first: dict[str, E.Event] = {}
    for e in rec.events:
        first.setdefault(e.type, e)
    row: dict = {"file": path.name, "cap": variant}
    stop, started = first.get("user.speech_stopped"), first.get("agent.audio_started")
    tok, tts0, tts1 = first.get("llm.first_token"), first.get("tts.started"), first.get("tts.first_audio")
    if not (stop and started and tok and tts0 and tts1):
        return row
    ms = lambda a, b: round(1000 * (b.t - a.t))  # noqa: E731
    row.update(latency=ms(stop, started), llm_first_token=ms(stop, tok), tokens=ms(tok, tts0),
               piper=ms(tts0, tts1), speaker=ms(tts1, started), first_token_to_audio=ms(tok, started))
    clause = getattr(tts0, "text", "")
    done = [e for e in rec.of(E.AgentResponseDone) if e.response_id == getattr(started, "response_id", None)]
    reply = done[0].generated_text if done else ""
    rid = getattr(started, "response_id", "")
    first_samples = (clause_samples.get(rid) or [getattr(tts1, "samples", 0)])[0]  # the whole first clause
    row.update(first_clause=clause, first_clause_words=len(clause.split()),
               first_clause_audio_ms=round(1000 * first_samples / rate),
               cut_mid_phrase=bool(clause) and clause.strip() != reply.strip() and not _ends_phrase(clause),
               reply=reply)
    spoken = chunks_of(reply, cap, ramp)
    row.update(clauses=len(spoken), clauses_cut_mid_phrase=sum(not _ends_phrase(c) for c in spoken[:-1]))
    row.update(naturalness(paced.get(rid, []), rate, first_samples))
    in_clause, at_seams = stalls.get(rid, [0.0, 0.0])
    row.update(tts_stall_in_clause_ms=round(1000 * in_clause), tts_stall_at_seams_ms=round(1000 * at_seams))
    row["seam_pause_ms"] = seam_pause_ms(pieces.get(rid, []), rate, first_samples)
    return row


def summarize(rows: list[dict], caps: list[str]) -> dict:
    out: dict = {}
    for cap in caps:
        rs = [r for r in rows if r["cap"] == cap and "latency" in r]
        s: dict = {"n": len(rs), "missing": sum(1 for r in rows if r["cap"] == cap and "latency" not in r)}
        for k in STAGES + ("seam_gap_ms", "underrun_ms", "tts_stall_in_clause_ms", "tts_stall_at_seams_ms",
                           "first_clause_words", "first_clause_audio_ms", "seam_pause_ms"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                s[k] = {"p50": round(pct(vals, 0.5)), "p95": round(pct(vals, 0.95)),
                        "mean": round(statistics.mean(vals))}
        s["cut_mid_phrase"] = f"{sum(r['cut_mid_phrase'] for r in rs)}/{len(rs)}"
        cut = [r["seam_pause_ms"] for r in rs if r.get("seam_pause_ms") is not None and r["cut_mid_phrase"]]
        at_punct = [r["seam_pause_ms"] for r in rs if r.get("seam_pause_ms") is not None and not r["cut_mid_phrase"]]
        s["seam_pause_p50_ms"] = {"cut_mid_phrase": round(pct(cut, 0.5)) if cut else None,
                                  "at_punctuation": round(pct(at_punct, 0.5)) if at_punct else None}
        s["seam_gaps"] = f"{sum(1 for r in rs if r['seam_gap_ms'] > 0)}/{len(rs)}"
        s["clauses_cut_mid_phrase"] = (f"{sum(r['clauses_cut_mid_phrase'] for r in rs)}/"
                                       f"{sum(r['clauses'] - 1 for r in rs)}")
        out[str(cap)] = s
    return out


async def run(args) -> dict:
    from moksori.engine.prompts import system_prompt
    from moksori.providers.registry import build_stack
    from moksori.settings import load_settings

    caps = args.caps.split(",")
    for v in caps:
        parse_variant(v)  # a bad variant fails here, not an hour in
    settings = load_settings(**overrides([f"llm.temperature={args.temperature}", *args.set]))
    stack = build_stack(settings)
    await stack.warm(system_prompt(settings.agent.instructions, stack.llm.caps.languages))
    if any(one_shot(v) for v in caps):  # the same models but a Piper that makes each sentence whole
        import dataclasses

        from moksori.providers.registry import build_tts

        tts = build_tts(settings.model_copy(update={"tts": settings.tts.model_copy(update={"piper_stream": False})}))
        stack.one_shot = dataclasses.replace(stack, tts=tts)  # type: ignore[attr-defined]
        await stack.one_shot.warm()  # type: ignore[attr-defined]
    files = [SPEECH / "en" / f"en_{i:03d}.wav" for i in range(args.first_file, args.first_file + args.files)]
    load_start = _loadavg()
    t0 = time.perf_counter()
    rows = []
    k = 0
    for rep in range(args.reps):
        for f in files:
            order = caps[k % len(caps):] + caps[:k % len(caps)]  # rotate who goes first
            k += 1
            for cap in order:
                row = await one(stack, settings, f, cap)
                row["rep"] = rep
                row["loadavg"] = (_loadavg() or [None])[0]
                rows.append(row)
                print(json.dumps(row, ensure_ascii=False), file=sys.stderr)
    load_end = _loadavg()
    summary = {
        "what": "first clause: llm.first_token -> agent.audio_started by stage, per first-clause cap, interleaved",
        "caps": caps, "reps": args.reps, "files": [f.name for f in files], "temperature": args.temperature,
        "minutes": round((time.perf_counter() - t0) / 60, 1), "loadavg_start": load_start, "loadavg_end": load_end,
        "cpu": _cpu(), "by_cap": summarize(rows, caps), "settings": args.set,
    }
    return {"summary": summary, "rows": rows}


def _loadavg() -> list[str] | None:
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def table(summary: dict) -> str:
    lines = ["| cap | n | first token→audio p50/p95 | tokens | piper | speaker | words | seam gaps | "
             "underrun p95 | first cut mid-phrase | seams cut mid-phrase |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cap, s in summary["by_cap"].items():
        if not s["n"]:
            continue
        ft = s["first_token_to_audio"]
        lines.append(f"| {cap} | {s['n']} | {ft['p50']}/{ft['p95']} ms | {s['tokens']['p50']} | {s['piper']['p50']} | "
                     f"{s['speaker']['p50']} | {s['first_clause_words']['p50']} | {s['seam_gaps']} | "
                     f"{s['underrun_ms']['p95']} ms | {s['cut_mid_phrase']} | {s['clauses_cut_mid_phrase']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caps", default="50,32,24,24r",
                    help="first-clause caps to compare (chars; suffix r: ramp); the first is today's")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--files", type=int, default=10, help="how many LibriVox utterances to use")
    ap.add_argument("--first-file", type=int, default=1, help="start at en_0XX")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: the same reply for every variant")
    ap.add_argument("--set", action="append", default=[], help="setting override, e.g. tts.threads=1")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result["summary"], indent=2, ensure_ascii=False))
    print(table(result["summary"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
