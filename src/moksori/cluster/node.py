"""This worker's membership of the cluster: the parts put together, and the heartbeat.

    node = ClusterNode.from_settings(settings, address="10.0.0.5:8001")
    await node.start()
    admitted = await node.admit(owner)          # Admitted, or a Refusal
    node.opened(Held("realtime", session_id, owner, time.time()))
    ...
    node.closed("realtime", session_id, admitted.lease)
    await node.close()

    holder = await node.claim("phone", call_id)  # None: ours (one stream per call, cluster-wide)
    ...
    await node.unclaim("phone", call_id)        # the call ended (or never started)

The heartbeat (every `heartbeat_s`, and ~50 ms after a session opens or closes) writes the
registry, renews this worker's limit leases and keeps its live conversations' records alive.
When Redis does not answer, live sessions are not touched: the heartbeat keeps trying (every
second) and everything is written again as soon as Redis is back. New sessions meanwhile are
admitted under this worker's own limits, or refused, per `MOKSORI_CLUSTER_REDIS_DOWN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

from moksori import cancellation
from moksori.cluster.hub import PubSubHub
from moksori.cluster.limits import Lease, Limits
from moksori.cluster.live import RedisLive
from moksori.cluster.redis_client import Breaker, Keys, RedisUnavailable, connect
from moksori.cluster.registry import Held, Registry, WorkerInfo
from moksori.cluster.rpc import Rpc, RpcError

log = logging.getLogger("moksori.cluster")

SYNC_DELAY_S = 0.05  # changes are written together, this long after the first one
# A call that started a moment ago may not be in Redis yet (its worker writes it SYNC_DELAY_S after
# it opens, later on a busy machine): a control request looks again for this long before 404.
LOCATE_GRACE_S = 1.5
RETRY_DOWN_S = 1.0  # heartbeat interval while Redis is unreachable


@dataclass(frozen=True, slots=True)
class Refusal:
    """A new session turned away (same fields as the server's admission refusals)."""

    code: str  # too_many_sessions | rate_limited | cluster_unavailable
    message: str
    retry_after_s: int = 5


@dataclass(frozen=True, slots=True)
class Admitted:
    lease: Lease | None  # None: no per-key limits apply (no API keys)
    degraded: bool = False  # admitted while Redis was unreachable, under this worker's limits only


def default_worker_id(address: str) -> str:
    host = socket.gethostname().split(".")[0][:24] or "worker"
    port = address.rsplit(":", 1)[-1] if ":" in address else "0"
    return f"{host}-{port}-{os.getpid()}-{secrets.token_hex(2)}"


class ClusterNode:
    def __init__(self, redis: Any, keys: Keys, *, worker_id: str, address: str, ttl_s: float, heartbeat_s: float,
                 max_sessions_per_key: int, new_sessions_per_minute: int, redis_down: str = "admit",
                 rpc_timeout_s: float = 5.0) -> None:
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.heartbeat_s = heartbeat_s
        self.redis_down = redis_down
        self.breaker = Breaker(cool_s=min(2.0, heartbeat_s))
        self.registry = Registry(redis, keys, worker_id=worker_id, pid=os.getpid(), address=address, ttl_s=ttl_s)
        self.limits = Limits(redis, keys, max_sessions_per_key=max_sessions_per_key,
                             new_sessions_per_minute=new_sessions_per_minute, ttl_s=ttl_s)
        self.hub = PubSubHub(redis)
        self.live = RedisLive(redis, keys, self.hub, worker_id=worker_id, ttl_s=ttl_s,
                              check_s=min(2.0, ttl_s / 2))
        self.rpc = Rpc(redis, keys, self.hub, worker_id=worker_id, timeout_s=rpc_timeout_s)
        self._dirty = asyncio.Event()
        self._beat: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self.degraded_admissions = 0
        self.unchecked_claims = 0  # calls taken while Redis was unreachable, checked on this worker only
        self.refused: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Any, *, address: str) -> ClusterNode:
        r, c = settings.redis, settings.cluster
        keys = Keys(r.prefix)
        return cls(connect(r.url, timeout_s=r.timeout_s), keys,
                   worker_id=c.worker_id or default_worker_id(address), address=c.advertise or address,
                   ttl_s=c.ttl_s, heartbeat_s=c.heartbeat_s,
                   max_sessions_per_key=settings.server.max_sessions_per_key,
                   new_sessions_per_minute=c.new_sessions_per_minute, redis_down=c.redis_down,
                   rpc_timeout_s=c.rpc_timeout_s)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.hub.start()
        self.live.start()
        await self.rpc.start()
        try:
            await self.sync()
            log.info("cluster: worker %s joined (Redis prefix %s)", self.worker_id, self.keys.prefix)
        except RedisUnavailable as e:
            log.warning("cluster: %s; serving anyway, joining when Redis answers", e)
        self._beat = asyncio.create_task(self._heartbeat(), name="cluster-heartbeat")

    async def close(self) -> None:
        if self._beat is not None:
            await cancellation.stop(self._beat)
            self._beat = None
        if self._releases:
            await asyncio.wait(self._releases, timeout=1.0)
        await self.live.close()
        await self.rpc.close()
        await self.hub.close()
        with contextlib.suppress(RedisUnavailable):
            await cancellation.wait_for(self.registry.leave(), 2.0)
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    @property
    def healthy(self) -> bool:
        return self.breaker.healthy

    async def sync(self) -> None:
        """One heartbeat: registry, leases, live records. Raises `RedisUnavailable`."""
        await self.registry.sync()
        await self.limits.renew()
        await self.live.renew()

    async def _heartbeat(self) -> None:
        while True:
            cancellation.raise_if_cancelled()
            try:
                await self.sync()
                if not self.breaker.healthy:
                    log.warning("cluster: Redis is back; registry, leases and live records written again")
                self.breaker.success()
            except RedisUnavailable as e:
                if self.breaker.healthy:
                    log.warning("cluster: %s; live sessions go on, retrying every %g s", e, RETRY_DOWN_S)
                self.breaker.failure(e)
            except Exception:
                log.exception("cluster: heartbeat failed")
            interval = self.heartbeat_s if self.breaker.healthy else min(self.heartbeat_s, RETRY_DOWN_S)
            # (3.11's asyncio.wait_for lost close()'s cancel when a drain's `_dirty` came with it)
            with contextlib.suppress(TimeoutError):
                await cancellation.wait_for(self._dirty.wait(), interval)
                await asyncio.sleep(SYNC_DELAY_S)  # gather the changes that come together
            self._dirty.clear()

    # ------------------------------------------------------------------ sessions

    @property
    def draining(self) -> bool:
        return self.registry.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        """Shown in the registry at the next write, ~50 ms from now. Safe to set from a signal
        handler (SIGTERM starts the drain there): the loop is woken through its self-pipe."""
        self.registry.draining = value
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dirty.set)
        else:
            self._dirty.set()

    async def admit(self, owner: str | None) -> Admitted | Refusal:
        """May one more session of `owner` (an API key's label; None without keys) start?"""
        if owner is None:
            return Admitted(None)
        if not self.breaker.open:
            try:
                decision = await self.limits.acquire(owner)
            except RedisUnavailable as e:
                self.breaker.failure(e)
            else:
                self.breaker.success()
                if decision.lease is not None:
                    return Admitted(decision.lease)
                return self._refuse(Refusal(decision.code or "too_many_sessions", decision.message,
                                            decision.retry_after_s))
        if self.redis_down == "refuse":
            return self._refuse(Refusal("cluster_unavailable",
                                        "the cluster's shared state (Redis) is unreachable: no new sessions for "
                                        "now (MOKSORI_CLUSTER_REDIS_DOWN=refuse)", 5))
        self.degraded_admissions += 1
        return Admitted(self.limits.hold_unchecked(owner), degraded=True)

    def _refuse(self, refusal: Refusal) -> Refusal:
        self.refused[refusal.code] = self.refused.get(refusal.code, 0) + 1
        return refusal

    def opened(self, held: Held) -> None:
        self.registry.add(held)
        self._dirty.set()

    def closed(self, kind: str, ident: str, lease: Lease | None = None) -> None:
        self.registry.remove(kind, ident)
        self._dirty.set()
        if lease is not None:
            self.release(lease)

    def release(self, lease: Lease) -> None:
        """Give a session's place back, in the background (an outage leaves it to expire)."""
        async def run() -> None:
            with contextlib.suppress(RedisUnavailable):
                await self.limits.release(lease)

        task = asyncio.create_task(run(), name="cluster-release")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    # ------------------------------------------------------------------ calls held by one worker at a time

    async def claim(self, kind: str, ident: str) -> str | None:
        """Take call `ident` for this worker before it opens: None when it is this worker's now,
        else the id of the worker that holds it. The claim is renewed by the heartbeat once the
        call is `opened`, and expires with this worker. Redis unreachable: None (the caller's own
        check on this worker is all there is), with a warning."""
        if not self.breaker.open:
            try:
                holder = await self.registry.claim(kind, ident)
            except RedisUnavailable as e:
                self.breaker.failure(e)
            else:
                self.breaker.success()
                return None if holder == self.worker_id else holder
        self.unchecked_claims += 1
        log.warning("cluster: %s %s is checked for a second stream on this worker only (%s)", kind, ident[:64],
                    self.breaker.last_error or "Redis is unreachable")
        return None

    async def unclaim(self, kind: str, ident: str) -> None:
        """Give a claimed call back now (its call ended, or never opened). Never raises: when Redis
        does not answer, the next heartbeat that reaches it deletes the claim (or it expires)."""
        self.registry.forget(kind, ident)
        if self.breaker.open:
            return
        try:
            await self.registry.release(kind, ident)
        except RedisUnavailable as e:
            self.breaker.failure(e)

    # ------------------------------------------------------------------ queries, call control

    async def workers(self) -> list[WorkerInfo]:
        return await self.registry.workers()

    async def forward(self, kind: str, ident: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run `method` on the worker holding `kind:ident` (maybe this one). Raises `RpcError`
        (call_not_found when no worker holds it) or `RedisUnavailable`."""
        deadline = time.monotonic() + LOCATE_GRACE_S
        while (worker := await self.registry.locate(kind, ident)) is None:
            if time.monotonic() >= deadline:
                raise RpcError("call_not_found", f"no worker holds {kind} {ident[:64]}")
            await asyncio.sleep(0.1)
        return await self.rpc.call(worker, method, params)
