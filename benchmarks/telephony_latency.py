"""Phone-call latency over the Twilio media-stream protocol, with the embedded English stack.

A real `moksori serve` runs on 127.0.0.1; a simulated Twilio (tests/carrier_sim.py) calls it
once per utterance: `start`, the greeting, then real speech as μ-law 8 kHz, 20 ms frames at
real-time pace, marks echoed when the audio before them has played. Utterances: the five
LibriVox files (../shared/speech/en/en_001..005, taken to 8 kHz) and the ten Harvard sentences
recorded at 8 kHz (tel/8k/tel_001..010).

Figures:
* end of caller speech -> first reply `media` frame on the wire, p50/p95. The end of speech is
  the moment the frame holding the last voiced sample was sent (the file's known trailing
  silence, from MANIFEST.tsv, is subtracted from its length);
* the same on the server's own clock (`user.speech_stopped` -> `agent.audio_started`);
* `start` -> first greeting `media` frame.

    python benchmarks/telephony_latency.py [--reps 1] [--set MOKSORI_LLM_MAX_TOKENS=60 ...]

Pipecat 1.14 with these same models over this same protocol on this kind of machine measured
p50 3.38 s end of speech -> first reply audio (../shared/docs/MODELS.md, 45 calls).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from carrier_sim import CarrierSim  # noqa: E402
from servers import ServerProcess, free_port  # noqa: E402
from speech import utt  # noqa: E402

from _stats import pct  # noqa: E402 - benchmarks run as scripts from this folder

PIPECAT_P50_S = 3.38
SECRET = "benchmark-stream-secret"
UTTERANCES = [f"en_{i:03d}" for i in range(1, 6)] + [f"tel_{i:03d}" for i in range(1, 11)]



def get_json(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=10) as r:  # noqa: S310 - loopback
        return json.load(r)


def audio8k(name: str):
    from moksori.audio.resample import resample
    from moksori.audio.wav import load_audio

    u = utt(name)
    frame = load_audio(u.path_8k if name.startswith("tel_") else u.path)
    return frame if frame.rate == 8000 else resample(frame, 8000)


async def wait_event(base: str, call_id: str, typ: str, n: int, timeout: float = 120.0) -> dict:
    """The call's server-side record once its timeline has `n` events of type `typ`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in (await asyncio.to_thread(get_json, base, "/telephony/debug/calls"))["active"]:
            if c["call_id"] == call_id and sum(e["type"] == typ for e in c["timeline"]) >= n:
                return c
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{call_id}: no {typ} #{n}")


async def one_call(base: str, port: int, name: str, n: int) -> dict:
    from moksori.telephony.signatures import make_stream_token

    call_id = f"CA{n:032x}"
    params = {"token": make_stream_token(SECRET.encode(), call_id, now=int(time.time()))}
    audio = audio8k(name)
    trail = utt(name).lead_trail[1]
    url = f"ws://127.0.0.1:{port}/telephony/twilio/stream"
    async with CarrierSim.connect(url, call_id=call_id, params=params) as call:
        await call.start()
        greeting_at = await call.wait_audio(timeout=10)
        await wait_event(base, call_id, "agent.response_done", 1)
        await call.wait_quiet(quiet_s=0.3)
        stamps = await call.speak(audio)
        voice_end = stamps[0] + audio.duration - trail
        # from the first frame of speech on: a reply that starts early (a false end of turn)
        # shows as a negative figure instead of hiding
        reply_at = await call.wait_audio(after=stamps[0], timeout=60)
        summary = await wait_event(base, call_id, "agent.audio_started", 2)
        await call.hang_up()  # the rest of the reply is not measured
    first = {}
    for e in summary["timeline"]:
        first.setdefault(e["type"], e)
    server = None
    if "user.speech_stopped" in first:
        started = [e for e in summary["timeline"] if e["type"] == "agent.audio_started"]
        if len(started) >= 2:
            server = started[1]["t"] - first["user.speech_stopped"]["t"]
    return {"file": name, "latency": reply_at - voice_end, "server": server,
            "greeting": greeting_at - call.started_at,
            "turns": sum(e["type"] == "user.turn_ended" for e in summary["timeline"])}


async def run(base: str, port: int, reps: int) -> list[dict]:
    rows = []
    n = 0
    for _ in range(reps):
        for name in UTTERANCES:
            n += 1
            row = await one_call(base, port, name, n)
            rows.append(row)
            srv = f"{1000 * row['server']:.0f}" if row["server"] is not None else "-"
            print(f"{row['file']}: reply {1000 * row['latency']:.0f} ms (server {srv} ms), "
                  f"greeting {1000 * row['greeting']:.0f} ms, turns {row['turns']}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="ENV=VALUE", help="extra server environment")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    env = {"MOKSORI_LANGUAGE": "en", "MOKSORI_TELEPHONY_STREAM_SECRET": SECRET, "MOKSORI_TELEPHONY_DEBUG": "1",
           "MOKSORI_CONFIG": "", "PYTHONUNBUFFERED": "1"}
    tmp = None
    if "MOKSORI_DATA_DIR" not in os.environ:
        from moksori.providers.models import prepare_whisper

        tmp = tempfile.TemporaryDirectory(prefix="moksori-bench-")
        prepare_whisper(Path(tmp.name))
        env["MOKSORI_DATA_DIR"] = tmp.name
    for pair in args.set:
        key, _, value = pair.partition("=")
        env[key] = value
    port = free_port()
    t0 = time.monotonic()
    with ServerProcess([sys.executable, "-m", "moksori", "serve", "--port", str(port)], port=port,
                       ready_path="/health", ready_timeout_s=180, env=env) as srv:
        deadline = time.monotonic() + 60
        while not get_json(srv.url, "/telephony/debug/stats").get("warm") and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"server ready in {time.monotonic() - t0:.1f} s; {len(UTTERANCES) * args.reps} calls", flush=True)
        rows = asyncio.run(run(srv.url, port, args.reps))
    if tmp is not None:
        tmp.cleanup()
    lat = [r["latency"] for r in rows]
    server = [r["server"] for r in rows if r["server"] is not None]
    greet = [r["greeting"] for r in rows]
    print()
    print(f"end of caller speech -> first reply media: p50 {pct(lat, 0.5):.2f} s, p95 {pct(lat, 0.95):.2f} s "
          f"(min {min(lat):.2f}, max {max(lat):.2f}, n={len(lat)})")
    if server:
        print(f"  server clock (speech_stopped -> audio_started): p50 {pct(server, 0.5):.2f} s, "
              f"p95 {pct(server, 0.95):.2f} s")
    print(f"start -> first greeting media: p50 {1000 * pct(greet, 0.5):.0f} ms, p95 {1000 * pct(greet, 0.95):.0f} ms, "
          f"max {1000 * max(greet):.0f} ms")
    print(f"reference: Pipecat 1.14, same models and protocol, p50 {PIPECAT_P50_S:.2f} s "
          f"-> Moksori p50 is {PIPECAT_P50_S / statistics.median(lat):.1f}x faster")
    if args.json:
        args.json.write_text(json.dumps({
            "what": "Twilio media stream, simulated carrier: end of caller speech -> first reply media frame",
            "p50_s": round(pct(lat, 0.5), 3), "p95_s": round(pct(lat, 0.95), 3), "n": len(lat),
            "server_p50_s": round(pct(server, 0.5), 3) if server else None,
            "server_p95_s": round(pct(server, 0.95), 3) if server else None,
            "greeting_p50_ms": round(1000 * pct(greet, 0.5)), "greeting_max_ms": round(1000 * max(greet)),
            "pipecat_p50_s": PIPECAT_P50_S, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
