"""The realtime brain's latency: end of speech -> first reply audio, against one upstream.

Three ways to reach the same upstream, interleaved per utterance in one run, against two upstreams:
a scripted Realtime server (`moksori.testing.fake_realtime` over a socket: energy VAD, a tone at
once; deterministic, so the difference is Moksori's own time) and a `moksori serve` with the
embedded stack (realistic, but its own latency varies by hundreds of ms):

* `direct`  — a plain `websockets` client speaking GA to the upstream (the baseline);
* `through` — the same client talking to a Moksori whose brain is that upstream
  (`MOKSORI_BRAIN=realtime`, the upstream's server VAD): the figure the issue asks for is
  through minus direct (aim: under 30 ms at p50);
* `client`  — Moksori's upstream client `RealtimeUpstream` alone (its own parsing and bookkeeping).

`through` also reports the front's own output path from its timeline: the upstream's first audio
reaching the reply (`tts.first_audio`) -> the speaker's first chunk out (`agent.audio_started`).

`--url` measures any GA Realtime server instead. The front is a `moksori serve` started here with
the realtime brain. Speech: ../shared/speech/en/en_001..005, 24 kHz PCM16, streamed at real-time
pace; server VAD decides the end of the turn. End of speech and the figure are on the client's
clock, as in `server_latency.py`.

    python benchmarks/realtime_brain.py [--reps 2] [--url http://127.0.0.1:8000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _stats import pct
from server_latency import NAMES, RATE, _free_port, manifest, pcm24

CHUNK = RATE * 40 // 1000
SESSION = {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"},
                                                   "turn_detection": {"type": "server_vad"}}}}


def _audio(info: dict):
    import numpy as np

    return np.concatenate([pcm24(info["file"]), np.zeros(RATE * 8, np.int16)])


async def _feed(t0: float, audio, send) -> None:
    for start in range(0, len(audio), CHUNK):
        delay = t0 + (start + CHUNK) / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(audio[start:start + CHUNK])


def start(port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"moksori serve exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moksori serve did not start within 240 s")


async def ws_turn(ws_url: str, key: str, info: dict) -> tuple[float | None, float | None]:
    """(end of speech -> first audio delta at the client, the front's own output path in ms if it
    reports its timeline)."""
    from websockets.asyncio.client import connect

    audio = _audio(info)
    first_in: float | None = None
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": SESSION}))
        while json.loads(await ws.recv())["type"] != "session.updated":
            pass
        t0 = time.monotonic()

        async def send(chunk) -> None:
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(chunk.astype("<i2").tobytes()).decode()}))

        feeder = asyncio.create_task(_feed(t0, audio, send))
        latency = internal = None
        timeline = "moksori_timeline" in ws_url
        try:
            async with asyncio.timeout(30):
                while latency is None or (timeline and internal is None):
                    ev = json.loads(await ws.recv())
                    if ev["type"] == "response.output_audio.delta" and latency is None:
                        latency = time.monotonic() - (t0 + info["duration"] - info["trail"])
                    elif ev["type"] == "moksori.event":
                        e = ev["event"]
                        if e["type"] == "tts.first_audio" and first_in is None:
                            first_in = e["t"]
                        elif e["type"] == "agent.audio_started" and first_in is not None and internal is None:
                            internal = round(1000 * (e["t"] - first_in), 2)
                return latency, internal
        except TimeoutError:
            return latency, internal
        finally:
            feeder.cancel()


async def direct_turn(ws_url: str, key: str, info: dict) -> tuple[float | None, float | None]:
    return await ws_turn(ws_url, key, info)


async def client_turn(ws_url: str, key: str, info: dict) -> tuple[float | None, float | None]:
    from moksori.audio.frames import Frame
    from moksori.brains.realtime import (RealtimeUpstream, SessionOptions, UpstreamOptions, events,
                                         resolve_endpoint)

    audio = _audio(info)
    up = RealtimeUpstream(UpstreamOptions(resolve_endpoint(ws_url, api_key=key),
                                          SessionOptions(turn="server_vad", transcription_model="whisper-1")))
    await up.start()
    t0 = time.monotonic()
    feeder = asyncio.create_task(_feed(t0, audio, lambda c: up.append_audio(Frame(c, RATE))))
    try:
        async with asyncio.timeout(30):
            async for e in up.events():
                if isinstance(e, events.AudioDelta):
                    return time.monotonic() - (t0 + info["duration"] - info["trail"]), None
    except TimeoutError:
        return None, None
    finally:
        feeder.cancel()
        await up.close()
    return None, None


def start_fake(port: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "moksori.testing.fake_realtime", "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    line = proc.stdout.readline().decode()  # printed once it listens
    if "fake realtime server" not in line:
        raise SystemExit(f"the fake upstream did not start: {proc.stderr.read().decode(errors='replace')[-2000:]}")
    return proc


async def measure(args, upstream: str, info: dict) -> tuple[list[dict], dict]:
    procs: list[subprocess.Popen] = []
    modes = args.modes.split(",")
    rows = []
    try:
        if upstream == "url":
            base = args.url.rstrip("/")
        elif upstream == "fake":
            port = _free_port()
            print(f"starting the scripted upstream (moksori.testing.fake_realtime) on 127.0.0.1:{port}...",
                  file=sys.stderr)
            procs.append(start_fake(port))
            base = f"http://127.0.0.1:{port}"
        else:
            port = _free_port()
            print(f"starting moksori serve on 127.0.0.1:{port} (embedded stack) as the upstream...", file=sys.stderr)
            procs.append(start(port))
            base = f"http://127.0.0.1:{port}"
        ws_url = base.replace("http://", "ws://").replace("https://", "wss://") + "/v1/realtime?model=gpt-realtime"
        front_url = None
        if "through" in modes:
            fport = _free_port()
            print(f"starting moksori serve on 127.0.0.1:{fport} with the realtime brain in front...", file=sys.stderr)
            procs.append(start(fport, {"MOKSORI_BRAIN": "realtime", "MOKSORI_REALTIME_URL": ws_url,
                                       "MOKSORI_REALTIME_API_KEY": args.key, "MOKSORI_STORE_URL": "none",
                                       "MOKSORI_REALTIME_TRANSCRIPTION_MODEL": "whisper-1"}))
            front_url = f"ws://127.0.0.1:{fport}/v1/realtime?model=gpt-realtime&moksori_timeline=1"
        turns = {"direct": (direct_turn, ws_url), "through": (ws_turn, front_url), "client": (client_turn, ws_url)}
        for rep in range(args.reps):
            for name in NAMES[:args.utterances]:
                for how in modes:
                    turn, url = turns[how]
                    lat, internal = await turn(url, args.key, info[name])
                    ms = None if lat is None else round(1000 * lat, 1)
                    rows.append({"upstream": upstream, "utterance": name, "rep": rep, "how": how, "latency_ms": ms,
                                 "front_ms": internal})
                    extra = f" (front: upstream audio -> out in {internal} ms)" if internal is not None else ""
                    print(f"[{upstream}] {name} rep {rep} {how:7s}: first audio {ms} ms after end of speech{extra}",
                          file=sys.stderr)
                    await asyncio.sleep(0.5)
    finally:
        for proc in procs:
            os.killpg(proc.pid, 15)
            proc.wait(10)
    summary: dict = {}
    for how in modes:
        lat = [r["latency_ms"] for r in rows if r["how"] == how and r["latency_ms"] is not None]
        if lat:
            summary[how] = {"n": len(lat), "p50_ms": round(pct(lat, 0.5), 1), "p95_ms": round(pct(lat, 0.95), 1)}
    pairs: dict = {}
    for r in rows:
        pairs.setdefault((r["utterance"], r["rep"]), {})[r["how"]] = r["latency_ms"]
    for how in [m for m in modes if m != "direct"]:
        diffs = [p[how] - p["direct"] for p in pairs.values() if p.get(how) is not None and p.get("direct") is not None]
        if diffs:
            summary[f"{how}_minus_direct"] = {"p50_ms": round(pct(diffs, 0.5), 1), "p95_ms": round(pct(diffs, 0.95), 1)}
    front = [r["front_ms"] for r in rows if r["front_ms"] is not None]
    if front:
        summary["front_output_path"] = {"what": "upstream first audio -> the speaker's first chunk out, in the front",
                                        "p50_ms": round(pct(front, 0.5), 2), "p95_ms": round(pct(front, 0.95), 2)}
    return rows, summary


async def run(args) -> dict:
    info = manifest()
    ups = ["url"] if args.url else args.upstream.split(",")
    summary: dict = {"what": "end of speech -> first reply audio from one upstream (server VAD)",
                     "cpu_count": os.cpu_count(), "loadavg_before": _loadavg}
    rows: list[dict] = []
    for up in ups:
        r, s = await measure(args, up, info)
        rows += r
        summary[up] = s
    summary["loadavg_after"] = list(os.getloadavg())
    return {"summary": summary, "rows": rows}


_loadavg = list(os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running upstream (http://host:port); default: start moksori serve")
    ap.add_argument("--key", default=os.environ.get("MOKSORI_REALTIME_API_KEY", "unused"))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--utterances", type=int, default=len(NAMES))
    ap.add_argument("--modes", default="direct,through,client", help="comma-separated: direct, through, client")
    ap.add_argument("--upstream", default="fake,moksori",
                    help="comma-separated: fake (a scripted server: replies at once, so only Moksori's own time "
                         "differs), moksori (a moksori serve with the embedded stack)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps(out["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
