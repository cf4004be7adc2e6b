"""The session clock. Turn-taking never reads wall time directly; it is handed times.

`LoopClock` reads the running event loop's clock, so under the virtual-time loop in
`moksori.testing.virtual_time` a 30 s conversation runs in milliseconds, unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the session started."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    def __init__(self) -> None:
        self._t0 = asyncio.get_running_loop().time()

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self._t0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
