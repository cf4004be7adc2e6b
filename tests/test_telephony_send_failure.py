"""A send that fails under a phone call leaves the reason to what the carrier did.

A send on a socket that is failing or closing raises at once (server/sockets.py), and the call's
outbox stops. What the carrier sent before (its `stop`, a close frame, or the disconnect of a
line that dropped) is still queued for the stream's reader, which hands it on one message a loop
turn: the call used to end at the failed send, so a carrier that hung up cleanly mid-reply was
recorded as `send_failed` (or, after unanswered marks, `carrier_not_reading`), depending on
which side touched the socket first (seen in tests/test_telephony_calls.py's leak test).

PhoneCall with the fake models of `moksori.testing.fakes`, on the virtual-time loop; the socket
is a `send` that raises as Starlette does for a lost connection.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.websockets import WebSocketDisconnect
from test_telephony_limits import plivo_start

from moksori.protocols import codec_for
from moksori.settings import load_settings
from moksori.telephony.call import SEND_FAILED_GRACE_S, PhoneCall
from moksori.telephony.signatures import make_stream_token
from moksori.testing.fakes import fake_stack
from moksori.testing.virtual_time import run_virtual

SECRET = b"secret-0123456789"


class Socket:
    """The call's `send`: works until `drop()`, then raises as a lost connection does."""

    def __init__(self) -> None:
        self.sent = 0
        self.gone = False
        self.failed = asyncio.Event()

    async def send(self, wire: str | bytes) -> None:
        if self.gone:
            self.failed.set()
            raise WebSocketDisconnect(1006)
        self.sent += 1


async def call_whose_send_failed(socket: Socket) -> PhoneCall:
    """A call that is playing its greeting when its socket goes: the next send fails."""
    call = PhoneCall("plivo", codec_for("plivo"), stack=fake_stack(), settings=load_settings(
        agent={"greeting": "Hello there, how can I help you today?"}), send=socket.send, secret=SECRET,
        url_token=make_stream_token(SECRET, "call-s", carrier="plivo", now=int(time.time())))
    await call.feed(plivo_start("call-s"))
    assert call.session is not None, call.end_reason
    while socket.sent < 10:  # the greeting is going out
        await asyncio.sleep(0.02)
    socket.gone = True
    await asyncio.wait_for(socket.failed.wait(), 5)
    await asyncio.sleep(0)
    return call


def test_a_stop_queued_behind_a_failed_send_ends_the_call_as_a_stop() -> None:
    async def run() -> str | None:
        call = await call_whose_send_failed(Socket())
        try:
            assert not call.ended.is_set()  # the reader has not had its say yet
            await call.feed(json.dumps({"event": "stop"}))  # what the carrier sent before it closed
            return call.end_reason
        finally:
            await call.close()

    assert run_virtual(run()) == "carrier_stop"


def test_a_dropped_line_a_send_noticed_first_is_a_hang_up() -> None:
    async def run() -> str | None:
        call = await call_whose_send_failed(Socket())
        try:
            call.carrier_disconnected(1006)  # the reader's disconnect, a moment after the failed send
            return call.end_reason
        finally:
            await call.close()

    assert run_virtual(run()) == "carrier_hung_up"


def test_a_failed_send_nothing_explains_ends_the_call_after_the_grace() -> None:
    async def run() -> tuple[bool, str | None, float]:
        call = await call_whose_send_failed(Socket())
        loop = asyncio.get_running_loop()
        failed_at = loop.time()
        try:
            await asyncio.sleep(SEND_FAILED_GRACE_S * 0.9)
            early = call.ended.is_set()
            await asyncio.wait_for(call.ended.wait(), SEND_FAILED_GRACE_S)
            return early, call.end_reason, loop.time() - failed_at
        finally:
            await call.close()

    early, reason, after = run_virtual(run())
    assert not early and reason == "send_failed" and after <= SEND_FAILED_GRACE_S + 0.05, (early, reason, after)
