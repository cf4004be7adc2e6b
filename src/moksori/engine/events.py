"""One timeline per session: every event has a `type` and `t` (seconds on the session clock).

Timeline events (turns, transcripts, response lifecycle, stage timings, errors) are what the
metrics, the web UI's latency bar, `converse --timeline` and the benchmarks read. Stream
events (audio chunks, text deltas) travel the same bus but are not written to timelines.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

# Stream events: high-rate data, not part of the written timeline.
STREAM_TYPES = frozenset({"agent.audio", "agent.text_delta", "user.transcript_delta"})


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    t: float
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def is_timeline(self) -> bool:
        return self.type not in STREAM_TYPES

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "t": round(self.t, 4)}
        for k, v in self.data.items():
            if k == "frame":
                continue
            out[k] = v
        return out

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


Listener = Callable[[Event], None]


class EventBus:
    """Fan-out of session events to listeners (sync callbacks) and subscriber queues."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._queues: list[asyncio.Queue[Event | None]] = []
        self.history: list[Event] = []  # timeline events only
        self.keep_history = True

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
        if ev.is_timeline and self.keep_history:
            self.history.append(ev)
        for fn in list(self._listeners):
            fn(ev)
        for q in list(self._queues):
            q.put_nowait(ev)

    def close(self) -> None:
        for q in list(self._queues):
            q.put_nowait(None)


class TimelineWriter:
    """Writes timeline events as JSON lines."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def __call__(self, ev: Event) -> None:
        if ev.is_timeline:
            self.fh.write(json.dumps(ev.to_json(), ensure_ascii=False) + "\n")
