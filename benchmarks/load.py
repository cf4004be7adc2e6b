"""Replies per minute `moksori serve` sustains with N concurrent sessions, the event-loop lag
meanwhile, and where admission control starts shedding (issue 16).

A `moksori serve` with the embedded stack (SmolLM2, Whisper base, Piper) is started on
127.0.0.1 (or `--url` names a running one). For each level N, N Realtime sessions open at once
and each keeps asking for replies back to back: `conversation.item.create` (a short question)
then `response.create` with `max_output_tokens` = `--tokens`, waiting for `response.done`
before the next. Replies are audio, paced at real time like a listener hears them, so one
session can never do more than its audio allows; what the level shows is when the models
(one LLM, one TTS per voice, served in turn) become the limit. Per level:

* replies completed per minute, and first-audio latency (`response.create` -> first
  `response.output_audio.delta`) p50/p95: the N-th reply's wait;
* the server's own loop-lag p99 (over 5 s windows, from `/ready`), worst and median;
* whether the server sheds: sessions refused with 503 at the start, `/ready` busy time, and
  whether one extra session is refused once the level is running.

The baseline is N=1 in the same run. The CPU, load average and settings are in the output.

`--set KEY=VALUE` (repeatable) starts the server with that setting (`llm.parallel=4` is
`MOKSORI_LLM_PARALLEL=4`). `--ab KEY=VALUE[,KEY=VALUE]` (repeatable) starts one more server,
variant B (then C, ...), with A's settings plus those, beside A's. Both stay loaded, and every
level runs on each in turn, the order rotating from one level to the next, for `--rounds`
rounds: the variants share the machine's load, which is recorded at each run (other jobs may
be running). Each session's window is `llm.context_tokens` whatever `llm.parallel` is (the
batched LLM's cache holds one such window a slot). Per variant and level
the rounds are pooled (`table`): first audio p50/p95 over all replies, replies/min over all
windows, the loop-lag p99 windows, how often the extra session was refused, the load average.

    python benchmarks/load.py [--levels 1,2,4,8] [--window 60] [--tokens 40] [--json out.json]
    python benchmarks/load.py --levels 1,2,4,6 --window 45 --rounds 2 --set llm.parallel=1 --ab llm.parallel=4 \\
        --json benchmarks/results/load_parallel.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _stats import pct

QUESTIONS = ["What is the sea?", "Tell me about the moon.", "Why is the sky blue?", "What do cats eat?",
             "How tall are trees?", "What is rain?", "Where do birds sleep?", "What is music?"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setting_env(pairs: list[str]) -> dict[str, str]:
    """`group.field=value` settings as a server's environment: MOKSORI_GROUP_FIELD=value."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"not a KEY=VALUE setting: {pair!r}")
        env["MOKSORI_" + key.strip().replace(".", "_").upper()] = value.strip()
    return env


def start_server(port: int, extra_env: dict[str, str], log: Path) -> subprocess.Popen:
    """`moksori serve` on 127.0.0.1:port, its output in `log` (a pipe nobody reads would fill
    up and block the server)."""
    argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MOKSORI_LANGUAGE": "en", **extra_env}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"moksori serve exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moksori serve did not start within 240 s")


@dataclass
class Variant:
    """One server of the run: its settings (as given and as its environment) and where it listens."""

    name: str
    settings: list[str]
    env: dict[str, str]
    base: str = ""
    proc: subprocess.Popen | None = None
    log: Path | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def start(self, port: int, logs: Path) -> None:
        self.log = logs / f"serve-{self.name}.log"
        print(f"starting moksori serve {self.name} on 127.0.0.1:{port} (embedded stack; "
              f"{' '.join(f'{k}={v}' for k, v in self.env.items())})...", file=sys.stderr)
        self.proc = start_server(port, self.env, self.log)
        self.base = f"http://127.0.0.1:{port}"

    def stop(self) -> int | None:
        """Stop the server; the tracebacks in its log (None: not started here)."""
        if self.proc is None or self.log is None:
            return None
        os.killpg(self.proc.pid, 15)
        self.proc.wait(15)
        return self.log.read_text(errors="replace").count("Traceback")


def ready(base: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(base + "/ready", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def settle(base: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, r = await asyncio.to_thread(ready, base)
        busy = sum(q["queued"] + q["running"] for q in r["queues"].values())
        if r["sessions"] == 0 and busy == 0:
            return
        await asyncio.sleep(0.5)


class Level:
    def __init__(self, n: int) -> None:
        self.n = n
        self.refused = 0
        self.replies: list[dict[str, float]] = []
        self.failed = 0
        self.errors: list[str] = []


async def open_session(ws_base: str):
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    try:
        ws = await connect(ws_base + "/realtime?model=x", max_size=None, open_timeout=30)
    except InvalidStatus as e:
        if e.response.status_code == 503:
            return None
        raise
    first = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert first["type"] == "session.created", first
    return ws


async def converse(ws, n: int, level: Level, until: float, tokens: int) -> None:
    turn = 0
    while time.monotonic() < until:
        q = QUESTIONS[(n + turn) % len(QUESTIONS)]
        turn += 1
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": q}]}}))
        t0 = time.monotonic()
        await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": tokens}}))
        first = None
        while True:
            ev = json.loads(await asyncio.wait_for(ws.recv(), 300))
            if ev["type"] == "response.output_audio.delta" and first is None:
                first = time.monotonic() - t0
            elif ev["type"] == "error":
                level.errors.append(ev["error"].get("code") or "error")
            elif ev["type"] == "response.done":
                if ev["response"]["status"] == "completed" and first is not None:
                    level.replies.append({"first_audio_s": first, "total_s": time.monotonic() - t0,
                                          "done_at": time.monotonic()})
                else:
                    level.failed += 1
                break


async def run_level(base: str, n: int, window: float, tokens: int) -> dict[str, Any]:
    ws_base = base.replace("http://", "ws://") + "/v1"
    level = Level(n)
    opened = await asyncio.gather(*(open_session(ws_base) for _ in range(n)))
    sessions = [ws for ws in opened if ws is not None]
    level.refused = n - len(sessions)
    t_start = time.monotonic()
    until = t_start + window
    lags: list[float] = []
    busy = 0
    polls = 0

    async def watch() -> None:
        nonlocal busy, polls
        while time.monotonic() < until:
            status, r = await asyncio.to_thread(ready, base)
            polls += 1
            busy += status != 200
            lags.append(r["loop_lag_p99_ms"])
            await asyncio.sleep(1.0)

    workers = [asyncio.ensure_future(converse(ws, i, level, until, tokens)) for i, ws in enumerate(sessions)]
    watcher = asyncio.ensure_future(watch())
    await asyncio.sleep(min(window / 2, 20))
    extra = await open_session(ws_base)  # one more while the level runs: admitted or shed?
    extra_refused = extra is None
    if extra is not None:
        await extra.close()
    await asyncio.gather(*workers, return_exceptions=True)  # the replies in flight at the end finish
    await watcher
    elapsed = time.monotonic() - t_start
    for ws in sessions:
        await ws.close()
    firsts = [r["first_audio_s"] for r in level.replies]
    in_window = [r for r in level.replies if r["done_at"] <= until]
    return {
        "sessions": n, "admitted": len(sessions), "refused_at_start": level.refused,
        "extra_session_refused": extra_refused,
        "replies": len(level.replies), "failed": level.failed, "errors": sorted(set(level.errors)),
        "replies_in_window": len(in_window), "window_s": window,
        "replies_per_min": round(60 * len(in_window) / window, 1),
        "first_audio_p50_s": round(pct(firsts, 0.5), 2), "first_audio_p95_s": round(pct(firsts, 0.95), 2),
        "first_audio_max_s": round(max(firsts), 2) if firsts else None,
        "loop_lag_p99_ms_worst": round(max(lags), 1) if lags else None,
        "loop_lag_p99_ms_median": round(pct(lags, 0.5), 1) if lags else None,
        "ready_busy_fraction": round(busy / polls, 2) if polls else None,
        "elapsed_s": round(elapsed, 1),
        "first_audio_s": [round(x, 3) for x in firsts], "loop_lag_p99_ms": lags,  # pooled over rounds
    }


def variants_of(args) -> list[Variant]:
    a_env = {"MOKSORI_SERVER_MAX_SESSIONS_PER_KEY": "1000", **setting_env(args.set)}
    out = [Variant("A", args.set, a_env)]
    for i, extra in enumerate(args.ab):
        pairs = [p for p in extra.split(",") if p.strip()]
        out.append(Variant(chr(ord("B") + i), [*args.set, *pairs], {**a_env, **setting_env(pairs)}))
    return out


def pooled(v: Variant, n: int) -> dict[str, Any]:
    """The rounds of level `n` on variant `v`, pooled."""
    rows = [r for r in v.rows if r["sessions"] == n]
    firsts = [x for r in rows for x in r["first_audio_s"]]
    lags = [x for r in rows for x in r["loop_lag_p99_ms"]]
    loads = [x for r in rows for x in r["loadavg_1m"]]
    return {
        "variant": v.name, "sessions": n, "runs": len(rows), "replies": len(firsts),
        "failed": sum(r["failed"] for r in rows),
        "replies_per_min": round(60 * sum(r["replies_in_window"] for r in rows) / sum(r["window_s"] for r in rows), 1),
        "first_audio_p50_s": round(pct(firsts, 0.5), 2), "first_audio_p95_s": round(pct(firsts, 0.95), 2),
        "loop_lag_p99_ms_worst": round(max(lags), 1) if lags else None,
        "loop_lag_p99_ms_median": round(pct(lags, 0.5), 1) if lags else None,
        "refused_at_start": sum(r["refused_at_start"] for r in rows),
        "extra_session_refused": sum(r["extra_session_refused"] for r in rows),
        "loadavg_1m_min_max": [min(loads), max(loads)] if loads else None,
    }


async def run(args) -> dict[str, Any]:
    variants = variants_of(args)
    logs = Path(tempfile.mkdtemp(prefix="moksori-load-"))
    if args.url:
        if len(variants) > 1 or args.set:
            raise SystemExit("--url runs one server as it is: --set and --ab need servers started here")
        variants[0].base = args.url.rstrip("/")
    levels = [int(x) for x in args.levels.split(",")]
    load_before = list(os.getloadavg())
    tracebacks: dict[str, int | None] = {}
    try:
        for i, v in enumerate(variants):
            if not v.base:
                v.start(args.port + i if args.port else _free_port(), logs)
        k = 0
        for rnd in range(args.rounds):
            for n in levels:
                for v in variants[k % len(variants):] + variants[:k % len(variants)]:
                    await settle(v.base)
                    load_start = os.getloadavg()[0]
                    row = await run_level(v.base, n, args.window, args.tokens)
                    row.update(variant=v.name, round=rnd,
                               loadavg_1m=[round(load_start, 2), round(os.getloadavg()[0], 2)])
                    v.rows.append(row)
                    print(f"{v.name} N={n:3d}: {row['replies_per_min']:5.1f} replies/min, first audio p50 "
                          f"{row['first_audio_p50_s']} s p95 {row['first_audio_p95_s']} s, loop lag p99 worst "
                          f"{row['loop_lag_p99_ms_worst']} ms, refused {row['refused_at_start']}, extra refused "
                          f"{row['extra_session_refused']}, busy {row['ready_busy_fraction']}, failed {row['failed']} "
                          f"{row['errors']}, load {row['loadavg_1m']}", file=sys.stderr)
                k += 1
    finally:
        for v in variants:
            tracebacks[v.name] = v.stop()
        print(f"server logs: {logs}", file=sys.stderr)
    rows = [r for v in variants for r in v.rows]
    a_rows = variants[0].rows
    shed = next((r["sessions"] for r in a_rows if r["refused_at_start"] or r["extra_session_refused"]), None)
    summary = {
        "what": "replies per minute with N Realtime sessions asking back to back (text in, audio out), "
                "embedded stack; first audio = response.create -> first output_audio.delta",
        "tokens_per_reply": args.tokens, "window_s": args.window,
        "sheds_from_sessions": shed, "cpu_count": os.cpu_count(), "cpu": _cpu_model(),
        "loadavg_before": load_before, "loadavg_after": list(os.getloadavg())}
    if len(variants) > 1 or args.rounds > 1:
        summary.update(
            rounds=args.rounds, server_tracebacks=tracebacks,
            variants={v.name: {"settings": v.settings, "env": v.env} for v in variants},
            table=[pooled(v, n) for n in levels for v in variants])
    return {"summary": summary, "rows": rows}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,2,4,8,12")
    ap.add_argument("--window", type=float, default=60.0, help="seconds each level runs")
    ap.add_argument("--tokens", type=int, default=40, help="max_output_tokens of each reply")
    ap.add_argument("--url", help="a running server instead of starting one")
    ap.add_argument("--set", action="append", default=[], help="a setting of the server, e.g. llm.threads=2")
    ap.add_argument("--ab", action="append", default=[],
                    help="one more server's settings, e.g. llm.parallel=4 (interleaved with A)")
    ap.add_argument("--rounds", type=int, default=1, help="times each level runs on each variant")
    ap.add_argument("--port", type=int, help="the first server's port (the next ones follow); default: free ports")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
