"""Run every benchmark in turn, save the figures in benchmarks/results/, and print one table of
the figures a reader needs (what `make bench` does).

Each benchmark is its own script, run in its own process so their models and servers never
overlap on the 2 cores. The telephony one also runs Pipecat 1.14 on the same models, calls
interleaved with Moksori's (its virtualenv: `bash benchmarks/pipecat/setup-venv.sh`, which
`make bench` runs first). Takes about 40 minutes.

    python benchmarks/run_all.py                     # everything, then the table
    python benchmarks/run_all.py telephony_latency   # only these, then the table
    python benchmarks/run_all.py --table             # only the table, from the saved results
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"

RUNS = [
    ("models", ["models.py"]),
    ("engine_latency", ["engine_latency.py", "--reps", "3"]),
    ("barge_in", ["barge_in.py", "--reps", "2"]),
    ("server_latency", ["server_latency.py", "--reps", "2"]),
    ("telephony_latency", ["telephony_latency.py", "--reps", "1", "--pipecat"]),
    ("concurrency_40ms", ["concurrency.py", "--chunk-ms", "40", "--levels", "100,150,200,250,300", "--window", "8"]),
    ("concurrency_100ms", ["concurrency.py", "--chunk-ms", "100", "--levels", "200,300,400,500,600", "--window", "8"]),
    ("webrtc", ["webrtc.py", "--reps", "2"]),
    ("store_throughput", ["store_throughput.py"]),
    ("cluster", ["cluster.py", "--reps", "2"]),
    ("load", ["load.py", "--levels", "1,2,4,8,12", "--window", "60"]),
    ("realtime_brain", ["realtime_brain.py", "--reps", "3", "--modes", "direct,through"]),
]

ENGINE_STAGES = (("stt_done", "STT done"), ("eot_done", "end-of-turn model"), ("turn_end", "turn ended"),
                 ("llm_first_token", "LLM first token"), ("tts_first_audio", "TTS first audio"))
PHONE_STAGES = (("vad_stopped", "VAD stop"), ("stt_done", "STT done"), ("transcript", "STT done"),
                ("turn_end", "turn ended"), ("llm_first_token", "LLM first token"),
                ("tts_first_audio", "TTS first audio"))


def load(name: str, results: Path = OUT) -> dict | None:
    try:
        return json.loads((results / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def _s(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.2f} s"  # v != v: NaN


def table(results: Path = OUT) -> str:
    """The headline figures from the saved results, as one plain-text table."""
    rows: list[tuple[str, str, str, str, str, str, str]] = []
    notes: list[str] = []
    eng = load("engine_latency", results)
    if eng:
        s = eng["summary"]
        rows.append(("engine (engine_latency)", "speech_stopped -> audio_started", _s(s["p50_ms"] / 1000),
                     _s(s["p95_ms"] / 1000), "", "", str(s["samples"])))
        st = s.get("stages_p50_ms", {})
        notes.append("engine stages p50, after speech_stopped: " + ", ".join(
            f"{label} {st[k] / 1000:.2f} s" for k, label in ENGINE_STAGES if k in st))
    srv = load("server_latency", results)
    if srv:
        s = srv["summary"]
        rows.append(("Realtime WebSocket (server_latency)", "true end of speech -> first audio delta",
                     _s(s["p50_ms"] / 1000), _s(s["p95_ms"] / 1000), "", "", str(s["n"])))
    tel = load("telephony_latency", results)
    if tel:
        m = tel.get("moksori") or {"p50_s": tel.get("p50_s"), "p95_s": tel.get("p95_s"), "n": tel.get("n"),
                                   "missing": 0}  # (an older, Moksori-only file)
        p = tel.get("pipecat")
        n = f"{m['n'] - m.get('missing', 0)}" + (f" + {p['n'] - p['missing']}" if p else "")
        rows.append(("Twilio stream (telephony_latency)", "true end of speech -> first media frame",
                     _s(m["p50_s"]), _s(m["p95_s"]), _s(p["p50_s"]) if p else "-", _s(p["p95_s"]) if p else "-", n))
        for name, side in (("Moksori", m), ("Pipecat", p)):
            st = (side or {}).get("stages_p50_s")
            if st:
                seen = set()
                parts = []
                for k, label in PHONE_STAGES:
                    if k in st and label not in seen:
                        seen.add(label)
                        parts.append(f"{label} {st[k]:.2f} s")
                notes.append(f"phone stages p50 ({name}), after the true end of speech: " + ", ".join(parts))
        if p:
            mach = tel.get("machine", {})
            notes.append(f"Twilio calls interleaved in one run on {tel.get('date', '?')}, {mach.get('cpu_model', '?')} "
                         f"({mach.get('cpu_count', '?')} cores), other processes p50 {tel.get('others_cores_p50', 0):.2f} "
                         f"cores; Pipecat {p.get('setup', {}).get('version', '?')}, p90 Moksori {_s(m.get('p90_s'))}, "
                         f"Pipecat {_s(p.get('p90_s'))}")
            if "cpu_s_to_reply_p50" in m and "cpu_s_to_reply_p50" in p:
                notes.append(f"CPU used from the caller's first word to the first reply frame, p50: Moksori "
                             f"{m['cpu_s_to_reply_p50']:.2f} s, Pipecat (bot + llama.cpp server) {p['cpu_s_to_reply_p50']:.2f} s")
    if not rows:
        return "no benchmark results in " + str(results)
    head = ("path", "measured from -> to", "Moksori p50", "p95", "Pipecat p50", "p95", "n")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    out = ["End of speech -> first reply audio", line,
           "  ".join(h.ljust(w) for h, w in zip(head, widths)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    out += [line, *notes, "(Pipecat has no Realtime WebSocket API: it is compared over the Twilio stream, "
                           "same models, same caller.)"]
    return "\n".join(out)


def main() -> int:
    argv = sys.argv[1:]
    if "--table" in argv:
        print(table())
        return 0
    OUT.mkdir(exist_ok=True)
    only = set(argv)
    failed = []
    for name, cmd in RUNS:
        if only and name not in only:
            continue
        print(f"\n=== {name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:], "--json", str(OUT / f"{name}.json")])
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    print()
    print(table())
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
