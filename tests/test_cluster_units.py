"""The cluster's building blocks against the real Redis on 127.0.0.1:6379 (own prefix per test).

Each "worker" here is a `ClusterNode` in this process with its own connection pool, worker id
and heartbeat, exactly as a `moksori serve` process runs it; a worker "killed" stops its
heartbeat and never says goodbye. Redis outages go through a loopback TCP proxy that the test
cuts and restores (the shared Redis server itself is never stopped). Heartbeats are 0.2 s with
a 1 s TTL so expiry tests take about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
from redis_tools import REDIS_URL, delete_prefix, new_prefix, redis_available
from tcp_proxy import TCPProxy

from moksori.cluster import ClusterNode, Held, MemoryLive, RpcError
from moksori.cluster.keystore import RedisKeyStore
from moksori.cluster.redis_client import Keys, RedisUnavailable, connect
from moksori.errors import ConfigError


if not redis_available():  # pragma: no cover - these machines run Redis
    pytest.fail(f"Redis is not reachable at {REDIS_URL}; the cluster tests need it (.ci/run starts it)",
                pytrace=False)

TTL = 1.0
BEAT = 0.2


@pytest.fixture
async def prefix():
    p = new_prefix()
    yield p
    await delete_prefix(p)


class Cluster:
    """Nodes under one prefix, all closed (or abandoned) at the end."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[ClusterNode] = []

    async def node(self, name: str, *, url: str = REDIS_URL, max_per_key: int = 3, per_minute: int = 0,
                   redis_down: str = "admit", rpc_timeout_s: float = 2.0, start: bool = True) -> ClusterNode:
        n = ClusterNode(connect(url, timeout_s=0.5), Keys(self.prefix), worker_id=name, address=f"127.0.0.1:{name}",
                        ttl_s=TTL, heartbeat_s=BEAT, max_sessions_per_key=max_per_key,
                        new_sessions_per_minute=per_minute, redis_down=redis_down, rpc_timeout_s=rpc_timeout_s)
        self.nodes.append(n)
        if start:
            await n.start()
        return n

    async def kill(self, node: ClusterNode) -> None:
        """What kill -9 leaves behind: no heartbeat, no goodbye, no releases."""
        for task in [node._beat, node.hub._task, node.live._task, *node.rpc._tasks]:
            if task is not None:
                task.cancel()
        node._beat = node.hub._task = node.live._task = None
        node.rpc._tasks.clear()
        self.nodes.remove(node)
        with contextlib.suppress(Exception):
            await node.redis.aclose()

    async def close(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(n.close(), 5)


@pytest.fixture
async def cluster(prefix):
    c = Cluster(prefix)
    yield c
    await c.close()


async def until(pred, timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ids(workers) -> list[str]:
    return sorted(w.id for w in workers)


# --------------------------------------------------------------------------- registry


async def test_registry_lists_workers_with_their_sessions_and_expires_a_dead_one(cluster):
    a = await cluster.node("wa")
    b = await cluster.node("wb")
    assert ids(await a.workers()) == ["wa", "wb"]
    a.opened(Held("realtime", "sess_1", "k1", time.time()))
    a.opened(Held("phone", "CA123", "anonymous", time.time()))
    b.opened(Held("webrtc", "rtc_9", "k1", time.time()))

    async def counts():
        ws = {w.id: w for w in await b.workers()}
        return ws if ws["wa"].sessions == 2 and ws["wb"].sessions == 1 else None

    ws = await until(counts, what="session counts")  # written ~50 ms after the change
    assert ws["wa"].calls == 1 and ws["wb"].calls == 1 and ws["wa"].pid > 0 and not ws["wa"].draining
    assert ws["wa"].to_json()["id"] == "wa" and set(ws["wa"].to_json()) >= {"id", "pid", "sessions", "draining"}
    assert await b.registry.locate("phone", "CA123") == "wa"
    assert await a.registry.locate("webrtc", "rtc_9") == "wb"
    assert await a.registry.locate("phone", "nope") is None
    held = await b.registry.held_by("wa")
    assert set(held) == {"realtime:sess_1", "phone:CA123"} and held["realtime:sess_1"]["owner"] == "k1"

    a.closed("phone", "CA123")
    await until(lambda: _is_none(b.registry.locate("phone", "CA123")), what="where-key removal")

    b.draining = True
    await until(lambda: _draining(a, "wb"), what="draining flag")

    await cluster.kill(a)  # stops heartbeating, leaves its keys behind
    assert "wa" in ids(await b.workers())
    t0 = time.monotonic()
    await until(lambda: _gone(b, "wa"), timeout=TTL + 3, what="dead worker expiry")
    assert time.monotonic() - t0 <= TTL + 1.5
    await until(lambda: _is_none(b.registry.locate("realtime", "sess_1")), timeout=TTL + 1, what="held expiry")
    assert await b.registry.held_by("wa") == {}

    await b.close()  # a clean leave: gone at once
    cluster.nodes.remove(b)
    c = await cluster.node("wc")
    assert ids(await c.workers()) == ["wc"]


async def _is_none(coro) -> bool:
    return (await coro) is None


async def _draining(node, wid) -> bool:
    return any(w.id == wid and w.draining for w in await node.workers())


async def _gone(node, wid) -> bool:
    return wid not in ids(await node.workers())


# --------------------------------------------------------------------------- limits


async def test_concurrent_limit_holds_across_workers_under_a_race(cluster):
    a = await cluster.node("wa", max_per_key=3)
    b = await cluster.node("wb", max_per_key=3)
    results = await asyncio.gather(*[(a if i % 2 else b).admit("key1") for i in range(12)])
    admitted = [r for r in results if hasattr(r, "lease")]
    refused = [r for r in results if not hasattr(r, "lease")]
    assert len(admitted) == 3 and len(refused) == 9
    assert {r.code for r in refused} == {"too_many_sessions"} and "limit 3" in refused[0].message
    assert await a.limits.count("key1") == 3
    # another key is not affected; no key (server without API keys) has no per-key limit
    assert hasattr(await b.admit("key2"), "lease")
    assert (await a.admit(None)).lease is None
    # a released place comes back at once
    holder = a if admitted[0].lease.id in a.limits.leases else b
    holder.closed("realtime", "s", admitted[0].lease)
    await until(lambda: _count_is(a, "key1", 2), what="release")
    assert hasattr(await a.admit("key1"), "lease")
    assert not hasattr(await b.admit("key1"), "lease")


async def _count_is(node, owner, n) -> bool:
    return await node.limits.count(owner) == n


async def test_a_draining_worker_refuses_new_sessions_as_local_admission_does(cluster):
    """`cluster_routes.admit` (every entry point's cluster admission) on a draining worker: the
    `draining` refusal of `server/load.py`, counted with its refusals; also when the drain began
    while Redis was being asked (the place taken meanwhile is given back)."""
    from types import SimpleNamespace

    from moksori.server import cluster_routes
    from moksori.server.load import DRAINING, Admission, AdmissionLimits, LoopLag

    a = await cluster.node("wa", max_per_key=3)
    state = SimpleNamespace(cluster=a, auth_required=True, admission=Admission(AdmissionLimits(), LoopLag()))
    ticket = await cluster_routes.admit(state, "k")
    assert isinstance(ticket, cluster_routes.SessionTicket) and ticket.lease is not None
    ticket.closed()
    await until(lambda: _count_is(a, "k", 0), what="release")

    acquire = a.limits.acquire

    async def drain_meanwhile(owner):  # SIGTERM arrives while the cluster is asked
        decision = await acquire(owner)
        state.admission.draining = True
        return decision

    a.limits.acquire = drain_meanwhile
    refusal = await cluster_routes.admit(state, "k")
    assert isinstance(refusal, cluster_routes.Refusal)
    assert (refusal.code, refusal.message, refusal.retry_after_s) == (DRAINING.code, DRAINING.message, 10)
    await until(lambda: _count_is(a, "k", 0), what="the place taken meanwhile given back")
    a.limits.acquire = acquire
    refusal = await cluster_routes.admit(state, "k")  # draining from the start: Redis is not asked
    assert refusal.code == "draining" and await a.limits.count("k") == 0
    assert state.admission.refused["draining"] == 2
    # the cluster's own flag (set with the server's drain) refuses as well
    state.admission.draining = False
    a.draining = True
    assert (await cluster_routes.admit(state, "k")).code == "draining"


async def test_leases_of_a_dead_worker_expire_and_live_ones_are_renewed(cluster):
    a = await cluster.node("wa", max_per_key=2)
    b = await cluster.node("wb", max_per_key=2)
    assert hasattr(await a.admit("k"), "lease")
    assert hasattr(await b.admit("k"), "lease")
    assert not hasattr(await b.admit("k"), "lease")
    await asyncio.sleep(TTL * 1.6)  # b renews its lease every heartbeat; a's are renewed too while alive
    assert await b.limits.count("k") == 2
    await cluster.kill(a)
    await until(lambda: _count_is(b, "k", 1), timeout=TTL + 2, what="dead worker's lease expiry")
    assert hasattr(await b.admit("k"), "lease")  # the place came back by itself


async def test_new_sessions_per_minute_sliding_window(cluster):
    a = await cluster.node("wa", max_per_key=100, per_minute=4)
    b = await cluster.node("wb", max_per_key=100, per_minute=4)
    got = [await (a if i % 2 else b).admit("k") for i in range(6)]
    assert [hasattr(r, "lease") for r in got] == [True] * 4 + [False] * 2
    refusal = got[4]
    assert refusal.code == "rate_limited" and 55 <= refusal.retry_after_s <= 60
    assert "MOKSORI_CLUSTER_NEW_SESSIONS_PER_MINUTE" in refusal.message
    # closing sessions does not give starts back (it is a rate, not a count)
    for n in (a, b):
        for lease in list(n.limits.leases.values()):
            n.closed("realtime", "x", lease)
    await until(lambda: _count_is(a, "k", 0), what="releases")
    assert (await a.admit("k")).code == "rate_limited"
    assert hasattr(await a.admit("other"), "lease")


async def test_a_concurrency_refusal_does_not_use_up_the_rate(cluster):
    a = await cluster.node("wa", max_per_key=1, per_minute=2)
    first = await a.admit("k")
    assert (await a.admit("k")).code == "too_many_sessions"
    assert (await a.admit("k")).code == "too_many_sessions"
    a.closed("realtime", "s", first.lease)
    await until(lambda: _count_is(a, "k", 0), what="release")
    assert hasattr(await a.admit("k"), "lease")  # the second start of the minute


# --------------------------------------------------------------------------- live events


async def test_live_events_published_on_one_worker_are_followed_on_another(cluster):
    a = await cluster.node("wa")
    b = await cluster.node("wb")
    a.live.begin("conv_1", "owner1", channel="realtime")
    a.live.publish("conv_1", "conversation.state", {"state": "user_speaking"})
    await asyncio.sleep(0.2)
    follow = await b.live.follow("conv_1")
    assert follow is not None and follow.owner == "owner1"
    assert follow.snapshot["state"] == "user_speaking" and follow.snapshot["worker"] == "wa"
    a.live.publish("conv_1", "transcript.delta", {"item_id": "item_1", "text": "hello"})
    a.live.publish("conv_1", "transcript.done", {"item_id": "item_1", "text": "hello there", "language": "en"})
    a.live.publish("conv_1", "reply.delta", {"response_id": "resp_1", "delta": "안녕"})
    a.live.end("conv_1", "client_closed")
    got = []
    while (ev := await follow.next(timeout=3)) is not None:
        got.append(ev)
        if ev["type"] == "conversation.ended":
            break
    await follow.close()
    assert [e["type"] for e in got] == ["transcript.delta", "transcript.done", "reply.delta", "conversation.ended"]
    assert [e["seq"] for e in got] == [2, 3, 4, 5] and all(e["conversation_id"] == "conv_1" for e in got)
    assert got[2]["delta"] == "안녕" and got[3]["reason"] == "client_closed"
    # a late follower learns it ended; an unknown conversation is None
    late = await b.live.follow("conv_1")
    assert late.snapshot["state"] == "ended" and await late.next(timeout=0.1) is None
    await late.close()
    assert await b.live.follow("conv_nope") is None


async def test_a_lone_surrogate_in_a_transcript_does_not_stop_live_events(cluster):
    """A client's `\\ud800` escape reaches a transcript as a lone surrogate. Published as is, it
    made Redis's encode raise inside the worker's one sender task, which died: no live event of
    any conversation on that worker went out again. Now it goes out escaped, and so do the
    events after it."""
    a = await cluster.node("wa")
    b = await cluster.node("wb")
    a.live.begin("conv_s", "o")
    await asyncio.sleep(0.2)
    follow = await b.live.follow("conv_s")
    a.live.publish("conv_s", "transcript.done", {"item_id": "item_1", "text": "hi \ud800 there", "language": "en"})
    a.live.publish("conv_s", "reply.delta", {"response_id": "resp_1", "delta": "안녕"})
    got = [await follow.next(timeout=3), await follow.next(timeout=3)]
    await follow.close()
    assert [e["type"] if e else None for e in got] == ["transcript.done", "reply.delta"]
    assert got[0]["text"] == "hi \ud800 there" and got[1]["delta"] == "안녕"


def test_json_text_keeps_utf8_and_escapes_only_what_has_no_utf8_form():
    from moksori.text.unencodable import json_text

    assert json_text({"t": "안녕 \x00"}) == '{"t": "안녕 \\u0000"}'
    text = json_text({"t": "안녕 \ud800"})
    text.encode("utf-8")  # encodable
    assert json.loads(text) == {"t": "안녕 \ud800"}


async def test_a_follower_learns_when_the_worker_holding_the_conversation_dies(cluster):
    a = await cluster.node("wa")
    b = await cluster.node("wb")
    a.live.begin("conv_2", "o")
    await asyncio.sleep(0.2)
    follow = await b.live.follow("conv_2")
    await asyncio.sleep(TTL * 1.5)  # alive: renewed by a's heartbeat
    assert await follow.next(timeout=0.1) is None
    await cluster.kill(a)
    t0 = time.monotonic()
    ev = await follow.next(timeout=TTL + 4)
    assert ev is not None and ev["type"] == "conversation.ended" and ev["reason"] == "worker_lost"
    assert time.monotonic() - t0 < TTL + 3.5
    await follow.close()


async def test_memory_live_events_for_one_process():
    live = MemoryLive()
    live.begin("c", "o")
    f = await live.follow("c")
    live.publish("c", "conversation.state", {"state": "thinking"})
    live.publish("other", "reply.delta", {"delta": "x"})  # unknown conversation: ignored
    live.end("c", "done")
    assert (await f.next(1))["state"] == "thinking"
    assert (await f.next(1))["type"] == "conversation.ended"
    assert await f.next(0.05) is None
    assert (await live.follow("c")).snapshot["state"] == "ended"
    assert await live.follow("x") is None


# --------------------------------------------------------------------------- call control


async def test_call_control_reaches_the_worker_holding_the_call(cluster):
    a = await cluster.node("wa", rpc_timeout_s=1.0)
    b = await cluster.node("wb", rpc_timeout_s=1.0)
    hung_up: list[str] = []

    async def hangup(params: dict[str, Any]) -> dict[str, Any]:
        if params.get("call_id") != "CA1":
            raise RpcError("call_not_found", "no such call here")
        hung_up.append(params["call_id"])
        return {"hung_up": params["call_id"], "by": "wb"}

    async def slow(params: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    async def broken(params: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("boom")

    for n in (a, b):
        n.rpc.handle("call.hangup", hangup)
        n.rpc.handle("slow", slow)
        n.rpc.handle("broken", broken)
    b.opened(Held("phone", "CA1", "anonymous", time.time()))
    await until(lambda: _located(a, "CA1", "wb"), what="call registered")
    assert await a.forward("phone", "CA1", "call.hangup", {"call_id": "CA1"}) == {"hung_up": "CA1", "by": "wb"}
    assert hung_up == ["CA1"] and b.rpc.handled == 1
    with pytest.raises(RpcError) as e:
        await a.rpc.call("wb", "call.hangup", {"call_id": "CA2"})
    assert e.value.code == "call_not_found"
    with pytest.raises(RpcError) as e:
        await a.forward("phone", "CA404", "call.hangup", {"call_id": "CA404"})
    assert e.value.code == "call_not_found"
    with pytest.raises(RpcError) as e:
        await a.rpc.call("wb", "nope", {})
    assert e.value.code == "unknown_method"
    with pytest.raises(RpcError) as e:
        await a.rpc.call("wb", "broken", {})
    assert e.value.code == "internal_error" and "boom" not in e.value.message
    t0 = time.monotonic()
    with pytest.raises(RpcError) as e:
        await a.rpc.call("wb", "slow", {})
    assert e.value.code == "worker_timeout" and time.monotonic() - t0 < 1.8
    t0 = time.monotonic()
    with pytest.raises(RpcError) as e:
        await a.rpc.call("w-gone", "call.hangup", {"call_id": "CA1"})
    assert e.value.code == "worker_unreachable" and time.monotonic() - t0 < 0.5  # no listener: known at once
    # the local worker runs it without Redis
    b.opened(Held("phone", "CA1", "anonymous", time.time()))
    assert (await b.forward("phone", "CA1", "call.hangup", {"call_id": "CA1"}))["by"] == "wb"


async def _located(node, call_id, wid) -> bool:
    return await node.registry.locate("phone", call_id) == wid


async def test_malformed_rpc_requests_are_dropped(cluster, prefix):
    a = await cluster.node("wa")
    called = []

    async def h(params):
        called.append(params)
        return {"ok": 1}

    a.rpc.handle("m", h)
    await asyncio.sleep(0.2)
    r = connect(REDIS_URL)
    try:
        for junk in ["not json", json.dumps([1, 2]), json.dumps({"id": "1", "method": "m"}),
                     json.dumps({"id": "1", "method": "m", "params": {}, "reply_to": "elsewhere:x"}),
                     "x" * 70_000]:
            await r.publish(Keys(prefix).rpc("wa"), junk)
        await asyncio.sleep(0.3)
        assert called == []
        b = await cluster.node("wb")
        assert await b.rpc.call("wa", "m", {"n": 1}) == {"ok": 1}  # still serving
    finally:
        await r.aclose()


# --------------------------------------------------------------------------- Redis outages


async def test_redis_outage_live_state_goes_on_new_sessions_degrade_and_everything_recovers(cluster):
    with TCPProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        a = await cluster.node("wa", url=url, max_per_key=5)
        watcher = await cluster.node("wb")  # straight to Redis: sees what a wrote
        first = await a.admit("k")
        a.opened(Held("realtime", "sess_a", "k", time.time()))
        a.live.begin("conv_a", "k")
        await until(lambda: _count_is(watcher, "k", 1), what="lease")
        follow = await a.live.follow("conv_a")  # a follower on the worker that loses Redis

        proxy.cut()
        # new sessions: admitted under the worker's own limits, fast (the breaker remembers)
        t0 = time.monotonic()
        d1 = await a.admit("k")
        d2 = await a.admit("k")
        assert d1.degraded and d2.degraded and time.monotonic() - t0 < 1.5
        assert a.degraded_admissions == 2
        a.opened(Held("realtime", "sess_b", "k", time.time()))
        a.live.publish("conv_a", "reply.delta", {"delta": "lost"})  # never raises, never blocks
        await asyncio.sleep(TTL * 1.5)  # longer than the TTL: a's entries expire meanwhile
        assert not a.healthy
        assert "wa" not in ids(await watcher.workers())
        with pytest.raises(RedisUnavailable):
            await a.workers()

        proxy.restore()
        await until(lambda: _async(a.healthy), timeout=5, what="heartbeat recovery")
        ws = await until(lambda: _has(watcher, "wa"), what="registry rewritten")
        assert ws["wa"].sessions == 2
        # every lease is counted again, including the two admitted during the outage
        await until(lambda: _count_is(watcher, "k", 3), what="leases renewed")
        assert first.lease.id in a.limits.leases
        # the follower was resubscribed and told to resync (with the state as it is now), then
        # gets new events; what was published while it was cut off is gone (pub/sub)
        resync = await follow.next(timeout=5)
        assert resync is not None and resync["type"] == "conversation.state" and resync["resync"] is True
        assert resync["worker"] == "wa"
        a.live.publish("conv_a", "reply.delta", {"delta": "after"})
        ev = await follow.next(timeout=5)
        assert ev is not None and ev["delta"] == "after" and ev["seq"] == 2
        await follow.close()


async def _async(v):
    return v


async def _has(node, wid):
    ws = {w.id: w for w in await node.workers()}
    return ws if wid in ws else None


async def test_redis_outage_with_refuse_policy_refuses_clearly(cluster):
    with TCPProxy("127.0.0.1", 6379) as proxy:
        a = await cluster.node("wa", url=f"redis://127.0.0.1:{proxy.port}/0", redis_down="refuse")
        proxy.cut()
        r = await a.admit("k")
        assert r.code == "cluster_unavailable" and "MOKSORI_CLUSTER_REDIS_DOWN" in r.message
        assert (await a.admit(None)).lease is None  # no keys, no per-key limits: nothing to ask Redis
        proxy.restore()
        await until(lambda: _admitted(a, "k"), timeout=5, what="admission after recovery")


async def _admitted(node, owner) -> bool:
    return hasattr(await node.admit(owner), "lease")


async def test_a_worker_starts_while_redis_is_down_and_joins_when_it_comes_back(cluster):
    with TCPProxy("127.0.0.1", 6379) as proxy:
        proxy.cut()
        a = await cluster.node("wa", url=f"redis://127.0.0.1:{proxy.port}/0")
        watcher = await cluster.node("wb")
        assert not a.healthy
        got = []

        async def h(params):
            got.append(params)
            return {}

        a.rpc.handle("m", h)
        proxy.restore()
        await until(lambda: _has(watcher, "wa"), timeout=5, what="late join")
        await until(lambda: _rpc_ok(watcher), timeout=5, what="rpc subscription after the outage")
        assert got


async def _rpc_ok(node) -> bool:
    try:
        await node.rpc.call("wa", "m", {})
        return True
    except RpcError:
        return False


# --------------------------------------------------------------------------- ephemeral keys, config


async def test_ephemeral_keys_minted_on_one_worker_work_on_another(cluster):
    from moksori.server.ephemeral_keys import EphemeralKey, MemoryKeyStore, StoreFull, new_key

    with TCPProxy("127.0.0.1", 6379) as proxy:
        a = await cluster.node("wa", url=f"redis://127.0.0.1:{proxy.port}/0")
        b = await cluster.node("wb")
        sa = RedisKeyStore(a.redis, a.keys, EphemeralKey, MemoryKeyStore(), a.breaker, full=StoreFull)
        sb = RedisKeyStore(b.redis, b.keys, EphemeralKey, MemoryKeyStore(), b.breaker, full=StoreFull)
        key = new_key(60, {"instructions": "hi"}, owner="lbl")
        await sa.put(key)
        got = await sb.get(key.value)
        assert got == key and got.session == {"instructions": "hi"}
        assert await sb.get("ek_nope") is None
        expired = new_key(60, {}, now=time.time() - 120)
        await sa.put(expired)
        assert await sb.get(expired.value) is None
        proxy.cut()  # outage: minted and found locally on a only
        local = new_key(60, {}, owner="lbl")
        await sa.put(local)
        assert await sa.get(local.value) == local and sa.fallback_puts == 1
        assert await sb.get(local.value) is None
        proxy.restore()


def test_cluster_mode_checks_are_one_line(monkeypatch):
    from moksori.cluster import check_cluster_settings
    from moksori.settings import load_settings

    check_cluster_settings(load_settings())  # off: nothing to check
    monkeypatch.setenv("MOKSORI_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("MOKSORI_STORE_URL", "sqlite+aiosqlite:///x.db")
    with pytest.raises(ConfigError, match="PostgreSQL store") as e:
        check_cluster_settings(load_settings())
    assert "\n" not in str(e.value)
    monkeypatch.setenv("MOKSORI_STORE_URL", "postgresql+asyncpg://postgres@127.0.0.1/x")
    with pytest.raises(ConfigError, match="MOKSORI_TELEPHONY_STREAM_SECRET"):
        check_cluster_settings(load_settings())
    monkeypatch.setenv("MOKSORI_TELEPHONY_STREAM_SECRET", "s3cret")
    check_cluster_settings(load_settings())
    monkeypatch.setenv("MOKSORI_REDIS_URL", "http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="redis://"):
        check_cluster_settings(load_settings())
    monkeypatch.setenv("MOKSORI_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("MOKSORI_REDIS_PREFIX", "has space")
    with pytest.raises(ConfigError, match="PREFIX"):
        check_cluster_settings(load_settings())
    monkeypatch.setenv("MOKSORI_REDIS_PREFIX", "p:")
    monkeypatch.setenv("MOKSORI_CLUSTER_TTL_S", "1")
    with pytest.raises(ConfigError, match="cluster.ttl_s"):
        load_settings()


def test_moksori_serve_refuses_cluster_mode_without_its_shared_secret(tmp_path):
    """The real command: one line, a non-zero exit, before any model loads (phone calls' webhook
    and media stream may reach different workers: the stream-token secret must be shared)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MOKSORI_")}
    env.update({"MOKSORI_REDIS_URL": REDIS_URL, "MOKSORI_DATA_DIR": str(tmp_path),
                "MOKSORI_STORE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/unused"})
    for extra, needle in (({}, "MOKSORI_TELEPHONY_STREAM_SECRET"),
                          ({"MOKSORI_TELEPHONY_STREAM_SECRET": " "}, "MOKSORI_TELEPHONY_STREAM_SECRET"),
                          ({"MOKSORI_TELEPHONY_STREAM_SECRET": "s", "MOKSORI_STORE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"},
                           "PostgreSQL")):
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "moksori", "serve", "--port", "1"], env={**env, **extra},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert "warming up" not in done.stderr and time.monotonic() - t0 < 30


# --------------------------------------------------------------------------- hub: subscriptions that fail


async def _numsub(node, channel: str) -> int:
    return dict(await node.redis.pubsub_numsub(channel)).get(channel, 0)


async def test_a_follow_tried_during_a_redis_outage_leaves_nothing_behind_in_the_hub(cluster):
    """A subscription that Redis did not confirm in time (a follow during an outage), or whose
    caller went away while it waited, leaves no trace: once Redis is back the hub reports itself
    connected again, and the same channel can be subscribed (and receives) at once."""
    with TCPProxy("127.0.0.1", 6379) as proxy:
        a = await cluster.node("wa", url=f"redis://127.0.0.1:{proxy.port}/0")
        watcher = await cluster.node("wb")
        a.live.begin("conv_o", "k")
        await until(lambda: _async(a.hub.connected), what="hub connected")
        await until(lambda: watcher.redis.exists(a.keys.conversation("conv_o")), what="its record written")
        proxy.cut()
        t0 = time.monotonic()
        with pytest.raises(RedisUnavailable):
            await a.live.follow("conv_o")  # the SSE route answers 503 cluster_unavailable
        assert time.monotonic() - t0 < 4
        gone_channel = a.keys.events("conv_gone")
        waiter = asyncio.create_task(a.hub.subscribe(gone_channel))
        await asyncio.sleep(0.2)
        waiter.cancel()  # the follower hung up while Redis did not answer
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        proxy.restore()
        await until(lambda: _async(a.hub.connected), timeout=6, what="the hub connected again")
        t0 = time.monotonic()
        follow = await a.live.follow("conv_o")
        assert follow is not None and time.monotonic() - t0 < 1
        a.live.publish("conv_o", "reply.delta", {"delta": "after"})
        ev = await follow.next(timeout=3)
        assert ev is not None and ev["delta"] == "after"
        await follow.close()
        assert await _numsub(watcher, gone_channel) == 0  # nobody listens there: not subscribed again


async def test_a_confirmation_that_comes_after_its_subscriber_left_is_not_taken_for_a_subscription(cluster):
    """Slow Redis: SUBSCRIBE goes out, the caller gives up, UNSUBSCRIBE goes out, then the late
    confirmation of the first arrives. The hub must not believe the channel is subscribed: a
    later subscription of it must really subscribe, and get what is published."""
    with TCPProxy("127.0.0.1", 6379) as proxy:
        a = await cluster.node("wa", url=f"redis://127.0.0.1:{proxy.port}/0")
        watcher = await cluster.node("wb")
        await until(lambda: _async(a.hub.connected), what="hub connected")
        channel = a.keys.events("conv_slow")
        proxy.delay_s = 0.4
        with pytest.raises(RedisUnavailable):
            await a.hub.subscribe(channel, timeout=0.2)
        await asyncio.sleep(2.0)  # the late confirmation, then the unsubscription's, come through
        proxy.delay_s = 0
        await asyncio.sleep(0.3)
        sub = await a.hub.subscribe(channel, timeout=3)
        try:
            assert await _numsub(watcher, channel) == 1
            await watcher.redis.publish(channel, "hello")
            assert await sub.get(timeout=2) == "hello"
        finally:
            await sub.close()


# --------------------------------------------------------------------------- limits: renew and release


async def test_a_lease_released_while_a_heartbeat_renews_it_stays_released(cluster):
    """The heartbeat took its list of leases and its script is on its way when the session ends:
    the release must win (the place comes back now, not after the TTL)."""
    a = await cluster.node("wa", max_per_key=5, start=False)
    decision = await a.limits.acquire("k")
    assert decision.lease is not None and await a.limits.count("k") == 1
    real = a.limits._renew
    gate = asyncio.Event()

    async def renew_in_flight(**kw):
        await gate.wait()  # the script is still travelling when the release comes
        return await real(**kw)

    a.limits._renew = renew_in_flight
    renewing = asyncio.create_task(a.limits.renew())
    await asyncio.sleep(0.05)
    releasing = asyncio.create_task(a.limits.release(decision.lease))
    await asyncio.sleep(0.2)
    gate.set()
    await renewing
    await releasing
    assert await a.limits.count("k") == 0
    await a.limits.renew()  # later heartbeats do not bring it back either
    assert await a.limits.count("k") == 0


# --------------------------------------------------------------------------- slow Redis


async def test_pipelines_are_closed_when_a_slow_redis_times_out(cluster):
    """Every pipeline gives its connection back when a command times out (redis-py otherwise
    warns "Unclosed Pipeline client" when it is collected)."""
    import gc
    import warnings

    loop = asyncio.get_running_loop()
    unclosed: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: unclosed.append(str(ctx.get("message"))))
    try:
        with warnings.catch_warnings(record=True) as caught, TCPProxy("127.0.0.1", 6379) as proxy:
            warnings.simplefilter("always")
            a = await cluster.node("wa", url=f"redis://127.0.0.1:{proxy.port}/0", start=False)
            a.limits.hold_unchecked("k")
            a.live.live["conv_x"] = _local_record(a)
            await a.registry.sync()  # loads the script while Redis is quick
            proxy.delay_s = 0.8  # slower than the client's 0.5 s timeout
            for call in (a.registry.sync, a.registry.workers, a.limits.renew, a.live.renew,
                         lambda: a.limits.count("k")):
                with pytest.raises(RedisUnavailable):
                    await call()
            proxy.delay_s = 0
            gc.collect()
            await asyncio.sleep(0.1)
            gc.collect()
            unclosed += [str(w.message) for w in caught if "Unclosed" in str(w.message)]
    finally:
        loop.set_exception_handler(previous)
    assert not [m for m in unclosed if "Unclosed" in m], unclosed


def _local_record(node):
    from moksori.cluster.live import _Local

    return _Local({"owner": "k", "worker": node.worker_id, "state": "idle", "channel": "realtime",
                   "started_at": f"{time.time():.3f}"})


# --------------------------------------------------------------------------- ephemeral keys: caps


async def test_ephemeral_keys_are_capped_across_the_cluster_by_count_and_bytes(cluster, prefix):
    """The caps of the in-process store (MOKSORI_WEBRTC_MAX_EPHEMERAL_KEYS, 128 MiB) hold for the
    whole cluster in Redis: a mint past either is refused with `StoreFull` (the route answers
    429); expired keys give their place back, and the accounting expires with the keys."""
    import dataclasses

    from moksori.server.ephemeral_keys import EphemeralKey, MemoryKeyStore, StoreFull, new_key

    a = await cluster.node("wa")
    b = await cluster.node("wb")
    sa = RedisKeyStore(a.redis, a.keys, EphemeralKey, MemoryKeyStore(3), a.breaker, full=StoreFull)
    sb = RedisKeyStore(b.redis, b.keys, EphemeralKey, MemoryKeyStore(3), b.breaker, full=StoreFull)
    for _ in range(2):  # two short-lived keys on a, one on b
        await sa.put(dataclasses.replace(new_key(60, {"instructions": "a"}), expires_at=time.time() + 1.0))
    kept = new_key(60, {"instructions": "b"})
    await sb.put(kept)
    for store in (sa, sb):  # 3 live keys across the two workers
        with pytest.raises(StoreFull, match="3 ephemeral keys are live"):
            await store.put(new_key(60, {}))
    assert await sa.get(kept.value) == kept
    await asyncio.sleep(1.2)  # the two short-lived keys expire: their places come back
    await sb.put(new_key(60, {}))
    await sa.put(new_key(60, {}))
    with pytest.raises(StoreFull):
        await sa.put(new_key(60, {}))
    # minting at once on both workers cannot take more places than there are
    keys = Keys(prefix + "race:")
    sc = RedisKeyStore(a.redis, keys, EphemeralKey, MemoryKeyStore(5), a.breaker, full=StoreFull)
    sd = RedisKeyStore(b.redis, keys, EphemeralKey, MemoryKeyStore(5), b.breaker, full=StoreFull)
    got = await asyncio.gather(*[(sc if i % 2 else sd).put(new_key(60, {})) for i in range(12)],
                               return_exceptions=True)
    assert sum(r is None for r in got) == 5 and all(isinstance(r, StoreFull) for r in got if r is not None)

    # bytes: two keys of ~2 KB fit in 5 KB, a third does not; a small one still does
    keys = Keys(prefix + "bytes:")
    se = RedisKeyStore(a.redis, keys, EphemeralKey, MemoryKeyStore(100, max_bytes=5000), a.breaker, full=StoreFull)
    big = {"instructions": "x" * 2000}
    await se.put(new_key(60, big))
    await se.put(new_key(60, big))
    with pytest.raises(StoreFull, match="at most 5000"):
        await se.put(new_key(60, big))
    await se.put(new_key(60, {}))
    # nothing stays behind in Redis: the accounting expires with the keys it counts
    ttls = [await a.redis.pttl(k) async for k in a.redis.scan_iter(match=prefix + "*ek*")]
    assert len(ttls) >= 3 and all(0 < t <= 61_000 for t in ttls), ttls
