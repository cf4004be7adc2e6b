"""Two workers of one cluster, as real processes: the real app (`create_app`) with fast fake
models (`tests/store_server.py`), sharing the real Redis (own prefix) and a PostgreSQL database
of their own. What crosses from one worker to the other here:

* `GET /v1/cluster` on either lists both;
* a Realtime session (official `openai` client) runs on worker A while `GET
  /v1/conversations/{id}/events` (Server-Sent Events) on worker B streams its transcript, reply
  and state, then its end; only the key that owns it may follow it;
* the per-key session limit counts the sessions of both workers;
* an ephemeral key minted on A opens a session on B;
* a phone call held by A is hung up by a request to B (and a transfer to a number that is not
  allowed is refused there);
* a worker that stops without a word (`kill -9`) leaves the registry after its TTL, and B's
  follower of a conversation it held is told the conversation ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from carrier_sim import CarrierSim
from databases import postgres_database
from redis_tools import REDIS_URL, delete_prefix_sync, new_prefix, redis_available
from servers import ServerProcess, free_port

from moksori.telephony.signatures import make_stream_token

HERE = Path(__file__).resolve().parent
KEY = "sk-cluster-test-1"
OTHER_KEY = "sk-cluster-test-2"
SECRET = "cluster-stream-secret"
PER_KEY = 2

if not redis_available():  # pragma: no cover - these machines run Redis
    pytest.fail(f"Redis is not reachable at {REDIS_URL}; the cluster tests need it", pytrace=False)


def worker(env: dict[str, str], tmp: Path, name: str) -> ServerProcess:
    port = free_port()
    return ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port, ready_path="/health",
                         ready_timeout_s=60, cwd=tmp,
                         env={**env, "MOKSORI_SERVER_PORT": str(port), "MOKSORI_CLUSTER_WORKER_ID": name,
                              "MOKSORI_DATA_DIR": str(tmp / name)})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    prefix = new_prefix()
    tmp = tmp_path_factory.mktemp("cluster")
    with postgres_database() as db:
        env = {"MOKSORI_REDIS_URL": REDIS_URL, "MOKSORI_REDIS_PREFIX": prefix, "MOKSORI_STORE_URL": db,
               "MOKSORI_TELEPHONY_STREAM_SECRET": SECRET, "MOKSORI_API_KEYS": f"{KEY},{OTHER_KEY}",
               "MOKSORI_SERVER_MAX_SESSIONS_PER_KEY": str(PER_KEY), "MOKSORI_CLUSTER_HEARTBEAT_S": "0.5",
               "MOKSORI_CLUSTER_TTL_S": "2", "MOKSORI_CLUSTER_SSE_KEEPALIVE_S": "1", "PYTHONUNBUFFERED": "1",
               "MOKSORI_STT_PARTIAL_INTERVAL_MS": "400"}
        a = worker(env, tmp, "worker-a").start()
        try:
            b = worker(env, tmp, "worker-b").start()
            try:
                yield {"a": a, "b": b, "env": env, "tmp": tmp}
            finally:
                b.stop()
        finally:
            a.stop()
            delete_prefix_sync(prefix)


def get(srv, path: str, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(srv.url + path, headers=headers, timeout=10)


def worker_ids(srv) -> list[str]:
    r = get(srv, "/v1/cluster")
    assert r.status_code == 200, r.text
    return sorted(w["id"] for w in r.json()["workers"])


def wait_for(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class SSE:
    """Reads `text/event-stream` with httpx into a list of (event, data) as they arrive."""

    def __init__(self, url: str, key: str = KEY) -> None:
        self.url, self.key = url, key
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.comments = 0
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.done = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> SSE:
        self._opened = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._opened.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
                async with client.stream("GET", self.url, headers={"Authorization": f"Bearer {self.key}"}) as r:
                    self.status, self.headers = r.status_code, dict(r.headers)
                    if r.status_code != 200:
                        await r.aread()
                        self.body = r.text  # before the caller looks at it
                        return
                    self._opened.set()
                    event, data = "message", []
                    async for line in r.aiter_lines():
                        if line.startswith(":"):
                            self.comments += 1
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif line == "" and data:
                            self.events.append((event, json.loads("\n".join(data))))
                            event, data = "message", []
        finally:
            self._opened.set()
            self.done.set()

    def types(self) -> list[str]:
        return [e for e, _ in self.events]

    async def wait(self, typ: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e, d in self.events:
                if e == typ:
                    return d
            if self.done.is_set():
                break
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {typ} event; got {self.types()}")


def speech_then_silence() -> list[str]:
    """1 s of a loud tone then 1.5 s of silence, 24 kHz PCM16, base64 in 100 ms appends."""
    import base64

    import numpy as np

    rate = 24000
    t = np.arange(rate) / rate
    pcm = np.concatenate([0.3 * np.sin(2 * np.pi * 220 * t), np.zeros(int(1.5 * rate))])
    raw = (pcm * 32767).astype("<i2").tobytes()
    step = rate // 10 * 2
    return [base64.b64encode(raw[i:i + step]).decode() for i in range(0, len(raw), step)]


async def realtime(srv, key: str = KEY):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=key, websocket_base_url=f"ws://127.0.0.1:{srv.port}/v1", max_retries=0)
    return await client.realtime.connect(model="gpt-realtime").enter()


async def next_event(conn, typ: str, timeout: float = 10.0) -> Any:
    async def read():
        async for ev in conn:
            if ev.type == typ:
                return ev
            if ev.type == "error":
                raise AssertionError(f"error event: {ev.error}")
        raise AssertionError("connection closed")

    return await asyncio.wait_for(read(), timeout)


# --------------------------------------------------------------------------- tests


def test_every_worker_lists_every_worker(cluster):
    for srv in (cluster["a"], cluster["b"]):
        assert worker_ids(srv) == ["worker-a", "worker-b"]
    r = get(cluster["a"], "/v1/cluster")
    w = r.json()["workers"][0]
    assert set(w) >= {"id", "pid", "sessions", "draining"} and w["draining"] is False and w["pid"] > 0
    assert get(cluster["a"], "/v1/cluster", key=None).status_code == 401
    assert get(cluster["a"], "/v1/cluster", key="sk-wrong").status_code == 401


async def test_live_events_of_a_session_on_one_worker_are_followed_on_another(cluster):
    a, b = cluster["a"], cluster["b"]
    conn = await realtime(a)
    try:
        created = await next_event(conn, "session.created")
        sid = created.session.id
        await wait_held(b, "worker-a", 1)
        async with SSE(f"{b.url}/v1/conversations/{sid}/events") as follow:
            assert follow.status == 200 and follow.headers["content-type"].startswith("text/event-stream")
            assert follow.headers.get("x-accel-buffering") == "no"
            first = await follow.wait("conversation.state")
            assert first["conversation_id"] == sid and first["worker"] == "worker-a"
            # another key may not follow it; no key at all is refused
            async with SSE(f"{b.url}/v1/conversations/{sid}/events", key=OTHER_KEY) as stranger:
                assert stranger.status == 404
            async with SSE(f"{b.url}/v1/conversations/{sid}/events", key="sk-nope") as nobody:
                assert nobody.status == 401

            # a spoken turn (fake models: a loud tone is speech, the transcript is scripted)
            await conn.session.update(session={"type": "realtime",
                                               "audio": {"input": {"transcription": {"model": "whisper-1"}}}})
            await next_event(conn, "session.updated")
            for chunk in speech_then_silence():
                await conn.input_audio_buffer.append(audio=chunk)
            said_rt = await next_event(conn, "conversation.item.input_audio_transcription.completed", timeout=20)
            done = await next_event(conn, "response.done", timeout=20)
            reply = done.response.output[0].content[0].transcript
            said = await follow.wait("transcript.done")
            assert said["text"] == said_rt.transcript == "hello there." and said["language"] == "en"
            got = await follow.wait("reply.done")
            assert got["text"] == reply and got["status"] == "completed"
            states = [d["state"] for e, d in follow.events if e == "conversation.state"]
            assert "user_speaking" in states and "speaking" in states
            deltas = "".join(d["delta"] for e, d in follow.events if e == "reply.delta")
            assert deltas == reply
            assert "reply.started" in follow.types()
            seqs = [d["seq"] for _, d in follow.events if d.get("seq")]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            await asyncio.sleep(1.5)  # idle: the stream stays open with keepalive comments
            assert follow.comments >= 1 and not follow.done.is_set()
            await conn.close()
            ended = await follow.wait("conversation.ended")
            assert ended["reason"] == "session_closed"
            await asyncio.wait_for(follow.done.wait(), 5)  # the stream ends cleanly after it
        # a late follower learns it ended at once; an unknown conversation is 404
        async with SSE(f"{a.url}/v1/conversations/{sid}/events") as late:
            assert (await late.wait("conversation.ended"))["conversation_id"] == sid
        async with SSE(f"{a.url}/v1/conversations/sess_nope/events") as unknown:
            assert unknown.status == 404 and "conversation_not_found" in unknown.body
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def test_a_follower_on_another_worker_makes_the_session_decode_live_partials(cluster):
    """Live partials run only while something reads them (MOKSORI_STT_PARTIALS=auto): worker A
    learns from Redis that B's follower reads the conversation's events, and sends deltas."""
    a, b = cluster["a"], cluster["b"]
    conn = await realtime(a)
    try:
        sid = (await next_event(conn, "session.created")).session.id
        await wait_held(b, "worker-a", 1)
        async with SSE(f"{b.url}/v1/conversations/{sid}/events") as follow:
            await follow.wait("conversation.state")
            for chunk in speech_then_silence():  # as a microphone sends it: partials every 0.4 s of speech
                await conn.input_audio_buffer.append(audio=chunk)
                await asyncio.sleep(0.1)
            said = await follow.wait("transcript.done", timeout=20)
            deltas = [d for e, d in follow.events if e == "transcript.delta"]
            assert deltas and deltas[0]["item_id"] == said["item_id"] and deltas[0]["text"] == "hello there."
            assert follow.types().index("transcript.delta") < follow.types().index("transcript.done")
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


def held(srv, wid: str) -> int:
    for w in get(srv, "/v1/cluster").json()["workers"]:
        if w["id"] == wid:
            return w["sessions"]
    return -1


async def wait_held(srv, wid: str, n: int) -> None:
    deadline = time.monotonic() + 10
    while held(srv, wid) != n:
        assert time.monotonic() < deadline, f"{wid} holds {held(srv, wid)} sessions, expected {n}"
        await asyncio.sleep(0.1)


async def test_the_per_key_limit_counts_the_sessions_of_every_worker(cluster):
    from openai import APIStatusError
    from websockets.exceptions import InvalidStatus

    a, b = cluster["a"], cluster["b"]
    first = await realtime(a)
    second = await realtime(b)
    try:
        await next_event(first, "session.created")
        await next_event(second, "session.created")
        for srv in (a, b):  # each worker holds one, below the limit of 2 on its own
            with pytest.raises((InvalidStatus, APIStatusError)) as e:
                third = await realtime(srv)
                await next_event(third, "session.created")
            status = e.value.response.status_code
            assert status == 503
        # the other key still has its places
        other = await realtime(a, key=OTHER_KEY)
        await next_event(other, "session.created")
        await other.close()
        await second.close()
        await wait_held(a, "worker-b", 0)
        again = await realtime(a)  # the place came back across the cluster
        await next_event(again, "session.created")
        await again.close()
    finally:
        for c in (first, second):
            with contextlib.suppress(Exception):
                await c.close()


async def test_a_client_that_leaves_while_being_admitted_gives_its_place_back(cluster):
    """A client that sends its WebSocket upgrade and hangs up at once is gone by the time the
    worker accepts it: the accept failed outside the session's cleanup, so the cluster lease
    taken for it stayed, renewed on every heartbeat for ever (found with Redis slowed through a
    proxy; with Redis on loopback the hang-up still lands before the accept). Six such clients,
    then both of the key's places (limit 2) must still open."""
    a = cluster["a"]
    upgrade = (f"GET /v1/realtime?model=m HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {KEY}\r\n\r\n").encode()
    for _ in range(6):
        reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
        writer.write(upgrade)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(1.5)  # past a heartbeat (0.5 s): a leaked lease would have been renewed
    first = await realtime(a)
    second = await realtime(cluster["b"])
    try:
        await next_event(first, "session.created")
        await next_event(second, "session.created")
    finally:
        for c in (first, second):
            with contextlib.suppress(Exception):
                await c.close()
    await wait_held(a, "worker-a", 0)
    await wait_held(a, "worker-b", 0)


async def test_an_ephemeral_key_minted_on_one_worker_opens_a_session_on_another(cluster):
    a, b = cluster["a"], cluster["b"]
    r = httpx.post(a.url + "/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {KEY}"},
                   json={"session": {"type": "realtime", "instructions": "Be brief."}}, timeout=10)
    assert r.status_code == 200, r.text
    ek = r.json()["value"]
    conn = await realtime(b, key=ek)
    try:
        created = await next_event(conn, "session.created")
        assert created.session.instructions == "Be brief."
    finally:
        await conn.close()


async def test_a_phone_call_on_one_worker_is_hung_up_through_another(cluster):
    a, b = cluster["a"], cluster["b"]
    call_id = "CA" + os.urandom(16).hex()
    token = make_stream_token(SECRET.encode(), call_id, carrier="twilio", now=int(time.time()))
    headers = {"Authorization": f"Bearer {KEY}"}
    async with CarrierSim.connect(f"ws://127.0.0.1:{a.port}/telephony/twilio/stream", call_id=call_id,
                                  params={"token": token}) as call:
        await call.start()
        await call.wait_audio(timeout=10)  # the greeting: the call is live on worker A
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(f"{b.url}/v1/telephony/calls/{call_id}/transfer", headers=headers,
                                  json={"to": "+15550000000"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "not_allowed"
            r = await client.post(f"{b.url}/v1/telephony/calls/{call_id}/transfer", headers=headers, json={})
            assert r.status_code == 400
            r = await client.post(f"{b.url}/v1/telephony/calls/CAnope/hangup", headers=headers)
            assert r.status_code == 404 and r.json()["error"]["code"] == "call_not_found"
            r = await client.post(f"{b.url}/v1/telephony/calls/{call_id}/hangup")
            assert r.status_code == 401
            r = await client.post(f"{b.url}/v1/telephony/calls/{call_id}/hangup", headers=headers)
            assert r.status_code == 200, r.text
            assert r.json() == {"ok": True, "call_id": call_id, "hung_up_via": "stream"}
        assert await call.wait_closed(timeout=5) == 1000  # worker A closed the carrier's stream
    await wait_held(b, "worker-a", 0)


async def test_a_killed_worker_leaves_the_registry_and_its_followers_are_told(cluster):
    env, tmp, b = cluster["env"], cluster["tmp"], cluster["b"]
    c = worker(env, tmp, "worker-c").start()
    try:
        assert "worker-c" in worker_ids(b)
        conn = await realtime(c)
        try:
            sid = (await next_event(conn, "session.created")).session.id
            await wait_held(b, "worker-c", 1)
            async with SSE(f"{b.url}/v1/conversations/{sid}/events") as follow:
                await follow.wait("conversation.state")
                os.kill(c.proc.pid, signal.SIGKILL)
                t0 = time.monotonic()
                ended = await follow.wait("conversation.ended", timeout=15)
                assert ended["reason"] == "worker_lost"
                wait_for(lambda: "worker-c" not in worker_ids(b), timeout=10, what="worker-c expiry")
                assert time.monotonic() - t0 < 10  # TTL 2 s plus checks
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
        assert worker_ids(b) == ["worker-a", "worker-b"]
    finally:
        c.stop()


async def test_a_webrtc_call_on_one_worker_is_hung_up_through_another(cluster):
    import websockets
    from openai import AsyncOpenAI, NotFoundError
    from websockets.exceptions import InvalidStatus

    from moksori.testing.webrtc_client import RtcClient

    a, b = cluster["a"], cluster["b"]
    client = RtcClient()
    try:
        await client.connect_sdk(a.url, KEY)
        await asyncio.wait_for(client.opened.wait(), 15)
        await client.wait_event("session.created")
        await wait_held(b, "worker-a", 1)
        # its sideband, asked of the worker that does not hold it: a 503 a balancer retries on the
        # next worker (it was a 404, and half the sidebands through nginx failed); another key,
        # or a call that does not exist: 404
        for key, call_id, status in ((KEY, client.call_id, 503), (OTHER_KEY, client.call_id, 404),
                                     (KEY, "rtc_" + "0" * 24, 404)):
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(f"ws://127.0.0.1:{b.port}/v1/realtime?call_id={call_id}",
                                         additional_headers={"Authorization": f"Bearer {key}"})
            assert refused.value.response.status_code == status, refused.value.response.body
        async with websockets.connect(f"ws://127.0.0.1:{a.port}/v1/realtime?call_id={client.call_id}",
                                      additional_headers={"Authorization": f"Bearer {KEY}"}) as sideband:
            assert json.loads(await asyncio.wait_for(sideband.recv(), 5))["type"] == "session.created"
        other = AsyncOpenAI(api_key=OTHER_KEY, base_url=b.url + "/v1", max_retries=0)
        with pytest.raises(NotFoundError):  # another key's call: as if it did not exist, on any worker
            await other.realtime.calls.hangup(client.call_id)
        await other.close()
        api = AsyncOpenAI(api_key=KEY, base_url=b.url + "/v1", max_retries=0)
        await api.realtime.calls.hangup(client.call_id)  # held by worker A, asked of worker B
        await api.close()
        await wait_held(b, "worker-a", 0)
        deadline = time.monotonic() + 10
        while client.pc.connectionState not in ("closed", "failed") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert client.pc.connectionState in ("closed", "failed")
    finally:
        await client.close()
