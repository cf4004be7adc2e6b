"""Run every benchmark in turn, save the figures in benchmarks/results/, and print one table of
the figures a reader needs (what `make bench` does).

Each benchmark is its own script, run in its own process so their models and servers never
overlap on the 2 cores. The telephony one also runs Pipecat 1.14 on the same models, calls
interleaved with Moksori's (its virtualenv: `bash benchmarks/pipecat/setup-venv.sh`, which
`make bench` runs first). Takes about 40 minutes.

    python benchmarks/run_all.py                     # everything, then the table
    python benchmarks/run_all.py telephony_latency   # only these, then the table
    python benchmarks/run_all.py --quick             # the three end-of-speech paths, 1 rep, Moksori only
    python benchmarks/run_all.py --table [--quick]   # only the table (and summary.md), from the saved results

The table (benchmarks/summary_table.py) is also written to results/summary.md (results/quick/
for `--quick`), with the machine (CPU model, AVX-512/AVX2, cores) and the load average at the
start and the end of the run, saved in results/run_all.json.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import summary_table

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

# `--quick`: only the three end-of-speech paths, the fewest reps, Moksori alone on the phone path;
# its results go to results/quick/ so the full run's files stay as they are
QUICK_RUNS = [
    ("engine_latency", ["engine_latency.py", "--reps", "1"]),
    ("server_latency", ["server_latency.py", "--reps", "1"]),
    ("telephony_latency", ["telephony_latency.py", "--reps", "1"]),
]
TABLE_FROM = ("engine_latency", "server_latency", "telephony_latency")


def load(name: str, results: Path = OUT) -> dict | None:
    try:
        return json.loads((results / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def report(results: Path = OUT) -> str:
    """The table from the saved results and the saved description of the run that made them."""
    run = load("run_all", results) or {"machine": summary_table.machine(), "load_start": None, "load_end": None}
    return summary_table.table({name: load(name, results) for name in TABLE_FROM}, run)


def main() -> int:
    argv = sys.argv[1:]
    quick = "--quick" in argv
    out = OUT / "quick" if quick else OUT
    if "--table" in argv:
        text = report(out)
        if out.is_dir():
            (out / "summary.md").write_text(text)
        print(text)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    only = {a for a in argv if not a.startswith("--")}
    unknown = only - {name for name, _ in (QUICK_RUNS if quick else RUNS)}
    if unknown:
        print(f"no such benchmark{' with --quick' if quick else ''}: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    run = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "quick": quick,
           "machine": summary_table.machine(), "load_start": summary_table.loadavg()}
    failed = []
    t_run = time.perf_counter()
    for name, cmd in QUICK_RUNS if quick else RUNS:
        if only and name not in only:
            continue
        print(f"\n=== {name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:], "--json", str(out / f"{name}.json")])
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    run["load_end"] = summary_table.loadavg()
    run["seconds"] = round(time.perf_counter() - t_run)
    if only:
        run["benchmarks"] = sorted(only)  # a partial run: the other results are from earlier runs
    (out / "run_all.json").write_text(json.dumps(run, indent=2))
    text = report(out)
    (out / "summary.md").write_text(text)
    print()
    print(text)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
