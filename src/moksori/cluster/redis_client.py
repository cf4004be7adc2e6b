"""The Redis client layer: one connection pool per worker, key names in one place, and Redis
errors translated at this boundary into `RedisUnavailable` (nothing above sees redis-py's types).

Every command has a short timeout (`MOKSORI_REDIS_TIMEOUT_S`, 1 s). redis-py retries a command
once, at once, only when its connection turns out to be broken (a pooled connection that died
during an outage fails on first use; the retry opens a fresh one) and never after a timeout:
the callers decide what an outage means (admit or refuse a session, drop a live event, try the
heartbeat again), and the one place that keeps retrying is the heartbeat loop (`node.py`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from moksori.errors import ConfigError, MoksoriError

SCHEMES = ("redis", "rediss", "unix")


class RedisUnavailable(MoksoriError):
    """Redis did not answer (down, unreachable, too slow). Retryable by nature."""

    code = "cluster_unavailable"
    retryable = True


def check_url(url: str) -> str:
    url = url.strip()
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(f"MOKSORI_REDIS_URL must start with redis://, rediss:// or unix:// (got {scheme or url!r})")
    return url


def connect(url: str, *, timeout_s: float = 1.0, max_connections: int = 64) -> Any:
    """A `redis.asyncio.Redis` for `url` (strings in and out, no built-in retries).

    Nothing connects yet: the first command does, so a worker starts even when Redis is down."""
    try:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RConnectionError
    except ImportError as e:  # pragma: no cover - redis is a dependency
        raise ConfigError("cluster mode needs the redis package", hint="pip install 'redis==8.1.0'") from e
    try:
        return Redis.from_url(check_url(url), decode_responses=True, socket_timeout=timeout_s,
                              socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1, (RConnectionError,)),
                              max_connections=max_connections, client_name="moksori")
    except ValueError as e:
        raise ConfigError(f"MOKSORI_REDIS_URL is not a usable Redis URL: {e}") from None


def redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RConnectionError, RedisError, TimeoutError as RTimeoutError

    return (RConnectionError, RTimeoutError, RedisError, OSError, TimeoutError)


@contextlib.asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Run Redis commands; any failure becomes `RedisUnavailable("<what>: <reason>")`."""
    try:
        yield
    except RedisUnavailable:
        raise
    except redis_errors() as e:
        raise RedisUnavailable(f"{what}: Redis is unreachable ({type(e).__name__}: {_short(e)})") from None


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:160] or "no answer"


class Keys:
    """Every key and channel name, under one prefix (`MOKSORI_REDIS_PREFIX`)."""

    def __init__(self, prefix: str) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ConfigError(f"MOKSORI_REDIS_PREFIX must be a non-empty word, got {prefix!r}")
        self.prefix = prefix

    # registry
    @property
    def workers(self) -> str:  # ZSET worker id -> expiry (ms, Redis clock)
        return f"{self.prefix}workers"

    def worker(self, worker_id: str) -> str:  # HASH pid, address, sessions, calls, draining...
        return f"{self.prefix}worker:{worker_id}"

    def held(self, worker_id: str) -> str:  # HASH "<kind>:<id>" -> JSON, what the worker holds
        return f"{self.prefix}held:{worker_id}"

    def where(self, kind: str, ident: str) -> str:  # STRING worker id holding that session/call
        return f"{self.prefix}where:{kind}:{ident}"

    # limits
    def concurrent(self, owner: str) -> str:  # ZSET lease id -> expiry (ms)
        return f"{self.prefix}limit:sessions:{owner}"

    def starts(self, owner: str) -> str:  # ZSET start id -> time (ms), the last minute
        return f"{self.prefix}limit:starts:{owner}"

    # live events
    def conversation(self, conversation_id: str) -> str:  # HASH owner, worker, state, started_at
        return f"{self.prefix}conv:{conversation_id}"

    def events(self, conversation_id: str) -> str:  # pub/sub channel
        return f"{self.prefix}conv:{conversation_id}:events"

    # call control
    def rpc(self, worker_id: str) -> str:  # pub/sub channel: requests to a worker
        return f"{self.prefix}rpc:{worker_id}"

    def rpc_reply(self, worker_id: str) -> str:  # pub/sub channel: answers to a worker's requests
        return f"{self.prefix}rpc-reply:{worker_id}"

    # ephemeral keys
    def ephemeral(self, value: str) -> str:  # STRING the key as JSON, expiring with it
        return f"{self.prefix}ek:{value}"

    @property
    def ephemeral_live(self) -> str:  # ZSET key value -> expiry (ms): the live keys, counted against the caps
        return f"{self.prefix}ek-live"

    @property
    def ephemeral_bytes(self) -> str:  # HASH key value -> bytes stored, "#total" -> their sum
        return f"{self.prefix}ek-bytes"


class Breaker:
    """Remembers that Redis just failed, so the admission path does not wait a timeout per
    session during an outage: `open` for `cool_s` after a failure, then one call may try again."""

    def __init__(self, cool_s: float = 2.0, clock: Any = time.monotonic) -> None:
        self.cool_s = cool_s
        self.clock = clock
        self.failed_at: float | None = None
        self.last_error = ""

    @property
    def open(self) -> bool:
        return self.failed_at is not None and self.clock() - self.failed_at < self.cool_s

    @property
    def healthy(self) -> bool:
        return self.failed_at is None

    def failure(self, error: BaseException | str) -> None:
        self.failed_at = self.clock()
        self.last_error = str(error)

    def success(self) -> None:
        self.failed_at = None
        self.last_error = ""
