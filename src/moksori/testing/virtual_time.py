"""An asyncio event loop whose clock jumps to the next timer when nothing else can run.

A 30-second conversation with real-time pacing runs in milliseconds, and never flakes.
Real work in worker threads (model inference through `run_in_executor`) is waited for
without moving the clock: in virtual time a model takes zero seconds, and causality holds
(nothing scheduled "after" the model's result can run before it).

    run_virtual(main())              # like asyncio.run, on virtual time
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple, Unpack

T = TypeVar("T")
_Ts = TypeVarTuple("_Ts")


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self, loop: "VirtualTimeLoop") -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return self._real.select(0)
        if self._loop.busy_jobs:
            # Real work is running in a thread: wait for it (its completion wakes us).
            return self._real.select(None if timeout is None else max(timeout, 0.05))
        ready = self._real.select(0)
        if ready or timeout is None:
            return ready if ready or timeout is not None else self._real.select(None)
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__(selector=_VirtualSelector(self))
        self._vtime = 0.0
        self.busy_jobs = 0

    def time(self) -> float:
        return self._vtime

    def advance(self, seconds: float) -> None:
        self._vtime += max(0.0, seconds)

    def run_in_executor(self, executor: Any, func: Callable[[Unpack[_Ts]], T],
                        *args: Unpack[_Ts]) -> asyncio.Future[T]:
        fut = super().run_in_executor(executor, func, *args)
        self.busy_jobs += 1

        def done(_f: asyncio.Future[T]) -> None:
            self.busy_jobs -= 1

        fut.add_done_callback(done)
        return fut


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
