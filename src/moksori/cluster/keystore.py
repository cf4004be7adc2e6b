"""Ephemeral keys (`ek_...`) shared by every worker: minted on one, used on another.

A browser page asks the server for a key (`POST /session`) and opens its session with it; behind
a load balancer the two requests may reach different workers, so the keys live in Redis
(`ek:<value>`, a JSON copy expiring with the key). Redis unreachable: keys are minted into and
found in this worker's memory instead (the outage's keys then work only on the worker that
minted them; documented in docs/SCALING.md), and Redis is used again on the next call.

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


class RedisKeyStore:
    def __init__(self, redis: Any, keys: Keys, factory: type, fallback: Any, breaker: Breaker) -> None:
        self.redis, self.keys = redis, keys
        self.factory = factory  # builds a key back from its fields
        self.fallback = fallback  # an in-process store (`MemoryKeyStore`) for outages
        self.breaker = breaker
        self.fallback_puts = 0

    async def put(self, key: Any) -> None:
        ttl_ms = int((key.expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return
        if not self.breaker.open:
            try:
                async with translated("ephemeral keys"):
                    await self.redis.set(self.keys.ephemeral(key.value), json.dumps(dataclasses.asdict(key)),
                                         px=ttl_ms)
                return
            except RedisUnavailable as e:
                self.breaker.failure(e)
                log.warning("ephemeral keys: %s; this key works on this worker only", e)
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
