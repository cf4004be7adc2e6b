"""Piper's first streamed window (`StreamingVoice.first_frames`): 16 latent frames (today) vs
smaller ones, interleaved in one run, through `PiperTTS.synthesize` as the engine calls it.

Per first clause (piper_stream.py's English ones) and rep, each size in rotating order:

  first_audio  text in -> first frame out (ms)
  stall        how late a later frame came against real-time playback started at the first
               frame (ms; > 0 is a gap in the reply at a window seam)

(The samples are not compared between sizes: Piper draws noise for every synthesis, so two runs
of one clause differ anyway; that windows of any size stitch to the one-shot output is
`tests/test_piper_stream.py`'s, on one latent.)

    python benchmarks/piper_first_window.py [--sizes 16,12,8] [--reps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from _stats import pct
from piper_stream import EN


async def once(tts, text: str) -> tuple[dict, np.ndarray]:
    from moksori.providers.base import TTSOptions

    t0 = time.perf_counter()
    arrivals: list[tuple[float, int]] = []
    pieces = []
    async for f in tts.synthesize(text, TTSOptions(language="en")):
        arrivals.append((time.perf_counter() - t0, len(f)))
        pieces.append(f.samples)
    rate = tts.caps.sample_rate
    played, stall = 0, 0.0
    for at, n in arrivals:
        stall = max(stall, at - (arrivals[0][0] + played / rate))
        played += n
    audio = np.concatenate(pieces)
    return {"first_audio_ms": 1000 * arrivals[0][0], "stall_ms": 1000 * stall, "pieces": len(arrivals),
            "audio_s": len(audio) / rate}, audio


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,12,8")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from moksori.providers.tts_piper import PiperTTS

    sizes = [int(s) for s in args.sizes.split(",")]
    tts = PiperTTS(None, threads=args.threads, language="en", stream=True)
    voice = tts.streaming
    assert voice is not None, "the packaged voice streams"
    await once(tts, "Hi.")  # first-inference costs out of the way
    load_before = os.getloadavg()
    rows: list[dict] = []
    n = 0
    for rep in range(args.reps):
        for text in EN:
            order = sizes[n % len(sizes):] + sizes[:n % len(sizes)]
            n += 1
            for size in order:
                voice.first_frames = size
                row, _ = await once(tts, text)
                rows.append({"text": text, "rep": rep, "first_frames": size, **row})
    voice.first_frames = sizes[0]
    summary: dict = {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                     "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    base = {(r["text"], r["rep"]): r["first_audio_ms"] for r in rows if r["first_frames"] == sizes[0]}
    for size in sizes:
        rs = [r for r in rows if r["first_frames"] == size]
        fa = [r["first_audio_ms"] for r in rs]
        summary[str(size)] = {
            "n": len(rs), "first_audio_p50_ms": round(pct(fa, 0.5), 1), "first_audio_p95_ms": round(pct(fa, 0.95), 1),
            "paired_median_diff_ms": round(statistics.median(
                r["first_audio_ms"] - base[(r["text"], r["rep"])] for r in rs), 1),
            "stall_max_ms": round(max(r["stall_ms"] for r in rs), 1),
            "stalled": sum(1 for r in rs if r["stall_ms"] > 0.5)}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
