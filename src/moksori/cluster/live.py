"""Live events of a conversation: published where the session runs, followed from any worker.

The server side calls a publisher with small JSON events (`transcript.delta`, `transcript.done`,
`reply.started`, `reply.delta`, `reply.done`, `conversation.state`, `conversation.ended`); a
follower (the SSE route) on any worker reads them in order. Each event is an envelope
`{"type", "conversation_id", "seq", "t", ...}` with `seq` counting up per conversation.

Two implementations of one interface:

* `MemoryLive` - one process (no Redis): publisher and followers meet in a dict;
* `RedisLive` - a cluster: the conversation's record is a hash (owner, worker, state) that the
  holding worker keeps alive with its heartbeat, and its events go through a pub/sub channel
  (`hub.py`). Publishing never waits for Redis: events go into a bounded queue that one task
  sends in pipelined batches; when Redis is down they are dropped and counted (live events are
  a view of the conversation, the store keeps the record).

The holder knows whether anyone follows a conversation (`followed`: the session decodes live
partial transcripts only then, engine/partial_readers.py): in one process from its followers; in
a cluster from Redis, which answers each PUBLISH with the number of subscribers that got it (a
worker's pub/sub connection counts once, however many followers it serves), and each heartbeat
with `PUBSUB NUMSUB` (a follower that came while nothing was published).

A follower learns that a conversation ended from `conversation.ended`, or, when the worker
holding it died without saying so, from its record expiring (checked every few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from moksori import cancellation
from moksori.cluster.hub import RESYNC, PubSubHub, Subscription
from moksori.cluster.redis_client import Keys, RedisUnavailable, redis_errors, translated
from moksori.text.unencodable import json_text

log = logging.getLogger("moksori.cluster")

ENDED_KEEP_S = 60  # an ended conversation's record stays this long (late followers see "ended")
MAX_QUEUED = 10_000  # events waiting to be sent to Redis; past that the oldest are dropped
FOLLOWER_QUEUE = 2000  # events buffered per follower


class LiveEvents(Protocol):
    def begin(self, conversation_id: str, owner: str, *, channel: str = "realtime") -> None: ...

    def publish(self, conversation_id: str, type: str, data: dict[str, Any] | None = None) -> None: ...

    def end(self, conversation_id: str, reason: str) -> None: ...

    def followed(self, conversation_id: str) -> bool:
        """Whether a follower reads this worker's conversation now (as far as this worker knows)."""
        ...

    async def follow(self, conversation_id: str) -> Follow | None:
        """A follower for a live (or just ended) conversation, or None if none is known."""
        ...


class Follow(Protocol):
    owner: str
    snapshot: dict[str, Any]  # {"state", "started_at", "channel", "worker"?}

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event; None when nothing came within `timeout` (the caller sends a keepalive)."""
        ...

    @property
    def over(self) -> bool:
        """Nothing more can come (the worker's pub/sub shut down): `next` returns None at once."""
        ...

    async def close(self) -> None: ...


def envelope(conversation_id: str, seq: int, type: str, data: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": type, "conversation_id": conversation_id, "seq": seq, "t": round(time.time(), 3), **(data or {})}


# --------------------------------------------------------------------------- one process


@dataclass
class _Conv:
    owner: str
    channel: str
    started_at: float
    state: str = "idle"
    seq: int = 0
    ended_at: float | None = None
    followers: set[_MemoryFollow] = field(default_factory=set)


class _MemoryFollow:
    def __init__(self, live: MemoryLive, conversation_id: str, conv: _Conv) -> None:
        self.live, self.conversation_id, self.conv = live, conversation_id, conv
        self.owner = conv.owner
        self.snapshot = {"state": "ended" if conv.ended_at else conv.state, "started_at": conv.started_at,
                         "channel": conv.channel}
        self._q: deque[dict[str, Any]] = deque(maxlen=FOLLOWER_QUEUE)
        self._ready = asyncio.Event()

    def put(self, ev: dict[str, Any]) -> None:
        self._q.append(ev)
        self._ready.set()

    async def next(self, timeout: float) -> dict[str, Any] | None:
        while not self._q:
            self._ready.clear()
            try:
                await cancellation.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        return self._q.popleft()

    @property
    def over(self) -> bool:
        return False  # the conversation's end comes as `conversation.ended`

    async def close(self) -> None:
        self.conv.followers.discard(self)


class MemoryLive:
    def __init__(self) -> None:
        self.conversations: dict[str, _Conv] = {}

    def _purge(self) -> None:
        now = time.time()
        for cid in [c for c, v in self.conversations.items() if v.ended_at and now - v.ended_at > ENDED_KEEP_S]:
            del self.conversations[cid]

    def begin(self, conversation_id: str, owner: str, *, channel: str = "realtime") -> None:
        self._purge()
        self.conversations[conversation_id] = _Conv(owner, channel, round(time.time(), 3))

    def publish(self, conversation_id: str, type: str, data: dict[str, Any] | None = None) -> None:
        conv = self.conversations.get(conversation_id)
        if conv is None or conv.ended_at is not None:
            return
        conv.seq += 1
        if type == "conversation.state" and data:
            conv.state = str(data.get("state", conv.state))
        ev = envelope(conversation_id, conv.seq, type, data)
        for f in list(conv.followers):
            f.put(ev)

    def end(self, conversation_id: str, reason: str) -> None:
        conv = self.conversations.get(conversation_id)
        if conv is None or conv.ended_at is not None:
            return
        self.publish(conversation_id, "conversation.ended", {"reason": reason})
        conv.ended_at = time.time()
        conv.state = "ended"

    def followed(self, conversation_id: str) -> bool:
        conv = self.conversations.get(conversation_id)
        return conv is not None and conv.ended_at is None and bool(conv.followers)

    async def follow(self, conversation_id: str) -> _MemoryFollow | None:
        conv = self.conversations.get(conversation_id)
        if conv is None:
            return None
        f = _MemoryFollow(self, conversation_id, conv)
        if conv.ended_at is None:
            conv.followers.add(f)
        return f


# --------------------------------------------------------------------------- a cluster


class _RedisFollow:
    def __init__(self, live: RedisLive, conversation_id: str, sub: Subscription, record: dict[str, str]) -> None:
        self.live, self.conversation_id, self.sub = live, conversation_id, sub
        self.owner = record.get("owner", "")
        self.snapshot = _snapshot(record)
        self._checked = time.monotonic()
        self._grace_until = 0.0  # after a Redis outage the holder needs a heartbeat to write its record again
        self._done = self.snapshot["state"] == "ended"

    async def next(self, timeout: float) -> dict[str, Any] | None:
        if self._done:
            return None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            item = await self.sub.get(timeout=min(left, self.live.check_s))
            if item is RESYNC:  # Redis came back: we may have missed events, say where things are
                self._checked = time.monotonic()
                self._grace_until = self._checked + self.live.ttl_ms / 1000
                record = {}
                with contextlib.suppress(RedisUnavailable):
                    record = await self._record()
                return envelope(self.conversation_id, 0, "conversation.state",
                                {**_snapshot(record or {"state": "unknown"}), "resync": True})
            if item is not None:
                try:
                    ev = json.loads(item)
                except (TypeError, ValueError):
                    continue
                if ev.get("type") == "conversation.ended":
                    self._done = True
                return ev
            if self.sub.closed:
                return None
            if time.monotonic() - self._checked >= self.live.check_s:
                self._checked = time.monotonic()
                with contextlib.suppress(RedisUnavailable):  # Redis down: the hub reconnects, RESYNC follows
                    if not await self._record() and time.monotonic() >= self._grace_until:
                        return self._lost()

    def _lost(self) -> dict[str, Any]:
        self._done = True
        return envelope(self.conversation_id, 0, "conversation.ended", {"reason": "worker_lost"})

    async def _record(self) -> dict[str, str]:
        async with translated("live events"):
            return await self.live.redis.hgetall(self.live.keys.conversation(self.conversation_id))

    @property
    def over(self) -> bool:
        return self.sub.closed

    async def close(self) -> None:
        await self.sub.close()


def _snapshot(record: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"state": record.get("state", "idle"), "channel": record.get("channel", ""),
                           "worker": record.get("worker", "")}
    with contextlib.suppress(ValueError):
        out["started_at"] = float(record.get("started_at", "0"))
    return out


@dataclass
class _Local:
    record: dict[str, str]  # owner, worker, state, channel, started_at
    seq: int = 0
    followers: int = 0  # subscribers of its events channel, as Redis last counted them


class RedisLive:
    def __init__(self, redis: Any, keys: Keys, hub: PubSubHub, *, worker_id: str, ttl_s: float,
                 check_s: float = 2.0) -> None:
        self.redis, self.keys, self.hub = redis, keys, hub
        self.worker_id = worker_id
        self.ttl_ms = int(ttl_s * 1000)
        self.check_s = check_s
        self.live: dict[str, _Local] = {}
        self._queue: deque[tuple[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # events not delivered because Redis was unreachable or the queue overflowed
        self.sent = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sender(), name="cluster-live-events")

    async def close(self, *, flush_s: float = 1.0) -> None:
        for cid in list(self.live):
            self.end(cid, "server_shutdown")
        if self._task is not None:
            deadline = time.monotonic() + flush_s
            while self._queue and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await cancellation.stop(self._task)
            self._task = None

    # ------------------------------------------------------------------ publisher (never waits)

    def _put(self, op: str, arg: Any) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((op, arg))
        self._wake.set()

    def begin(self, conversation_id: str, owner: str, *, channel: str = "realtime") -> None:
        local = self.live[conversation_id] = _Local({"owner": owner, "worker": self.worker_id, "state": "idle",
                                                     "channel": channel, "started_at": f"{time.time():.3f}"})
        self._put("begin", (conversation_id, dict(local.record)))

    def publish(self, conversation_id: str, type: str, data: dict[str, Any] | None = None) -> None:
        local = self.live.get(conversation_id)
        if local is None:
            return
        local.seq += 1
        ev = envelope(conversation_id, local.seq, type, data)
        if type == "conversation.state" and "state" in ev:
            local.record["state"] = str(ev["state"])
        # json_text: a client's lone surrogate in a transcript made Redis's encode raise, which
        # ended this worker's sender task and every live event after it
        self._put("publish", (conversation_id, json_text(ev, separators=(",", ":")),
                              ev.get("state") if type == "conversation.state" else None))

    def end(self, conversation_id: str, reason: str) -> None:
        if conversation_id not in self.live:
            return
        self.publish(conversation_id, "conversation.ended", {"reason": reason})
        del self.live[conversation_id]
        self._put("end", conversation_id)

    def followed(self, conversation_id: str) -> bool:
        local = self.live.get(conversation_id)
        return local is not None and local.followers > 0

    def _counted(self, conversation_id: str, followers: Any) -> None:
        local = self.live.get(conversation_id)
        if local is not None and isinstance(followers, int):
            local.followers = followers

    async def renew(self) -> None:
        """Keep the records of this worker's live conversations from expiring (the heartbeat);
        write them again if they did expire (Redis was unreachable for longer than the TTL)."""
        if not self.live:
            return
        cids = list(self.live)
        async with translated("live events"), self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.hset(self.keys.conversation(cid), mapping=self.live[cid].record)
                pipe.pexpire(self.keys.conversation(cid), self.ttl_ms)
            pipe.pubsub_numsub(*(self.keys.events(cid) for cid in cids))
            results = await pipe.execute()
        for cid, (_, n) in zip(cids, results[-1], strict=False):
            self._counted(cid, n)

    async def _sender(self) -> None:
        k = self.keys
        while True:
            cancellation.raise_if_cancelled()
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]
            counted: list[tuple[int, str]] = []  # (index of a PUBLISH in the pipeline, its conversation)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for op, arg in batch:
                        if op == "begin":
                            cid, record = arg
                            pipe.delete(k.conversation(cid))
                            pipe.hset(k.conversation(cid), mapping=record)
                            pipe.pexpire(k.conversation(cid), self.ttl_ms)
                        elif op == "publish":
                            cid, text, state = arg
                            if state is not None:
                                pipe.hset(k.conversation(cid), "state", state)
                            pipe.publish(k.events(cid), text)
                            counted.append((len(pipe), cid))
                        else:  # end
                            pipe.hset(k.conversation(arg), "state", "ended")
                            pipe.expire(k.conversation(arg), ENDED_KEEP_S)
                    results = await pipe.execute()
                for i, cid in counted:
                    self._counted(cid, results[i - 1])
                self.sent += sum(1 for op, _ in batch if op == "publish")
            except asyncio.CancelledError:
                raise
            except redis_errors() as e:
                lost = sum(1 for op, _ in batch if op == "publish")
                self.dropped += lost
                log.warning("live events: %d not delivered, Redis is unreachable (%s)", lost, type(e).__name__)
                await asyncio.sleep(0.5)  # do not spin while Redis is down; events keep queueing (bounded)

    # ------------------------------------------------------------------ follower

    async def follow(self, conversation_id: str) -> _RedisFollow | None:
        """Subscribe first, then read the record: an event published in between is not lost."""
        sub = await self.hub.subscribe(self.keys.events(conversation_id), maxsize=FOLLOWER_QUEUE)
        try:
            async with translated("live events"):
                record = await self.redis.hgetall(self.keys.conversation(conversation_id))
        except BaseException:
            await sub.close()
            raise
        if not record:
            await sub.close()
            return None
        return _RedisFollow(self, conversation_id, sub, record)
