"""One media stream per phone call across a cluster: two (or three) workers as real processes
(the real app with fast fake models, `tests/store_server.py`) sharing the real Redis (a prefix
of their own) and a PostgreSQL database of their own, driven by a simulated carrier speaking
Twilio's media-stream messages (`carrier_sim.py`).

A second stream for a call already live on worker A used to be taken by worker B (only the
worker's own calls were checked); now the call id is claimed in Redis at the stream's `start`:

* the second stream is refused on B exactly as on A (1008, "already has a live stream"), and
  its token is not spent: once the first stream has ended it opens the call (on B);
* two streams of one call starting at the same moment on two workers give one call;
* a worker killed with `kill -9` holds its calls' ids only until its registry entries expire;
* with Redis unreachable a worker checks its own calls only, as one process does (a warning in
  its log, no traceback).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from carrier_sim import CarrierSim
from databases import postgres_database
from redis_tools import REDIS_URL, delete_prefix_sync, new_prefix, redis_available
from servers import ServerProcess, free_port
from tcp_proxy import TCPProxy

from moksori.telephony.signatures import make_stream_token

HERE = Path(__file__).resolve().parent
SECRET = "claim-stream-secret"
TTL_S = 2.0
REFUSAL = "already has a live stream"

if not redis_available():  # pragma: no cover - these machines run Redis
    pytest.fail(f"Redis is not reachable at {REDIS_URL}; the cluster tests need it", pytrace=False)


def worker(env: dict[str, str], tmp: Path, name: str, redis_url: str = REDIS_URL) -> ServerProcess:
    port = free_port()
    return ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port, ready_path="/health",
                         ready_timeout_s=60, cwd=tmp,
                         env={**env, "MOKSORI_SERVER_PORT": str(port), "MOKSORI_CLUSTER_WORKER_ID": name,
                              "MOKSORI_DATA_DIR": str(tmp / name), "MOKSORI_REDIS_URL": redis_url})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    prefix = new_prefix()
    tmp = tmp_path_factory.mktemp("claims")
    host, port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].split(":")
    proxy = TCPProxy(host, int(port)).start()  # worker B reaches Redis through it: a test cuts it
    with postgres_database() as db:
        env = {"MOKSORI_REDIS_PREFIX": prefix, "MOKSORI_STORE_URL": db, "MOKSORI_TELEPHONY_STREAM_SECRET": SECRET,
               "MOKSORI_CLUSTER_HEARTBEAT_S": str(TTL_S / 4), "MOKSORI_CLUSTER_TTL_S": str(TTL_S),
               "MOKSORI_SERVER_MAX_SESSIONS": "20", "PYTHONUNBUFFERED": "1"}
        a = worker(env, tmp, "worker-a")
        b = worker(env, tmp, "worker-b", f"redis://127.0.0.1:{proxy.port}/0")
        try:
            a.start()
            b.start()
            yield {"a": a, "b": b, "env": env, "tmp": tmp, "prefix": prefix, "proxy": proxy}
        finally:
            b.stop()
            a.stop()
            proxy.stop()
            delete_prefix_sync(prefix)


def new_call() -> str:
    return "CA" + os.urandom(16).hex()


def token(call_id: str, *, later: int = 0) -> str:
    """A valid stream token for `call_id` (each `later` makes another one, as a second webhook would)."""
    return make_stream_token(SECRET.encode(), call_id, carrier="twilio", now=int(time.time()) + later)


def stream(srv: ServerProcess, call_id: str, tok: str):
    return CarrierSim.connect(f"ws://127.0.0.1:{srv.port}/telephony/twilio/stream", call_id=call_id,
                              params={"token": tok})


async def refused(srv: ServerProcess, call_id: str, tok: str) -> tuple[int | None, str, int]:
    """A stream that starts (and keeps streaming audio) until the server closes it:
    (close code, close reason, agent media messages it got)."""
    async with stream(srv, call_id, tok) as call:
        await call.start()
        code = await call.wait_closed(timeout=5)
        return code, call.ws.close_reason or "", len(call.chunks)


async def holder(prefix: str, call_id: str) -> str | None:
    from redis.asyncio import Redis

    r = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return await r.get(f"{prefix}where:phone:{call_id}")
    finally:
        await r.aclose()


async def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := await pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def test_a_second_stream_of_a_call_live_on_another_worker_is_refused(cluster):
    a, b, prefix = cluster["a"], cluster["b"], cluster["prefix"]
    call_id = new_call()
    second = token(call_id, later=1)
    async with stream(a, call_id, token(call_id)) as first:
        await first.start()
        await first.wait_audio(timeout=10)  # greeted: the call is live on worker A
        assert await holder(prefix, call_id) == "worker-a"
        on_b = await refused(b, call_id, second)
        on_a = await refused(a, call_id, token(call_id, later=2))
        assert on_b[0] == 1008 and REFUSAL in on_b[1] and on_b[2] == 0, on_b
        assert on_b == on_a  # the same refusal, whichever worker the stream reached
        assert first.closed_at is None and await holder(prefix, call_id) == "worker-a"
        await first.hang_up()  # the carrier's stop: the call ends on A and gives its id back
    await until(lambda: _gone(prefix, call_id), 2, "the call id given back")
    # the refused stream's token was not spent: it opens the call now, on B
    async with stream(b, call_id, second) as retry:
        await retry.start()
        await retry.wait_audio(timeout=10)
        assert await holder(prefix, call_id) == "worker-b"
        await retry.hang_up()
    await until(lambda: _gone(prefix, call_id), 2, "the call id given back")
    for srv in (a, b):
        assert "Traceback" not in srv.log_text(), srv.log_text()[-3000:]


async def _gone(prefix: str, call_id: str) -> bool:
    return await holder(prefix, call_id) is None


async def test_two_streams_of_one_call_starting_at_once_on_two_workers_make_one_call(cluster):
    a, b, prefix = cluster["a"], cluster["b"], cluster["prefix"]
    for _ in range(3):
        call_id = new_call()
        async with stream(a, call_id, token(call_id)) as on_a, stream(b, call_id, token(call_id, later=1)) as on_b:
            await asyncio.gather(on_a.start(), on_b.start())
            results = await asyncio.gather(on_a.wait_audio(timeout=10), on_b.wait_audio(timeout=10),
                                           return_exceptions=True)
            greeted = [sim for sim, r in zip((on_a, on_b), results) if isinstance(r, float)]
            assert len(greeted) == 1, results
            loser = on_b if greeted[0] is on_a else on_a
            assert await loser.wait_closed(timeout=5) == 1008 and REFUSAL in (loser.ws.close_reason or "")
            assert await holder(prefix, call_id) == ("worker-a" if greeted[0] is on_a else "worker-b")
            await greeted[0].hang_up()
        await until(lambda c=call_id: _gone(prefix, c), 2, "the call id given back")


async def test_a_killed_worker_holds_its_calls_only_until_its_entries_expire(cluster):
    env, tmp, b, prefix = cluster["env"], cluster["tmp"], cluster["b"], cluster["prefix"]
    c = worker(env, tmp, "worker-c").start()
    try:
        call_id = new_call()
        second = token(call_id, later=1)
        async with stream(c, call_id, token(call_id)) as first:
            await first.start()
            await first.wait_audio(timeout=10)
            code, reason, _ = await refused(b, call_id, second)
            assert code == 1008 and REFUSAL in reason, (code, reason)
            os.kill(c.proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            await until(lambda: _gone(prefix, call_id), TTL_S + 3, "the dead worker's claim to expire")
            assert time.monotonic() - t0 <= TTL_S + 1
        async with stream(b, call_id, second) as again:  # the carrier's new stream, on a live worker
            await again.start()
            await again.wait_audio(timeout=10)
            await again.hang_up()
    finally:
        c.stop()


async def test_with_redis_unreachable_a_worker_checks_its_own_calls(cluster):
    a, b, prefix, proxy = cluster["a"], cluster["b"], cluster["prefix"], cluster["proxy"]
    call_id = new_call()
    proxy.cut()
    try:
        async with stream(a, call_id, token(call_id)) as on_a:
            await on_a.start()
            await on_a.wait_audio(timeout=10)
            # B cannot see A's claim: it takes the call, as a single process would (and says so)
            async with stream(b, call_id, token(call_id, later=1)) as on_b:
                await on_b.start()
                await on_b.wait_audio(timeout=10)
                # ... and still refuses a second stream of a call it holds itself
                code, reason, media = await refused(b, call_id, token(call_id, later=2))
                assert code == 1008 and REFUSAL in reason and media == 0, (code, reason, media)
                await on_b.hang_up()
            await on_a.hang_up()
    finally:
        proxy.restore()
    log = b.log_text()
    assert "is checked for a second stream on this worker only" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # Redis back: B claims in Redis again
    async def b_refuses_a_call_live_on_a() -> bool:
        other = new_call()
        async with stream(a, other, token(other)) as live:
            await live.start()
            await live.wait_audio(timeout=10)
            code, reason, _ = await refused(b, other, token(other, later=1))
            await live.hang_up()
        return code == 1008 and REFUSAL in reason

    await until(b_refuses_a_call_live_on_a, 15, "worker B using Redis again")
    await until(lambda: _gone(prefix, call_id), 5, "the call ids of the outage given back")
