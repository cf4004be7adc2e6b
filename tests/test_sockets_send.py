"""A send to a WebSocket whose socket already failed ends the app's send at once, quietly.

uvicorn's websockets-sansio protocol writes every `websocket.send` with `transport.write()`
and only calls the client disconnected once asyncio has run `connection_lost`, which it
schedules (call_soon) after the write that failed. An app that writes a burst without
suspending (an Outbox with queued audio: `ws.send_text` never suspends while the transport is
writable) kept writing into the dead transport, and from the 6th write on asyncio logged
`socket.send() raised exception.` for every message: floods of warnings when many carrier
streams dropped at once. The guarded protocol (`server/sockets.py`) refuses a send on a closing
transport the way uvicorn refuses one on a disconnected client (`ClientDisconnected`, which
Starlette turns into `WebSocketDisconnect`).

A real uvicorn on 127.0.0.1 with the guarded protocols; the client is a plain socket that the
app resets (SO_LINGER 0: an RST, delivered by the kernel before `close()` returns) just before
it writes its burst, so the first write is the one that fails, every time.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from moksori.server.sockets import SocketStats, guarded_protocols

BURST = 100


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return sock


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _burst_to_a_reset_client() -> tuple[dict[str, Any], list[logging.LogRecord]]:
    client: dict[str, socket.socket] = {}
    ready = asyncio.Event()
    outcome: dict[str, Any] = {}

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        await ready.wait()
        _reset(client["sock"])  # the peer is gone before the burst starts
        sent = 0
        try:
            for i in range(BURST):
                await ws.send_text(f'{{"event": "media", "n": {i}, "payload": "{"A" * 200}"}}')
                sent += 1
        except WebSocketDisconnect as e:
            outcome["raised"] = e.code
        outcome["sent"] = sent
        # what the app does next either way: read until the disconnect (it must come, not hang)
        try:
            outcome["received"] = (await asyncio.wait_for(ws.receive(), 5))["type"]
        except RuntimeError as e:  # Starlette: the app already saw the disconnect when a send raised
            outcome["received"] = f"refused: {e}"

    stats = SocketStats(max_connections=64, header_timeout_s=10.0)
    http, ws_protocol = guarded_protocols(stats)
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", http=http, ws=ws_protocol)
    server = uvicorn.Server(config)
    records = _Records()
    asyncio_log = logging.getLogger("asyncio")
    old_level = asyncio_log.level
    asyncio_log.addHandler(records)
    asyncio_log.setLevel(logging.DEBUG)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        client["sock"] = await asyncio.to_thread(_handshake, port)
        ready.set()
        for _ in range(500):
            if "received" in outcome:
                break
            await asyncio.sleep(0.01)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        asyncio_log.removeHandler(records)
        asyncio_log.setLevel(old_level)
        listener.close()
    return outcome, records.records


async def test_a_burst_to_a_reset_client_ends_at_once_without_asyncio_warnings() -> None:
    outcome, records = await _burst_to_a_reset_client()
    flood = [r for r in records if "socket.send() raised exception" in r.getMessage()]
    assert not flood, f"{len(flood)} asyncio warnings for writes to a dead socket"
    assert outcome.get("raised") == 1006, outcome  # the app is told: a disconnect, not silence
    assert outcome["sent"] <= 1, outcome  # the write that found the reset is the last one
    assert "received" in outcome, outcome  # and it does not hang afterwards
