"""How much of Piper's leading near-silence `trim_leading_silence` takes off a reply's first clause.

The first clauses spoken in the `first_clause.py` runs (benchmarks/results/first_clause_*.json)
are synthesised again with the packaged Piper voice, resampled to 24 kHz as a reply is, and
each one is compared with and without the trim: what is cut is time the listener waited
for the first sound while the first samples were already playing. Pure signal processing: the
figure does not depend on the machine's load.

    python benchmarks/first_clause_trim.py [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = ("first_clause_caps", "first_clause_ramp", "first_clause_ramp_en011_020")


async def run(reps: int) -> dict:
    from moksori.audio.frames import trim_leading_silence
    from moksori.audio.resample import resample
    from moksori.providers.base import TTSOptions
    from moksori.providers.tts_piper import PiperTTS
    from moksori.text.korean_numbers import normalize_for_tts
    from moksori.text.speakable import speakable

    clauses: set[str] = set()
    for name in RUNS:
        for r in json.loads((HERE / "results" / f"{name}.json").read_text())["rows"]:
            if r.get("first_clause"):
                clauses.add(r["first_clause"])
    tts = PiperTTS(threads=2)
    opts = TTSOptions(voice=None, language="en", speed=1.0)
    rows = []
    for clause in sorted(clauses):
        text = normalize_for_tts(speakable(clause), "en").strip()
        for _ in range(reps):  # Piper samples noise: the lead-in varies a little per synthesis
            async for frame in tts.synthesize(text, opts):
                out = resample(frame, 24000)
                rows.append({"clause": clause, "trimmed_ms": round(1000 * (len(out) - len(trim_leading_silence(out)))
                                                                   / 24000)})
                break
    cut = sorted(r["trimmed_ms"] for r in rows)
    summary = {"what": "ms of leading near-silence trimmed off a first clause (Piper joe, 24 kHz)",
               "clauses": len(clauses), "syntheses": len(cut), "min_ms": cut[0],
               "p50_ms": statistics.median(cut), "max_ms": cut[-1]}
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    result = asyncio.run(run(args.reps))
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
