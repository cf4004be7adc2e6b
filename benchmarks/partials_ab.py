"""Live partials run only when something reads them: A/B through the Realtime WebSocket.

Two `moksori serve` processes on the embedded stack, one with `MOKSORI_STT_PARTIALS=auto` (a
Realtime API client reads no partials: none are decoded) and one with `on` (a partial decode
every 1.2 s of speech, as before), and the same LibriVox turns sent to each, alternating per
turn (`server_latency.one_turn`, without the server's timeline: asking for it makes the client a
reader). Figures: end of speech -> first reply audio, and -> the input transcription; the CPU
seconds the server used for the turn (session open to first reply audio).

    python benchmarks/partials_ab.py [--reps 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from _stats import pct
from server_latency import NAMES, _free_port, manifest, one_turn, start_server

ARMS = ("auto", "on")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(reps: int) -> dict:
    info = manifest()
    procs, bases = {}, {}
    load_before = list(os.getloadavg())
    try:
        for arm in ARMS:
            port = _free_port()
            os.environ["MOKSORI_STT_PARTIALS"] = arm
            procs[arm] = start_server(port)
            bases[arm] = f"ws://127.0.0.1:{port}/v1"
        for arm in ARMS:  # uncounted warm-up turn
            await one_turn(bases[arm], "unused", NAMES[-1], info[NAMES[-1]], turn="default", stages=False)
        rows: list[dict] = []
        for rep in range(reps):
            for i, name in enumerate(NAMES):
                order = ARMS if (rep + i) % 2 == 0 else ARMS[::-1]
                for arm in order:
                    cpu0 = cpu_seconds(procs[arm].pid)
                    row = await one_turn(bases[arm], "unused", name, info[name], turn="default", stages=False)
                    row.update(rep=rep, arm=arm, cpu_s=round(cpu_seconds(procs[arm].pid) - cpu0, 2))
                    rows.append(row)
                    print(f"{arm:4} {name} rep {rep}: first audio {row['latency_ms']} ms, transcribed "
                          f"{row.get('transcribed_ms')} ms, server CPU {row['cpu_s']} s", file=sys.stderr)
                    await asyncio.sleep(0.5)
    finally:
        for p in procs.values():
            os.killpg(p.pid, 15)
            p.wait(10)
    summary: dict = {"load_before": load_before, "load_after": list(os.getloadavg()), "cpu_count": os.cpu_count()}
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        for key in ("latency_ms", "transcribed_ms", "cpu_s"):
            vals = [r[key] for r in mine if r.get(key) is not None]
            summary[f"{arm}_{key}_p50"] = round(pct(vals, 0.5), 1) if vals else None
            summary[f"{arm}_{key}_p95"] = round(pct(vals, 0.95), 1) if vals else None
        summary[f"{arm}_n"] = len(mine)
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2, help="times through en_001..005 (each turn once per arm)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = asyncio.run(run(args.reps))
    print(json.dumps(out["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
