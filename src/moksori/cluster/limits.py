"""Limits that hold across workers: concurrent sessions per API key, new sessions per key per minute.

Concurrent sessions are *leases*: one member per session in a sorted set per key, scored with
its expiry on the Redis clock.

    limit:sessions:<owner>   ZSET  lease id -> expiry (ms)
    limit:starts:<owner>     ZSET  lease id -> start time (ms), the last window only

`acquire` is one Lua script, so two workers admitting the same key's sessions at the same moment
cannot both take the last place: it drops expired leases, counts the live ones, checks the
sliding one-minute window of starts, and records both, or refuses and says why. The worker that
holds a session renews its lease on every heartbeat (`renew`, one script for all its leases) and
removes it when the session ends (`release`). A worker that dies without releasing stops
renewing: its leases expire after the TTL and the places come back by themselves.

`renew` re-adds a lease that is missing (Redis restarted, or the session was admitted while
Redis was down): the count converges on the sessions that really exist. So a release must not
cross a renewal on the wire: `release` forgets the lease locally first (no renewal started later
includes it), then waits for a renewal already in flight, which may still carry it, before it
removes it from Redis.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from moksori.cluster.redis_client import Keys, translated

WINDOW_MS = 60_000

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local maxc = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local n = 0
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  n = redis.call('ZCARD', KEYS[1])
  if n >= maxc then return {0, n, 0} end
end
if rate > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  local r = redis.call('ZCARD', KEYS[2])
  if r >= rate then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {-1, r, tonumber(oldest[2]) + window - now}
  end
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], window)
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, n + 1, 0}
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str
    id: str


@dataclass(frozen=True, slots=True)
class Decision:
    """`lease` when admitted; otherwise `code` (too_many_sessions | rate_limited), a message for
    people and the seconds after which trying again can work."""

    lease: Lease | None
    count: int  # the key's sessions (admitted: including this one) or starts in the window
    code: str | None = None
    message: str = ""
    retry_after_s: int = 0

    @property
    def admitted(self) -> bool:
        return self.lease is not None


class Limits:
    def __init__(self, redis: Any, keys: Keys, *, max_sessions_per_key: int, new_sessions_per_minute: int,
                 ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.max_sessions_per_key = max_sessions_per_key
        self.new_sessions_per_minute = new_sessions_per_minute
        self.ttl_ms = int(ttl_s * 1000)
        self.leases: dict[str, Lease] = {}  # lease id -> lease, every lease this worker holds
        self._renewed = asyncio.Event()  # clear while a renewal is in flight
        self._renewed.set()
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    @staticmethod
    def new_lease(owner: str) -> Lease:
        return Lease(owner, secrets.token_hex(8))

    async def acquire(self, owner: str) -> Decision:
        """Count one more session for `owner`, or refuse. Raises `RedisUnavailable`."""
        lease = self.new_lease(owner)
        async with translated("session limits"):
            ok, count, retry_ms = await self._acquire(
                keys=[self.keys.concurrent(owner), self.keys.starts(owner)],
                args=[lease.id, self.max_sessions_per_key, self.ttl_ms, self.new_sessions_per_minute, WINDOW_MS])
        if ok == 1:
            self.leases[lease.id] = lease
            return Decision(lease, int(count))
        if ok == 0:
            return Decision(None, int(count), "too_many_sessions",
                            f"this API key has {count} open sessions across the cluster (limit "
                            f"{self.max_sessions_per_key}, MOKSORI_SERVER_MAX_SESSIONS_PER_KEY)", 5)
        return Decision(None, int(count), "rate_limited",
                        f"this API key started {count} sessions in the last minute (limit "
                        f"{self.new_sessions_per_minute}, MOKSORI_CLUSTER_NEW_SESSIONS_PER_MINUTE)",
                        max(1, -(-int(retry_ms) // 1000)))

    def hold_unchecked(self, owner: str) -> Lease:
        """A session admitted while Redis was unreachable: not counted yet, but renewed (hence
        counted) from the first heartbeat that reaches Redis again."""
        lease = self.new_lease(owner)
        self.leases[lease.id] = lease
        return lease

    async def release(self, lease: Lease) -> None:
        """The session ended. Raises `RedisUnavailable` (the lease then expires by itself)."""
        self.leases.pop(lease.id, None)
        await self._renewed.wait()  # a renewal that took its list before the pop may still re-add it
        async with translated("session limits"):
            await self.redis.zrem(self.keys.concurrent(lease.owner), lease.id)

    async def renew(self) -> None:
        """Push every held lease's expiry forward (and re-add any that went missing)."""
        leases = list(self.leases.values())
        if not leases:
            return
        self._renewed.clear()
        try:
            async with translated("session limits"):
                for i in range(0, len(leases), 500):  # keep each script call short
                    part = [le for le in leases[i:i + 500] if le.id in self.leases]  # not released meanwhile
                    if part:
                        await self._renew(keys=[self.keys.concurrent(le.owner) for le in part],
                                          args=[self.ttl_ms, *[le.id for le in part]])
        finally:
            self._renewed.set()

    async def count(self, owner: str) -> int:
        """Live sessions of `owner` across the cluster (expired leases not counted)."""
        async with translated("session limits"), self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zrange(self.keys.concurrent(owner), 0, -1, withscores=True)
            (sec, usec), members = await pipe.execute()
        now = int(sec) * 1000 + int(usec) // 1000
        return sum(1 for _, expiry in members if expiry > now)
