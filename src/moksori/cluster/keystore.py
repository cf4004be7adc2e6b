"""Ephemeral keys (`ek_...`) shared by every worker: minted on one, used on another.

A browser page asks the server for a key (`POST /session`) and opens its session with it; behind
a load balancer the two requests may reach different workers, so the keys live in Redis
(`ek:<value>`, a JSON copy expiring with the key). Redis unreachable: keys are minted into and
found in this worker's memory instead (the outage's keys then work only on the worker that
minted them; documented in docs/SCALING.md), and Redis is used again on the next call.

The caps of the in-process store hold for the whole cluster: at most `max_keys` live keys
(MOKSORI_WEBRTC_MAX_EPHEMERAL_KEYS) and `max_bytes` (128 MiB) of stored key records, both
taken from the fallback store. One Lua script counts and stores a key atomically (two workers
minting at once cannot both take the last place):

    ek-live    ZSET  key value -> expiry (ms, Redis clock)
    ek-bytes   HASH  key value -> bytes stored; "#total" -> their sum

Each mint first drops the keys that expired (and their bytes), so the counts converge by
themselves; both structures expire with the longest-lived key they count. Past either cap a mint
raises `full` (the server's `StoreFull`: HTTP 429), as the in-process store does.

The store holds any frozen dataclass with `value` and `expires_at` fields (the server's
`EphemeralKey`), so this module does not import the server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from moksori.cluster.redis_client import Breaker, Keys, RedisUnavailable, translated

log = logging.getLogger("moksori.cluster")

TOTAL = "#total"  # the byte sum's field in ek-bytes (key values are "ek_" + URL-safe base64: no '#')

_PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local size = tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  local freed = 0
  for _, v in ipairs(expired) do
    freed = freed + (tonumber(redis.call('HGET', KEYS[3], v)) or 0)
    redis.call('HDEL', KEYS[3], v)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('HINCRBY', KEYS[3], ARGV[7], -freed)
end
local n = redis.call('ZCARD', KEYS[2])
local total = math.max(0, tonumber(redis.call('HGET', KEYS[3], ARGV[7])) or 0)
local old = tonumber(redis.call('HGET', KEYS[3], ARGV[1]))
if old then
  n = n - 1
  total = total - old
end
if n >= tonumber(ARGV[5]) then return {0, n, total} end
if total + size > tonumber(ARGV[6]) then return {-1, n, total} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], size, ARGV[7], total + size)
if redis.call('PTTL', KEYS[2]) < ttl or redis.call('PTTL', KEYS[3]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return {1, n + 1, total + size}
"""


class RedisKeyStore:
    def __init__(self, redis: Any, keys: Keys, factory: type, fallback: Any, breaker: Breaker, *,
                 full: type[Exception]) -> None:
        self.redis, self.keys = redis, keys
        self.factory = factory  # builds a key back from its fields
        self.fallback = fallback  # an in-process store (`MemoryKeyStore`) for outages; its caps apply here
        self.breaker = breaker
        self.full = full  # raised past a cap (the server's `StoreFull`)
        self.max_keys: int = fallback.max_keys
        self.max_bytes: int = fallback.max_bytes
        self.fallback_puts = 0
        self._put = redis.register_script(_PUT)

    async def put(self, key: Any) -> None:
        """Store `key` for every worker. Raises `full` when the cluster holds `max_keys` live
        keys, or this one's record would take their bytes past `max_bytes`."""
        ttl_ms = int((key.expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return
        if not self.breaker.open:
            record = json.dumps(dataclasses.asdict(key))  # ASCII (\u escapes): its length is its bytes
            k = self.keys
            try:
                async with translated("ephemeral keys"):
                    ok, count, total = await self._put(
                        keys=[k.ephemeral(key.value), k.ephemeral_live, k.ephemeral_bytes],
                        args=[key.value, record, ttl_ms, len(record), self.max_keys, self.max_bytes, TOTAL])
            except RedisUnavailable as e:
                self.breaker.failure(e)
                log.warning("ephemeral keys: %s; this key works on this worker only", e)
            else:
                if ok == 1:
                    return
                if ok == 0:
                    raise self.full(f"{count} ephemeral keys are live across the cluster")
                raise self.full(f"live ephemeral keys hold {total} bytes across the cluster, "
                                f"at most {self.max_bytes} in all")
        self.fallback_puts += 1
        await self.fallback.put(key)

    async def get(self, value: str) -> Any:
        if not self.breaker.open:
            try:
                async with translated("ephemeral keys"):
                    raw = await self.redis.get(self.keys.ephemeral(value))
            except RedisUnavailable as e:
                self.breaker.failure(e)
                raw = None
            else:
                if raw is not None:
                    try:
                        key = self.factory(**json.loads(raw))
                    except (TypeError, ValueError):
                        return None
                    return key if key.expires_at > time.time() else None
        return await self.fallback.get(value)

    def __len__(self) -> int:  # what the WebRTC debug stats show: this worker's outage keys
        return len(self.fallback)
