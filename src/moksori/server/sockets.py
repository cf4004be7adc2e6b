"""Socket-level guards around uvicorn's own protocols: every socket has a deadline and a place
in a bounded count, before the ASGI app ever sees it.

uvicorn (h11 + websockets-sansio) leaves three holes that a single client can use to pin file
descriptors until the server stops accepting (measured: ~1,000 sockets with a 1,024-fd limit):

* a request whose headers never finish is kept forever (the keep-alive timer only runs
  between requests, and a byte of data cancels it);
* a WebSocket upgrade that websockets' parser refuses (a header line over 8 KB, too many
  headers) gets no answer and is never closed: the 400 websockets prepared is never written;
* nothing caps the number of open connections (`limit_concurrency` skips WebSocket upgrades);
* a WebSocket whose keepalive ping timed out is closed with `transport.close()`, which waits for
  the write buffer to drain: with a peer that vanished (no FIN) and audio still buffered for it,
  the session lingers until TCP gives up (minutes);
* a `websocket.send` after the socket failed is written anyway until asyncio has run
  `connection_lost` (scheduled after the failed write): a burst the app writes without
  suspending (queued audio) goes into the dead transport, and asyncio logs a warning for each.

`guarded_protocols()` returns subclasses that close those holes: a header deadline on every
request (`header_timeout_s`), a 400 and a close for a refused upgrade, and a soft cap on open
connections (`max_connections`, by default a margin below the process's file limit) beyond
which a new connection gets `503` and is closed at once, and an abort (not a graceful close) of
a socket whose ping went unanswered (`MOKSORI_SERVER_WS_PING_INTERVAL_S` / `_TIMEOUT_S`), so the
session ends then, and its interrupted reply is stored at once; a send on a closing transport raises
uvicorn's `ClientDisconnected` at once (Starlette: `WebSocketDisconnect`). Refusals are logged at most once per
`LOG_EVERY_S` with a count, never once per socket.

Every WebSocket also tells the app when its peer was last heard from (any bytes: a message, a
pong, a close), through the ASGI scope's extension `PEER_EXTENSION` (`{"last_heard": () -> loop
time}`): a peer that vanished is only noticed a ping interval and timeout later, and the reply it
was hearing must be counted as heard up to that moment, not up to when it was noticed.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger("moksori.server")

TRANSPORT_KEY = "moksori.transport"  # an HTTP request's scope: the asyncio transport that carries it

FD_RESERVE = 128  # file descriptors kept for models, logs, espeak-ng pipes, the listening socket
LOG_EVERY_S = 10.0
PEER_EXTENSION = "moksori.peer"  # scope["extensions"][PEER_EXTENSION]["last_heard"]() -> loop time

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\n"
         b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_BUSY_BODY = (b'{"error": {"message": "too many open connections; try again later", '
              b'"type": "server_error", "code": "too_many_connections"}}')
_BAD_UPGRADE = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                b"content-length: 46\r\n\r\nmalformed WebSocket upgrade (headers too large)")


def fd_limit() -> int:
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - not on Linux
        return 1024
    return soft if soft != resource.RLIM_INFINITY else 65536


def default_max_connections() -> int:
    return max(16, fd_limit() - FD_RESERVE)


class RateLimitedLog:
    """One log line per `every_s` for a recurring event, with how many happened meanwhile."""

    def __init__(self, logger: logging.Logger, every_s: float = LOG_EVERY_S) -> None:
        self.logger, self.every_s = logger, every_s
        self._last = 0.0
        self._count = 0

    def __call__(self, level: int, message: str) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self.every_s:
            suffix = f" ({self._count} times since the last report)" if self._count > 1 else ""
            self.logger.log(level, message + suffix)
            self._last, self._count = now, 0


class SocketStats:
    """Counters the app shows in /metrics."""

    def __init__(self, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.refused_busy = 0
        self.header_timeouts = 0
        self.bad_upgrades = 0
        self.ping_timeouts = 0  # WebSockets closed because a keepalive ping went unanswered
        self.connections: set[Any] | None = None  # uvicorn's live set, seen on first connection

    @property
    def open_connections(self) -> int:
        return len(self.connections) if self.connections is not None else 0


def guarded_protocols(stats: SocketStats) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol]]:
    """(HTTP protocol class, WebSocket protocol class) for `uvicorn.Config(http=..., ws=...)`."""
    busy_log = RateLimitedLog(log)
    timeout_log = RateLimitedLog(log)
    upgrade_log = RateLimitedLog(log)

    class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
        heard_at = 0.0  # loop time of the last bytes from the peer

        def last_heard(self) -> float:
            return self.heard_at

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None:  # the app's task reads it later, from this same dict
                scope.setdefault("extensions", {})[PEER_EXTENSION] = {"last_heard": self.last_heard}

        def data_received(self, data: bytes) -> None:
            self.heard_at = self.loop.time()
            super().data_received(data)
            if not self.handshake_initiated and self.conn.handshake_exc is not None and \
                    not self.transport.is_closing():
                stats.bad_upgrades += 1
                upgrade_log(logging.INFO, "refused a malformed WebSocket upgrade (400)")
                self.handshake_initiated = self.handshake_complete = self.close_sent = True
                self.transport.write(_BAD_UPGRADE)
                self.transport.close()

        async def send(self, message: Any) -> None:
            await self.writable.wait()  # what uvicorn's send awaits first (it then returns at once)
            if message["type"] == "websocket.send" and self.transport.is_closing():
                # the socket failed (or is being closed): uvicorn only calls the client
                # disconnected at `connection_lost`, which asyncio runs after the failed write,
                # so a burst written without suspending went on into the dead transport (from
                # the 6th write on asyncio logs `socket.send() raised exception.` for each)
                raise ClientDisconnected()
            await super().send(message)
            if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
                # a denial response (a 503 at the session limit, a 404 sideband) went out whole;
                # uvicorn 0.54 does not count that as answering the handshake and logs an ERROR
                # ("ASGI callable returned without completing handshake") for every refusal
                self.handshake_complete = True

        def keepalive_timeout(self) -> None:
            live = not (self.close_sent or self.transport.is_closing())
            super().keepalive_timeout()  # a close frame, then transport.close()
            if live:
                stats.ping_timeouts += 1
                if self.transport.get_write_buffer_size():  # a gone peer never drains it: drop the socket now
                    self.transport.abort()

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        # uvicorn's H11Protocol narrows asyncio's BaseTransport to Transport in the same way
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            stats.connections = self.connections
            if len(self.connections) > stats.max_connections:
                stats.refused_busy += 1
                busy_log(logging.WARNING, f"refusing connections: {len(self.connections) - 1} open "
                                          f"(limit {stats.max_connections}, MOKSORI_SERVER_MAX_CONNECTIONS)")
                transport.write(_BUSY % (len(_BUSY_BODY), _BUSY_BODY))
                transport.close()
                return
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(stats.header_timeout_s, self._on_header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            # no request started, or a refused request's body still trickling in after our answer
            idle = self.conn.their_state is h11.IDLE or (
                self.conn.their_state is h11.SEND_BODY and self.conn.our_state in (h11.DONE, h11.MUST_CLOSE))
            if idle and not self.transport.is_closing():
                stats.header_timeouts += 1
                timeout_log(logging.INFO, f"closed a connection that sent no complete request within "
                                          f"{stats.header_timeout_s:g} s")
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            cycle = getattr(self, "cycle", None)
            if cycle is not None and "send" not in vars(cycle):
                cycle.send = self._closing_is_disconnect(cycle)
            scope = getattr(self, "scope", None)
            if isinstance(scope, dict) and TRANSPORT_KEY not in scope:
                # the app's request task has not run yet: it finds its connection here, to drop
                # it at once when it must (`audio_api`: a speech client that stopped reading)
                scope[TRANSPORT_KEY] = self.transport
            if self._header_timer is not None and self.conn.their_state is not h11.IDLE and \
                    self.conn.our_state not in (h11.DONE, h11.MUST_CLOSE):
                self._cancel_header_timer()  # the request line and headers are in

        def _closing_is_disconnect(self, cycle: Any) -> Callable[[Any], Awaitable[None]]:
            """The request's `send`, for which a transport already closing is the client's
            disconnect: a failed write closes it at once, but uvicorn learns of it only at
            `connection_lost`, a loop turn later, and a stream that sends a queued burst meanwhile
            (live events) wrote every message into the dead socket, each a `socket.send() raised
            exception.` warning from asyncio (95 for a burst of 100). Now the stream sees
            `http.disconnect` and its sends are dropped, as after `connection_lost`."""
            send, transport = cycle.send, self.transport

            async def guarded(message: Any) -> None:
                if transport.is_closing() and not cycle.disconnected:
                    cycle.disconnected = True
                    cycle.message_event.set()
                await send(message)

            return guarded

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self._cancel_header_timer()
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request on this connection gets a deadline too

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol, GuardedWebSocketProtocol


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio reports `accept()` failing for lack of file descriptors through the loop's
    exception handler, with a traceback, every time it retries: keep one line per LOG_EVERY_S."""
    limited = RateLimitedLog(log)
    previous = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        msg = str(context.get("message", ""))
        if "out of system resource" in msg or isinstance(context.get("exception"), OSError) and \
                getattr(context.get("exception"), "errno", None) in (23, 24):  # ENFILE, EMFILE
            limited(logging.ERROR, f"cannot accept connections: out of file descriptors (limit {fd_limit()})")
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
