"""Run every benchmark in turn and save the figures in benchmarks/results/ (what `make bench` does).

Each benchmark is its own script, run in its own process so their models and servers never
overlap on the 2 cores. Takes about 20 minutes.
"""

from __future__ import annotations

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
    ("telephony_latency", ["telephony_latency.py", "--reps", "2"]),
    ("concurrency_40ms", ["concurrency.py", "--chunk-ms", "40", "--levels", "100,150,200,250,300", "--window", "8"]),
    ("concurrency_100ms", ["concurrency.py", "--chunk-ms", "100", "--levels", "200,300,400,500,600", "--window", "8"]),
    ("webrtc", ["webrtc.py", "--reps", "2"]),
    ("store_throughput", ["store_throughput.py"]),
    ("cluster", ["cluster.py", "--reps", "2"]),
]


def main() -> int:
    OUT.mkdir(exist_ok=True)
    only = set(sys.argv[1:])
    failed = []
    for name, argv in RUNS:
        if only and name not in only:
            continue
        print(f"\n=== {name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / argv[0]), *argv[1:], "--json", str(OUT / f"{name}.json")])
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
