"""Store write throughput with 100 concurrent simulated sessions, SQLite and PostgreSQL in one run.

Each session is a task that records what a real conversation records per turn: a user turn
(with its STT usage), every fourth turn a tool call and its result, and an agent reply (with
LLM/TTS usage). Two phases per backend:

* saturation: every session submits its turns as fast as it can; rows/s is what the writer
  actually committed per second (items + usage rows), from the first submit to the last commit.
* paced: each session takes a turn every 1/rate seconds (default 1 turn/s per session, i.e. 100
  turns/s in all, far above what 2 CPU cores can hold as live voice conversations); flush
  latency is submit → committed (a barrier after each turn), p50/p95.

`submit()` is what the audio loop pays: its cost per call is measured too.

    python benchmarks/store_throughput.py [--sessions 100] [--turns 20] [--rate 1.0] [--backends sqlite,postgresql]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _stats import pct


def turn_records(conv: str, i: int, now: float) -> list:
    from moksori.accounting import TurnUsage
    from moksori.store import AgentReply, ToolCallRecord, ToolResultRecord, UserTurn

    recs: list = [UserTurn(conv, f"u{i}", f"user turn {i}: could you tell me about the weather tomorrow?", now,
                           language="en", started_at=now - 2.1, latency={"stt_ms": 312.0},
                           usage=TurnUsage(stt_model="whisper-base", stt_seconds=2.1))]
    if i % 4 == 3:
        recs.append(ToolCallRecord(conv, f"fc{i}", f"call_{i}", "weather", '{"city": "Seoul"}', now + 0.1))
        recs.append(ToolResultRecord(conv, f"fo{i}", f"call_{i}", '{"sky": "clear", "c": 21}', now + 0.2))
    recs.append(AgentReply(conv, f"a{i}", "Tomorrow looks clear and mild, around twenty one degrees.", now + 1.5,
                           heard_text=None, response_id=f"resp_{i}", language="en", started_at=now + 0.6,
                           latency={"llm_first_token_ms": 180.0, "tts_first_audio_ms": 95.0, "first_audio_ms": 610.0},
                           usage=TurnUsage(llm_model="m", input_tokens=900, cached_tokens=800, output_tokens=14,
                                           tts_model="piper", tts_characters=58, tts_seconds=3.2)))
    return recs


def rows_of(recs: list) -> int:
    from moksori.store import ConversationStarted

    return sum(1 + (getattr(r, "usage", None) is not None) for r in recs if not isinstance(r, ConversationStarted))


async def saturation(store, sessions: int, turns: int) -> dict:
    from moksori.store import ConversationStarted

    submit_ns: list[int] = []
    rows = 0
    t0 = time.perf_counter()

    async def session(k: int) -> None:
        nonlocal rows
        conv = f"sat_{k}_{os.getpid()}"
        now = time.time()
        recs = [ConversationStarted(conv, "default", f"user{k}", "realtime", now)]
        store.submit(recs[0])
        for i in range(turns):
            batch = turn_records(conv, i, now + i)
            for r in batch:
                s = time.perf_counter_ns()
                store.submit(r)
                submit_ns.append(time.perf_counter_ns() - s)
            rows += rows_of(batch)
            await asyncio.sleep(0)

    await asyncio.gather(*(session(k) for k in range(sessions)))
    submitted_s = time.perf_counter() - t0
    assert await store.flush(600), "the writer did not catch up"
    elapsed = time.perf_counter() - t0
    st = store.writer.stats
    return {"rows": rows, "records": st.written, "seconds": round(elapsed, 3), "rows_per_s": round(rows / elapsed),
            "records_per_s": round(st.written / elapsed), "submit_phase_s": round(submitted_s, 3),
            "batches": st.batches, "mean_batch": round(st.written / max(1, st.batches), 1),
            "submit_us_p50": round(pct([n / 1000 for n in submit_ns], 0.5), 2),
            "submit_us_p99": round(pct([n / 1000 for n in submit_ns], 0.99), 2),
            "dropped": st.dropped_full + st.dropped_bad}


async def paced(store, sessions: int, turns: int, rate: float) -> dict:
    from moksori.store import ConversationStarted

    lat: list[float] = []
    rows = 0
    t0 = time.perf_counter()

    async def session(k: int) -> None:
        nonlocal rows
        conv = f"pace_{k}_{os.getpid()}"
        now = time.time()
        store.submit(ConversationStarted(conv, "default", f"user{k}", "realtime", now))
        await asyncio.sleep((k / sessions) / rate)  # spread the sessions over one period
        for i in range(turns):
            start = time.perf_counter()
            batch = turn_records(conv, i, time.time())
            for r in batch:
                store.submit(r)
            rows += rows_of(batch)
            await asyncio.wrap_future(store.writer.barrier())
            lat.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - start)))

    await asyncio.gather(*(session(k) for k in range(sessions)))
    elapsed = time.perf_counter() - t0
    return {"rate_turns_per_s": sessions * rate, "rows": rows, "seconds": round(elapsed, 2),
            "rows_per_s": round(rows / elapsed), "flush_ms_p50": round(pct(lat, 0.5), 1),
            "flush_ms_p95": round(pct(lat, 0.95), 1), "flush_ms_max": round(max(lat), 1)}


async def bench(url: str, args) -> dict:
    from moksori.store import Store

    store = await Store(url, hash_secret=b"bench", flush_interval_s=args.flush_ms / 1000,
                        max_pending=1_000_000).start()
    try:
        sat = await saturation(store, args.sessions, args.turns)
        pac = await paced(store, args.sessions, max(3, args.turns // 4), args.rate)
    finally:
        await store.close()
    return {"saturation": sat, "paced": pac}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--turns", type=int, default=20, help="turns per session in the saturation phase")
    ap.add_argument("--rate", type=float, default=1.0, help="turns per second per session in the paced phase")
    ap.add_argument("--flush-ms", type=float, default=50.0, help="the writer's gathering window (store.flush_interval_ms)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from databases import postgres_database

    results: dict = {"sessions": args.sessions, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                            "load_1m": os.getloadavg()[0]}}
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as d:
                results["sqlite"] = asyncio.run(bench(f"sqlite+aiosqlite:///{d}/bench.db", args))
        elif backend == "postgresql":
            with postgres_database() as url:
                results["postgresql"] = asyncio.run(bench(url, args))
        print(backend, json.dumps(results[backend], indent=1), flush=True)
    results["machine"]["load_1m_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
