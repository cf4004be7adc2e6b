"""The outbound path's own cost: `moksori.transport.Outbox` against the pump it replaced.

Baseline in the same run: the Realtime connection's old pump (an `asyncio.Queue` and a task
awaiting `get()`), and the phone call's old one (a deque and an `asyncio.Event`). Two figures
per variant, on a send that only yields (no socket: this is the queue's cost, not the network's):

* burst: microseconds per event to send 20 000 events queued at once (a reply's worth of deltas);
* wake: microseconds from `put` on an idle queue to the send starting (a lone event, e.g. the
  first audio delta after a pause), median and p95 of 2 000.

    python benchmarks/transport_outbox.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from moksori.transport import Outbox

BURST = 20_000
WAKES = 2_000


class QueuePump:
    """The old `RealtimeConnection` pump."""

    def __init__(self, send: Callable[[Any], Awaitable[None]]) -> None:
        self._send = send
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    def put(self, item: Any) -> None:
        self._queue.put_nowait(item)

    async def _pump(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            await self._send(item)

    async def close(self) -> None:
        self._queue.put_nowait(None)
        await self.task


class DequePump:
    """The old `PhoneCall` pump."""

    def __init__(self, send: Callable[[Any], Awaitable[None]]) -> None:
        self._send = send
        self._out: deque[Any] = deque()
        self._ready = asyncio.Event()
        self.task = asyncio.create_task(self._pump())

    def put(self, item: Any) -> None:
        self._out.append(item)
        self._ready.set()

    async def _pump(self) -> None:
        while True:
            while not self._out:
                self._ready.clear()
                await self._ready.wait()
            item = self._out.popleft()
            if item is None:
                return
            await self._send(item)

    async def close(self) -> None:
        self.put(None)
        await self.task


class OutboxAdapter:
    def __init__(self, send: Callable[[Any], Awaitable[None]]) -> None:
        self.box: Outbox[Any] = Outbox(send, name="bench", limit=BURST + 1)

    def put(self, item: Any) -> None:
        self.box.put(item)

    async def close(self) -> None:
        await self.box.close(drain_s=60)


VARIANTS: dict[str, Callable[[Callable[[Any], Awaitable[None]]], Any]] = {
    "old realtime pump (asyncio.Queue)": QueuePump, "old phone pump (deque + Event)": DequePump,
    "Outbox": OutboxAdapter,
}


async def burst(make: Callable[..., Any]) -> float:
    done = asyncio.Event()
    count = 0

    async def send(item: Any) -> None:
        nonlocal count
        await asyncio.sleep(0)
        count += 1
        if count == BURST:
            done.set()

    pump = make(send)
    t0 = time.perf_counter()
    for i in range(BURST):
        pump.put(i)
    await done.wait()
    dt = time.perf_counter() - t0
    await pump.close()
    return 1e6 * dt / BURST


async def wake(make: Callable[..., Any]) -> list[float]:
    started: list[float] = []
    got = asyncio.Event()

    async def send(item: float) -> None:
        started.append(1e6 * (time.perf_counter() - item))
        got.set()

    pump = make(send)
    for _ in range(WAKES):
        await asyncio.sleep(0)  # idle
        got.clear()
        pump.put(time.perf_counter())
        await got.wait()
    await pump.close()
    return started


async def main(rounds: int) -> None:
    results: dict[str, dict[str, list[float]]] = {name: {"burst": [], "wake": []} for name in VARIANTS}
    for _ in range(rounds):  # interleaved, so load on the machine hits every variant alike
        for name, make in VARIANTS.items():
            results[name]["burst"].append(await burst(make))
            results[name]["wake"] += await wake(make)
    print(f"{'variant':36} {'burst us/event':>15} {'wake p50 us':>12} {'wake p95 us':>12}")
    for name, r in results.items():
        w = sorted(r["wake"])
        print(f"{name:36} {statistics.median(r['burst']):15.2f} {statistics.median(w):12.1f} "
              f"{w[int(0.95 * (len(w) - 1))]:12.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(ap.parse_args().rounds))
