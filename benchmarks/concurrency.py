"""How many idle-listening Realtime sessions one server process holds with event-loop lag p99 < 20 ms.

Fast fake models for this figure only: the server is `create_app(settings, fake_stack())`
(`moksori.testing.fakes`: EnergyVAD, scripted STT/LLM, tone TTS) under uvicorn with
`ws="websockets-sansio"`, as `moksori serve` runs it, in a subprocess of its own. What is
measured is the server's per-session cost of listening: WebSocket framing, JSON and base64
decoding, 24 -> 16 kHz resampling, VAD framing and the turn-taking state machine.

Loop lag is measured inside the server: a task sleeps 10 ms over and over and records how late
it wakes up (an env-guarded probe that exists only in this benchmark's `--serve` mode; it adds
`GET /bench/lag` to the app to read and reset the samples).

Clients: a separate process (this one) with ONE asyncio loop and the plain `websockets` client.
Each client streams silence as PCM16 24 kHz in 40 ms `input_audio_buffer.append` events at
real-time pace (one ticker; the connections are spread over 8 phases 5 ms apart, as independent
clients would be, so N clients make 25 x N events/s without all arriving in one burst). The ramp is 50, 100, 200, 300, 400, ... sessions; at each level, after a
settling period, the server's lag is sampled for `--window` seconds. The result is the largest N
whose p99 lag stayed under 20 ms. The clients share the 2 cores with the server, so their CPU use
is reported too, as is the clients' own tick lateness (if they fall behind, the load offered
was lower than nominal).

    python benchmarks/concurrency.py [--levels 50,100,200,300,400,500,600] [--window 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path

from _stats import pct

PROBE_ENV = "MOKSORI_BENCH_LAG_PROBE"
RATE = 24000
CHUNK_MS = int(os.environ.get("MOKSORI_BENCH_CHUNK_MS", "40"))  # --chunk-ms sets it
LAG_LIMIT_MS = 20.0
SLOTS = 8  # send phases per 40 ms period (5 ms apart)



# --------------------------------------------------------------------------- server side (--serve)


def serve(port: int) -> None:
    """The server process: fake stack, uvicorn like `moksori serve`, plus the lag probe."""
    import uvicorn
    from fastapi.responses import JSONResponse

    from moksori.server.app import create_app
    from moksori.settings import Settings, load_settings
    from moksori.testing.fakes import fake_stack

    # no admission control here: this figure is how far the loop itself goes (benchmarks/load.py
    # measures where admission control starts shedding)
    settings = load_settings(server={"max_sessions": 100_000, "max_sessions_per_key": 100_000,
                                     "shed_loop_lag_ms": 1e9, "shed_queue_wait_s": 1e9})
    assert isinstance(settings, Settings)
    app = create_app(settings, fake_stack())
    samples: deque[float] = deque(maxlen=200_000)

    gc_pauses: list[tuple[int, float]] = []  # (generation, ms): garbage collection stalls the loop too

    if os.environ.get(PROBE_ENV) == "1":
        import gc

        gc_start = [0.0]

        def on_gc(phase: str, info: dict) -> None:
            if phase == "start":
                gc_start[0] = time.perf_counter()
            else:
                gc_pauses.append((info["generation"], 1000 * (time.perf_counter() - gc_start[0])))

        gc.callbacks.append(on_gc)

        async def lag(reset: int = 0) -> JSONResponse:
            xs = list(samples)
            gcs = list(gc_pauses)
            if reset:
                samples.clear()
                gc_pauses.clear()
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return JSONResponse({"n": len(xs), "p50_ms": pct(xs, 0.5), "p99_ms": pct(xs, 0.99),
                                 "max_ms": max(xs) if xs else None, "cpu_s": ru.ru_utime + ru.ru_stime,
                                 "sessions": app.state.moksori.sessions,
                                 "gc_count": len(gcs), "gc_max_ms": max((ms for _, ms in gcs), default=0.0),
                                 "gc_gen2_count": sum(1 for g, _ in gcs if g == 2),
                                 "gc_by_generation": {g: {"count": sum(1 for x, _ in gcs if x == g),
                                                          "max_ms": round(max((ms for x, ms in gcs if x == g),
                                                                              default=0.0), 2)}
                                                      for g in (0, 1, 2)}})

        app.add_api_route("/bench/lag", lag, methods=["GET"])

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.010)
            samples.append(1000 * (loop.time() - t - 0.010))

    async def main() -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio",
                                ws_max_size=16 * 1024 * 1024, ws_ping_interval=20, ws_ping_timeout=30,
                                lifespan="on", backlog=4096, timeout_keep_alive=30)
        server = uvicorn.Server(config)
        task = asyncio.create_task(probe()) if os.environ.get(PROBE_ENV) == "1" else None
        await server.serve()
        if task:
            task.cancel()

    asyncio.run(main())


# --------------------------------------------------------------------------- client side


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


class Clients:
    def __init__(self, url: str) -> None:
        self.url = url
        self.conns: list = []
        self.readers: list[asyncio.Task] = []
        silence = base64.b64encode(bytes(2 * RATE * CHUNK_MS // 1000)).decode()
        self.message = json.dumps({"type": "input_audio_buffer.append", "audio": silence})
        self.tick_late: list[float] = []
        self.errors = 0
        self.failed = 0
        self._ticker: asyncio.Task | None = None

    async def _read(self, ws) -> None:
        try:
            async for raw in ws:
                if '"error"' in raw[:40]:
                    self.errors += 1
        except Exception:  # noqa: BLE001 - closed
            self.failed += 1

    async def grow(self, n: int) -> None:
        from websockets.asyncio.client import connect

        sem = asyncio.Semaphore(32)

        async def one():
            async with sem:
                ws = await connect(self.url, max_size=None, compression=None, open_timeout=30)
                first = json.loads(await ws.recv())
                assert first["type"] == "session.created"
                await ws.send(self.message)
                return ws

        new = await asyncio.gather(*[one() for _ in range(n - len(self.conns))])
        for ws in new:
            self.conns.append(ws)
            self.readers.append(asyncio.create_task(self._read(ws)))
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        """Every connection sends once per 40 ms, the connections spread evenly over the period
        (SLOTS phases), as independent real clients would be; not all in one burst."""
        loop = asyncio.get_running_loop()
        slot_s = CHUNK_MS / 1000 / SLOTS
        nxt = loop.time() + slot_s
        slot = 0
        while True:
            await asyncio.sleep(max(0.0, nxt - loop.time()))
            self.tick_late.append(1000 * (loop.time() - nxt))
            for ws in self.conns[slot::SLOTS]:
                try:
                    await ws.send(self.message)
                except Exception:  # noqa: BLE001
                    self.failed += 1
            slot = (slot + 1) % SLOTS
            nxt += slot_s
            if loop.time() > nxt + CHUNK_MS / 1000:  # fell a whole period behind: skip, do not burst
                nxt = loop.time() + slot_s

    async def close(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        for ws in self.conns:
            await ws.close()
        for r in self.readers:
            r.cancel()


async def ramp(args, port: int, server_pid: int) -> dict:
    base = f"http://127.0.0.1:{port}"
    clients = Clients(f"ws://127.0.0.1:{port}/v1/realtime?model=bench")
    rows = []
    best = 0
    try:
        # baseline: no sessions
        await asyncio.sleep(1.0)
        await asyncio.to_thread(get_json, base + "/bench/lag?reset=1")
        await asyncio.sleep(min(args.window, 5))
        idle = await asyncio.to_thread(get_json, base + "/bench/lag?reset=1")
        print(f"   0 sessions: lag p50 {idle['p50_ms']:.2f} ms  p99 {idle['p99_ms']:.2f} ms", file=sys.stderr)
        for n in args.levels:
            t0 = time.monotonic()
            await clients.grow(n)
            connect_s = time.monotonic() - t0
            await asyncio.sleep(args.settle)
            await asyncio.to_thread(get_json, base + "/bench/lag?reset=1")
            clients.tick_late.clear()
            cpu0 = _cpu(server_pid)
            me0 = _self_cpu()
            w0 = time.monotonic()
            await asyncio.sleep(args.window)
            stats = await asyncio.to_thread(get_json, base + "/bench/lag?reset=1")
            wall = time.monotonic() - w0
            row = {"sessions": n, "server_sessions": stats["sessions"], "lag_p50_ms": round(stats["p50_ms"], 2),
                   "lag_p99_ms": round(stats["p99_ms"], 2), "lag_max_ms": round(stats["max_ms"], 2),
                   "lag_samples": stats["n"], "server_cpu_pct": round(100 * (_cpu(server_pid) - cpu0) / wall, 1),
                   "client_cpu_pct": round(100 * (_self_cpu() - me0) / wall, 1),
                   "client_tick_late_p99_ms": round(pct(clients.tick_late, 0.99), 2),
                   "appends_per_s": round(n * 1000 / CHUNK_MS), "connect_s": round(connect_s, 2),
                   "gc_max_ms": round(stats["gc_max_ms"], 2), "gc_gen2": stats["gc_gen2_count"],
                   "gc_by_generation": stats["gc_by_generation"],
                   "client_failures": clients.failed, "error_events": clients.errors,
                   "loadavg": [round(x, 2) for x in os.getloadavg()]}
            rows.append(row)
            ok = row["lag_p99_ms"] < LAG_LIMIT_MS and not clients.failed and row["server_sessions"] >= n
            print(f"{n:4d} sessions: lag p50 {row['lag_p50_ms']:.2f} ms  p99 {row['lag_p99_ms']:.2f} ms  "
                  f"max {row['lag_max_ms']:.1f} ms (gc max {row['gc_max_ms']:.1f} ms) | server CPU {row['server_cpu_pct']:.0f}%  "
                  f"client CPU {row['client_cpu_pct']:.0f}%  client tick late p99 "
                  f"{row['client_tick_late_p99_ms']:.1f} ms | {'ok' if ok else 'OVER'}", file=sys.stderr)
            if ok:
                best = n
            elif not args.keep_going:
                break
    finally:
        await clients.close()
    return {"summary": {"max_sessions_p99_lag_under_20ms": best, "idle_lag": idle, "window_s": args.window,
                        "levels": args.levels, "cpu_count": os.cpu_count(),
                        "what": f"idle-listening sessions (silence, {CHUNK_MS} ms appends at real time), fake models, "
                                "one uvicorn process (websockets-sansio); clients in a separate process, one loop"},
            "rows": rows}


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    global CHUNK_MS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--chunk-ms", type=int, default=CHUNK_MS, help="audio per append (40 ms like the browser app; "
                    "the OpenAI SDK examples send ~100 ms)")
    ap.add_argument("--levels", default="50,100,200,300,400,500,600,800",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--window", type=float, default=10.0, help="seconds of lag sampling per level")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after connecting")
    ap.add_argument("--keep-going", action="store_true", help="do not stop at the first level over the limit")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    CHUNK_MS = args.chunk_ms
    if args.serve:
        serve(args.port)
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    except (ValueError, OSError):
        pass
    port = args.port or free_port()
    env = {**os.environ, PROBE_ENV: "1"}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port)], env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"http://127.0.0.1:{port}/bench/lag")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the benchmark server did not start") from None
                time.sleep(0.2)
        result = asyncio.run(ramp(args, port, proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
