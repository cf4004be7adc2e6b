"""Two workers behind the real nginx (`deploy/nginx/moksori.conf`, started the way `make cluster`
starts it), sharing the real Redis (own prefix) and a PostgreSQL database of their own. Each
worker is the real app with fast fake models, served as `moksori serve` serves it: guarded
sockets and the draining server (`tests/drain_server.py`). Official `openai` Realtime clients
connect through nginx.

1. A user text item a Realtime client creates (`conversation.item.create`) is followed, with the
   reply it gets, on the other worker (`GET /v1/conversations/{id}/events`).
2. A phone call held by one worker is followed on the other by the carrier's call id: its
   state, its replies, and its end when it is hung up (through the other worker).
3. Redis goes away under a third worker (its Redis is reached through a loopback proxy the test
   cuts; the shared Redis server itself never stops): its live session goes on, a new session is
   admitted under the worker's own limits (`MOKSORI_CLUSTER_REDIS_DOWN=admit`), what needs the
   shared state says so clearly (503 `cluster_unavailable`), and when Redis is back the worker
   is in the registry again with both sessions, without a restart.
4. SIGTERM to one worker while sessions run on both: its registry entry says `draining` at
   once (the heartbeat here is 30 s, so only the immediate write can show it), `/ready` there
   is 503, a session asked of it directly gets the `draining` refusal, and new sessions through
   nginx (Realtime WebSockets and a WebRTC offer) all land on the other worker (nginx takes the
   503 to the next worker). The draining
   worker's live session goes on (a turn, followed live from the other worker) until its
   client leaves; then the worker exits cleanly and leaves the registry at once (TTL 60 s).
   The sessions on the other worker are untouched, and nginx keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import postgres_database
from redis_tools import REDIS_URL, delete_prefix_sync, new_prefix, redis_available
from servers import ServerProcess, free_port
from tcp_proxy import TCPProxy

HERE = Path(__file__).resolve().parent
KEY = "sk-cluster-drain-1"
SECRET = "drain-secret"
HEARTBEAT_S = 30  # far longer than the test: what the registry shows was written on a change

if not redis_available():  # pragma: no cover - these machines run Redis
    pytest.fail(f"Redis is not reachable at {REDIS_URL}; the cluster tests need it", pytrace=False)


def launcher():
    """scripts/cluster.py (what `make cluster` runs), for its nginx set-up."""
    spec = importlib.util.spec_from_file_location("cluster_launcher", HERE.parent / "scripts" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(env: dict[str, str], tmp: Path, name: str) -> ServerProcess:
    port = free_port()
    return ServerProcess([sys.executable, str(HERE / "drain_server.py"), str(port), "60"], port=port,
                         ready_path="/health", ready_timeout_s=60, cwd=tmp,
                         env={**env, "MOKSORI_SERVER_PORT": str(port), "MOKSORI_CLUSTER_WORKER_ID": name,
                              "MOKSORI_DATA_DIR": str(tmp / name)})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cl = launcher()
    try:
        nginx = cl.nginx_binary()
    except SystemExit:
        pytest.fail("nginx is not installed (bash scripts/install-system.sh installs it)", pytrace=False)
    prefix = new_prefix()
    tmp = tmp_path_factory.mktemp("cluster-drain")
    with postgres_database() as db:
        env = {"MOKSORI_REDIS_URL": REDIS_URL, "MOKSORI_REDIS_PREFIX": prefix, "MOKSORI_STORE_URL": db,
               "MOKSORI_TELEPHONY_STREAM_SECRET": SECRET, "MOKSORI_API_KEYS": KEY,
               "MOKSORI_SERVER_MAX_SESSIONS_PER_KEY": "10", "MOKSORI_CLUSTER_HEARTBEAT_S": str(HEARTBEAT_S),
               "MOKSORI_CLUSTER_TTL_S": str(2 * HEARTBEAT_S), "PYTHONUNBUFFERED": "1"}
        workers = {"worker-a": worker(env, tmp, "worker-a"), "worker-b": worker(env, tmp, "worker-b")}
        nginx_entry = None
        try:
            for w in workers.values():
                w.start()
            port = free_port()
            nginx_entry = cl.start_nginx(nginx, tmp / "nginx", port, [w.port for w in workers.values()])
            yield {"workers": workers, "port": port, "url": f"http://127.0.0.1:{port}", "tmp": tmp, "env": env}
        finally:
            if nginx_entry is not None:
                cl.stop("nginx", nginx_entry, signal.SIGQUIT, grace_s=5.0, group=False)
            for w in workers.values():
                w.stop()
            delete_prefix_sync(prefix)


def registry(url: str) -> dict[str, dict[str, Any]]:
    r = httpx.get(url + "/v1/cluster", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
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
        await asyncio.sleep(0.05)


async def realtime(port: int):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=KEY, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
    conn = await client.realtime.connect(model="gpt-realtime").enter()
    sid = (await next_event(conn, "session.created")).session.id
    await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
    await next_event(conn, "session.updated")
    return conn, sid


async def next_event(conn, typ: str, timeout: float = 15.0) -> Any:
    async def read():
        async for ev in conn:
            if ev.type == typ:
                return ev
            if ev.type == "error":
                raise AssertionError(f"error event: {ev.error}")
        raise AssertionError("the connection closed")

    return await asyncio.wait_for(read(), timeout)


async def say(conn, text: str) -> str:
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": text}]})
    await conn.response.create()
    done = await next_event(conn, "response.done")
    assert done.response.status == "completed", done.response
    return done.response.output[0].content[0].text


class Follow:
    """`GET /v1/conversations/{id}/events` read into (event, data) pairs as they arrive."""

    def __init__(self, url: str, sid: str) -> None:
        self.url = f"{url}/v1/conversations/{sid}/events"
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.done = asyncio.Event()

    async def __aenter__(self) -> Follow:
        self._task = asyncio.create_task(self._run())
        await self.wait("conversation.state")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=120)) as client:
                async with client.stream("GET", self.url, headers={"Authorization": f"Bearer {KEY}"}) as r:
                    assert r.status_code == 200, await r.aread()
                    event, data = "message", []
                    async for line in r.aiter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif line == "" and data:
                            self.events.append((event, json.loads("\n".join(data))))
                            event, data = "message", []
        finally:
            self.done.set()

    async def wait(self, typ: str, timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e, d in self.events[after:]:
                if e == typ:
                    return d
            if self.done.is_set():
                break
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {typ} event; got {[e for e, _ in self.events]}")


def ready(url: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url + "/ready", headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def refused_draining(srv: ServerProcess) -> int:
    text = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    line = next(ln for ln in text.splitlines() if ln.startswith('moksori_sessions_refused_total{reason="draining"}'))
    return int(float(line.split()[-1]))


# --------------------------------------------------------------------------- tests


async def test_a_user_text_item_is_followed_on_the_other_worker(cluster):
    a, b = cluster["workers"]["worker-a"], cluster["workers"]["worker-b"]
    conn, sid = await realtime(a.port)
    try:
        async with Follow(b.url, sid) as follow:
            assert follow.events[0][1]["worker"] == "worker-a"
            reply = await say(conn, "Is anybody there?")
            said = await follow.wait("transcript.done")
            assert said["text"] == "Is anybody there?" and said["typed"] is True and said["item_id"]
            got = await follow.wait("reply.done")
            assert got["text"] == reply and got["status"] == "completed"
            order = [e for e, _ in follow.events]
            assert order.index("transcript.done") < order.index("reply.started")
            # an item the client adds without text (a function output) is not a user's words
            await conn.conversation.item.create(item={"type": "function_call_output", "call_id": "call_x",
                                                      "output": "{}"})
            await next_event(conn, "conversation.item.done")
            await conn.close()
            await follow.wait("conversation.ended")
            assert [e for e, _ in follow.events].count("transcript.done") == 1
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def test_a_phone_call_is_followed_on_another_worker_by_its_call_id(cluster):
    import os

    from carrier_sim import CarrierSim

    from moksori.telephony.signatures import make_stream_token

    a, b = cluster["workers"]["worker-a"], cluster["workers"]["worker-b"]
    call_id = "CA" + os.urandom(16).hex()
    token = make_stream_token(SECRET.encode(), call_id, carrier="twilio", now=int(time.time()))
    async with CarrierSim.connect(f"ws://127.0.0.1:{a.port}/telephony/twilio/stream", call_id=call_id,
                                  params={"token": token}) as call:
        await call.start()
        await call.wait_audio(timeout=10)  # the greeting: the call is live on worker A
        await until(lambda: registry(b.url)["worker-a"]["calls"] == 1, what="the call in the registry")
        async with Follow(b.url, call_id) as follow:
            first = follow.events[0][1]
            assert first["worker"] == "worker-a" and first["conversation_id"].startswith("sess_")
            async with Follow(a.url, call_id) as local:  # on the worker holding it (no Redis look-up)
                assert local.events[0][1]["conversation_id"] == first["conversation_id"]
            r = httpx.post(f"{b.url}/v1/telephony/calls/{call_id}/hangup",
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
            assert r.status_code == 200, r.text
            ended = await follow.wait("conversation.ended")
            assert ended["conversation_id"] == first["conversation_id"]
        assert await call.wait_closed(timeout=5) == 1000
    # an unknown call id is still 404
    got = httpx.get(f"{b.url}/v1/conversations/CAnope/events", headers={"Authorization": f"Bearer {KEY}"},
                    timeout=10)
    assert got.status_code == 404


async def test_redis_unreachable_live_sessions_go_on_and_the_worker_recovers(cluster):
    a = cluster["workers"]["worker-a"]
    with TCPProxy("127.0.0.1", int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])) as proxy:
        env = {**cluster["env"], "MOKSORI_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
               "MOKSORI_REDIS_TIMEOUT_S": "0.5"}
        r = worker(env, cluster["tmp"], "worker-r").start()
        first = second = None
        try:
            first, sid = await realtime(r.port)
            await until(lambda: registry(a.url).get("worker-r", {}).get("sessions") == 1, what="worker-r registered")
            proxy.cut()
            # the live session goes on
            assert (await say(first, "Still there?")).strip()
            # a new session: admitted under this worker's own limits
            second, _ = await realtime(r.port)
            assert (await say(second, "Hello?")).strip()
            # what needs the shared state fails clearly
            for path in ("/v1/cluster", f"/v1/conversations/{sid}/events"):
                got = httpx.get(r.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
                assert got.status_code == 503 and got.json()["error"]["code"] == "cluster_unavailable", got.text
                assert got.headers["retry-after"] == "5"
            # back by itself: the registry shows both sessions, and following works again
            proxy.restore()
            await until(lambda: registry(a.url).get("worker-r", {}).get("sessions") == 2, timeout=15,
                        what="worker-r back in the registry with both sessions")
            async with Follow(a.url, sid) as follow:
                assert follow.events[0][1]["worker"] == "worker-r"
                reply = await say(first, "And now?")
                assert (await follow.wait("reply.done"))["text"] == reply
        finally:
            for conn in (first, second):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            r.stop()
        assert "Traceback" not in r.log_text(), r.log_text()[-3000:]


async def test_a_worker_drained_while_sessions_run_through_nginx(cluster):
    from websockets.exceptions import InvalidStatus

    from moksori.testing.webrtc_client import RtcClient

    workers, port = cluster["workers"], cluster["port"]
    rtc = RtcClient()
    first, sid1 = await realtime(port)
    second, sid2 = await realtime(port)
    later: list = []
    try:
        # least_conn: one session on each worker
        await until(lambda: sorted(w["sessions"] for w in registry(cluster["url"]).values()) == [1, 1],
                    what="one session per worker")
        async with Follow(workers["worker-a"].url, sid1) as probe:
            holder = probe.events[0][1]["worker"]
        victim, other = workers[holder], workers[next(n for n in workers if n != holder)]
        live, untouched = first, second
        before = refused_draining(victim)

        async with Follow(other.url, sid1) as follow:  # the live session, followed from the other worker
            victim.proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            # at once: the registry (written on the change, not by the 30 s heartbeat) and /ready
            await until(lambda: registry(other.url)[holder]["draining"], timeout=5, what="draining in the registry")
            assert time.monotonic() - t0 < 5
            assert not registry(other.url)[other_name(workers, holder)]["draining"]
            status, body = ready(victim.url)
            assert status == 503 and body["status"] == "draining"
            # asked directly, it refuses with the refusal local admission uses
            with pytest.raises(InvalidStatus) as e:
                await realtime(victim.port)
            assert e.value.response.status_code == 503
            assert json.loads(e.value.response.body)["error"]["code"] == "draining"
            # through nginx, new sessions land on the other worker (nginx tries the draining one
            # first - it has fewer connections - and takes its 503 to the next)
            for _ in range(3):
                later.append(await realtime(port))
            # a WebRTC offer (a POST) too: refused there, it created nothing, so nginx sends it on
            await rtc.connect_sdk(cluster["url"], KEY)
            await asyncio.wait_for(rtc.opened.wait(), 15)
            await rtc.wait_event("session.created")
            async with Follow(victim.url, rtc.call_id) as by_call_id:  # followed by its call id, elsewhere
                assert by_call_id.events[0][1]["worker"] == other_name(workers, holder)
            await until(lambda: {n: w["sessions"] for n, w in registry(other.url).items()}
                        == {holder: 1, other_name(workers, holder): 5}, what="new sessions on the other worker")
            assert refused_draining(victim) - before >= 3  # the direct one, and nginx's first tries
            # the draining worker's live session goes on, followed live from the other worker
            reply = await say(live, "Are you still there?")
            assert (await follow.wait("reply.done"))["text"] == reply
            # the other worker's sessions are untouched
            assert (await say(untouched, "Hello.")).strip()
            # its client leaves: the worker exits cleanly, and leaves the registry at once
            await live.close()
            t1 = time.monotonic()
            assert (await follow.wait("conversation.ended"))["reason"] == "session_closed"
            code = await asyncio.to_thread(victim.proc.wait, 20)
            assert code in (0, -signal.SIGTERM), code
            assert time.monotonic() - t1 < 10
            log = victim.log_text()
            assert "Traceback" not in log, log[-3000:]
            await until(lambda: holder not in registry(other.url), timeout=5, what="the drained worker leaving")

        # nginx keeps serving: the next session goes to the remaining worker
        later.append(await realtime(port))
        assert (await say(later[-1][0], "One more?")).strip()
        assert registry(cluster["url"])[other_name(workers, holder)]["sessions"] == 6
    finally:
        await rtc.close()
        for conn in [first, second, *(c for c, _ in later)]:
            with contextlib.suppress(Exception):
                await conn.close()


def other_name(workers: dict[str, ServerProcess], name: str) -> str:
    return next(n for n in workers if n != name)
