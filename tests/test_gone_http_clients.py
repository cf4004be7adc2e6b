"""Streamed HTTP answers whose client is gone: no traceback, no warnings, no work for nobody.

Two streamed answers exist: `/v1/audio/speech` (`pcm` streams as it is made, `wav` is made whole
first) and `GET /v1/conversations/{id}/events` (Server-Sent Events). Every other HTTP route
answers in one piece (a send after its client left is dropped by uvicorn, unlogged). The clients
are plain sockets that read a little and then close (with the rest unread, which Linux turns
into a reset; before any byte of a `wav` answer, a FIN), or reset (SO_LINGER 0).

What was found (real uvicorn with `moksori serve`'s protocols, 2026-12-06):

* speech: nothing wrong. The synthesis stops within one Piper step of the client leaving (the
  TTS model idle 0.2-1.3 s after it, measured while other work loaded the machine), its slot is
  given back, and nothing is logged. The tests below keep it so.
* live events: the follower is let go at once (its conversation is no longer `followed`, so no
  live partials are decoded for it), nothing is logged for one event at a time; but a burst of
  events queued for a follower that has just gone (the stream drains its queue without
  suspending) is written into the dead socket, one `socket.send() raised exception.` warning
  from asyncio per event after the 5th: uvicorn calls a client gone only at `connection_lost`,
  which asyncio runs after the write that failed. The fix belongs in `server/sockets.py`'s
  HTTP protocol (a send on a closing transport is the disconnect, as it is there for WebSockets
  already); until it is made, that test is an expected failure (strict: it says when it passes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from moksori.server.app import create_app
from moksori.server.sockets import guarded_protocols
from moksori.settings import load_settings
from moksori.testing.fakes import fake_stack
from servers import ServerProcess, free_port

NOISE = ("Traceback", "Exception in ASGI application", "socket.send() raised exception", "ERROR")


def leave(sock: socket.socket, how: str) -> None:
    """`close`: close() (a FIN, or a reset when data is left unread); `reset`: SO_LINGER 0, a reset."""
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def noise(self) -> list[str]:
        return [r.getMessage()[:200] for r in self.records]


@contextlib.asynccontextmanager
async def served_app(**settings: Any) -> AsyncIterator[tuple[Any, int, _Records]]:
    """The real app (fast stand-in models: these tests exercise no model) served in this event
    loop as `moksori serve` serves it (its guarded protocols); (app state, port, log records)."""
    app = create_app(load_settings(store={"url": "none"}, **settings), fake_stack())
    state = app.state.moksori
    http, ws = guarded_protocols(state.sockets)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", http=http, ws=ws,
                                           access_log=False, timeout_graceful_shutdown=2))
    records = _Records()  # warnings and errors: asyncio's, uvicorn's, ours
    loggers = [logging.getLogger(n) for n in ("asyncio", "uvicorn.error", "moksori")]
    for lg in loggers:
        lg.addHandler(records)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        yield state, listener.getsockname()[1], records
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        for lg in loggers:
            lg.removeHandler(records)
        listener.close()


async def follow(port: int, conversation_id: str) -> socket.socket:
    """A raw follower of the live events, once it has read the stream's first event (all of
    what was sent: nothing is left unread, so a close is a FIN)."""
    sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 5)
    sock.sendall(f"GET /v1/conversations/{conversation_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = b""
    while b"event: conversation.state" not in got or not got.endswith(b"\n\n\r\n"):  # its whole chunk
        chunk = await asyncio.to_thread(sock.recv, 4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got[:100]
    return sock


async def wait_until(what, within_s: float) -> float | None:
    """Seconds until `what()` is true, or None if it was not within `within_s`."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if what():
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return None


# --------------------------------------------------------------------------- live events (SSE)


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_follower_that_leaves_is_let_go_at_once(how) -> None:
    """The conversation goes on publishing (an event every 20 ms, as a reply's deltas); the
    follower that left is dropped within moments, so its conversation stops decoding live
    partials for it, and nothing is logged."""
    async with served_app() as (state, port, records):
        live, cid = state.live, "conv_gone_follower"
        live.begin(cid, "anonymous")
        sock = await follow(port, cid)
        assert live.followed(cid)
        leave(sock, how)
        started = time.monotonic()
        for i in range(50):
            live.publish(cid, "reply.delta", {"response_id": "r", "item_id": "i", "delta": f"word{i} "})
            if not live.followed(cid):
                break
            await asyncio.sleep(0.02)
        let_go = time.monotonic() - started
        print(f"{how}: the follower was let go {1000 * let_go:.0f} ms after it left")
        assert not live.followed(cid) and let_go < 0.5, let_go
        await asyncio.sleep(0.2)
    assert not records.noise(), records.noise()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_burst_for_a_follower_that_just_left_is_not_written_into_its_dead_socket(how) -> None:
    async with served_app() as (state, port, records):
        live, cid = state.live, "conv_burst"
        live.begin(cid, "anonymous")
        sock = await follow(port, cid)
        leave(sock, how)
        for i in range(100):  # queued at once: a busy loop, a fast reply, a tool's result
            live.publish(cid, "reply.delta", {"response_id": "r", "item_id": "i", "delta": f"word{i} "})
        assert await wait_until(lambda: not live.followed(cid), 2.0) is not None
        await asyncio.sleep(0.2)
    noise = records.noise()
    assert not noise, f"{len(noise)} log records, e.g. {noise[:2]}"


# --------------------------------------------------------------------------- speech (real models)

KEY = "sk-gone-clients-0123"
LONG = json.dumps({"model": "tts-1", "voice": "alloy", "speed": 0.25,
                   "input": ("The quick brown fox jumps over the lazy dog near the river bank. " * 62)[:4000]})
STOP_S = 3.0  # client gone -> the TTS model idle: one Piper step (0.2-1.3 s measured), under load


@pytest.fixture(scope="module")
def speech_server(tmp_path_factory):
    from speech import prepared_data_dir

    port = free_port()
    argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "info"]
    env = {"MOKSORI_DATA_DIR": str(prepared_data_dir(tmp_path_factory)), "MOKSORI_CONFIG": "",
           "MOKSORI_API_KEYS": KEY, "MOKSORI_STORE_URL": "none", "MOKSORI_LANGUAGE": "en",
           "MOKSORI_SERVER_MAX_AUDIO_REQUESTS": "1", "PYTHONUNBUFFERED": "1"}
    with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=240, env=env,
                       cwd=tmp_path_factory.mktemp("gone-clients")) as srv:
        yield srv


def get(srv: ServerProcess, path: str) -> tuple[int, bytes]:
    req = urllib.request.Request(srv.url + path, headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def tts_running(srv: ServerProcess) -> int:
    """Synthesis jobs running now (`/ready`'s model queues)."""
    queues = json.loads(get(srv, "/ready")[1])["queues"]
    return sum(q["running"] for name, q in queues.items() if name.startswith("tts:"))


def speech_request(srv: ServerProcess, fmt: str) -> socket.socket:
    body = LONG.replace('"speed"', f'"response_format": "{fmt}", "speed"').encode()
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body))
    return sock


def served(srv: ServerProcess, within_s: float) -> int:
    """The status of a short speech request, retried while it is 503 (its one slot taken)."""
    deadline = time.monotonic() + within_s
    while True:
        req = urllib.request.Request(srv.url + "/v1/audio/speech", method="POST",
                                     data=json.dumps({"model": "tts-1", "input": "Hi."}).encode(),
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            if e.code != 503 or time.monotonic() > deadline:
                return e.code
        time.sleep(0.2)


@pytest.mark.models
@pytest.mark.parametrize(("fmt", "how"), [("pcm", "close"), ("pcm", "reset"), ("wav", "close"), ("wav", "reset")])
def test_speech_stops_when_its_client_leaves(speech_server, fmt, how) -> None:
    srv = speech_server
    mark = len(srv.log_text())
    sock = speech_request(srv, fmt)
    try:
        if fmt == "pcm":  # the start of the audio, then gone with the rest unread
            got = b""
            while len(got) < 20_000:
                chunk = sock.recv(65536)
                assert chunk, got[:200]
                got += chunk
            assert got.startswith(b"HTTP/1.1 200"), got[:200]
        else:  # nothing is sent before the whole answer is made: gone while it is
            deadline = time.monotonic() + 30
            while not tts_running(srv):
                assert time.monotonic() < deadline, "the synthesis never started"
                time.sleep(0.05)
        assert tts_running(srv)
    finally:
        leave(sock, how)
    left = time.monotonic()
    idle = None
    while time.monotonic() - left < 30:
        if not tts_running(srv):
            idle = time.monotonic() - left
            break
        time.sleep(0.05)
    print(f"speech {fmt}, client {how}: the TTS model idle {idle} s after the client left")
    assert idle is not None, "still synthesising 30 s after the client left"
    assert idle < STOP_S, f"the synthesis went on {idle:.1f} s for a client that left"
    time.sleep(1.0)
    assert not tts_running(srv), "the synthesis started again for nobody"
    assert served(srv, within_s=10) == 200, "the speech slot was not given back"
    log = srv.log_text()[mark:]
    noise = [line for line in log.splitlines() if any(n in line for n in NOISE)]
    assert not noise, "\n".join(noise[:20])
