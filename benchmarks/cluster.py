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

Sessions held by 1 and 2 workers with the event-loop lag p99 under 20 ms needs the loop-lag
gauge of the admission-control branch: not measured here yet.

    python benchmarks/cluster.py [--levels 1,4,16] [--reps 2] [--json out.json]
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


async def direct_ttft(llm_url: str, question: str, start: asyncio.Event) -> float | None:
    import httpx

    await start.wait()
    t0 = time.monotonic()
    from moksori.engine.prompts import system_prompt

    # the messages a session sends (the same system prompt, so the same prefill and prompt cache)
    body = {"model": "moksori-llm", "stream": True, "max_tokens": 160, "temperature": 0.5,
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


async def ttft_level(n: int, ws_base: str, llm_url: str) -> dict:
    out = {}
    for path in ("direct", "sessions"):
        start = asyncio.Event()
        if path == "direct":
            tasks = [asyncio.create_task(direct_ttft(llm_url, QUESTIONS[i % 4], start)) for i in range(n)]
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


async def latency_paths(nginx_ws: str, worker_ws: str, reps: int) -> dict:
    import server_latency as sl

    info = sl.manifest()
    rows = {"nginx": [], "direct": []}
    await sl.one_turn(nginx_ws, KEY, sl.NAMES[-1], info[sl.NAMES[-1]], turn="default")  # warm-up, not counted
    for rep in range(reps):
        for i, name in enumerate(sl.NAMES):
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


# --------------------------------------------------------------------------- main


async def run(args) -> dict:
    levels = [int(x) for x in args.levels.split(",") if x]
    result: dict = {"cpu_count": os.cpu_count(), "loadavg_before": list(os.getloadavg()), "levels": {}}
    env, db, tmp = None, None, None
    if args.url:
        base, llm_url, worker_base = args.url.rstrip("/"), args.llm_url.rstrip("/"), args.worker_url
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
               "MOKSORI_SERVER_MAX_SESSIONS_PER_KEY": str(max(levels) + 4)}
        print("starting the cluster (scripts/cluster.py up)...", file=sys.stderr)
        up = sh("up", env, 900)
        if up.returncode != 0:
            raise SystemExit(f"cluster up failed:\n{up.stdout}\n{up.stderr}")
        st = json.loads((Path(tmp) / "state.json").read_text())
        base, llm_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{st['llm_port']}"
        worker_base = f"http://127.0.0.1:{st['worker_ports'][0]}"
    ws = lambda u: u.replace("http://", "ws://") + "/v1"  # noqa: E731
    try:
        print("1. LLM time to first token on the shared inference server", file=sys.stderr)
        warm = asyncio.Event()
        warm.set()
        await direct_ttft(llm_url, QUESTIONS[0], warm)  # the system prompt's first prefill: not counted
        for n in levels:
            result["levels"][str(n)] = await ttft_level(n, ws(base), llm_url)
        if args.reps > 0 and worker_base:
            print("2. end of speech -> first audio, through nginx vs straight to a worker", file=sys.stderr)
            result["end_of_speech_to_first_audio"] = await latency_paths(ws(base), ws(worker_base), args.reps)
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
    ap.add_argument("--reps", type=int, default=2, help="rounds of the 5 utterances per path (0: skip part 2)")
    ap.add_argument("--url", help="a running cluster's nginx (http://host:port) instead of starting one")
    ap.add_argument("--llm-url", default="", help="its inference server (with --url)")
    ap.add_argument("--worker-url", default="", help="one of its workers, for the direct path (with --url)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
