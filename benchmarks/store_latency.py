"""End of speech -> first reply audio with live-session recording off, on SQLite, on PostgreSQL.

The same LibriVox utterances (../shared/speech/en/en_001..005) are played at real-time pace into
fresh sessions of the embedded stack (opened as every entry point opens them, `open_session`),
the three modes interleaved utterance by utterance in one run so the machine's load hits them
alike: `off` (no store), `sqlite` and `postgresql` (each session recorded through
`record_session`, anonymous, so no history changes the prompt). The figure is
`user.speech_stopped` -> `agent.audio_started` on the session timeline. The recorder's own cost
per event on the audio loop is measured too (its listener timed over every event of the run).

    python benchmarks/store_latency.py [--reps 2] [--modes off,sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _stats import pct

SPEECH = HERE.parent.parent / "shared" / "speech"
UTTERANCES = [f"en/en_00{i}.wav" for i in range(1, 6)]


async def one(stack, settings, path: Path, store, costs: list[float]) -> dict:
    from moksori.audio.frames import Frame, concat
    from moksori.audio.wav import load_audio
    from moksori.brains import open_session
    from moksori.engine.config import config_from_settings
    from moksori.recording import Who, record_session
    from moksori.testing.harness import play_into_session, settle

    speech = load_audio(path, rate=16000)
    audio = concat([Frame.silence(0.6, 16000), speech, Frame.silence(3.5, 16000)])
    session = open_session(stack, config_from_settings(settings, output_rate=24000, output_lead_ms=0),
                           settings=settings)
    if store is not None:
        rec = record_session(session, store, Who("default", None, "benchmark"))
        inner = rec.recorder

        def timed(e) -> None:
            t0 = time.perf_counter()
            inner(e)
            costs.append(time.perf_counter() - t0)

        session.bus._listeners = [timed if fn is inner else fn for fn in session.bus._listeners]
    result = await play_into_session(session, audio)
    await settle(session, 10)
    await session.close()
    first: dict = {}
    for e in result.events:
        first.setdefault(e.type, e)
    stop, started = first.get("user.speech_stopped"), first.get("agent.audio_started")
    row = {"file": path.name}
    if stop and started:
        row["latency_ms"] = round(1000 * (started.t - stop.t))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--modes", default="off,sqlite,postgresql")
    args = ap.parse_args()

    from moksori.cli.ui import load_stack
    from moksori.settings import load_settings

    settings = load_settings(language="en")
    stack = load_stack(settings)  # loads the models (its own event loop), before ours starts
    asyncio.run(run(stack, settings, args.reps, args.modes.split(",")))


async def run(stack, settings, reps: int, modes: list[str]) -> None:
    from databases import postgres_database

    from moksori.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="moksori-store-latency-"))
    stores: dict[str, Store | None] = {"off": None}
    pg = postgres_database() if "postgresql" in modes else None
    if "sqlite" in modes:
        stores["sqlite"] = await Store(f"sqlite+aiosqlite:///{tmp / 'bench.db'}", hash_secret=b"b").start()
    if pg is not None:
        stores["postgresql"] = await Store(pg.__enter__(), hash_secret=b"b").start()
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    costs: list[float] = []
    load_before = os.getloadavg()
    try:
        for rep in range(reps):
            for utt in UTTERANCES:
                order = modes[rep % len(modes):] + modes[:rep % len(modes)]  # rotate who goes first
                for mode in order:
                    row = await one(stack, settings, SPEECH / utt, stores[mode], costs)
                    rows[mode].append(row)
                    print(mode, row, flush=True)
        written = {m: s.writer.stats.written for m, s in stores.items() if s is not None}
    finally:
        for s in stores.values():
            if s is not None:
                await s.close()
        if pg is not None:
            pg.__exit__(None, None, None)
        await stack.close()
    load_after = os.getloadavg()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    summary = {"cpu": cpu, "cores": os.cpu_count(), "load_before": load_before, "load_after": load_after,
               "reps": reps, "written_records": written,
               "recorder_cost_us": {"p50": round(1e6 * pct(costs, 0.5), 2), "p99": round(1e6 * pct(costs, 0.99), 2),
                                    "events": len(costs)}}
    for mode, rs in rows.items():
        lat = [r["latency_ms"] for r in rs if "latency_ms" in r]
        summary[mode] = {"n": len(lat), "p50_ms": pct(lat, 0.5), "p95_ms": pct(lat, 0.95),
                         "missing": len(rs) - len(lat)}
    out = HERE / "results" / "store_latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
