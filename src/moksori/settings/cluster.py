"""Cluster mode: the Redis the workers share (`redis`), and the cluster's own settings: worker ids,
heartbeats, limits across workers (`cluster`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator


class RedisSettings(BaseModel):
    """Cluster mode (`moksori.cluster`): workers share state through this Redis.

    `MOKSORI_REDIS_URL` turns cluster mode on (it also needs a PostgreSQL store URL and
    `MOKSORI_TELEPHONY_STREAM_SECRET`; see docs/SCALING.md)."""

    url: str | None = None  # redis://127.0.0.1:6379/0 ; unset: one process, nothing shared
    # every key and channel starts with this: several clusters (or test runs) can share one Redis
    prefix: str = "moksori:"
    timeout_s: float = Field(1.0, gt=0, le=30)  # connect and per-command timeout

    @property
    def enabled(self) -> bool:
        return bool((self.url or "").strip())


class ClusterSettings(BaseModel):
    """What the workers of a cluster share and how fast a dead one is forgotten."""

    worker_id: str | None = None  # default: <host>-<port>-<pid>-<random>
    # the address this worker is reached at, shown in the registry; default: host:port it serves on
    advertise: str | None = None
    heartbeat_s: float = Field(2.0, gt=0, le=60)
    # a worker that stops heartbeating (kill -9, a cut network) disappears from the registry, and
    # its sessions stop counting against the limits, after this long
    ttl_s: float = Field(10.0, gt=0, le=600)
    # new sessions per API key per minute, across the cluster (sliding window); 0: no limit
    new_sessions_per_minute: int = Field(0, ge=0, le=1_000_000)
    # Redis unreachable when a session starts: admit it under this worker's own limits (not
    # counted across the cluster until Redis is back), or refuse it (HTTP 503 / close 1013)
    redis_down: Literal["admit", "refuse"] = "admit"
    rpc_timeout_s: float = Field(5.0, gt=0, le=120)  # call control forwarded to another worker
    sse_keepalive_s: float = Field(15.0, gt=0, le=300)  # comment lines that keep proxies from closing SSE

    @field_validator("ttl_s")
    @classmethod
    def _ttl(cls, v: float, info: Any) -> float:
        beat = info.data.get("heartbeat_s", 2.0)
        if v < 2 * beat:
            raise ValueError(f"must be at least twice heartbeat_s ({beat:g} s), or live workers expire")
        return v
