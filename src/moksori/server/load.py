"""How busy the server is, and whether it can take one more session (admission control).

Three signals, each cheap to read:

* **event-loop lag**: a timer that should fire every `LoopLag.interval_s` records how late it
  fires. Every socket, every session's VAD and every event goes through the one loop: when it
  lags, everyone's audio is late, so new sessions are refused before it gets that far;
* **model queues**: each model's executor (`providers/threads.py`) knows its queue and recent
  service time, hence roughly how long a new request would wait;
* **counts**: open sessions (overall, per API key), open sockets against the file limit.

`Admission.check()` answers `None` (come in) or a `Refusal` (HTTP 503 with `Retry-After`, a
code distinct from auth failures). `/ready` reports the same decision for load balancers;
`draining` (set on shutdown, or by the scale-out code) refuses every new session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from dataclasses import dataclass
from typing import Any

from moksori.providers import threads
from moksori.server.sockets import fd_limit


class LoopLag:
    """Samples how late the event loop runs a timer: the time every callback waits its turn."""

    def __init__(self, interval_s: float = 0.05, window_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self.samples: deque[tuple[float, float]] = deque(maxlen=int(window_s / interval_s) + 1)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="moksori-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = loop.time()
            self.samples.append((now, max(0.0, now - expected)))

    def quantile(self, q: float, window_s: float = 5.0) -> float:
        """Lag quantile (seconds) over the last `window_s`; 0 without samples."""
        if not self.samples:
            return 0.0
        cutoff = self.samples[-1][0] - window_s
        values = sorted(lag for t, lag in self.samples if t >= cutoff)
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(q * len(values)))]

    def pending(self) -> float:
        """Lag of the sample that is due now: catches a loop stalled right now, before the
        stalled timer has fired and been recorded."""
        if not self.samples or self._task is None:
            return 0.0
        loop = asyncio.get_running_loop()
        return max(0.0, loop.time() - self.samples[-1][0] - self.interval_s)


@dataclass(frozen=True)
class Refusal:
    code: str  # too_many_sessions | server_busy | draining
    message: str
    retry_after_s: int = 5


# The one refusal of a draining server (local admission, and the cluster's: `cluster_routes.admit`)
DRAINING = Refusal("draining", "the server is draining: it takes no new sessions", 10)


@dataclass
class AdmissionLimits:
    max_sessions: int = 500
    max_sessions_per_key: int = 16  # only applies when API keys are configured
    shed_loop_lag_ms: float = 150.0  # p95 over the last 5 s
    shed_queue_wait_s: float = 10.0  # expected wait in any model queue
    fd_margin: float = 0.9  # refuse sessions past this share of the file limit


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - not on Linux
        return 0


class Admission:
    def __init__(self, limits: AdmissionLimits, lag: LoopLag) -> None:
        self.limits = limits
        self.lag = lag
        self.draining = False
        self.refused: dict[str, int] = {}

    def busy_reason(self) -> str | None:
        """Why the server is too busy for more work right now, or None."""
        lim = self.limits
        lag = max(self.lag.quantile(0.95), self.lag.pending())
        if lag * 1000 > lim.shed_loop_lag_ms:
            return f"event loop lag {lag * 1000:.0f} ms (limit {lim.shed_loop_lag_ms:g} ms)"
        for ex in threads.executors():
            if ex is threads.misc_executor():
                continue  # uploads' decoding: it delays no live session
            wait = ex.expected_wait_s()
            if wait > lim.shed_queue_wait_s:
                return f"{ex.name} queue: about {wait:.0f} s of work waiting (limit {lim.shed_queue_wait_s:g} s)"
        fds, limit = open_fds(), fd_limit()
        if fds > lim.fd_margin * limit:
            return f"{fds} of {limit} file descriptors in use"
        return None

    def check(self, sessions: int, sessions_of_key: int | None = None) -> Refusal | None:
        """Can one more session start? `sessions_of_key`: the caller's key's sessions (None
        when the server has no keys)."""
        lim = self.limits
        refusal: Refusal | None = None
        if self.draining:
            refusal = DRAINING
        elif sessions >= lim.max_sessions:
            refusal = Refusal("too_many_sessions", f"the server is at its limit of {lim.max_sessions} sessions")
        elif sessions_of_key is not None and sessions_of_key >= lim.max_sessions_per_key:
            refusal = Refusal("too_many_sessions",
                              f"this API key has {sessions_of_key} open sessions (limit {lim.max_sessions_per_key}, "
                              "MOKSORI_SERVER_MAX_SESSIONS_PER_KEY)")
        else:
            why = self.busy_reason()
            if why is not None:
                refusal = Refusal("server_busy", f"the server is too busy for another session: {why}")
        return None if refusal is None else self.counted(refusal)

    def counted(self, refusal: Refusal) -> Refusal:
        """`refusal`, counted in `refused` (/metrics): for refusals decided outside `check` too."""
        self.refused[refusal.code] = self.refused.get(refusal.code, 0) + 1
        return refusal

    def status(self, sessions: int) -> dict[str, Any]:
        why = "draining" if self.draining else self.busy_reason()
        if why is None and sessions >= self.limits.max_sessions:
            why = "at the session limit"
        return {
            "status": "ready" if why is None else ("draining" if self.draining else "busy"),
            "reason": why,
            "sessions": sessions,
            "loop_lag_p95_ms": round(1000 * self.lag.quantile(0.95), 1),
            "loop_lag_p99_ms": round(1000 * self.lag.quantile(0.99), 1),
            "queues": {ex.name: {"queued": ex.queued, "running": ex.running,
                                 "expected_wait_s": round(ex.expected_wait_s(), 2)}
                       for ex in threads.executors()},
        }
