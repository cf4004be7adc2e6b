"""The two halves of every peer socket, written once: what comes in, and what goes out.

* `receive_loop(ws, handle)` reads a WebSocket until the peer disconnects or the socket
  breaks, handing each message (text or bytes) to `handle` in order, and says which it was.
  It yields to the loop after each message (so does the inbox's task): a peer sending faster
  than real time is handled one message a loop turn, never its whole backlog in one go.
* `Inbox(handle, limit=)` is one peer's bounded inbound queue and the one task that handles it,
  in arrival order, so a slow handler never stops the socket being read. A reader that can
  wait (`receive_loop`) puts with back-pressure: a full inbox pauses it. A callback that cannot
  (a WebRTC data channel) offers: a full inbox refuses the message and reports the overflow once
  until the handler catches up.
* `Outbox(send)` is one peer's outbound queue and the one task that writes it: in order, with
  an urgent path to the front (a barge-in's clear must never wait behind queued audio), and a
  way to drop what is queued. It stops, and says why, when the socket fails, when the peer
  stops reading (more than `limit` messages unsent), or when it is closed (after draining).

Used by the Realtime WebSocket route (`server/app.py`, `server/realtime_conn.py`), the phone
streams (`server/telephony_routes.py`, `telephony/call.py`) and WebRTC calls and their sidebands
(`server/webrtc/`). A phone stream has no inbox: its messages are handled in the read loop
itself (decoding a 20 ms media message never waits on anything), which is the same back-pressure
with no queue at all. No protocol and no web framework here (it sits below `server/` and
`telephony/`): items are whatever the owner's `send` writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, TypeVar

__all__ = ["Inbox", "Message", "Outbox", "ReceiveEnd", "StopReason", "receive_loop"]

log = logging.getLogger("moksori.transport")

T = TypeVar("T")
Message = str | bytes
StopReason = Literal["closed", "send_failed", "not_reading"]
ReceiveEnd = Literal["disconnected", "socket_error"]


async def receive_loop(ws: Any, handle: Callable[[Message], Awaitable[None]]) -> ReceiveEnd:
    """Hand every message the peer sends to `handle` until it disconnects ("disconnected") or
    the socket breaks ("socket_error"). `ws` is a Starlette WebSocket (anything with an ASGI
    `receive()`). An exception from `handle` is the caller's bug and propagates."""
    while True:
        try:
            msg = await ws.receive()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken socket ends the session, never the server
            log.debug("receive failed: %s", type(e).__name__)
            return "socket_error"
        if msg["type"] == "websocket.disconnect":
            return "disconnected"
        text = msg.get("text")
        await handle(text if text is not None else (msg.get("bytes") or b""))
        # `receive()` does not suspend while messages are queued (one read holds hundreds of
        # 20 ms phone frames): a peer sending faster than real time would otherwise hold the
        # loop for its whole backlog, and every other session's audio with it. ~5 us a message.
        await asyncio.sleep(0)


class Inbox(Generic[T]):
    """One peer's inbound messages and the task that hands them to `handle`, one at a time, in
    order. At most `limit` messages wait.

    `await put(m)` waits while the inbox is full (back-pressure: the reader stops reading and
    the socket's buffers push back on the peer). `offer(m)` never waits: a full inbox refuses
    the message and calls `on_overflow()`, once until the handler has taken another message.
    An exception from `handle` is the owner's bug: it ends the task (read `task.exception()`).
    The task starts at once, or at `start()` with `start=False` (messages wait meanwhile).
    """

    def __init__(self, handle: Callable[[T], Awaitable[None]], *, name: str, limit: int,
                 on_overflow: Callable[[], None] | None = None, start: bool = True) -> None:
        self._handle = handle
        self._name = name
        self._on_overflow = on_overflow
        self._queue: asyncio.Queue[T] = asyncio.Queue(limit)
        self._overflow_reported = False
        self.refused = 0  # messages `offer` turned away
        self.task: asyncio.Task[None] | None = None
        if start:
            self.start()

    def __len__(self) -> int:
        return self._queue.qsize()

    def start(self) -> asyncio.Task[None]:
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=self._name)
        return self.task

    async def put(self, item: T) -> None:
        """Queue `item`, waiting while the inbox is full."""
        await self._queue.put(item)

    def offer(self, item: T) -> bool:
        """Queue `item` if there is room; False (and `on_overflow`, once) if the inbox is full."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.refused += 1
            if not self._overflow_reported:
                self._overflow_reported = True
                if self._on_overflow is not None:
                    self._on_overflow()
            return False
        return True

    async def close(self) -> None:
        """Stop handling; what is still queued is dropped. Idempotent."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _run(self) -> None:
        queue, handle = self._queue, self._handle
        while True:
            await handle(await queue.get())
            self._overflow_reported = False
            if not queue.empty():  # a backlog is handled one message a loop turn (as in `receive_loop`);
                await asyncio.sleep(0)  # with none, the next `get()` waits anyway: no extra turn


class Outbox(Generic[T]):
    """One peer's outbound messages and the task that sends them, one at a time, in order.

    `put` never blocks (engine callbacks are synchronous). With a `limit`, the queue holding
    `limit` unsent messages means the peer is not reading: the outbox stops at once (the task
    is likely stuck in a write nobody reads) and refuses everything after. `on_stop(reason)` is
    called once, from whichever side stopped it.
    """

    def __init__(self, send: Callable[[T], Awaitable[None]], *, name: str, limit: int | None = None,
                 on_stop: Callable[[StopReason], None] | None = None) -> None:
        self._send = send
        self._limit = limit
        self._on_stop = on_stop
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()
        self._finishing = False  # no more puts; the task ends once the queue is empty
        self.reason: StopReason | None = None  # why it stopped (None: still sending)
        self.task: asyncio.Task[None] = asyncio.create_task(self._run(), name=name)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def accepting(self) -> bool:
        return self.reason is None and not self._finishing

    def put(self, item: T, *, urgent: bool = False) -> bool:
        """Queue `item` (at the front if `urgent`). False if it was refused: the outbox has
        stopped or is finishing, or this put found the peer not reading (it stops now)."""
        if self.reason is not None or self._finishing:
            return False
        items = self._items
        if self._limit is not None and len(items) >= self._limit:
            self._stop("not_reading")
            self.task.cancel()  # it is stuck writing to a socket nobody reads
            return False
        if urgent:
            items.appendleft(item)
        else:
            items.append(item)
        if not self._ready.is_set():
            self._ready.set()
        return True

    def drop(self, unwanted: Callable[[T], bool]) -> int:
        """Remove queued items for which `unwanted(item)` is true (not the one being sent)."""
        before = len(self._items)
        self._items = deque(item for item in self._items if not unwanted(item))
        return before - len(self._items)

    def finish(self) -> None:
        """Take nothing more; the task sends what is queued, then ends."""
        self._finishing = True
        self._ready.set()

    async def close(self, drain_s: float = 0.0) -> None:
        """Stop: send what is queued for up to `drain_s` seconds (0: drop it), then end the
        task. Idempotent; never raises (a cancellation of the caller aside)."""
        self.finish()
        if not self.task.done():
            if drain_s > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(self.task), drain_s)
                except asyncio.TimeoutError:
                    pass
            if not self.task.done():
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
        self._items.clear()
        self._stop("closed")

    def _stop(self, reason: StopReason) -> None:
        if self.reason is None:
            self.reason = reason
            if self._on_stop is not None:
                self._on_stop(reason)

    async def _run(self) -> None:
        try:
            while True:
                items = self._items
                while not items:
                    if self._finishing:
                        return
                    self._ready.clear()
                    await self._ready.wait()
                    items = self._items  # `drop` may have replaced it
                item = items.popleft()
                try:
                    await self._send(item)
                except Exception as e:  # noqa: BLE001 - the socket is gone: the owner ends the session
                    log.debug("send failed: %s", type(e).__name__)
                    self._stop("send_failed")
                    return
        except asyncio.CancelledError:
            if self.reason == "not_reading":
                return  # our own cancel of a stuck write: the task ends normally, the reason says why
            raise
