"""Phone-call latency over the Twilio media-stream protocol: Moksori, and Pipecat 1.14 on the same
models, driven by the same simulated caller in one run.

A real `moksori serve` runs on 127.0.0.1; with `--pipecat` so does a Pipecat 1.14 bot
(benchmarks/pipecat/bot.py, in its own virtualenv; `make bench` creates it) with a local
`llama_cpp.server` for its LLM. Same models on both sides: the Whisper base CTranslate2 folder,
SmolLM2-135M (the packaged GGUF), Piper's joe voice, Silero VAD and smart-turn v3.2; the same
LLM threads (2), context and batch; the same greeting, system prompt, temperature, max tokens.

A simulated Twilio (tests/carrier_sim.py) makes one call per utterance: `start`, the greeting,
then real speech as μ-law 8 kHz, 20 ms frames at real-time pace, marks echoed when the audio
before them has played. Utterances: the five LibriVox files (../shared/speech/en/en_001..005,
taken to 8 kHz) and the ten Harvard sentences recorded at 8 kHz (tel/8k/tel_001..010). With
`--pipecat`, calls are interleaved: each utterance goes to both servers back to back, the order
flipping every utterance, after one unmeasured warm-up call each.

Fairness: both servers stay up for the whole run, so before each caller starts speaking the
script waits until every server process is idle (< 5 % of a core over 0.5 s), and it measures
the CPU each idle stack used while the other one was answering, and the CPU everything else on
the machine used (other users of a shared box), per call.

Figures, per server:
* end of caller speech -> first reply `media` frame at the caller, p50/p90/p95. The end of
  speech is the moment the frame holding the last voiced sample was sent (the file's known
  trailing silence, from MANIFEST.tsv, is subtracted from its length); also to the first
  audible frame (peak above -40 dBFS);
* where the time went, each stage in seconds after the same true end of speech (Pipecat: from
  the bot's frame timeline on the same monotonic clock; Moksori: from its session timeline,
  placed on the caller's clock at the first reply frame);
* `start` -> first greeting `media` frame; RSS of each server process before and after.

    python benchmarks/telephony_latency.py [--reps 1] [--pipecat] [--set MOKSORI_LLM_MAX_TOKENS=60 ...]
    python benchmarks/telephony_latency.py --ab MOKSORI_STT_PARTIALS=on   # a second Moksori, calls interleaved
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE / "pipecat"))

from carrier_sim import CarrierSim
from servers import ServerProcess, free_port
from speech import utt

from _stats import pct

SECRET = "benchmark-stream-secret"
UTTERANCES = [f"en_{i:03d}" for i in range(1, 6)] + [f"tel_{i:03d}" for i in range(1, 11)]
WARMUP = "tel_001"
AUDIBLE_PEAK = 328  # int16 peak of -40 dBFS: the first reply frame that carries sound
IDLE_CORES = 0.05
MOKSORI_STAGES = (("vad_stopped", "user.speech_stopped"), ("stt_done", "stt.finished"),
                  ("eot_done", "eot.finished"), ("turn_end", "user.turn_ended"),
                  ("llm_first_token", "llm.first_token"), ("tts_first_audio", "tts.first_audio"))
PIPECAT_STAGES = ("vad_stopped", "transcript", "turn_end", "llm_first_token", "tts_first_audio")

# --------------------------------------------------------------------------- the machine, from /proc

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return (sum(parts[:8]) - idle) / _TICK


def rss_mib(pid: int) -> dict[str, float]:
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss" if key == "VmRSS" else "peak"] = round(int(value.split()[0]) / 1024, 1)
    return out


def machine_info() -> dict:
    info: dict = {"cpu_count": os.cpu_count(), "python": platform.python_version()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu_model"] = value.strip()
            elif key.strip() == "Flags":
                flags = value.split()
                info["simd"] = [f for f in flags if f.startswith(("avx", "fma", "f16c", "amx")) or f in ("sse4_2",)]
    return info


class Meter:
    """CPU used by named processes and by the rest of the machine between two snapshots."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.me = os.getpid()

    def snap(self) -> dict[str, float]:
        s = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        s["_caller"] = cpu_seconds(self.me)
        s["_machine"] = machine_busy()
        s["_t"] = time.monotonic()
        return s

    @staticmethod
    def cores(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        """Average cores busy per process (and `others`: everything not ours) over [a, b]."""
        dt = max(b["_t"] - a["_t"], 1e-6)
        out = {k: round((b[k] - a[k]) / dt, 3) for k in a if not k.startswith("_")}
        ours = sum(b[k] - a[k] for k in a if k not in ("_machine", "_t"))
        out["others"] = round(max(0.0, b["_machine"] - a["_machine"] - ours) / dt, 3)
        return out

    async def settle(self, *, window: float = 0.5, timeout: float = 30.0) -> float:
        """Wait until every server is idle; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            a = self.snap()
            await asyncio.sleep(window)
            busy = self.cores(a, self.snap())
            if all(v < IDLE_CORES for k, v in busy.items() if k in self.pids):
                break
        return round(time.monotonic() - t0, 2)


# --------------------------------------------------------------------------- one call


def get_json(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.load(r)


def audio8k(name: str):
    from moksori.audio.resample import resample
    from moksori.audio.wav import load_audio

    u = utt(name)
    frame = load_audio(u.path_8k if name.startswith("tel_") else u.path)
    return frame if frame.rate == 8000 else resample(frame, 8000)


async def wait_event(base: str, call_id: str, typ: str, n: int, timeout: float = 60.0) -> dict:
    """Moksori's record of a call once its timeline has `n` events of type `typ`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in (await asyncio.to_thread(get_json, base, "/telephony/debug/calls"))["active"]:
            if c["call_id"] == call_id and sum(e["type"] == typ for e in c["timeline"]) >= n:
                return c
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{call_id}: no {typ} #{n}")


class Target:
    """One server under test: where the caller dials, and how to read its side of a call."""

    name = "?"
    url = ""

    def params(self, call_id: str) -> dict[str, str]:
        from moksori.telephony.signatures import make_stream_token

        # the same `start` message for both: Pipecat ignores the token
        return {"token": make_stream_token(SECRET.encode(), call_id, carrier="twilio", now=int(time.time()))}

    async def after_reply(self, call_id: str) -> dict:
        return {}

    def stages(self, call_id: str, row: dict, info: dict) -> None:
        pass


class Moksori(Target):
    name = "moksori"

    def __init__(self, base: str, port: int, name: str = "moksori") -> None:
        self.base, self.url = base, f"ws://127.0.0.1:{port}/telephony/twilio/stream"
        self.name = name

    async def after_reply(self, call_id: str) -> dict:
        return await wait_event(self.base, call_id, "agent.audio_started", 2)

    def stages(self, call_id: str, row: dict, info: dict) -> None:
        tl = info["timeline"]
        replies = [e for e in tl if e["type"] == "agent.audio_started"]
        if len(replies) < 2 or row["reply"] is None:
            return
        reply_t = replies[1]["t"]
        offset = row["reply_at"] - reply_t  # session clock -> caller's clock, at the first reply frame

        def last(typ: str) -> dict | None:
            hits = [e for e in tl if e["type"] == typ and e["t"] <= reply_t]
            return hits[-1] if hits else None

        for key, typ in MOKSORI_STAGES:
            e = last(typ)
            row["stages"][key] = round(e["t"] + offset - row["voice_end"], 3) if e else None
        stop = last("user.speech_stopped")
        row["server"] = round(reply_t - stop["t"], 3) if stop else None
        ended = last("user.turn_ended")
        row["turn_reason"] = ended.get("reason") if ended else None
        said = last("user.transcript")
        row["transcript"] = said.get("text", "") if said else ""
        row["user_turns"] = sum(e["type"] == "user.turn_ended" for e in tl)


class Pipecat(Target):
    name = "pipecat"

    def __init__(self, stack) -> None:
        self.stack, self.url = stack, stack.ws_url

    def stages(self, call_id: str, row: dict, info: dict) -> None:
        got = self.stack.stages(call_id, row["speech_started_at"])
        for key in PIPECAT_STAGES:
            t = got["t"].get(key)
            row["stages"][key] = round(t - row["voice_end"], 3) if t is not None else None
        row["smart_turn"] = got["smart_turn"]
        row["transcript"] = got["transcript"]
        row["user_turns"] = got["user_turns"]


async def one_call(target: Target, meter: Meter, name: str, n: int) -> dict:
    call_id = f"CA{n:032x}"
    audio = audio8k(name)
    trail = utt(name).lead_trail[1]
    row: dict = {"server_name": target.name, "file": name, "call": n, "reply": None, "audible": None,
                 "stages": {}}
    async with CarrierSim.connect(target.url, call_id=call_id, params=target.params(call_id)) as call:
        await call.start()
        greeting_at = await call.wait_audio(timeout=120)  # Pipecat loads its models per call first
        row["greeting"] = round(greeting_at - call.started_at, 3)
        await call.wait_quiet(quiet_s=0.8, timeout=60)
        row["settle_s"] = await meter.settle()
        before = meter.snap()
        stamps = await call.speak(audio)
        row["speech_started_at"] = stamps[0]
        row["voice_end"] = stamps[0] + audio.duration - trail
        try:
            # from the first frame of speech on: a reply that starts early (a false end of turn)
            # shows as a negative figure instead of hiding
            reply_at = await call.wait_audio(after=stamps[0], timeout=60)
        except TimeoutError:
            reply_at = None
        after = meter.snap()
        info = {}
        if reply_at is not None:
            row["reply_at"] = reply_at
            row["reply"] = round(reply_at - row["voice_end"], 3)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_audible(call, stamps[0]), 2.0)
            loud = [c.arrived for c in call.chunks if c.arrived > stamps[0] and np.abs(c.samples).max() >= AUDIBLE_PEAK]
            row["audible"] = round(loud[0] - row["voice_end"], 3) if loud else None
            with contextlib.suppress(TimeoutError):
                info = await target.after_reply(call_id)
        await call.hang_up()  # the rest of the reply is not measured
    row["cpu_cores"] = Meter.cores(before, after)
    row["cpu_s"] = {k: round(after[k] - before[k], 3) for k in before if not k.startswith("_")}
    if info or target.name == "pipecat":
        with contextlib.suppress(Exception):
            target.stages(call_id, row, info)
    return row


async def _audible(call: CarrierSim, after: float) -> None:
    while not any(c.arrived > after and np.abs(c.samples).max() >= AUDIBLE_PEAK for c in call.chunks):
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- the run


def describe(row: dict) -> str:
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    stages = " ".join(f"{k} {s(v)}" for k, v in row["stages"].items())
    extra = ""
    if row.get("smart_turn"):
        extra = " smart-turn " + ",".join(f"{x['p']:.2f}" for x in row["smart_turn"])
    if row.get("turn_reason"):
        extra = f" turn {row['turn_reason']}"
    others = row["cpu_cores"].get("others", 0.0)
    return (f"[{row['server_name']:7s}] {row['file']}: reply {s(row['reply'])} s (audible {s(row['audible'])}) | "
            f"{stages} |{extra} | greeting {1000 * row['greeting']:.0f} ms, others {others:.2f} cores")


async def run(targets: list[Target], meter: Meter, reps: int, rss: dict) -> list[dict]:
    rows: list[dict] = []
    n = 0
    rss["ready"] = {name: rss_mib(pid) for name, pid in meter.pids.items()}
    for t in targets:  # one unmeasured call each: first-call costs (allocations, caches) out of the figures
        n += 1
        row = await one_call(t, meter, WARMUP, n)
        print("warm-up " + describe(row), flush=True)
    await meter.settle()
    rss["after_warmup"] = {name: rss_mib(pid) for name, pid in meter.pids.items()}
    for rep in range(reps):
        for i, name in enumerate(UTTERANCES):
            order = targets if (i + rep) % 2 == 0 else targets[::-1]
            for t in order:
                n += 1
                row = await one_call(t, meter, name, n)
                row["rep"] = rep
                rows.append(row)
                print(describe(row), flush=True)
    await meter.settle()
    rss["end"] = {name: rss_mib(pid) for name, pid in meter.pids.items()}
    return rows


def summarise(rows: list[dict], name: str, own: list[str]) -> dict:
    mine = [r for r in rows if r["server_name"] == name]
    lat = [r["reply"] for r in mine if r["reply"] is not None]
    aud = [r["audible"] for r in mine if r["audible"] is not None]
    srv = [r["server"] for r in mine if r.get("server") is not None]
    greet = [r["greeting"] for r in mine]
    keys = list(dict.fromkeys(k for r in mine for k in r["stages"]))
    out = {
        "n": len(mine), "missing": len(mine) - len(lat),
        "p50_s": round(pct(lat, 0.5), 3), "p90_s": round(pct(lat, 0.9), 3), "p95_s": round(pct(lat, 0.95), 3),
        "min_s": round(min(lat), 3) if lat else None, "max_s": round(max(lat), 3) if lat else None,
        "audible_p50_s": round(pct(aud, 0.5), 3), "audible_p95_s": round(pct(aud, 0.95), 3),
        "stages_p50_s": {k: round(pct([r["stages"][k] for r in mine if r["stages"].get(k) is not None], 0.5), 3)
                         for k in keys},
        "settle_s_p50": round(pct([r["settle_s"] for r in mine], 0.5), 2),
        "settle_s_max": max(r["settle_s"] for r in mine) if mine else None,
        "greeting_p50_ms": round(1000 * pct(greet, 0.5)), "greeting_max_ms": round(1000 * max(greet)) if greet else None,
        # CPU this stack used while it was answering, and while the *other* stack was (idle cost)
        "busy_cores_p50": round(pct([sum(r["cpu_cores"].get(p, 0) for p in own) for r in mine], 0.5), 3),
        # CPU seconds the stack spent from the caller's first word to its first reply frame
        "cpu_s_to_reply_p50": round(pct([sum(r["cpu_s"].get(p, 0) for p in own) for r in mine if r["reply"] is not None],
                                        0.5), 2),
        "idle_cores_during_other_max": round(max([sum(r["cpu_cores"].get(p, 0) for p in own)
                                                  for r in rows if r["server_name"] != name] or [0.0]), 3),
        "idle_cores_during_other_p50": round(pct([sum(r["cpu_cores"].get(p, 0) for p in own)
                                                  for r in rows if r["server_name"] != name], 0.5), 3),
    }
    if srv:
        out["server_p50_s"], out["server_p95_s"] = round(pct(srv, 0.5), 3), round(pct(srv, 0.95), 3)
    if name == "pipecat":
        st = [r.get("smart_turn") or [] for r in mine]
        out["smart_turn_incomplete_calls"] = sum(any(not x["complete"] for x in s) for s in st)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=1, help="times through the 15 utterances")
    ap.add_argument("--pipecat", action="store_true", help="also run Pipecat 1.14, calls interleaved")
    ap.add_argument("--pipecat-venv", type=Path, default=None, help="default: .data/bench/pipecat-venv")
    ap.add_argument("--only", help="comma-separated utterances (a quick check), e.g. en_001,tel_002")
    ap.add_argument("--set", action="append", default=[], metavar="ENV=VALUE", help="extra Moksori environment")
    ap.add_argument("--ab", action="append", default=[], metavar="ENV=VALUE",
                    help="also a second Moksori ('moksori_b') with this environment on top, calls interleaved")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    # a plain `kill` must still take the servers down (they run in their own sessions)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.only:
        UTTERANCES[:] = [u for u in args.only.split(",") if u]

    from moksori.engine.prompts import system_prompt
    from moksori.providers.models import prepare_whisper
    from moksori.settings import load_settings
    from moksori.telephony.phrases import DEFAULT_GREETING

    env = {"MOKSORI_LANGUAGE": "en", "MOKSORI_TELEPHONY_STREAM_SECRET": SECRET, "MOKSORI_TELEPHONY_DEBUG": "1",
           "MOKSORI_CONFIG": "", "PYTHONUNBUFFERED": "1"}
    for pair in args.set:
        key, _, value = pair.partition("=")
        env[key] = value
    tmp = None
    data_dir = os.environ.get("MOKSORI_DATA_DIR")
    if not data_dir:
        tmp = tempfile.TemporaryDirectory(prefix="moksori-bench-")
        data_dir = tmp.name
    whisper_dir = prepare_whisper(Path(data_dir))  # both stacks read this one folder
    env["MOKSORI_DATA_DIR"] = data_dir
    settings = load_settings()
    info = machine_info()
    info["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]

    port = free_port()
    t0 = time.monotonic()
    rss: dict = {}
    with contextlib.ExitStack() as es:
        srv = es.enter_context(ServerProcess([sys.executable, "-m", "moksori", "serve", "--port", str(port)],
                                                port=port, ready_path="/health", ready_timeout_s=180, env=env))
        deadline = time.monotonic() + 60
        while not get_json(srv.url, "/telephony/debug/stats").get("warm") and time.monotonic() < deadline:
            time.sleep(0.1)
        targets: list[Target] = [Moksori(srv.url, port)]
        pids = {"moksori": srv.proc.pid}
        if args.ab:
            env_b = {**env, **dict(pair.partition("=")[::2] for pair in args.ab)}
            port_b = free_port()
            srv_b = es.enter_context(ServerProcess([sys.executable, "-m", "moksori", "serve", "--port", str(port_b)],
                                                   port=port_b, ready_path="/health", ready_timeout_s=180, env=env_b))
            deadline = time.monotonic() + 60
            while not get_json(srv_b.url, "/telephony/debug/stats").get("warm") and time.monotonic() < deadline:
                time.sleep(0.1)
            targets.append(Moksori(srv_b.url, port_b, "moksori_b"))
            pids["moksori_b"] = srv_b.proc.pid
        pipecat_meta = None
        if args.pipecat:
            from launch import DEFAULT_VENV, PipecatStack, pipecat_version, same_file

            from moksori.providers.models import path_of

            venv = args.pipecat_venv or DEFAULT_VENV
            events = Path(es.enter_context(tempfile.TemporaryDirectory(prefix="pipecat-bench-"))) / "events.jsonl"
            pc = es.enter_context(PipecatStack.start(
                whisper_dir, system=system_prompt(settings.agent.instructions, ("en",)), greeting=DEFAULT_GREETING,
                temperature=settings.llm.temperature, max_tokens=settings.llm.max_tokens,
                threads=settings.llm.threads, context_tokens=settings.llm.context_tokens, venv=venv, events=events))
            targets.append(Pipecat(pc))
            pids.update(pc.pids())
            site = Path(venv).glob("lib/python*/site-packages/pipecat/audio/vad/data/silero_vad.onnx")
            pipecat_meta = {"version": pipecat_version(venv), "venv": str(venv),
                            "silero_same_file_as_moksori": any(same_file(p, path_of("silero-vad")) for p in site),
                            "llm_server": "llama_cpp.server (llama-cpp-python) "
                                          f"n_threads={settings.llm.threads} n_ctx={settings.llm.context_tokens} n_batch=256",
                            "whisper": str(whisper_dir), "voice": str(path_of("piper-en-joe")),
                            "smart_turn": str(path_of("smart-turn-v3.2")), "gguf": str(path_of("smollm2-135m"))}
        meter = Meter(pids)
        print(f"servers ready in {time.monotonic() - t0:.1f} s ({', '.join(f'{k} pid {v}' for k, v in pids.items())}); "
              f"{len(UTTERANCES) * args.reps} calls each", flush=True)
        rows = asyncio.run(run(targets, meter, args.reps, rss))
    if tmp is not None:
        tmp.cleanup()
    info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    groups = {"moksori": ["moksori"], "moksori_b": ["moksori_b"], "pipecat": ["pipecat-bot", "llama-server"]}
    result: dict = {
        "what": "Twilio media stream, simulated carrier: end of caller speech -> first reply media frame",
        "date": datetime.date.today().isoformat(), "machine": info, "utterances": UTTERANCES, "reps": args.reps,
        "order": "interleaved: each utterance to every server back to back, order flipping every utterance"
                 if len(targets) > 1 else "Moksori only",
        "moksori_b_env": dict(pair.partition("=")[::2] for pair in args.ab),
        "others_cores_p50": round(pct([r["cpu_cores"]["others"] for r in rows], 0.5), 3),
        "others_cores_max": round(max(r["cpu_cores"]["others"] for r in rows), 3),
        "rss_mib": rss,
    }
    for t in targets:
        result[t.name] = summarise(rows, t.name, groups[t.name])
    if pipecat_meta:
        result["pipecat"]["setup"] = pipecat_meta
    result["rows"] = rows

    print()
    for t in targets:
        s = result[t.name]
        print(f"{t.name:8s} end of caller speech -> first reply media: p50 {s['p50_s']:.2f} s, p90 {s['p90_s']:.2f} s, "
              f"p95 {s['p95_s']:.2f} s (min {s['min_s']}, max {s['max_s']}, n={s['n'] - s['missing']}/{s['n']}); "
              f"first audible p50 {s['audible_p50_s']:.2f} s")
        print("         stages p50 (s after the true end of speech): "
              + ", ".join(f"{k} {v:.2f}" for k, v in s["stages_p50_s"].items()))
        print(f"         CPU from the first word to the first reply frame p50 {s['cpu_s_to_reply_p50']:.2f} s; "
              f"greeting p50 {s['greeting_p50_ms']} ms; CPU while answering {s['busy_cores_p50']:.2f} cores, "
              f"while idle (other stack's calls) p50 {s['idle_cores_during_other_p50']:.3f}, "
              f"max {s['idle_cores_during_other_max']:.3f} cores")
    for when in ("ready", "after_warmup", "end"):
        print(f"RSS {when}: " + ", ".join(f"{k} {v.get('rss')} MiB (peak {v.get('peak')})"
                                          for k, v in rss.get(when, {}).items()))
    print(f"machine: {info.get('cpu_model')}, {info.get('cpu_count')} cores; load {info['loadavg_before']} -> "
          f"{info['loadavg_after']}; other processes p50 {result['others_cores_p50']:.2f} cores, "
          f"max {result['others_cores_max']:.2f}")
    if result["others_cores_p50"] > 0.25 * (info.get("cpu_count") or 2):
        print(f"WARNING: other processes kept {result['others_cores_p50']:.2f} of {info.get('cpu_count')} cores busy "
              "during half the calls: every figure above is inflated; rerun on a quieter machine")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
