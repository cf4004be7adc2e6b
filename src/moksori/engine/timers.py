"""The session's two timers: the end-of-turn deadline and the idle timeout.

Both run on the session clock (virtual time in tests) and only ever call back into the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from moksori.engine.clock import Clock
from moksori.engine.turns import Action, TurnTaker

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class TurnDeadline:
    """When audio stops arriving mid-pause, a timer still ends the turn."""

    def __init__(self, clock: Clock, taker: TurnTaker, spawn: Spawn, on_actions: Callable[[list[Action]], None]) -> None:
        self._clock = clock
        self._taker = taker
        self._spawn = spawn
        self._on_actions = on_actions
        self._task: asyncio.Task[Any] | None = None

    def arm(self) -> None:
        if self._taker.next_deadline(self._clock.now()) is None:
            return
        if self._task and not self._task.done():
            return
        self._task = self._spawn(self._wait(), "turn-deadline")

    async def _wait(self) -> None:
        clock, taker = self._clock, self._taker
        while True:
            d = taker.next_deadline(clock.now())
            if d is None:
                return
            await clock.sleep(d - clock.now() + 0.001)
            self._on_actions(taker.check(clock.now()))


class IdleTimer:
    """`idle_timeout_ms` (OpenAI `server_vad`): fires `after_s` after the agent's audio ended
    unless something (user speech, a new reply) disarms it first."""

    def __init__(self, clock: Clock, spawn: Spawn, on_timeout: Callable[[float], None]) -> None:
        self._clock = clock
        self._spawn = spawn
        self._on_timeout = on_timeout
        self._task: asyncio.Task[Any] | None = None

    @property
    def armed(self) -> bool:
        return self._task is not None and not self._task.done()

    def arm(self, since: float, after_s: float) -> None:
        self.disarm()
        self._task = self._spawn(self._wait(since, after_s), "idle-timeout")

    def disarm(self) -> None:
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    async def _wait(self, since: float, after_s: float) -> None:
        await self._clock.sleep(since + after_s - self._clock.now())
        self._task = None
        self._on_timeout(since)
