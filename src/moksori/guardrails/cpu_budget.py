"""A budget of the calling thread's CPU time, spent through `regex`'s `timeout=`.

What `regex` measures: its C code reads `clock()` when a match starts and again every 256 steps
of the matcher, and stops with `TimeoutError` once the difference reaches `timeout` seconds. On
Linux `clock()` is the CPU time of the whole process (`time.process_time()`), every thread
together. With two other threads busy (2 cores, `tests/test_guardrail_time.py`) a 40 ms limit ran
out after 9-22 ms of the check's own work: a check that was in time on a quiet server failed on
a busy one.

What a check needs bounded is how long it holds the thread it runs on (the event loop), and
only its own work can do that: so the budget here is this thread's CPU time
(`time.thread_time()`). Wall time is not the measure: other threads' work slows a check down
without making it more expensive. `regex` cannot be given that clock, so `run` converts:

* the first try passes the thread's allotment as it is (process time >= thread time: it can only
  run out early, never late);
* a try that ran out early (this thread spent under `OWN_SHARE` of its allotment: the rest of
  the process time went to other threads) is run again from the start with the whole
  allotment, scaled by the ratio of process to thread time seen in the tries so far (at most
  `MAX_RATE`), up to `TRIES` tries and `TOTAL_SHARE` allotments of this thread's time in all.

The conversion is an estimate (how the scheduler shares the cores between the threads moves
from one millisecond to the next): a pattern that really is slow spends its allotment of this
thread's time without load, as before, and under load a little more, up to `TOTAL_SHARE` of it
unless the other threads stop in the middle of a try (measured as above: 47-67 ms for 40).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

OWN_SHARE = 0.75  # a try that spent this much of its allotment of this thread's time really ran out
TRIES = 3  # a try that ran out early is run again, at most this many tries in all
TOTAL_SHARE = 2.0  # ... and at most this many allotments of this thread's time in all
MAX_RATE = 6.0  # process CPU time per second of this thread's assumed at most (five other threads busy)


class ThreadBudget:
    """`budget_s` of the calling thread's CPU time from now, shared by several `run`s, each of
    which gets at least `floor_s`."""

    def __init__(self, budget_s: float, floor_s: float = 0.0) -> None:
        self.deadline = time.thread_time() + budget_s
        self.floor_s = floor_s

    def left(self) -> float:
        return max(self.deadline - time.thread_time(), self.floor_s)

    def run(self, call: Callable[[float], T]) -> T:
        """`call(timeout)` with what is left of the budget (at least the floor) as `regex` counts
        it, tried again when other threads' work made it run out early. Raises `TimeoutError`."""
        allotment = self.left()
        own = process = 0.0  # what the tries so far spent: this thread's CPU time, the process's
        for attempt in range(1, TRIES + 1):
            share = min(allotment, TOTAL_SHARE * allotment - own)
            rate = 1.0 if attempt == 1 else min(MAX_RATE, max(1.0, process / max(own, 1e-6)))
            thread0, process0 = time.thread_time(), time.process_time()
            try:
                return call(share * rate)
            except TimeoutError:
                spent = time.thread_time() - thread0
                own, process = own + spent, process + time.process_time() - process0
                ran_out = spent >= OWN_SHARE * share  # (not the other threads' doing)
                if ran_out or attempt == TRIES or TOTAL_SHARE * allotment - own < OWN_SHARE * allotment:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
