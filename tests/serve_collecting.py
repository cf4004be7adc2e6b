"""`moksori serve` with a full garbage collection every 0.2 s on the server's event loop.

A busy server's collector reaches the oldest generation now and then (its thresholds are high:
`server.app.tune_gc`); what it frees at that moment may set off work of its own (an unfinished
async generator's `aclose()`). This makes that prompt, for tests: run it as
`python tests/serve_collecting.py serve --port ...` instead of `python -m moksori serve ...`.
"""

from __future__ import annotations

import asyncio
import gc
import runpy
import sys

import moksori.server.app as server_app

EVERY_S = 0.2
_tune_gc = server_app.tune_gc


def tune_gc() -> None:
    _tune_gc()
    loop = asyncio.get_running_loop()

    def collect() -> None:
        gc.collect()
        loop.call_later(EVERY_S, collect)

    loop.call_later(EVERY_S, collect)
    print(f"serve_collecting: a full collection every {EVERY_S:g} s", flush=True)


if __name__ == "__main__":
    server_app.tune_gc = tune_gc  # looked up when the server starts (its lifespan)
    sys.argv = ["moksori", *sys.argv[1:]]
    runpy.run_module("moksori", run_name="__main__", alter_sys=True)
