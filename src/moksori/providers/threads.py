"""Run blocking model code off the event loop, in one shared pool.

Models release the GIL while they compute, so a small pool is enough; each model also holds
its own lock because llama.cpp and CTranslate2 handles are not re-entrant. Everything goes
through `loop.run_in_executor`, which is what the virtual-time loop in `moksori.testing`
counts to know when real work is still in flight.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def model_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="moksori-model")
        return _pool


async def run_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(model_pool(), functools.partial(fn, *args, **kwargs))


_END = object()


async def iterate_blocking(make: Callable[[threading.Event], Iterator[T]], *,
                           max_ahead: int | None = None) -> AsyncIterator[T]:
    """Drive a blocking generator in the pool and yield its items on the loop.

    `make(stop)` builds the generator; it should check `stop.is_set()` between steps. When the
    consumer stops early (break, cancel, aclose), `stop` is set and the generator is closed in
    its thread at the next step, so a cancelled reply stops burning CPU within one token.

    With `max_ahead`, the thread runs at most that many items ahead of the consumer and then
    waits: a consumer that stops pulling (e.g. while the first clause is being synthesised)
    pauses the model and frees the CPU for whatever is on the critical path.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()
    credits = threading.Semaphore(max_ahead) if max_ahead else None

    def wait_credit() -> bool:
        while not credits.acquire(timeout=0.05):
            if stop.is_set():
                return False
        return True

    def post(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # loop closed while we were computing
            stop.set()

    def worker() -> None:
        gen = None
        try:
            gen = make(stop)
            for item in gen:
                if stop.is_set():
                    break
                if credits is not None and not wait_credit():
                    break
                post("item", item)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, re-raised there
            post("error", e)
            return
        finally:
            if gen is not None and hasattr(gen, "close"):
                try:
                    gen.close()
                except Exception:  # noqa: BLE001
                    pass
        post("end", _END)

    fut = loop.run_in_executor(model_pool(), worker)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                if credits is not None:
                    credits.release()
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        # Let the thread finish its current step; do not block the loop on it.
        fut.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
