"""The cluster of `make cluster`, measured: nginx + 2 workers + one shared llama_cpp.server.

Starts it with `scripts/cluster.py up` in a temporary directory (its own PostgreSQL database and
Redis prefix, removed afterwards; or `--url` names a running one, with `--llm-url` its inference
server) and measures, in one run:

1. **LLM time to first token on the shared inference server as concurrent sessions grow**
   (1, 4, 16): that many Realtime sessions (official `openai` client, through nginx, text
   replies) send `response.create` at the same moment; the figure is each session's wait for its
   first `response.output_text.delta`. The baseline in the same run: the same number of
   streaming requests straight to the inference server's /v1/chat/completions.
2. **End of speech -> first audio, through nginx vs straight to a worker**: real read speech
   (../shared/speech/en, LibriVox) streamed at real-time pace (`server_latency.one_turn`),
   alternating the two paths turn by turn so both see the same machine load.

3. **Sessions that 1 worker and 2 workers hold with the event-loop lag p99 under 20 ms**:
   idle-listening Realtime sessions (silence in 40 ms appends at real-time pace, as the browser
   app sends, one client loop: `concurrency.Clients`) opened in steps, first straight to one
   worker, then through nginx onto both; after each step the workers' own loop-lag gauge
   (`/ready` `loop_lag_p99_ms`, the last 5 s) is read. The figure is the last step every worker
   held under 20 ms. The real models listen (Silero VAD on every frame).

The load generator runs on the same machine as the cluster: on a small shared machine, all
three figures are noisy, and the machine's load average is recorded before and after.

    python benchmarks/cluster.py [--levels 1,4,16] [--reps 2] [--capacity 25,50,100,150,200] [--json out.json]
    python benchmarks/cluster.py --quick      # a few minutes: replies capped, fewer turns and steps
    CLUSTER_LLM_URL=http://127.0.0.1:8091 python benchmarks/cluster.py --levels ''   # another LLM server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stats import pct

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KEY = "sk-bench-cluster"
PG = os.environ.get("MOKSORI_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "How many days are in a week?",
             "What do bees make?"]


def sh(cmd: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts/cluster.py"), cmd], env=env, capture_output=True,
                          text=True, timeout=timeout)


async def admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG + "/postgres", timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- 1. time to first token


async def session_ttft(ws_base: str, question: str, start: asyncio.Event) -> float | None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=KEY, websocket_base_url=ws_base, max_retries=0)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        while (await conn.recv()).type != "session.updated":
            pass
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": question}]})
        await start.wait()
        t0 = time.monotonic()
        await conn.response.create()
        first = None
        async with asyncio.timeout(300):
            while True:
                ev = await conn.recv()
                if ev.type == "response.output_text.delta" and first is None:
                    first = time.monotonic() - t0
                if ev.type == "response.done":
                    return first
                if ev.type == "error":
                    print(f"  error: {ev.error.message}", file=sys.stderr)
                    return None


async def direct_ttft(llm_url: str, question: str, start: asyncio.Event, max_tokens: int = 0) -> float | None:
    import httpx

    await start.wait()
    t0 = time.monotonic()
    from moksori.engine.prompts import system_prompt

    # the messages a session sends (the same system prompt, so the same prefill and prompt cache)
    body = {"model": "moksori-llm", "stream": True, "max_tokens": max_tokens or 160, "temperature": 0.5,
            "messages": [{"role": "system", "content": system_prompt(None, ("en", "ko"))},
                         {"role": "user", "content": question}]}
    first = None
    async with httpx.AsyncClient(timeout=300) as client:
        async with client.stream("POST", f"{llm_url}/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():  # read to the end, as a session does: the server is idle after
                if first is None and line.startswith("data: ") and line != "data: [DONE]":
                    delta = json.loads(line[6:])["choices"][0].get("delta", {})
                    if delta.get("content"):
                        first = time.monotonic() - t0
    return first


async def ttft_level(n: int, ws_base: str, llm_url: str, max_tokens: int = 0) -> dict:
    out = {}
    for path in ("direct", "sessions"):
        start = asyncio.Event()
        if path == "direct":
            tasks = [asyncio.create_task(direct_ttft(llm_url, QUESTIONS[i % 4], start, max_tokens))
                     for i in range(n)]
        else:
            tasks = [asyncio.create_task(session_ttft(ws_base, QUESTIONS[i % 4], start)) for i in range(n)]
            await asyncio.sleep(1.0 + 0.1 * n)  # every session open and ready
        start.set()
        values = [v for v in await asyncio.gather(*tasks, return_exceptions=True) if isinstance(v, float)]
        out[path] = {"n": len(values), "p50_ms": round(1000 * pct(values, 0.5), 1),
                     "p95_ms": round(1000 * pct(values, 0.95), 1), "max_ms": round(1000 * max(values), 1)
                     if values else None}
        print(f"  {n:>2} at once, {path:8}: first token p50 {out[path]['p50_ms']} ms, p95 {out[path]['p95_ms']} ms "
              f"({len(values)}/{n})", file=sys.stderr)
        await asyncio.sleep(1.0)
    return out


# --------------------------------------------------------------------------- 2. through nginx vs direct


async def latency_paths(nginx_ws: str, worker_ws: str, reps: int, utterances: int = 5) -> dict:
    import server_latency as sl

    info = sl.manifest()
    rows = {"nginx": [], "direct": []}
    await sl.one_turn(nginx_ws, KEY, sl.NAMES[-1], info[sl.NAMES[-1]], turn="default")  # warm-up, not counted
    for rep in range(reps):
        for i, name in enumerate(sl.NAMES[:utterances]):
            order = ("nginx", "direct") if (i + rep) % 2 == 0 else ("direct", "nginx")
            for path in order:
                row = await sl.one_turn(nginx_ws if path == "nginx" else worker_ws, KEY, name, info[name],
                                        turn="default")
                rows[path].append(row["latency_ms"])
                print(f"  {name} rep {rep} {path:6}: first audio {row['latency_ms']} ms after end of speech",
                      file=sys.stderr)
                await asyncio.sleep(0.5)
    out = {}
    for path, vals in rows.items():
        v = [x for x in vals if x is not None]
        out[path] = {"n": len(v), "missing": len(vals) - len(v), "p50_ms": round(pct(v, 0.5), 1),
                     "p95_ms": round(pct(v, 0.95), 1)}
    return out


# --------------------------------------------------------------------------- 3. sessions held at a loop-lag budget


LAG_LIMIT_MS = 20.0


def worker_lag(base: str) -> dict:
    """A worker's own gauge: /ready (200 or 503, the same body)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(base + "/ready", headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


async def hold(ws_url: str, bases: list[str], levels: list[int], settle_s: float, window_s: float) -> dict:
    """Open idle-listening sessions in steps; after each, every worker's loop-lag p99."""
    import concurrency as cc

    clients = cc.Clients(ws_url)
    rows, best = [], 0
    idle = [await asyncio.to_thread(worker_lag, b) for b in bases]  # the machine's own noise, no session
    rows.append({"sessions": 0, "lag_p99_ms": [g["loop_lag_p99_ms"] for g in idle],
                 "loadavg": [round(x, 2) for x in os.getloadavg()]})
    print(f"     0 sessions: loop lag p99 {rows[0]['lag_p99_ms']} ms | load {rows[0]['loadavg'][0]}", file=sys.stderr)
    try:
        for n in levels:
            t0 = time.monotonic()
            try:
                await clients.grow(n)
            except Exception as e:  # noqa: BLE001 - refused or timed out: the step is over the limit
                print(f"  {n:4d} sessions: could not open them all ({type(e).__name__}: {e})", file=sys.stderr)
                rows.append({"sessions": n, "error": f"{type(e).__name__}: {e}"[:200]})
                break
            connect_s = time.monotonic() - t0
            await asyncio.sleep(settle_s)
            clients.tick_late.clear()
            await asyncio.sleep(window_s)  # /ready's gauge covers the last 5 s
            gauges = [await asyncio.to_thread(worker_lag, b) for b in bases]
            p99 = max(g["loop_lag_p99_ms"] for g in gauges)
            row = {"sessions": n, "per_worker": [g["sessions"] for g in gauges],
                   "lag_p99_ms": [g["loop_lag_p99_ms"] for g in gauges],
                   "lag_p95_ms": [g["loop_lag_p95_ms"] for g in gauges],
                   "client_tick_late_p99_ms": round(pct(clients.tick_late, 0.99), 1),
                   "client_failures": clients.failed, "connect_s": round(connect_s, 1),
                   "loadavg": [round(x, 2) for x in os.getloadavg()]}
            ok = p99 < LAG_LIMIT_MS and not clients.failed and sum(row["per_worker"]) >= n
            row["ok"] = ok
            rows.append(row)
            print(f"  {n:4d} sessions {row['per_worker']}: loop lag p99 {row['lag_p99_ms']} ms | "
                  f"client tick late p99 {row['client_tick_late_p99_ms']} ms | load {row['loadavg'][0]} | "
                  f"{'ok' if ok else 'OVER'}", file=sys.stderr)
            if not ok:
                break
            best = n
    finally:
        await clients.close()
    return {"max_sessions_lag_p99_under_20ms": best, "rows": rows}


async def capacity(base: str, worker_bases: list[str], levels: list[int], settle_s: float, window_s: float) -> dict:
    def url(b: str) -> str:
        return b.replace("http://", "ws://") + f"/v1/realtime?model=bench&api-key={KEY}"

    out = {}
    print("  one worker (straight to it):", file=sys.stderr)
    out["1_worker"] = await hold(url(worker_bases[0]), worker_bases[:1], levels, settle_s, window_s)
    await asyncio.sleep(6.0)  # the sessions close, and the gauges' 5 s window moves past them
    print(f"  {len(worker_bases)} workers (through nginx):", file=sys.stderr)
    out[f"{len(worker_bases)}_workers"] = await hold(url(base), worker_bases, levels, settle_s, window_s)
    return out


# --------------------------------------------------------------------------- main


async def run(args) -> dict:
    levels = [int(x) for x in args.levels.split(",") if x]
    steps = [int(x) for x in args.capacity.split(",") if x]
    result: dict = {"cpu_count": os.cpu_count(), "loadavg_before": list(os.getloadavg()), "levels": {},
                    "reply_max_tokens": args.max_tokens or "default (160)"}
    env, db, tmp = None, None, None
    worker_bases: list[str] = []
    if args.url:
        base, llm_url, worker_base = args.url.rstrip("/"), args.llm_url.rstrip("/"), args.worker_url
        worker_bases = [u.rstrip("/") for u in args.worker_url.split(",") if u]
        worker_base = worker_bases[0] if worker_bases else ""
    else:
        tmp = tempfile.mkdtemp(prefix="moksori-bench-cluster-")
        db = f"moksori_bench_{secrets.token_hex(4)}"
        await admin(f'CREATE DATABASE "{db}"')
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "CLUSTER_DIR": tmp, "CLUSTER_PORT": str(port), "WORKERS": "2",
               "MOKSORI_REDIS_PREFIX": f"moksori-bench-{secrets.token_hex(4)}:",
               "MOKSORI_STORE_URL": f"postgresql+asyncpg://{PG.split('://', 1)[1]}/{db}", "MOKSORI_API_KEYS": KEY,
               "MOKSORI_SERVER_MAX_SESSIONS_PER_KEY": str(max(levels + steps) + 4)}
        if args.max_tokens:
            env["MOKSORI_LLM_MAX_TOKENS"] = str(args.max_tokens)
        print("starting the cluster (scripts/cluster.py up)...", file=sys.stderr)
        up = sh("up", env, 900)
        if up.returncode != 0:
            raise SystemExit(f"cluster up failed:\n{up.stdout}\n{up.stderr}")
        st = json.loads((Path(tmp) / "state.json").read_text())
        base, llm_url = f"http://127.0.0.1:{port}", st["llm_url"]
        result["llm"] = os.environ.get("CLUSTER_LLM_URL") or "llama_cpp.server (packaged SmolLM2-135M)"
        worker_bases = [f"http://127.0.0.1:{p}" for p in st["worker_ports"]]
        worker_base = worker_bases[0]
    ws = lambda u: u.replace("http://", "ws://") + "/v1"  # noqa: E731
    try:
        if levels:
            print("1. LLM time to first token on the shared inference server", file=sys.stderr)
            warm = asyncio.Event()
            warm.set()
            await direct_ttft(llm_url, QUESTIONS[0], warm, args.max_tokens)  # the first prefill: not counted
        for n in levels:
            result["levels"][str(n)] = await ttft_level(n, ws(base), llm_url, args.max_tokens)
        if args.reps > 0 and worker_base:
            print("2. end of speech -> first audio, through nginx vs straight to a worker", file=sys.stderr)
            result["end_of_speech_to_first_audio"] = await latency_paths(ws(base), ws(worker_base), args.reps,
                                                                         args.utterances)
        if steps and worker_bases:
            print("3. sessions held with the loop-lag p99 under 20 ms: 1 worker, then all of them", file=sys.stderr)
            result["sessions_held"] = await capacity(base, worker_bases, steps, args.settle, args.window)
    finally:
        if env is not None:
            down = sh("down", env, 120)
            print(down.stdout.strip(), file=sys.stderr)
            from redis.asyncio import Redis

            r = Redis.from_url(os.environ.get("MOKSORI_REDIS_URL", "redis://127.0.0.1:6379/0"))
            async for k in r.scan_iter(match=env["MOKSORI_REDIS_PREFIX"] + "*"):
                await r.delete(k)
            await r.aclose()
        if db is not None:
            await admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    result["loadavg_after"] = list(os.getloadavg())
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,4,16", help="concurrent sessions for the first-token figure")
    ap.add_argument("--reps", type=int, default=2, help="rounds of the utterances per path (0: skip part 2)")
    ap.add_argument("--utterances", type=int, default=5, help="recordings per round (of 5)")
    ap.add_argument("--max-tokens", type=int, default=0, help="cap every reply (0: the default, 160)")
    ap.add_argument("--capacity", default="25,50,100,150,200,300",
                    help="idle-listening sessions, in steps, for part 3 ('' skips it)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after each step's sessions opened")
    ap.add_argument("--window", type=float, default=5.0, help="seconds of load before the gauges are read")
    ap.add_argument("--quick", action="store_true",
                    help="--max-tokens 32 --reps 1 --utterances 3 --capacity 2,5,10,20,40,80: a few minutes")
    ap.add_argument("--url", help="a running cluster's nginx (http://host:port) instead of starting one")
    ap.add_argument("--llm-url", default="", help="its inference server (with --url)")
    ap.add_argument("--worker-url", default="", help="its workers, comma-separated: the first for the direct "
                    "path, all for part 3 (with --url)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.max_tokens, args.reps, args.utterances, args.capacity = args.max_tokens or 32, 1, 3, "2,5,10,20,40,80"
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
