"""A WebSocket proxy on loopback that breaks a Realtime connection on purpose.

It sits between a Realtime client and a real Realtime server (e.g. a second `moksori serve`),
forwards every message both ways, and on request:

* `drop_after(type, nth)`: vanishes (TCP abort, no close frame) right after forwarding the
  `nth` server event of that type, e.g. the 5th `response.output_audio.delta`: mid-reply;
* `stall_after(type, nth)`: keeps the socket open but forwards nothing more from the server;
* `delay_s` / `client_delay_s`: adds latency to each server / client message (order kept);
* `reject_truncates = n`: answers the next n `conversation.item.truncate` with an `error`
  (`invalid_value`) instead of forwarding them, as an upstream that rejects one would;
* `time_limit_s`: ends each connection after that long with the `session_expired` error and a
  close, as OpenAI does at a session's maximum duration;
* `blackhole = True`: new connections complete the handshake, then hear nothing;
* `hang_handshake = True`: new connections never get a handshake answer;
* `refuse = n`: the next n handshakes get HTTP 503.

It runs its own event loop on a thread, so it works from sync and async tests alike. It records
what passed (`connections[i].client_events` with audio elided, `.server_types`).

    with WSFaultProxy("ws://127.0.0.1:8000") as proxy:
        url = proxy.url + "/v1/realtime?model=gpt-realtime"
        proxy.drop_after("response.output_audio.delta", 5)
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WSFaultProxy", "ProxiedConnection"]

_FORWARD_HEADERS = ("authorization", "api-key", "openai-beta")


@dataclass
class ProxiedConnection:
    number: int
    path: str
    t_open: float
    client_events: list[dict[str, Any]] = field(default_factory=list)
    server_types: list[str] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)  # what the proxy did to it
    ended: str | None = None

    def client_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.client_events]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class WSFaultProxy:
    def __init__(self, target: str, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise ValueError("the fault proxy listens on loopback only")
        self.target = target.rstrip("/")
        self.host = host
        self.port = port or _free_port(host)
        self.delay_s = 0.0
        self.client_delay_s = 0.0
        self.reject_truncates = 0
        self.time_limit_s: float | None = None
        self.blackhole = False
        self.hang_handshake = False
        self.refuse = 0
        self.connections: list[ProxiedConnection] = []
        self._drop_rule: tuple[str, int] | None = None
        self._stall_rule: tuple[str, int] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"ws-fault-proxy-{self.port}",
                                        daemon=True)
        self._server: Any = None
        self._upstreams: dict[int, Any] = {}
        self._live: set[Any] = set()
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # ------------------------------------------------------------------ faults (any thread)
    def drop_after(self, server_type: str, nth: int = 1) -> None:
        """Abort the connection after forwarding the `nth` server event of `server_type` (counted
        from now, over all connections). One-shot."""
        self._drop_rule = (server_type, nth)

    def stall_after(self, server_type: str, nth: int = 1) -> None:
        self._stall_rule = (server_type, nth)

    def drop_now(self) -> None:
        """Abort every open connection now."""
        self._call(self._abort_all())

    def clear_faults(self) -> None:
        self.delay_s = self.client_delay_s = 0.0
        self.reject_truncates = self.refuse = 0
        self.time_limit_s = None
        self.blackhole = self.hang_handshake = False
        self._drop_rule = self._stall_rule = None

    def wait_connections(self, n: int, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.connections) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.connections) >= n

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> WSFaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> WSFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        from websockets.asyncio.server import serve

        self._stopping = asyncio.Event()
        self._server = await serve(self._handle, self.host, self.port, process_request=self._process_request,
                                   open_timeout=None, ping_interval=None, max_size=None, compression=None)

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        await self._abort_all()
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 3)
            except asyncio.TimeoutError:
                pass

    async def _abort_all(self) -> None:
        for ws in list(self._live):
            _abort(ws)
        for up in list(self._upstreams.values()):
            _abort(up)

    # ------------------------------------------------------------------ proxying
    async def _process_request(self, connection: Any, request: Any) -> Any:
        if self.hang_handshake:
            assert self._stopping is not None
            await self._stopping.wait()
            return connection.respond(503, "proxy stopping\n")
        if self.refuse > 0:
            self.refuse -= 1
            return connection.respond(503, "refused by the fault proxy\n")
        if self.blackhole:
            return None
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        headers = [(k, v) for k, v in request.headers.raw_items() if k.lower() in _FORWARD_HEADERS]
        try:
            up = await connect(self.target + request.path, additional_headers=headers, max_size=None,
                               compression=None, ping_interval=None, open_timeout=10)
        except InvalidStatus as e:
            return connection.respond(e.response.status_code, "upstream refused\n")
        except (OSError, asyncio.TimeoutError) as e:
            return connection.respond(502, f"upstream unreachable: {type(e).__name__}\n")
        self._upstreams[id(connection)] = up
        return None

    async def _handle(self, ws: Any) -> None:
        rec = ProxiedConnection(len(self.connections) + 1, ws.request.path, time.monotonic())
        self.connections.append(rec)
        self._live.add(ws)
        up = self._upstreams.pop(id(ws), None)
        tasks: list[asyncio.Task[Any]] = []
        try:
            if up is None:  # blackhole
                rec.injected.append("blackhole")
                await ws.wait_closed()
                return
            tasks = [asyncio.create_task(_quietly(self._client_to_server(ws, up, rec))),
                     asyncio.create_task(_quietly(self._server_to_client(ws, up, rec)))]
            if self.time_limit_s is not None:
                tasks.append(asyncio.create_task(_quietly(self._time_limit(ws, up, rec, self.time_limit_s))))
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            self._live.discard(ws)
            if up is not None:
                _abort(up) if rec.ended in ("dropped", "stalled") else await _close(up)
            if rec.ended is None:
                rec.ended = "closed"
            await _close(ws)

    async def _client_to_server(self, ws: Any, up: Any, rec: ProxiedConnection) -> None:
        async for msg in _delayed(ws, lambda: self.client_delay_s):
            event = _parse(msg)
            if event is not None:
                shown = dict(event)
                if "audio" in shown and isinstance(shown["audio"], str):
                    shown["audio"] = f"<{len(shown['audio'])} b64 chars>"
                rec.client_events.append(shown)
                if event.get("type") == "conversation.item.truncate" and self.reject_truncates > 0:
                    self.reject_truncates -= 1
                    rec.injected.append("rejected truncate")
                    await ws.send(json.dumps({
                        "type": "error", "event_id": f"event_proxy_{len(rec.injected)}",
                        "error": {"type": "invalid_request_error", "code": "invalid_value", "param": "audio_end_ms",
                                  "message": "Audio content is already shorter than audio_end_ms "
                                             "(injected by the fault proxy)",
                                  "event_id": event.get("event_id")}}))
                    continue
            await up.send(msg)

    async def _server_to_client(self, ws: Any, up: Any, rec: ProxiedConnection) -> None:
        stalled = False
        async for msg in _delayed(up, lambda: self.delay_s):
            event = _parse(msg)
            kind = str(event.get("type")) if event is not None else "?"
            rec.server_types.append(kind)
            if stalled:
                continue
            await ws.send(msg)
            if self._matches("_drop_rule", kind):
                rec.injected.append(f"dropped after {kind}")
                rec.ended = "dropped"
                _abort(ws)
                return
            if self._matches("_stall_rule", kind):
                rec.injected.append(f"stalled after {kind}")
                stalled = True
        rec.ended = rec.ended or "upstream closed"

    def _matches(self, attr: str, kind: str) -> bool:
        rule = getattr(self, attr)
        if rule is None or rule[0] != kind:
            return False
        left = rule[1] - 1
        setattr(self, attr, (rule[0], left) if left > 0 else None)
        return left <= 0

    async def _time_limit(self, ws: Any, up: Any, rec: ProxiedConnection, limit_s: float) -> None:
        await asyncio.sleep(limit_s)
        rec.injected.append("time limit")
        rec.ended = "time limit"
        await ws.send(json.dumps({"type": "error", "event_id": "event_proxy_limit",
                                  "error": {"type": "invalid_request_error", "code": "session_expired",
                                            "message": f"Your session hit the maximum duration of {limit_s:g} s "
                                                       "(fault proxy).", "param": None, "event_id": None}}))
        await _close(ws)


async def _delayed(source: Any, delay: Any) -> Any:
    """Messages from `source`, each held until `delay()` seconds after it arrived (order kept)."""
    from websockets.exceptions import ConnectionClosed

    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def read() -> None:
        try:
            async for msg in source:
                queue.put_nowait((time.monotonic(), msg))
        except ConnectionClosed:
            pass
        finally:
            queue.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            t, msg = item
            wait = t + delay() - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            yield msg
    finally:
        reader.cancel()


async def _quietly(coro: Any) -> None:
    """A pump ends when either side goes away; that is not an error."""
    from websockets.exceptions import ConnectionClosed

    try:
        await coro
    except (ConnectionClosed, OSError):
        pass


def _parse(msg: Any) -> dict[str, Any] | None:
    try:
        obj = json.loads(msg)
    except (ValueError, TypeError):
        return None
    return obj if isinstance(obj, dict) else None


def _abort(ws: Any) -> None:
    transport = getattr(ws, "transport", None)
    if transport is not None:
        transport.abort()


async def _close(ws: Any) -> None:
    try:
        await asyncio.wait_for(ws.close(), 2)
    except Exception:  # noqa: BLE001 - already gone
        _abort(ws)
