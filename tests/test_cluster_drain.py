"""A worker drained (SIGTERM) while live-event followers (Server-Sent Events) read from it.

Real processes: worker A (`tests/store_server.py`) holds a Realtime session; worker B is served
as `moksori serve` serves it (the draining server, `tests/drain_server.py`) and streams A's
conversation to followers, through the real Redis (own prefix) and a PostgreSQL database of
their own. A follower is not a session: the drain does not wait for it. When the drain starts,
B ends each stream cleanly (a comment saying so, then the end of the chunked body), so
EventSource reconnects (`retry`) to another worker; before, the stream ran on until uvicorn's
graceful-shutdown timeout cancelled it (`ERROR: Cancel 1 running task(s)`, a CancelledError
traceback) and the follower got an incomplete chunked read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import postgres_database
from redis_tools import REDIS_URL, delete_prefix_sync, new_prefix, redis_available
from servers import ServerProcess, free_port

HERE = Path(__file__).resolve().parent
KEY = "sk-cluster-drain-sse"
GRACEFUL_S = 5  # drain_server.py: uvicorn's timeout_graceful_shutdown

if not redis_available():  # pragma: no cover - these machines run Redis
    pytest.fail(f"Redis is not reachable at {REDIS_URL}; the cluster tests need it", pytrace=False)


def worker(env: dict[str, str], tmp: Path, name: str, *, drain: bool) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, str(HERE / ("drain_server.py" if drain else "store_server.py")), str(port)]
    if drain:
        argv.append("60")  # the drain waits up to 60 s for the worker's sessions
    return ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=60, cwd=tmp,
                         env={**env, "MOKSORI_SERVER_PORT": str(port), "MOKSORI_CLUSTER_WORKER_ID": name,
                              "MOKSORI_DATA_DIR": str(tmp / name)})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    prefix = new_prefix()
    tmp = tmp_path_factory.mktemp("cluster-drain-sse")
    with postgres_database() as db:
        env = {"MOKSORI_REDIS_URL": REDIS_URL, "MOKSORI_REDIS_PREFIX": prefix, "MOKSORI_STORE_URL": db,
               "MOKSORI_TELEPHONY_STREAM_SECRET": "drain-sse-secret", "MOKSORI_API_KEYS": KEY,
               "MOKSORI_CLUSTER_HEARTBEAT_S": "0.5", "MOKSORI_CLUSTER_TTL_S": "2",
               "MOKSORI_CLUSTER_SSE_KEEPALIVE_S": "1", "PYTHONUNBUFFERED": "1"}
        a = worker(env, tmp, "worker-a", drain=False).start()
        try:
            yield {"a": a, "env": env, "tmp": tmp}
        finally:
            a.stop()
            delete_prefix_sync(prefix)


class Follower:
    """`GET /v1/conversations/{id}/events`, read line by line until the stream ends; `outcome`
    says how it ended: "ended" (a complete body) or the error that cut it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lines: list[str] = []
        self.outcome: str | None = None
        self.ended_at: float | None = None
        self.opened = asyncio.Event()
        self.done = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Follower:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.opened.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
                async with client.stream("GET", self.url, headers={"Authorization": f"Bearer {KEY}"}) as r:
                    assert r.status_code == 200, (r.status_code, await r.aread())
                    async for line in r.aiter_lines():
                        self.lines.append(line)
                        if line.startswith("event: conversation.state"):
                            self.opened.set()
            self.outcome = "ended"
        except Exception as e:  # noqa: BLE001 - what cut the stream is the finding
            self.outcome = f"{type(e).__name__}: {e}"
        finally:
            self.ended_at = time.monotonic()
            self.opened.set()
            self.done.set()

    def events(self) -> list[str]:
        return [ln[6:].strip() for ln in self.lines if ln.startswith("event:")]


async def realtime(srv):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=KEY, websocket_base_url=f"ws://127.0.0.1:{srv.port}/v1", max_retries=0)
    conn = await client.realtime.connect(model="gpt-realtime").enter()
    async for ev in conn:
        if ev.type == "session.created":
            return conn, ev.session.id
    raise AssertionError("no session.created")


def registry(srv) -> dict[str, Any]:
    r = httpx.get(srv.url + "/v1/cluster", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 200, r.text
    return {w["id"]: w for w in r.json()["workers"]}


async def until(pred, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(pred)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def assert_clean_log(srv: ServerProcess) -> None:
    text = srv.log_text()
    assert "Traceback" not in text and "ERROR" not in text and "CancelledError" not in text, text[-3000:]


async def exited(srv: ServerProcess, timeout: float) -> float:
    """Seconds until the worker's process ended (fails after `timeout`)."""
    assert srv.proc is not None
    t0 = time.monotonic()
    while srv.proc.poll() is None:
        assert time.monotonic() - t0 < timeout, "the worker did not exit"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


def drained_cleanly(follower: Follower, since: float) -> None:
    assert follower.outcome == "ended", follower.outcome  # a complete body, not a cut one
    assert follower.ended_at is not None and follower.ended_at - since < 2.0, follower.ended_at - since
    assert any(ln.startswith(": this worker is draining") for ln in follower.lines), follower.lines
    assert "conversation.ended" not in follower.events()  # the conversation goes on (on worker A)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
async def test_a_drained_worker_ends_its_live_event_streams_at_once_and_exits_cleanly(cluster, sig):
    """B holds no session: SIGTERM ends its drain at once. The follower's stream ends cleanly
    within a second or two, and B exits without waiting for uvicorn's graceful timeout. Ctrl-C
    (SIGINT) stops it without a drain, and its streams end the same way; before, a stream ran on
    until uvicorn's graceful-shutdown timeout cancelled it (a traceback, the follower's body cut)."""
    a = cluster["a"]
    b = worker(cluster["env"], cluster["tmp"], f"worker-b1-{sig.name.lower()}", drain=True).start()
    conn = None
    try:
        conn, sid = await realtime(a)
        await until(lambda: registry(b).get("worker-a", {}).get("sessions") == 1, what="A's session registered")
        async with Follower(f"{b.url}/v1/conversations/{sid}/events") as follower:
            assert follower.outcome is None
            assert b.proc is not None
            t0 = time.monotonic()
            os.kill(b.proc.pid, sig)
            await asyncio.wait_for(follower.done.wait(), GRACEFUL_S + 5)
            drained_cleanly(follower, t0)
            took = await exited(b, GRACEFUL_S + 10)
            assert time.monotonic() - t0 < GRACEFUL_S - 1, f"exited {took:.1f} s after the stream ended"
        assert_clean_log(b)
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        b.stop()


async def test_a_worker_draining_its_sessions_ends_live_event_streams_when_the_drain_starts(cluster):
    """B holds a session of its own, so its drain lasts until that session ends. A follower on B
    (of A's conversation) is not held meanwhile: its stream ends when the drain starts; one that
    comes during the drain gets the state, then the same clean end. B exits once its session
    ends, with nothing cancelled."""
    a = cluster["a"]
    b = worker(cluster["env"], cluster["tmp"], "worker-b2", drain=True).start()
    conn_a = conn_b = None
    try:
        conn_a, sid = await realtime(a)
        conn_b, _ = await realtime(b)  # keeps B's drain going
        await until(lambda: registry(b).get("worker-a", {}).get("sessions") == 1, what="A's session registered")
        async with Follower(f"{b.url}/v1/conversations/{sid}/events") as follower:
            assert b.proc is not None
            t0 = time.monotonic()
            os.kill(b.proc.pid, signal.SIGTERM)
            await asyncio.wait_for(follower.done.wait(), 10)
            drained_cleanly(follower, t0)
            assert b.proc.poll() is None  # still draining: its session runs on
            assert (await asyncio.to_thread(registry, a))["worker-b2"]["draining"] is True
        async with Follower(f"{b.url}/v1/conversations/{sid}/events") as late:
            t1 = time.monotonic()
            await asyncio.wait_for(late.done.wait(), 5)
            drained_cleanly(late, t1)
            assert late.events() == ["conversation.state"]
        await conn_b.close()  # B's last session ends: B exits
        await exited(b, 10)
        assert_clean_log(b)
    finally:
        for conn in (conn_a, conn_b):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        b.stop()

