"""Admission control, load shedding and the session close paths, in process (issue 16).

The app runs on a real uvicorn on 127.0.0.1 in a thread, with the same guarded socket
protocols as `moksori serve`, and fast fake models (`moksori.testing.fakes`): what is under
test here is the server's own behaviour (when it refuses, with what, and that every session
closes), not the models. `test_abuse.py` does the same against `moksori serve` with the real
models. Every await has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import uvicorn
from servers import free_port
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from moksori.protocols import realtime as rt
from moksori.providers.threads import ModelExecutor, run_blocking
from moksori.server.app import ServerState, create_app
from moksori.server.load import Admission, AdmissionLimits, LoopLag
from moksori.server.realtime_conn import RealtimeConnection
from moksori.server.sockets import guarded_protocols
from moksori.settings import load_settings
from moksori.testing.fakes import ScriptedLLM, fake_stack

KEY = "sk-admission-1"
T = 20.0


class Server:
    """create_app(settings, fake_stack()) under uvicorn in a thread, like `moksori serve`."""

    def __init__(self, **server: Any) -> None:
        keys = server.pop("api_keys", [])
        self.settings = load_settings(api_keys=keys, server=server)
        self.stack = fake_stack(llm=ScriptedLLM("One. Two. Three. Four. Five. Six.", token_delay_s=0.05))
        self.app = create_app(self.settings, self.stack)
        self.state: ServerState = self.app.state.moksori
        self.port = free_port()
        http, ws = guarded_protocols(self.state.sockets)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                http=http, ws=ws, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, path: str = "/v1/realtime") -> str:
        return f"ws://127.0.0.1:{self.port}{path}?model=x"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + T
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def get(self, path: str) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {KEY}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


async def wait_until(pred, timeout: float = T, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(pred):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def session_created(url: str, **kw: Any):
    ws = await connect(url, **kw)
    msg = json.loads(await asyncio.wait_for(ws.recv(), T))
    assert msg["type"] == "session.created"
    return ws


# --------------------------------------------------------------------------- refusals


async def test_a_full_model_queue_sheds_new_sessions_with_503() -> None:
    """Finding 3: nothing refused a session however busy the models were. Now a model queue whose
    expected wait passes `shed_queue_wait_s` turns new sessions away with HTTP 503 (JSON code
    `server_busy`, `Retry-After`), `/ready` says 503 with the reason, the sessions already in go
    on, and it all recovers when the queue drains."""
    with Server(shed_queue_wait_s=0.5) as srv:
        ex = ModelExecutor("llm:test-admission")
        gate = threading.Event()
        inside = await session_created(srv.ws())
        await run_blocking(time.sleep, 0.2, executor=ex)  # the model's service time: ~0.2 s a job
        blocker = asyncio.ensure_future(run_blocking(gate.wait, executor=ex))
        queued = [asyncio.ensure_future(run_blocking(time.sleep, 0.01, executor=ex)) for _ in range(10)]
        try:
            await asyncio.sleep(0.05)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(srv.ws()):
                    pass
            response = refused.value.response
            assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
            body = json.loads(response.body)["error"]
            assert body["code"] == "server_busy" and "llm:test-admission" in body["message"]
            status, report = srv.get("/ready")
            assert status == 503 and report["status"] == "busy" and "llm:test-admission" in report["reason"]
            # the official SDK gets the same HTTP 503 at connect
            from openai import AsyncOpenAI

            client = AsyncOpenAI(api_key="none", websocket_base_url=f"ws://127.0.0.1:{srv.port}/v1", max_retries=0)
            with pytest.raises(Exception) as sdk:
                async with client.realtime.connect(model="x"):
                    pass
            assert "503" in str(sdk.value)
            # the session already in is served as usual
            await inside.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            assert json.loads(await asyncio.wait_for(inside.recv(), T))["type"] == "session.updated"
        finally:
            gate.set()
            await asyncio.wait_for(asyncio.gather(blocker, *queued), T)
        assert srv.get("/ready")[0] == 200
        ok = await session_created(srv.ws())
        await ok.close()
        await inside.close()
        assert srv.state.admission.refused["server_busy"] >= 2


async def test_a_lagging_event_loop_sheds_new_sessions() -> None:
    """Finding 3: 100 streaming sessions saturated the loop, new handshakes failed and live
    sessions were dropped. Admission reads the loop's lag: past `shed_loop_lag_ms` (p95 over
    5 s) new sessions get 503 while the live one stays."""
    with Server(shed_loop_lag_ms=50) as srv:
        async def block(_: Any = None) -> dict:
            time.sleep(0.15)  # a stall on the loop, as saturation would cause
            return {}

        srv.app.add_api_route("/_stall", block, methods=["GET"])
        live = await session_created(srv.ws(), ping_interval=1, ping_timeout=5)
        for _ in range(12):
            await asyncio.to_thread(srv.get, "/_stall")
        with pytest.raises(InvalidStatus) as refused:
            async with connect(srv.ws()):
                pass
        assert refused.value.response.status_code == 503
        assert "event loop lag" in json.loads(refused.value.response.body)["error"]["message"]
        await live.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        assert json.loads(await asyncio.wait_for(live.recv(), T))["type"] == "session.updated"
        await wait_until(lambda: srv.get("/ready")[0] == 200, timeout=15, what="the lag window to pass")
        await live.close()


async def test_session_limits_per_key_apply_only_with_keys() -> None:
    """Finding 8: the undocumented 16-sessions-per-key cap also capped a keyless server at 16."""
    with Server() as srv:  # no keys: only max_sessions applies
        held = [await session_created(srv.ws()) for _ in range(20)]
        assert srv.state.sessions == 20
        for ws in held:
            await ws.close()
    with Server(api_keys=[KEY], max_sessions_per_key=2, max_sessions=3) as srv:
        auth = {"Authorization": f"Bearer {KEY}"}
        held = [await session_created(srv.ws(), additional_headers=auth) for _ in range(2)]
        with pytest.raises(InvalidStatus) as refused:
            async with connect(srv.ws(), additional_headers=auth):
                pass
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body)["error"]["code"] == "too_many_sessions"
        with pytest.raises(InvalidStatus) as bad:
            async with connect(srv.ws(), additional_headers={"Authorization": "Bearer nope"}):
                pass
        assert bad.value.response.status_code == 403  # an auth failure stays distinct
        for ws in held:
            await ws.close()


async def test_draining_refuses_everything_new() -> None:
    with Server() as srv:
        assert srv.get("/v1/cluster")[1]["workers"][0]["draining"] is False
        srv.state.admission.draining = True
        status, report = srv.get("/ready")
        assert status == 503 and report["status"] == "draining"
        assert srv.get("/v1/cluster")[1]["workers"][0]["draining"] is True  # one process: this worker
        with pytest.raises(InvalidStatus) as refused:
            async with connect(srv.ws()):
                pass
        assert json.loads(refused.value.response.body)["error"]["code"] == "draining"


def test_admission_reads_loop_lag_and_queues() -> None:
    lag = LoopLag()
    adm = Admission(AdmissionLimits(max_sessions=10, max_sessions_per_key=2, shed_loop_lag_ms=100), lag)
    assert adm.check(0, None) is None
    assert adm.check(5, None) is None  # no keys: no per-key cap
    assert adm.check(5, 2).code == "too_many_sessions"
    assert adm.check(10, None).code == "too_many_sessions"
    now = time.monotonic()
    lag.samples.extend((now + i * 0.05, 0.3) for i in range(50))
    refusal = adm.check(0, None)
    assert refusal is not None and refusal.code == "server_busy" and "lag" in refusal.message
    assert adm.refused == {"too_many_sessions": 2, "server_busy": 1}


# --------------------------------------------------------------------------- every session closes


async def test_the_session_closes_even_when_the_socket_went_first() -> None:
    """Finding 4, deterministic: the socket fails while a reply streams, the sender stops, and
    then the route closes the connection. `close()` used to return early here ("already
    closed") and the Session generated its reply for nobody."""
    stack = fake_stack(llm=ScriptedLLM("One. Two. Three. Four. Five. Six. Seven. Eight.", token_delay_s=0.05))
    sent: list[dict] = []

    async def send(event: dict) -> None:
        if event["type"] == "response.output_audio.delta":
            raise ConnectionResetError("the client went away")
        sent.append(event)

    conn = RealtimeConnection(stack, load_settings(), rt.detect_flavor("/v1/realtime", {}, []), send)
    await conn.start()
    await conn.on_message(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}))
    await conn.on_message(json.dumps({"type": "response.create"}))
    deadline = time.monotonic() + T
    while not conn.sender.done():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert conn.closed
    await asyncio.wait_for(conn.close(), T)
    assert conn.session.closed
    assert not conn.session._ctx.running_tasks()
    await asyncio.sleep(0.2)
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
               and ("response" in t.get_name() or "tts" in t.get_name())]
    assert pending == []


async def test_idle_sessions_time_out_and_close() -> None:
    """Finding 5 (after authentication): a session with no client message for
    `session_idle_timeout_s` is closed with 1000 and the reason, and its Session with it."""
    with Server(session_idle_timeout_s=1) as srv:
        ws = await session_created(srv.ws())
        t = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), T)
        assert closed.value.rcvd.code == 1000 and "no client message" in closed.value.rcvd.reason
        assert 0.9 < time.monotonic() - t < 10
        await wait_until(lambda: srv.state.sessions == 0 and srv.state.unclosed_sessions() == 0,
                         what="the session to close")


async def test_a_failing_handler_closes_the_session(monkeypatch) -> None:
    """The error path: a bug escaping the message handler ends the connection with 1011, and the
    Session closes with it."""
    async def broken(self: RealtimeConnection, raw: Any) -> None:
        raise RuntimeError("a bug")

    with Server() as srv:
        monkeypatch.setattr(RealtimeConnection, "on_message", broken)
        ws = await session_created(srv.ws())
        await ws.send("{}")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), T)
        assert closed.value.rcvd.code == 1011
        await wait_until(lambda: srv.state.sessions == 0 and srv.state.unclosed_sessions() == 0,
                         what="the session to close")


# --------------------------------------------------------------------------- bodies


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    with contextlib.suppress(OSError):
        while True:
            part = s.recv(4096)
            if not part:
                break
            out += part
    s.close()
    return out


def test_request_bodies_are_capped_and_must_keep_coming() -> None:
    """Bodies: a declared size over the route's limit is refused before it is read; a body that
    stops arriving gets 408 after `body_idle_timeout_s`."""
    with Server(api_keys=[KEY], body_idle_timeout_s=1) as srv:
        auth = b"Authorization: Bearer " + KEY.encode() + b"\r\n"
        said = _raw(srv.port, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n" + auth +
                    b"Content-Type: application/json\r\nContent-Length: 99999999\r\n\r\n{")
        assert said.startswith(b"HTTP/1.1 413") and b"request_too_large" in said
        t = time.monotonic()
        said = _raw(srv.port, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n" + auth +
                    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\": ")
        assert said.startswith(b"HTTP/1.1 408") and 0.9 < time.monotonic() - t < 8
        # without the key, nothing is read at all
        said = _raw(srv.port, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        assert said.startswith(b"HTTP/1.1 401")


async def test_a_client_that_never_reads_is_dropped_not_buffered(monkeypatch) -> None:
    """A client that asks for a reply and never reads: the socket stops taking data, events pile
    up unsent. Past `MAX_OUTBOUND_EVENTS` the connection gives up on it and the session closes,
    instead of buffering its audio for as long as it stays connected."""
    from moksori.server import realtime_conn

    monkeypatch.setattr(realtime_conn, "MAX_OUTBOUND_EVENTS", 20)
    stuck = asyncio.Event()

    async def send(event: dict) -> None:
        if event["type"] != "session.created":
            stuck.set()
            await asyncio.Event().wait()  # the transport never drains

    conn = RealtimeConnection(fake_stack(llm=ScriptedLLM("One. Two. Three. Four. Five. Six. Seven.",
                                                         token_delay_s=0.01)),
                              load_settings(), rt.detect_flavor("/v1/realtime", {}, []), send)
    await conn.start()
    await conn.on_message(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}))
    await conn.on_message(json.dumps({"type": "response.create"}))
    await asyncio.wait_for(stuck.wait(), T)
    await asyncio.wait_for(asyncio.wait([conn.sender]), T)  # given up on
    assert conn.closed and len(conn._outbox) <= 20 and conn._outbox.reason == "not_reading"
    await asyncio.wait_for(conn.close(), T)
    assert conn.session.closed


def test_running_out_of_file_descriptors_is_one_log_line(caplog) -> None:
    """asyncio reports each failed accept() through the loop's exception handler: one line per
    10 s instead of a traceback per retry (63 MB of log in 15 s)."""
    import errno
    import logging

    from moksori.server.sockets import quiet_accept_errors

    loop = asyncio.new_event_loop()
    try:
        quiet_accept_errors(loop)
        with caplog.at_level(logging.ERROR, logger="moksori.server"):
            for _ in range(1000):
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(errno.EMFILE, "Too many open files")})
        lines = [r for r in caplog.records if "file descriptors" in r.getMessage()]
        assert len(lines) == 1 and not any(r.exc_info for r in caplog.records)
    finally:
        loop.close()


# --------------------------------------------------------------------------- draining


async def test_sigterm_drains_then_stops() -> None:
    """SIGTERM: `/ready` says 503 `draining` and new sessions are refused at once, the live one
    goes on until it ends, then the process exits. With a session that does not end, the drain
    timeout stops it (the client sees 1012)."""
    import signal
    import sys
    from pathlib import Path

    from servers import ServerProcess

    script = str(Path(__file__).parent / "drain_server.py")
    for drain_s, client_leaves in ((30.0, True), (2.0, False)):
        port = free_port()
        with ServerProcess([sys.executable, script, str(port), str(drain_s)], port=port, ready_path="/ready") as srv:
            url = f"ws://127.0.0.1:{port}/v1/realtime?model=x"
            live = await session_created(url)
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + T
            while True:
                try:
                    with urllib.request.urlopen(srv.url + "/ready", timeout=5):
                        pass
                except urllib.error.HTTPError as e:
                    assert e.code == 503 and json.loads(e.read())["status"] == "draining"
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert json.loads(refused.value.response.body)["error"]["code"] == "draining"
            await live.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            assert json.loads(await asyncio.wait_for(live.recv(), T))["type"] == "session.updated"
            t = time.monotonic()
            if client_leaves:
                await live.close()
            else:
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(live.recv(), T)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            code = await asyncio.to_thread(srv.proc.wait, 20)
            took = time.monotonic() - t
            assert code in (0, -signal.SIGTERM), code
            assert took < (5 if client_leaves else drain_s + 5), took
