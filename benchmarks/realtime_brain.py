"""The realtime brain's latency: end of speech -> first reply audio, against one upstream.

Phase 1 (this file today) measures the upstream reached directly, two ways, alternating per
utterance in the same run:

* `direct`  — a plain `websockets` client speaking GA to the upstream (the baseline);
* `client`  — Moksori's upstream client `moksori.brains.realtime.RealtimeUpstream` (what the
  realtime brain will use), so its own overhead (parsing, bookkeeping, typed events) shows.

Phase 2 adds `through` — a client talking to a Moksori whose brain is this upstream — and the
figure the issue asks for: through minus direct (aim: under 30 ms at p50).

The upstream is a `moksori serve` started here on 127.0.0.1 (embedded stack), or `--url` (any
GA Realtime server, e.g. another Moksori). Speech: ../shared/speech/en/en_001..005, 24 kHz
PCM16, streamed at real-time pace; server VAD decides the end of the turn. End of speech and
the figure are on the client's clock, as in `server_latency.py`.

    python benchmarks/realtime_brain.py [--reps 2] [--url http://127.0.0.1:8000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path

from _stats import pct  # noqa: E402 - benchmarks run as scripts from this folder
from server_latency import NAMES, RATE, _free_port, manifest, pcm24, start_server  # noqa: E402

CHUNK = RATE * 40 // 1000
SESSION = {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"},
                                                   "turn_detection": {"type": "server_vad"}}}}


def _audio(info: dict):
    import numpy as np

    return np.concatenate([pcm24(info["file"]), np.zeros(RATE * 8, np.int16)])


async def _feed(t0: float, audio, send) -> None:  # noqa: ANN001
    for start in range(0, len(audio), CHUNK):
        delay = t0 + (start + CHUNK) / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(audio[start:start + CHUNK])


async def direct_turn(ws_url: str, key: str, info: dict) -> float | None:
    from websockets.asyncio.client import connect

    audio = _audio(info)
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": SESSION}))
        while json.loads(await ws.recv())["type"] != "session.updated":
            pass
        t0 = time.monotonic()

        async def send(chunk) -> None:  # noqa: ANN001
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(chunk.astype("<i2").tobytes()).decode()}))

        feeder = asyncio.create_task(_feed(t0, audio, send))
        try:
            async with asyncio.timeout(30):
                while True:
                    ev = json.loads(await ws.recv())
                    if ev["type"] == "response.output_audio.delta":
                        return time.monotonic() - (t0 + info["duration"] - info["trail"])
        except TimeoutError:
            return None
        finally:
            feeder.cancel()


async def client_turn(ws_url: str, key: str, info: dict) -> float | None:
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
                    return time.monotonic() - (t0 + info["duration"] - info["trail"])
    except TimeoutError:
        return None
    finally:
        feeder.cancel()
        await up.close()
    return None


async def run(args) -> dict:  # noqa: ANN001
    info = manifest()
    proc = None
    if args.url:
        base = args.url.rstrip("/")
    else:
        port = _free_port()
        print(f"starting moksori serve on 127.0.0.1:{port} (embedded stack) as the upstream...", file=sys.stderr)
        proc = start_server(port)
        base = f"http://127.0.0.1:{port}"
    ws_url = base.replace("http://", "ws://").replace("https://", "wss://") + "/v1/realtime?model=gpt-realtime"
    rows = []
    try:
        for rep in range(args.reps):
            for name in NAMES[:args.utterances]:
                for how, turn in (("direct", direct_turn), ("client", client_turn)):
                    lat = await turn(ws_url, args.key, info[name])
                    ms = None if lat is None else round(1000 * lat, 1)
                    rows.append({"utterance": name, "rep": rep, "how": how, "latency_ms": ms})
                    print(f"{name} rep {rep} {how:7s}: first audio {ms} ms after end of speech", file=sys.stderr)
                    await asyncio.sleep(0.5)
    finally:
        if proc is not None:
            os.killpg(proc.pid, 15)
            proc.wait(10)
    summary: dict = {"what": "end of speech -> first reply audio from one upstream (server VAD)",
                     "cpu_count": os.cpu_count(), "loadavg_before": _loadavg}
    for how in ("direct", "client"):
        lat = [r["latency_ms"] for r in rows if r["how"] == how and r["latency_ms"] is not None]
        summary[how] = {"n": len(lat), "p50_ms": round(pct(lat, 0.5), 1), "p95_ms": round(pct(lat, 0.95), 1)}
    pairs = {}
    for r in rows:
        pairs.setdefault((r["utterance"], r["rep"]), {})[r["how"]] = r["latency_ms"]
    diffs = [p["client"] - p["direct"] for p in pairs.values() if p.get("client") is not None
             and p.get("direct") is not None]
    summary["client_minus_direct_p50_ms"] = round(pct(diffs, 0.5), 1)
    return {"summary": summary, "rows": rows}


_loadavg = list(os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running upstream (http://host:port); default: start moksori serve")
    ap.add_argument("--key", default=os.environ.get("MOKSORI_REALTIME_API_KEY", "unused"))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--utterances", type=int, default=len(NAMES))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps(out["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
