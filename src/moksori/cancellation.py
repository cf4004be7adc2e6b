"""Cancellation that always arrives, for the loops that reconnect, retry or wait on a timer.

Two common asyncio idioms lose a cancellation, and a loop around them then runs on after its
task was cancelled (a realtime upstream client kept reconnecting that way, and the test run's
teardown waited 11 minutes for it):

* Python 3.11's `asyncio.wait_for` returns the result when the cancellation lands in the same
  loop turn as that result (fixed in 3.12, where it is built on `asyncio.timeout`).
* `task.cancel()` then `with suppress(CancelledError): await task` also swallows a
  cancellation of the *caller* that arrives while it waits for the child.

Here instead:

* `wait_for(aw, timeout)`: `asyncio.wait_for` without that hole (`asyncio.timeout` inside);
  `TimeoutError` after `timeout`, and the awaitable is cancelled.
* `stop(*tasks)`: cancel child tasks and wait until they have ended; the caller's own
  cancellation propagates, the children's does not.
* `raise_if_cancelled()`: at the top of each turn of a retry or reconnect loop. If this task
  was asked to stop and something below (a library) swallowed the request, stop now.
* `close_stream(stream)`: close an async generator (an LLM's reply stream) from the task that
  iterated it, finished or not, in a `finally` around its loop: left to the garbage collector,
  each generator of a nest gets its own `aclose()` task, and those that run while an outer one
  is closing them fail with "asynchronous generator is already running", never retrieved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

__all__ = ["close_stream", "raise_if_cancelled", "stop", "wait_for"]

log = logging.getLogger("moksori.cancellation")

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """`await aw`, or `TimeoutError` after `timeout` seconds (None: no limit)."""
    async with asyncio.timeout(timeout):
        return await aw


async def stop(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel `tasks` (None is skipped) and wait until every one has ended. Their exceptions
    are not raised here (an unexpected one is logged); a cancellation of the caller is."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    pending = [t for t in live if not t.done()]
    if pending:
        await asyncio.wait(pending)
    for t in live:
        if not t.cancelled() and t.exception() is not None:
            log.debug("a stopped task had failed: %r", t.exception())


def raise_if_cancelled() -> None:
    """Raise `CancelledError` if the current task has a cancellation request pending, i.e.
    one that was delivered and swallowed (`Task.cancelling()`, which `asyncio.timeout` and
    `TaskGroup` keep right by `uncancel()`ing their own)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError("cancelled earlier (the request was swallowed below)")


async def close_stream(stream: AsyncIterator[Any]) -> None:
    """Close `stream` (its generator's cleanup stops the model), ignoring what closing raises:
    the reply is being cut short or is over anyway."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - see above
            pass
