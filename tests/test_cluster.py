"""`make cluster` for real: nginx + 2 `moksori serve` workers + one `llama_cpp.server`, on loopback,
with the PostgreSQL and Redis servers of this machine (own database, own key prefix).

`scripts/cluster.py up` (what `make cluster` runs) starts it all under a temporary CLUSTER_DIR on
a free port; the official `openai` Realtime client connects through nginx. In order:

1. a text reply through nginx (the workers' LLM is the shared inference server), and
   `/v1/cluster` lists both workers;
2. the live events of that session are read on the other worker (straight to its port);
3. the per-key session limit holds across the two workers, through nginx;
4. a rolling restart of the worker holding a live session (`scripts/cluster.py restart`, what
   `make cluster-restart` runs): it drains (the registry says so, new sessions through nginx go to
   the other worker), the live session goes on to its end, then the worker exits and starts
   again on the same port;
5. `kill -9` of one worker mid-conversation: its session ends, the session on the other worker
   goes on, the dead worker leaves the registry after its TTL, new sessions go to the survivor;
6. `scripts/cluster.py down` (what `make cluster-down` runs) leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

import httpx
import pytest
from cluster_tools import REPO, running_cluster

pytestmark = [pytest.mark.slow, pytest.mark.models]

KEY = "sk-cluster-e2e-1"
TTL = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory, KEY, {
            "MOKSORI_LLM_TEMPERATURE": "0", "MOKSORI_SERVER_MAX_SESSIONS_PER_KEY": "2",
            "MOKSORI_CLUSTER_HEARTBEAT_S": "1", "MOKSORI_CLUSTER_TTL_S": str(TTL),
            "MOKSORI_CLUSTER_SSE_KEEPALIVE_S": "2", "MOKSORI_SERVER_DRAIN_TIMEOUT_S": "60"}) as c:
        yield c


def api(cluster, path: str, url: str | None = None) -> httpx.Response:
    return httpx.get((url or cluster["url"]) + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)


def workers(cluster) -> dict[int, dict[str, Any]]:
    """pid -> registry entry."""
    r = api(cluster, "/v1/cluster")
    assert r.status_code == 200, r.text
    return {w["pid"]: w for w in r.json()["workers"]}


def worker_url(cluster, pid: int) -> str:
    st = cluster["state"]
    i = [w["pid"] for w in st["workers"]].index(pid)
    return f"http://127.0.0.1:{st['worker_ports'][i]}"


async def connect(cluster):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=KEY, websocket_base_url=f"ws://127.0.0.1:{cluster['port']}/v1", max_retries=0)
    conn = await client.realtime.connect(model="gpt-realtime").enter()
    created = await next_event(conn, "session.created")
    await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
    await next_event(conn, "session.updated")
    return conn, created.session.id


async def next_event(conn, typ: str, timeout: float = 60.0) -> Any:
    async def read():
        async for ev in conn:
            if ev.type == typ:
                return ev
            if ev.type == "error":
                raise AssertionError(f"error event: {ev.error}")
        raise ConnectionError("the connection closed")

    return await asyncio.wait_for(read(), timeout)


async def ask(conn, text: str) -> str:
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": text}]})
    await conn.response.create()
    done = await next_event(conn, "response.done", timeout=120)
    assert done.response.status == "completed", done.response
    return done.response.output[0].content[0].text


def one_session(counts: dict[int, int]) -> bool:
    return sorted(counts.values()) == [0, 1]


async def holder(cluster, n_sessions: dict[int, int] | Any = None, timeout: float = 10.0) -> dict[int, int]:
    """Wait until the registry shows these session counts per worker pid (a dict, or a predicate
    on the counts; None: whatever it shows now); returns the counts. The registry is written a
    moment after a session opens, so a test must wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        counts = {pid: w["sessions"] for pid, w in workers(cluster).items()}
        if n_sessions is None or (n_sessions(counts) if callable(n_sessions) else counts == n_sessions):
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"registry shows {counts}, expected {n_sessions}")
        await asyncio.sleep(0.2)


async def follow(url: str, conversation_id: str, events: list[tuple[str, dict]], opened: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
        async with client.stream("GET", f"{url}/v1/conversations/{conversation_id}/events",
                                 headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status_code == 200
            opened.set()
            event, data = "message", []
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    events.append((event, json.loads("".join(data))))
                    event, data = "message", []


async def test_text_reply_through_nginx_and_the_registry(cluster):
    pids = {w["pid"] for w in cluster["state"]["workers"]}
    assert set(workers(cluster)) == pids
    conn, sid = await connect(cluster)
    try:
        reply = await ask(conn, "What is the capital of France?")
        assert reply.strip()
        await holder(cluster, one_session)
    finally:
        await conn.close()
    await holder(cluster, {pid: 0 for pid in pids})


async def test_live_events_are_read_on_the_other_worker(cluster):
    conn, sid = await connect(cluster)
    task = None
    try:
        counts = await holder(cluster, one_session)
        mine = next(pid for pid, n in counts.items() if n == 1)
        other = next(pid for pid in counts if pid != mine)
        events: list[tuple[str, dict]] = []
        opened = asyncio.Event()
        task = asyncio.create_task(follow(worker_url(cluster, other), sid, events, opened))
        await asyncio.wait_for(opened.wait(), 10)
        reply = await ask(conn, "Say hello.")
        deadline = time.monotonic() + 10
        while not any(e == "reply.done" for e, _ in events) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        done = next(d for e, d in events if e == "reply.done")
        assert done["text"] == reply and done["conversation_id"] == sid
        assert "".join(d["delta"] for e, d in events if e == "reply.delta") == reply
        assert events[0][0] == "conversation.state" and events[0][1]["worker"] == workers(cluster)[mine]["id"]
        await conn.close()
        deadline = time.monotonic() + 10
        while not any(e == "conversation.ended" for e, _ in events) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert events[-1][0] == "conversation.ended"
        await asyncio.wait_for(task, 5)  # the stream ended cleanly
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await conn.close()


async def test_the_per_key_limit_holds_across_workers_through_nginx(cluster):
    from openai import AsyncOpenAI
    from websockets.exceptions import InvalidStatus

    pids = {w["pid"] for w in cluster["state"]["workers"]}
    a, _ = await connect(cluster)
    b, _ = await connect(cluster)
    try:
        await holder(cluster, {pid: 1 for pid in pids})  # least_conn put one on each worker
        client = AsyncOpenAI(api_key=KEY, websocket_base_url=f"ws://127.0.0.1:{cluster['port']}/v1", max_retries=0)
        with pytest.raises(InvalidStatus) as e:
            await client.realtime.connect(model="gpt-realtime").enter()
        assert e.value.response.status_code == 503
        assert b"too_many_sessions" in e.value.response.body
    finally:
        await a.close()
        await b.close()
    await holder(cluster, {pid: 0 for pid in pids})


async def test_a_rolling_restart_drains_a_worker_while_sessions_run(cluster):
    st = cluster["state"]
    old = [w["pid"] for w in st["workers"]]
    a, _ = await connect(cluster)
    b = restart = None
    try:
        counts = await holder(cluster, one_session)  # the registry is written a moment after the session opens
        first = next(pid for pid, n in counts.items() if n == 1)
        other = next(pid for pid in counts if pid != first)
        i = old.index(first)
        restart = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "scripts/cluster.py"), "restart", cwd=REPO,
            env={**cluster["env"], "WORKER": str(i + 1)}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not workers(cluster)[first]["draining"]:
            assert time.monotonic() < deadline, "the worker is not shown draining"
            await asyncio.sleep(0.1)
        # new sessions through nginx go to the other worker, and work
        b, _ = await connect(cluster)
        assert await holder(cluster, {first: 1, other: 1})
        assert (await ask(b, "Hello!")).strip()
        # the live session on the draining worker goes on to its end
        assert (await ask(a, "Are you there?")).strip()
        await a.close()
        out, _ = await asyncio.wait_for(restart.communicate(), 400)
        assert restart.returncode == 0, out.decode(errors="replace")
        fresh = json.loads((cluster["dir"] / "state.json").read_text())
        new = [w["pid"] for w in fresh["workers"]]
        assert new[i] != first and new[1 - i] == other and fresh["worker_ports"] == st["worker_ports"]
        st.clear()
        st.update(fresh)  # the next tests and cluster-down see the new worker
        deadline = time.monotonic() + 15
        while set(workers(cluster)) != set(new):
            assert time.monotonic() < deadline, f"registry: {workers(cluster)}, expected {new}"
            await asyncio.sleep(0.2)
        assert (await ask(b, "Still fine?")).strip()  # untouched by the other worker's restart
    finally:
        if restart is not None and restart.returncode is None:
            restart.kill()
            await restart.wait()
        for conn in (a, b):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
    await holder(cluster, {pid: 0 for pid in new})


async def test_kill_9_of_one_worker_mid_conversation(cluster):
    pids = {w["pid"] for w in cluster["state"]["workers"]}
    a, _ = await connect(cluster)
    b, _ = await connect(cluster)
    try:
        await holder(cluster, {pid: 1 for pid in pids})
        await ask(a, "Hello!")
        await ask(b, "Hello!")
        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # one session ends with its worker, the other goes on untouched
        results = await asyncio.gather(ask(a, "How are you?"), ask(b, "How are you?"), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 1, results
        survivor = a if not isinstance(results[0], BaseException) else b
        assert (await ask(survivor, "Thank you.")).strip()
        # the dead worker leaves the registry after its TTL
        deadline = time.monotonic() + TTL + 10
        while victim in workers(cluster):
            assert time.monotonic() < deadline, "the killed worker is still registered"
            await asyncio.sleep(0.2)
        assert time.monotonic() - killed_at < TTL + 10
        # new sessions go to the surviving worker
        c, _ = await connect(cluster)
        try:
            assert (await ask(c, "Hi again.")).strip()
            await holder(cluster, {pid: 2 for pid in pids - {victim}})
        finally:
            await c.close()
    finally:
        for conn in (a, b):
            with contextlib.suppress(Exception):
                await conn.close()
