"""The registry: which workers are alive, and which sessions and calls each one holds.

Redis keys (under the prefix):

    workers             ZSET  worker id -> expiry (ms on the Redis clock)                (expires)
    worker:<id>         HASH  id, pid, address, sessions, calls, draining, started_at   (expires)
    held:<id>           HASH  "<kind>:<session or call id>" -> JSON {owner, since, conversation?} (expires)
    where:<kind>:<id>   STRING worker id holding that session or call                    (expires)

The worker keeps the truth locally (`add`/`remove` are plain dict operations, never a Redis
round trip on the session's path) and `sync()` writes all of it in one transaction: on every
heartbeat, and ~50 ms after a change. Everything it writes expires after `ttl_s`, so a worker
killed with `kill -9` drops out by itself; a clean shutdown (`leave`) removes it at once. The
Redis clock stamps expiries, so workers on machines whose clocks differ still agree.

A `where:` key belongs to one worker at a time: `claim` takes it only if no other worker holds
it (one round trip, atomic: two workers claiming one phone call's id at once cannot both get
it), the heartbeat renews only the keys that are this worker's (or missing, after Redis lost
them), and removing one deletes it only while it is still this worker's. `release` gives a
claim back at once, after any heartbeat already in flight (which may still carry it) has landed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from moksori.cluster.redis_client import Keys, translated

# Kinds of things a worker holds. Calls can be controlled (hang-up, transfer) from any worker.
SESSION_KINDS = ("realtime", "voice-live", "webrtc", "phone")
CALL_KINDS = frozenset({"webrtc", "phone"})

_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return now
"""

# where-keys: take one unless another worker holds it; renew / delete only this worker's
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

_HOLD = """
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v or v == ARGV[1] then redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
end
return #KEYS
"""

_DROP = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""

_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return {now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
"""


@dataclass(frozen=True, slots=True)
class Held:
    kind: str  # realtime | voice-live | webrtc | phone
    ident: str  # session id (sess_...), WebRTC call id (rtc_...), carrier call id
    owner: str  # label of the API key that owns it ("anonymous" without keys)
    since: float  # unix seconds
    conversation: str | None = None  # its live events' conversation id, when it is not `ident`

    @property
    def field(self) -> str:
        return f"{self.kind}:{self.ident}"

    @property
    def is_call(self) -> bool:
        return self.kind in CALL_KINDS


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    pid: int
    address: str
    sessions: int
    calls: int
    draining: bool
    started_at: float
    expires_in_s: float  # until its entries expire unless it heartbeats again

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "pid": self.pid, "sessions": self.sessions, "draining": self.draining,
                "address": self.address, "calls": self.calls, "started_at": self.started_at,
                "expires_in_s": round(self.expires_in_s, 1)}


class Registry:
    def __init__(self, redis: Any, keys: Keys, *, worker_id: str, pid: int, address: str, ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.pid = pid
        self.address = address
        self.ttl_ms = int(ttl_s * 1000)
        self.started_at = time.time()
        self.draining = False
        self.held: dict[str, Held] = {}
        self._gone: set[str] = set()  # where-keys to delete at the next sync
        self._idle = asyncio.Event()  # clear while a sync is in flight
        self._idle.set()
        self._beat = redis.register_script(_BEAT)
        self._live = redis.register_script(_LIVE)
        self._claim = redis.register_script(_CLAIM)
        self._hold = redis.register_script(_HOLD)
        self._drop = redis.register_script(_DROP)

    # ------------------------------------------------------------------ local (no I/O)

    def add(self, held: Held) -> None:
        self.held[held.field] = held
        self._gone.discard(self.keys.where(held.kind, held.ident))

    def remove(self, kind: str, ident: str) -> None:
        if self.held.pop(f"{kind}:{ident}", None) is not None:
            self._gone.add(self.keys.where(kind, ident))

    def forget(self, kind: str, ident: str) -> None:
        """As `remove`, also for a claim that never became a session: its key goes at the next sync."""
        self.held.pop(f"{kind}:{ident}", None)
        self._gone.add(self.keys.where(kind, ident))

    def find(self, kind: str, ident: str) -> Held | None:
        return self.held.get(f"{kind}:{ident}")

    @property
    def sessions(self) -> int:
        return len(self.held)

    @property
    def calls(self) -> int:
        return sum(1 for h in self.held.values() if h.is_call)

    # ------------------------------------------------------------------ Redis

    async def sync(self) -> None:
        """Write this worker's entry and everything it holds, renewing their expiry. Raises
        `RedisUnavailable`; the next call writes everything again (nothing is lost)."""
        self._idle.clear()
        try:
            await self._sync()
        finally:
            self._idle.set()

    async def _sync(self) -> None:
        k, me, ttl = self.keys, self.worker_id, self.ttl_ms
        held = list(self.held.values())
        gone = list(self._gone)
        async with translated("registry heartbeat"), self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.worker(me), mapping={
                "id": me, "pid": self.pid, "address": self.address, "sessions": len(held),
                "calls": sum(1 for h in held if h.is_call), "draining": int(self.draining),
                "started_at": f"{self.started_at:.3f}"})
            pipe.pexpire(k.worker(me), ttl)
            pipe.delete(k.held(me))
            if held:
                pipe.hset(k.held(me), mapping={h.field: json.dumps(_held_json(h)) for h in held})
                pipe.pexpire(k.held(me), ttl)
            if held:
                await self._hold(keys=[k.where(h.kind, h.ident) for h in held], args=[me, ttl], client=pipe)
            if gone:
                await self._drop(keys=gone, args=[me], client=pipe)
            await self._beat(keys=[k.workers], args=[me, ttl], client=pipe)
            await pipe.execute()
        self._gone.difference_update(gone)

    async def claim(self, kind: str, ident: str) -> str:
        """Take `kind:ident` for this worker unless another one holds it: returns the holder (this
        worker's id when it is ours now). It expires after the TTL unless a session of it is added
        (the heartbeat renews it then) or it is `release`d first. Raises `RedisUnavailable`."""
        key = self.keys.where(kind, ident)
        self._gone.discard(key)  # ours again: no sync from now on deletes it
        await self._idle.wait()  # nor one already in flight
        async with translated("registry claim"):
            return str(await self._claim(keys=[key], args=[self.worker_id, self.ttl_ms]))

    async def release(self, kind: str, ident: str) -> None:
        """Delete `kind:ident`'s key now if it is still this worker's (after `remove` or `forget`).
        Raises `RedisUnavailable`; the next sync deletes it then."""
        if self.find(kind, ident) is not None:
            return  # held again
        key = self.keys.where(kind, ident)
        await self._idle.wait()  # a sync that took its list before the remove may still renew it
        async with translated("registry release"):
            await self._drop(keys=[key], args=[self.worker_id])
        if self.find(kind, ident) is None:
            self._gone.discard(key)

    async def workers(self) -> list[WorkerInfo]:
        """The live workers, oldest first."""
        k = self.keys
        async with translated("cluster registry"):
            now, flat = await self._live(keys=[k.workers])
            ids = [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]
            if not ids:
                return []
            async with self.redis.pipeline(transaction=False) as pipe:
                for wid, _ in ids:
                    pipe.hgetall(k.worker(wid))
                rows = await pipe.execute()
        out = []
        for (wid, expiry), row in zip(ids, rows):
            if not row:
                continue  # its hash expired a moment before its registry entry
            out.append(WorkerInfo(
                id=wid, pid=_int(row.get("pid")), address=row.get("address", ""),
                sessions=_int(row.get("sessions")), calls=_int(row.get("calls")),
                draining=row.get("draining") == "1", started_at=float(row.get("started_at") or 0),
                expires_in_s=max(0.0, (expiry - int(now)) / 1000)))
        out.sort(key=lambda w: (w.started_at, w.id))
        return out

    async def locate(self, kind: str, ident: str) -> str | None:
        """The id of the worker holding that session or call, or None."""
        if self.find(kind, ident) is not None:
            return self.worker_id
        async with translated("registry lookup"):
            return await self.redis.get(self.keys.where(kind, ident))

    async def held_by(self, worker_id: str) -> dict[str, dict[str, Any]]:
        """What a worker holds, as it last wrote it: {"<kind>:<id>": {"owner", "since", "conversation"?}}."""
        async with translated("registry lookup"):
            raw = await self.redis.hgetall(self.keys.held(worker_id))
        return {f: json.loads(v) for f, v in raw.items()}

    async def leave(self) -> None:
        """A clean shutdown: take this worker out of the registry now rather than after its TTL."""
        k, me = self.keys, self.worker_id
        async with translated("registry leave"), self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(k.workers, me)
            pipe.delete(k.worker(me), k.held(me))
            wheres = [k.where(h.kind, h.ident) for h in self.held.values()] + list(self._gone)
            if wheres:
                await self._drop(keys=wheres, args=[me], client=pipe)
            await pipe.execute()


def _held_json(h: Held) -> dict[str, Any]:
    out: dict[str, Any] = {"owner": h.owner, "since": round(h.since, 3)}
    if h.conversation is not None:
        out["conversation"] = h.conversation
    return out


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0
