"""End of speech -> first reply audio, through the WebSocket, with the real `openai` SDK client.

A `moksori serve` with the embedded stack is started on 127.0.0.1 (or `--url` names a running
one). For each LibriVox utterance (../shared/speech/en/en_001..005, real read speech) a fresh GA
Realtime session is opened with `AsyncOpenAI(...).realtime.connect(...)`, and the file (resampled
to 24 kHz PCM16) is streamed like a microphone would: each 40 ms chunk is sent once it has been
"captured", i.e. at t0 + chunk end on the client's clock, followed by silence until the reply's
first `response.output_audio.delta` arrives.

End of speech = the end of the voiced audio in what was streamed: t0 + (duration - trailing
silence), with the trailing silence read from MANIFEST.tsv ("Lead/trail silence a/b s"). The
figure is (arrival of the first `response.output_audio.delta`) - (end of speech), both on the
client's clock. Stage times (speech_stopped, committed, transcription completed,
response.created, first transcript delta) are given relative to the same end of speech, and so
are three from inside the server, read from its session timeline (`?moksori_timeline=1`, which
adds a small `moksori.event` message per engine event; `--no-stages` leaves it off): STT done,
LLM first token and the first clause's audio, placed on the client's clock at the first audio
delta.

    python benchmarks/server_latency.py [--reps 2] [--url http://127.0.0.1:8000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _stats import pct

HERE = Path(__file__).resolve().parent
SPEECH = Path(os.environ.get("MOKSORI_SPEECH_DIR") or HERE.parent.parent / "shared" / "speech")
NAMES = [f"en_00{i}" for i in range(1, 6)]
RATE = 24000
CHUNK = RATE * 40 // 1000
STAGES = ["speech_stopped", "committed", "transcribed", "response_created", "first_text", "first_audio"]
# inside the server, from its session timeline (`?moksori_timeline=1`: `moksori.event` messages)
ENGINE_STAGES = {"stt.finished": "stt_done", "llm.first_token": "llm_first_token", "tts.first_audio": "tts_first_audio"}
EVENT_STAGE = {
    "input_audio_buffer.speech_stopped": "speech_stopped",
    "input_audio_buffer.committed": "committed",
    "conversation.item.input_audio_transcription.completed": "transcribed",
    "response.created": "response_created",
    "response.output_audio_transcript.delta": "first_text",
    "response.output_audio.delta": "first_audio",
}



def manifest() -> dict[str, dict]:
    lines = (SPEECH / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()
    col = {name: i for i, name in enumerate(lines[0].split("\t"))}
    out = {}
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) < len(col) - 1:
            continue
        name = Path(f[col["file"]]).stem
        m = re.search(r"Lead/trail silence ([\d.]+)/([\d.]+) s", f[col["notes"]] if len(f) > col["notes"] else "")
        out[name] = {"file": SPEECH / f[col["file"]], "duration": float(f[col["duration_s"]]),
                     "transcript": f[col["transcript"]], "lead": float(m.group(1)) if m else None,
                     "trail": float(m.group(2)) if m else None}
    return out


def pcm24(path: Path):
    from moksori.audio.resample import resample
    from moksori.audio.wav import load_audio

    return resample(load_audio(path), RATE).samples


def start_server(port: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"moksori serve exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moksori serve did not start within 180 s")


async def one_turn(ws_base: str, key: str, name: str, info: dict, *, turn: str, stages: bool = True) -> dict:
    import numpy as np
    from openai import AsyncOpenAI

    pcm = pcm24(info["file"])
    tail = np.zeros(RATE * 8, np.int16)  # silence after the file, until the reply starts (8 s at most)
    audio = np.concatenate([pcm, tail])
    end_of_speech_s = info["duration"] - info["trail"]
    client = AsyncOpenAI(api_key=key, websocket_base_url=ws_base, max_retries=0)
    stamps: dict[str, float] = {}
    timeline: dict[str, float] = {}  # engine event type -> its time on the session's clock
    transcript = ""
    query = {"moksori_timeline": "1"} if stages else {}
    async with client.realtime.connect(model="gpt-realtime", extra_query=query) as conn:
        td = {"type": turn} if turn != "default" else None
        audio_in: dict = {"transcription": {"model": "whisper-1"}}
        if td:
            audio_in["turn_detection"] = td
        await conn.session.update(session={"type": "realtime", "audio": {"input": audio_in}})
        while (await conn.recv()).type != "session.updated":
            pass
        t0 = time.monotonic()

        async def feed() -> None:
            for start in range(0, len(audio), CHUNK):
                delay = t0 + (start + CHUNK) / RATE - time.monotonic()  # "captured" at the chunk's end
                if delay > 0:
                    await asyncio.sleep(delay)
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(audio[start:start + CHUNK].astype("<i2").tobytes()).decode())

        feeder = asyncio.create_task(feed())
        try:
            async with asyncio.timeout(30):
                # with the timeline, wait (2 s at most) for agent.audio_started too: it places the
                # session's clock on ours
                while "first_audio" not in stamps or (
                        stages and "agent.audio_started" not in timeline and time.monotonic() < stamps["first_audio"] + 2):
                    raw = await conn.recv_bytes()
                    now = time.monotonic()
                    ev = json.loads(raw)
                    stage = EVENT_STAGE.get(ev["type"])
                    if stage and stage not in stamps:
                        stamps[stage] = now
                    if ev["type"] == "moksori.event":
                        e = ev.get("event") or {}
                        if e.get("type") in (*ENGINE_STAGES, "agent.audio_started"):
                            timeline.setdefault(e["type"], e["t"])
                    if ev["type"] == "conversation.item.input_audio_transcription.completed":
                        transcript = ev["transcript"]
                    if ev["type"] == "error":
                        print(f"  server error: {ev['error'].get('message')}", file=sys.stderr)
        except TimeoutError:
            pass
        finally:
            feeder.cancel()
        try:
            await conn.response.cancel()
        except Exception:  # noqa: BLE001 - best effort; closing ends the session anyway
            pass
    eos = t0 + end_of_speech_s
    row = {"utterance": name, "end_of_speech_s": round(end_of_speech_s, 3), "transcript": transcript}
    for s in STAGES:
        row[f"{s}_ms"] = round(1000 * (stamps[s] - eos), 1) if s in stamps else None
    row["latency_ms"] = row["first_audio_ms"]
    if stages:
        # session clock -> client clock at the first reply audio, as telephony_latency.py does
        offset = stamps["first_audio"] - timeline["agent.audio_started"] \
            if "first_audio" in stamps and "agent.audio_started" in timeline else None
        for typ, key in ENGINE_STAGES.items():
            t = timeline.get(typ)
            row[f"{key}_ms"] = round(1000 * (t + offset - eos), 1) if t is not None and offset is not None else None
    return row


async def run(args) -> dict:
    info = manifest()
    proc = None
    if args.url:
        base = args.url.rstrip("/")
    else:
        port = args.port or _free_port()
        print(f"starting moksori serve on 127.0.0.1:{port} (embedded stack)...", file=sys.stderr)
        proc = start_server(port)
        base = f"http://127.0.0.1:{port}"
    ws_base = base.replace("http://", "ws://").replace("https://", "wss://") + "/v1"
    rows = []
    try:
        if args.warmup:
            await one_turn(ws_base, args.key, NAMES[-1], info[NAMES[-1]], turn=args.turn, stages=args.stages)
        for rep in range(args.reps):
            for name in NAMES:
                row = await one_turn(ws_base, args.key, name, info[name], turn=args.turn, stages=args.stages)
                row["rep"] = rep
                rows.append(row)
                stages = "  ".join(f"{s}={row[f'{s}_ms']}" for s in STAGES[:-1])
                if args.stages:
                    stages += "  |  " + "  ".join(f"{s}={row[f'{s}_ms']}" for s in ENGINE_STAGES.values())
                print(f"{name} rep {rep}: first audio {row['latency_ms']} ms after end of speech   [{stages}]   "
                      f"heard: {row['transcript']!r}", file=sys.stderr)
                await asyncio.sleep(0.5)
    finally:
        if proc is not None:
            os.killpg(proc.pid, 15)
            proc.wait(10)
    lat = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
    summary = {
        "what": "end of speech -> first response.output_audio.delta, openai SDK over WebSocket, embedded stack",
        "turn_detection": args.turn, "n": len(lat), "missing": len(rows) - len(lat),
        "p50_ms": round(pct(lat, 0.5), 1), "p95_ms": round(pct(lat, 0.95), 1),
        "min_ms": round(min(lat), 1) if lat else None, "max_ms": round(max(lat), 1) if lat else None,
        "stages_p50_ms": {s: round(pct([r[f"{s}_ms"] for r in rows if r.get(f"{s}_ms") is not None], 0.5), 1)
                          for s in [*STAGES, *(ENGINE_STAGES.values() if args.stages else ())]},
        "stages_p95_ms": {s: round(pct([r[f"{s}_ms"] for r in rows if r.get(f"{s}_ms") is not None], 0.95), 1)
                          for s in [*STAGES, *(ENGINE_STAGES.values() if args.stages else ())]},
        "cpu_count": os.cpu_count(), "loadavg_before": _loadavg, "loadavg_after": list(os.getloadavg()),
    }
    return {"summary": summary, "rows": rows}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_loadavg = list(os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--url", help="use a running server (http://host:port) instead of starting one")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--key", default=os.environ.get("MOKSORI_BENCH_KEY", "unused"), help="API key, if the server wants one")
    ap.add_argument("--turn", default="default", choices=["default", "server_vad", "semantic_vad"],
                    help="turn detection for the session (default: the server's own)")
    ap.add_argument("--no-stages", dest="stages", action="store_false",
                    help="do not ask for the server's timeline (STT done, LLM first token, first clause audio)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the uncounted first turn")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
