"""What the transports' seams cost per message: two source trees A/B, interleaved, in one run.

Issue 15 split `Session`, `RealtimeConnection` and `PhoneCall` into parts behind ports; every
hot path now makes a call or two more. This measures those paths with the scripted fakes (no
model runs, so the figures are the Python around them), each in a fresh child process per round,
the two trees alternating:

* session_push   `Session.push_audio`, 20 ms of quiet at 16 kHz (resampling, VAD, turn-taker)
* rt_append      `RealtimeConnection.on_message` of an `input_audio_buffer.append` (20 ms, 24 kHz)
* rt_audio_out   one `agent.audio` event (40 ms, 24 kHz) -> `response.output_audio.delta` queued
* phone_audio_out  one `agent.audio` event (20 ms, 8 kHz) -> Twilio media (+ a mark every 100 ms)

    python benchmarks/seam_overhead.py --a /path/to/baseline/src --b src [--rounds 5]

Prints CPU microseconds per message (process time, so a loaded machine's waits are left out), the
median over rounds of each round's median, B/A per round, and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

PATHS = ("session_push", "rt_append", "rt_audio_out", "phone_audio_out")


def child(n: int) -> dict[str, float]:
    import asyncio
    import base64

    import numpy as np

    from moksori.audio.frames import Frame
    from moksori.engine import events as E
    from moksori.engine.session import Session
    from moksori.protocols import realtime as rt
    from moksori.protocols.telephony import codec_for
    from moksori.server import realtime_conn
    from moksori.server.realtime_conn import RealtimeConnection
    from moksori.settings import Settings
    from moksori.telephony.call import PhoneCall
    from moksori.telephony.signatures import make_stream_token
    from moksori.testing.fakes import fake_stack

    realtime_conn.MAX_OUTBOUND_EVENTS = 10**9  # a reader that keeps up: never the limit here

    clock = time.process_time  # CPU time: a shared, loaded machine takes the core away, not the work

    def per(fn: Any, count: int) -> float:
        """Median of 5 batches, CPU microseconds per call."""
        out = []
        for _ in range(5):
            t0 = clock()
            for _ in range(count):
                fn()
            out.append(1e6 * (clock() - t0) / count)
        return statistics.median(out)

    async def main() -> dict[str, float]:
        res: dict[str, float] = {}
        settings = Settings(turn={"provider": "none"})

        s = Session(fake_stack())
        quiet16 = Frame(np.zeros(320, np.int16), 16000)
        res["session_push"] = per(lambda: s.push_audio(quiet16), n)
        await s.close()

        async def drop(ev: Any) -> None:
            pass

        conn = RealtimeConnection(fake_stack(), settings, rt.Flavor.GA, drop)
        await conn.start()
        msg = json.dumps({"type": "input_audio_buffer.append",
                          "audio": base64.b64encode(np.zeros(480, "<i2").tobytes()).decode()})
        t_append: list[float] = []
        for _ in range(5):
            t0 = clock()
            for _ in range(n):
                await conn.on_message(msg)
            t_append.append(1e6 * (clock() - t0) / n)
        res["rt_append"] = statistics.median(t_append)
        bus = conn.session.bus
        bus.publish(E.AgentResponseStarted(t=0.0, response_id="resp_1", item_id="item_1", turn_id=None,
                                           modalities=("audio", "text")))
        frame24 = Frame(np.zeros(960, np.int16), 24000)
        offset = [0]

        def audio_rt() -> None:
            offset[0] += 960
            bus.publish(E.AgentAudio(t=0.0, response_id="resp_1", item_id="item_1", frame=frame24,
                                     offset=offset[0], play_at=0.0))

        res["rt_audio_out"] = per(audio_rt, n)
        await conn.close()

        secret = b"k" * 32
        sent: list[Any] = []

        async def send(wire: Any) -> None:
            sent.append(wire)

        call = PhoneCall("twilio", codec_for("twilio"), stack=fake_stack(), settings=Settings(
            agent={"greeting": ""}, telephony={"tools": "off"}), send=send, secret=secret)
        token = make_stream_token(secret, "CA1", carrier="twilio", now=int(time.time()))
        await call.feed(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
            "streamSid": "MZ1", "callSid": "CA1", "customParameters": {"token": token},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        assert call.session is not None, call.end_reason
        pbus = call.session.bus
        frame8 = Frame(np.zeros(160, np.int16), 8000)
        poff = [0]

        def audio_phone() -> None:
            poff[0] += 160
            pbus.publish(E.AgentAudio(t=0.0, response_id="resp_p", item_id="item_p", frame=frame8,
                                      offset=poff[0], play_at=0.0))

        res["phone_audio_out"] = per(audio_phone, n)
        await call.close()
        return res

    return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", help="baseline source tree (the src directory)")
    ap.add_argument("--b", help="candidate source tree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.n)))
        return
    trees = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    got: dict[str, dict[str, list[float]]] = {k: {p: [] for p in PATHS} for k in trees}
    loads = []
    for r in range(args.rounds):
        for name in (("A", "B") if r % 2 == 0 else ("B", "A")):
            env = {**os.environ, "PYTHONPATH": trees[name]}
            out = subprocess.run([sys.executable, __file__, "--child", "--n", str(args.n)], env=env,
                                 capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            for p in PATHS:
                got[name][p].append(res[p])
        with open("/proc/loadavg", encoding="ascii") as f:
            loads.append(f.read().split()[0])
    print(f"rounds {args.rounds} x {args.n} messages; load after each round: {' '.join(loads)}")
    print(f"{'path':<16}{'A us':>10}{'B us':>10}{'B-A':>10}   B/A per round")
    for p in PATHS:
        a, b = statistics.median(got["A"][p]), statistics.median(got["B"][p])
        ratios = " ".join(f"{y / x:.2f}" for x, y in zip(got["A"][p], got["B"][p]))
        print(f"{p:<16}{a:>10.2f}{b:>10.2f}{b - a:>+10.2f}   {ratios}")


if __name__ == "__main__":
    main()
