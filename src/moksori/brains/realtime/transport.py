"""How the client reaches the upstream: a small connection contract, and its WebSocket
implementation (the `websockets` library). Library exceptions are translated here: a failed
connect is a `ProviderError` (`retryable` says whether trying again can help), a lost
connection is `TransportClosed`.

Tests swap the connector for an in-memory one (`moksori.testing.fake_realtime`) to run long
conversations in virtual time.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from moksori import cancellation
from moksori.errors import ProviderError, ProviderTimeout, is_retryable_status

from .options import Endpoint, Timeouts

__all__ = ["Connection", "Connector", "TransportClosed", "websocket_connector"]


class TransportClosed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed ({code}): {reason}" if code else f"closed: {reason}")
        self.code = code
        self.reason = reason


class Connection(Protocol):
    async def send(self, text: str) -> None:
        """Raises `TransportClosed` when the connection is gone."""
        ...

    async def recv(self) -> str | bytes:
        """The next message; `TransportClosed` when the connection ends."""
        ...

    async def close(self) -> None: ...

    def abort(self) -> None:
        """Drop the connection now, without a closing handshake (a dead upstream)."""
        ...


class Connector(Protocol):
    async def __call__(self, endpoint: Endpoint, timeouts: Timeouts, *, max_message_bytes: int) -> Connection: ...


class _WSConnection:
    def __init__(self, ws) -> None:  # noqa: ANN001 - websockets.asyncio.client.ClientConnection
        self.ws = ws

    async def send(self, text: str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self.ws.send(text)
        except ConnectionClosed as e:
            raise _closed(e) from None

    async def recv(self) -> str | bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            return await self.ws.recv()
        except ConnectionClosed as e:
            raise _closed(e) from None

    async def close(self) -> None:
        """The closing handshake, at most 2 s; the socket is aborted if it fails, times out or
        this call is cancelled (the cancellation still propagates)."""
        try:
            await cancellation.wait_for(self.ws.close(), 2.0)
        except Exception:  # noqa: BLE001 - closing a broken or silent socket must not raise
            self.abort()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()


def _closed(e: Exception) -> TransportClosed:
    rcvd = getattr(e, "rcvd", None)
    sent = getattr(e, "sent", None)
    frame = rcvd or sent
    if frame is not None:
        return TransportClosed(frame.code, frame.reason or "")
    return TransportClosed(None, "connection lost without a close frame")


async def websocket_connector(endpoint: Endpoint, timeouts: Timeouts, *, max_message_bytes: int) -> Connection:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

    try:
        ws = await connect(endpoint.url, additional_headers=list(endpoint.headers), open_timeout=timeouts.connect_s,
                           ping_interval=timeouts.keepalive_s, ping_timeout=timeouts.keepalive_s,
                           max_size=max_message_bytes, compression=None, user_agent_header="moksori")
    except InvalidStatus as e:
        status = e.response.status_code
        hint = "check MOKSORI_REALTIME_API_KEY" if status in (401, 403) else None
        raise ProviderError(f"upstream refused the connection: HTTP {status}", retryable=is_retryable_status(status),
                            status=status, provider="realtime", hint=hint) from None
    except InvalidURI as e:
        raise ProviderError(f"bad upstream URL: {e}", retryable=False, provider="realtime") from None
    except (asyncio.TimeoutError, TimeoutError):
        raise ProviderTimeout(f"upstream did not answer the WebSocket handshake within {timeouts.connect_s:g} s",
                              provider="realtime") from None
    except (OSError, InvalidHandshake, EOFError) as e:
        raise ProviderError(f"cannot reach the upstream: {type(e).__name__}: {e}", retryable=True,
                            provider="realtime") from None
    return _WSConnection(ws)
