"""Fan-out of a session's events (`moksori.engine.events`) to listeners and subscriber queues."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import IO

from moksori.engine.events import Event

Listener = Callable[[Event], None]

HISTORY = 512  # timeline events kept for late readers (the telephony debug view): ~25 turns


class EventBus:
    """Listeners are sync callbacks, called in publish order; `history` keeps the last
    `history_size` timeline events (bounded: a call may last hours)."""

    def __init__(self, *, history_size: int = HISTORY) -> None:
        self._listeners: list[Listener] = []
        self._queues: list[asyncio.Queue[Event | None]] = []
        self.history: deque[Event] = deque(maxlen=history_size)

    def listen(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def subscribe(self, maxsize: int = 0) -> asyncio.Queue[Event | None]:
        q: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._queues.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event | None]) -> None:
        if q in self._queues:
            self._queues.remove(q)

    def publish(self, ev: Event) -> None:
        if ev.timeline:
            self.history.append(ev)
        for fn in list(self._listeners):
            fn(ev)
        for q in list(self._queues):
            q.put_nowait(ev)

    def close(self) -> None:
        for q in list(self._queues):
            q.put_nowait(None)


class TimelineWriter:
    """Writes timeline events as JSON lines (`converse --timeline`)."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def __call__(self, ev: Event) -> None:
        if ev.timeline:
            self.fh.write(json.dumps(ev.to_json(), ensure_ascii=False) + "\n")
