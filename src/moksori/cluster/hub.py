"""One Redis pub/sub connection per worker, shared by everything that listens.

Live-event followers (SSE) and call control (RPC) subscribe to channels here; the hub keeps one
connection with the union of their channels, reads it on one task and hands each message to the
local subscribers of its channel (bounded queues: a follower that falls behind loses its oldest
messages and is told so; it never slows the others).

When the connection breaks (Redis restarted, the network cut), the hub reconnects with backoff
and subscribes again to every channel; each subscription then receives a `RESYNC` marker, once
Redis has confirmed it again, so its reader can fetch the state it may have missed (pub/sub
keeps nothing for absent listeners). A PING every `PING_S` on an idle connection notices a
network that went silent without closing. Subscription changes are applied by the reader task
between reads (redis-py's pub/sub object is not shared between tasks), at most `POLL_S` later;
`subscribe()` returns once Redis has confirmed the subscription, so nothing published after
that is missed.

A channel is waited for (`_pending`) only while it has a local subscriber: the last one leaving
(a `subscribe()` that timed out during an outage, or whose caller was cancelled) cancels the wait,
and a confirmation that arrives after that (a slow Redis answering a SUBSCRIBE the hub has since
taken back with UNSUBSCRIBE) is not taken for a subscription; a channel counts as subscribed
only once Redis has answered every SUBSCRIBE sent for it on this connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from moksori import cancellation
from moksori.cluster.redis_client import RedisUnavailable, redis_errors

log = logging.getLogger("moksori.cluster")

POLL_S = 0.05
PING_S = 5.0  # an idle connection is pinged this often; no answer in PING_S more: reconnect
RESYNC = object()  # put in a subscription's queue after its channel was subscribed again
BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)


class Subscription:
    """Messages (str) of one channel for one local reader, oldest first."""

    def __init__(self, hub: PubSubHub, channel: str, maxsize: int) -> None:
        self.hub = hub
        self.channel = channel
        self._items: deque[Any] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self.dropped = 0  # messages lost because the reader fell behind
        self.closed = False

    def deliver(self, item: Any) -> None:
        """The hub hands this subscription a message (or RESYNC)."""
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    def deliver_end(self) -> None:
        """Wake a waiting reader after the subscription was closed from the hub's side."""
        self._ready.set()

    async def get(self, timeout: float | None = None) -> Any:
        """The next message, `RESYNC`, or None on timeout / once the subscription is closed."""
        while not self._items:
            if self.closed:
                return None
            self._ready.clear()
            try:
                await cancellation.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        return self._items.popleft()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._ready.set()
            self.hub.unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class PubSubHub:
    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._subs: dict[str, set[Subscription]] = {}
        self._confirmed: set[str] = set()  # channels Redis confirmed on the current connection
        self._pending: dict[str, asyncio.Future[None]] = {}  # channels waiting for confirmation
        self._unanswered: dict[str, int] = {}  # SUBSCRIBEs sent on this connection, not answered yet
        self._to_send: set[str] = set()
        self._to_drop: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.reconnects = 0
        self.last_error = ""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cluster-pubsub")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancellation.stop(task)
        for subs in list(self._subs.values()):
            for s in list(subs):
                s.closed = True
                s.deliver_end()
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._subs.clear()
        self._pending.clear()

    async def subscribe(self, channel: str, *, maxsize: int = 1000, timeout: float = 3.0,
                        wait: bool = True) -> Subscription:
        """A new local subscription, active when this returns. Raises `RedisUnavailable` when
        Redis does not confirm it within `timeout`. With `wait=False` it returns at once and
        becomes active whenever Redis is reachable (for listeners that live as long as the worker)."""
        if self._task is None:
            raise RedisUnavailable("pub/sub is not running")
        sub = Subscription(self, channel, maxsize)
        self._subs.setdefault(channel, set()).add(sub)
        self._to_drop.discard(channel)
        if channel in self._confirmed:
            return sub
        fut = self._pending.get(channel)
        if fut is None:
            fut = self._pending[channel] = asyncio.get_running_loop().create_future()
            self._to_send.add(channel)
        if not wait:
            return sub
        try:
            await cancellation.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            await sub.close()
            raise RedisUnavailable(f"pub/sub: Redis did not confirm the subscription in {timeout:g} s"
                                   + (f" ({self.last_error})" if self.last_error else "")) from None
        except BaseException:  # the caller went away (cancelled) while it waited
            await sub.close()
            raise
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.channel)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:  # nobody here listens any more: nothing to wait for, nothing to send again
            del self._subs[sub.channel]
            self._to_drop.add(sub.channel)
            self._to_send.discard(sub.channel)
            fut = self._pending.pop(sub.channel, None)
            if fut is not None and not fut.done():
                fut.cancel()

    # ------------------------------------------------------------------ the reader task

    def _confirm(self, channel: str, again: bool) -> None:
        left = self._unanswered.get(channel, 0) - 1
        if left > 0:
            self._unanswered[channel] = left
            return  # a later SUBSCRIBE of it is still on its way: confirmed by its answer
        self._unanswered.pop(channel, None)
        if channel not in self._subs or channel in self._to_send:
            return  # taken back (or to be sent again) since: not a subscription to rely on
        self._confirmed.add(channel)
        fut = self._pending.pop(channel, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        if again:
            for s in list(self._subs.get(channel, ())):
                s.deliver(RESYNC)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        lost: tuple[type[BaseException], ...] = (*redis_errors(), ValueError)
        while True:
            cancellation.raise_if_cancelled()  # asked to stop, and the client library swallowed it
            ps = self.redis.pubsub()
            self._confirmed.clear()
            self._unanswered.clear()
            for channel in [ch for ch in self._pending if ch not in self._subs]:  # (none: unsubscribe drops them)
                self._pending.pop(channel).cancel()
            resubscribed = set(self._subs) if self.reconnects else set()
            try:
                self._to_send |= set(self._subs)
                self._to_drop.clear()
                last_heard = loop.time()
                ping_sent: float | None = None
                await ps.ping()  # connects (and fails fast when Redis is down)
                while True:
                    if self._to_send:
                        channels = sorted(self._to_send)
                        self._to_send.clear()
                        for ch in channels:
                            self._unanswered[ch] = self._unanswered.get(ch, 0) + 1
                        await ps.subscribe(*channels)
                    if self._to_drop:
                        gone = sorted(ch for ch in self._to_drop if ch not in self._subs)
                        self._to_drop.clear()
                        if gone:
                            self._confirmed.difference_update(gone)
                            await ps.unsubscribe(*gone)
                    msg = await ps.get_message(timeout=POLL_S)
                    now = loop.time()
                    if msg is None:
                        if ping_sent is not None and now - ping_sent > PING_S:
                            raise TimeoutError(f"no answer to PING in {PING_S:g} s")
                        if ping_sent is None and now - last_heard > PING_S:
                            await ps.ping()
                            ping_sent = now
                        continue
                    last_heard, ping_sent = now, None
                    kind = msg.get("type")
                    if kind == "message":
                        for s in list(self._subs.get(msg["channel"], ())):
                            s.deliver(msg["data"])
                    elif kind == "subscribe":
                        self._confirm(msg["channel"], msg["channel"] in resubscribed)
                        resubscribed.discard(msg["channel"])
                    if not self.connected and not self._pending and not self._to_send:
                        self.connected, attempt, self.last_error = True, 0, ""
                        if self.reconnects:
                            log.info("cluster pub/sub: Redis is back, %d channels subscribed again",
                                     len(self._confirmed))
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await cancellation.wait_for(ps.aclose(), 1.0)
                raise
            except lost as e:
                if self.connected or attempt == 0:
                    log.warning("cluster pub/sub lost Redis (%s: %s): reconnecting", type(e).__name__,
                                " ".join(str(e).split())[:120])
                self.connected = False
                self.last_error = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                self.reconnects += 1
                with contextlib.suppress(Exception):
                    await cancellation.wait_for(ps.aclose(), 1.0)
                await asyncio.sleep(delay)
