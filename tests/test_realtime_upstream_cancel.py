"""Cancelling or closing the upstream Realtime client ends it, in every state.

A failed run of the forced-time-limit test left its client reconnecting, and pytest-asyncio's
teardown (which cancels every task and waits for them) hung 11 minutes: the client's connection
task had swallowed its cancellation. Python 3.11's `asyncio.wait_for` returns a result that
lands in the same loop turn as the cancellation and drops the cancellation; the set-up loop
(`_recv_until`) and the watchdog waited with it, and `close()` / the watchdog's stop awaited a
cancelled child inside `suppress(CancelledError)`, which swallows the caller's own.

Here the client is cancelled (its task, as a test runner's teardown does) or closed in each
state: connecting, setting up, connected, backing off, and sending into a socket that no longer
drains. Every wait is bounded generously (`BOUND_S`): a hang check, not a timing claim. Two
upstreams: the scripted in-memory one (`moksori.testing.fake_realtime`, a stand-in, not a model)
and the same served as a real WebSocket on loopback, behind a TCP proxy that can freeze.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from tcp_proxy import TCPProxy

from moksori import cancellation
from moksori.audio.frames import Frame
from moksori.brains.realtime import ReconnectPolicy, RealtimeUpstream, SessionOptions, Timeouts, UpstreamOptions
from moksori.brains.realtime import events as E
from moksori.brains.realtime import resolve_endpoint
from moksori.brains.realtime.transport import TransportClosed
from moksori.testing.fake_realtime import FakeRealtimeServer, serve_websocket

BOUND_S = 20.0  # a hang check: each of these ends in milliseconds
EP = resolve_endpoint("ws://fake.test/v1/realtime?model=gpt-realtime", api_key="sk-test")
SLOW = ReconnectPolicy(max_attempts=50, base_delay_s=60.0, max_delay_s=60.0)  # the 2nd try waits 60 s
LONG = Timeouts(connect_s=60, first_event_s=60, response_s=60, idle_s=60, keepalive_s=None)


def client(connector: Any = None, *, url: str | None = None, timeouts: Timeouts = LONG) -> RealtimeUpstream:
    ep = resolve_endpoint(url, api_key="sk-test") if url else EP
    return RealtimeUpstream(UpstreamOptions(ep, SessionOptions(turn="manual"), timeouts=timeouts, reconnect=SLOW),
                            connector=connector, rand=lambda: 1.0)


def runner(up: RealtimeUpstream) -> asyncio.Task[Any]:
    task = up._runner  # the connection task, which a test runner's teardown cancels
    assert task is not None
    return task


async def until(pred: Any, what: str) -> None:
    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.005)
    try:
        await asyncio.wait_for(poll(), BOUND_S)
    except TimeoutError:
        raise AssertionError(f"never got to: {what}") from None


async def ends(task: asyncio.Future[Any], what: str) -> None:
    done, _ = await asyncio.wait({task}, timeout=BOUND_S)
    assert done, f"{what}: still running {BOUND_S:g} s after it was cancelled"


async def stop_it(up: RealtimeUpstream, how: str, starting: asyncio.Task[Any] | None = None) -> None:
    """Cancel the client's task (or the caller of `start()`), or close it; it must end."""
    task = runner(up)
    if how == "cancel":
        task.cancel()
    elif how == "cancel_start":
        assert starting is not None
        starting.cancel()
        await ends(starting, "start()")
    else:
        await ends(asyncio.ensure_future(up.close()), "close()")
    await ends(task, "the connection task")
    assert not up.connected
    if starting is not None:
        await ends(starting, "start()")
    await ends(asyncio.ensure_future(up.close()), "close() afterwards")


# --------------------------------------------------------------------------- the swallowed cancellation


class _Conn:
    """An in-memory connection whose messages the test hands over one by one."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.closed = False
        self.send_blocks = False

    async def send(self, text: str) -> None:
        if self.closed:
            raise TransportClosed(None, "closed")
        self.sent.append(json.loads(text))
        if self.send_blocks:  # a socket that no longer drains
            await asyncio.Event().wait()

    async def recv(self) -> str:
        return await self.inbox.get()

    async def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _created() -> str:
    return json.dumps({"type": "session.created", "event_id": "ev_1",
                       "session": {"id": "sess_1", "type": "realtime", "model": "fake"}})


async def test_a_cancel_that_lands_with_a_message_during_set_up_ends_the_client():
    """The hang's root cause, made deterministic: the message and the cancellation arrive in the
    same loop turn while the client waits for `session.created`. (With 3.11's `wait_for` the
    message won, the cancellation was lost and the client went on setting up.)"""
    conns: list[_Conn] = []

    async def connector(*_: Any, **__: Any) -> _Conn:
        conns.append(_Conn())
        return conns[-1]

    up = client(connector)
    starting = asyncio.ensure_future(up.start())
    await until(lambda: conns, "connected")
    await asyncio.sleep(0.01)  # waiting for session.created
    conns[0].inbox.put_nowait(_created())
    runner(up).cancel()  # same turn: the recv completes and the task is cancelled
    await ends(runner(up), "the connection task")
    assert runner(up).cancelled()
    await asyncio.wait({starting}, timeout=BOUND_S)
    await up.close()


async def test_close_does_not_swallow_a_cancellation_of_its_caller():
    """`close()` waits for the connection task; a cancellation of whoever called `close()`
    meanwhile reaches them (it used to be suppressed with the child's)."""
    gate = asyncio.Event()

    async def connector(*_: Any, **__: Any) -> _Conn:
        await gate.wait()
        return _Conn()

    up = client(connector)
    starting = asyncio.ensure_future(up.start())
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(up.close())
    await asyncio.sleep(0)
    closing.cancel()
    await ends(closing, "close()")
    assert closing.cancelled()  # not swallowed: close() ended by its caller's cancellation
    await ends(runner(up), "the connection task")
    await asyncio.wait({starting}, timeout=BOUND_S)


async def test_the_helpers_never_lose_a_cancellation():
    """`cancellation.wait_for` with a result in the same turn as the cancel; `stop` awaited by
    a task that is itself cancelled; `raise_if_cancelled` after a swallowed one."""
    q: asyncio.Queue[int] = asyncio.Queue()
    turns = 0

    async def reader() -> None:
        nonlocal turns
        while True:
            try:
                await cancellation.wait_for(q.get(), 60)
                turns += 1
            except TimeoutError:
                continue

    t = asyncio.ensure_future(reader())
    await asyncio.sleep(0.01)
    q.put_nowait(1)
    t.cancel()
    await ends(t, "a wait_for loop")
    assert t.cancelled()

    child = asyncio.ensure_future(asyncio.Event().wait())
    parent = asyncio.ensure_future(cancellation.stop(child))
    await asyncio.sleep(0)
    parent.cancel()
    await ends(parent, "stop()")
    assert parent.cancelled() and child.cancelled()

    async def swallows() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass  # a library that eats it
        cancellation.raise_if_cancelled()
        await asyncio.sleep(60)

    s = asyncio.ensure_future(swallows())
    await asyncio.sleep(0.01)
    s.cancel()
    await ends(s, "a loop behind a swallowed cancellation")
    assert s.cancelled()


# --------------------------------------------------------------------------- every state, in memory

HOW = ["cancel", "close"]


@pytest.mark.parametrize("how", [*HOW, "cancel_start"])
async def test_connecting(how):
    async def connector(*_: Any, **__: Any) -> _Conn:
        await asyncio.Event().wait()  # the handshake never completes
        raise AssertionError

    up = client(connector)
    starting = asyncio.ensure_future(up.start())
    await asyncio.sleep(0.02)
    await stop_it(up, how, starting)


@pytest.mark.parametrize("how", [*HOW, "cancel_start"])
async def test_setting_up(how):
    server = FakeRealtimeServer()
    server.hang_next = 1  # connected, but no session.created
    up = client(server.connector)
    starting = asyncio.ensure_future(up.start())
    await until(lambda: server.sessions, "connected")
    await stop_it(up, how, starting)


@pytest.mark.parametrize("how", HOW)
async def test_connected_in_a_reply(how):
    server = FakeRealtimeServer(reply_ms=60_000)
    up = client(server.connector)
    await asyncio.wait_for(up.start(), BOUND_S)
    await up.add_message("user", "Tell me a long story.")
    await up.create_response()
    await until(lambda: up.in_response, "a reply streaming")
    await stop_it(up, how)


@pytest.mark.parametrize("how", HOW)
async def test_backing_off(how):
    server = FakeRealtimeServer()
    up = client(server.connector)
    await asyncio.wait_for(up.start(), BOUND_S)
    seen: list[E.UpstreamEvent] = []
    pump = asyncio.ensure_future(_collect(up, seen))
    server.refuse_next = 100  # every try fails: the 2nd waits 60 s
    server.drop()
    await until(lambda: any(isinstance(e, E.Reconnecting) and e.delay_s > 1 for e in seen), "backing off")
    await stop_it(up, how)
    await ends(pump, "the event stream")


@pytest.mark.parametrize("how", HOW)
async def test_sending_into_a_socket_that_does_not_drain(how):
    """The connection task mid-send: the configure message goes into a socket that takes nothing."""
    conns: list[_Conn] = []

    async def connector(*_: Any, **__: Any) -> _Conn:
        conns.append(_Conn())
        conns[-1].send_blocks = True
        conns[-1].inbox.put_nowait(_created())
        return conns[-1]

    up = client(connector)
    starting = asyncio.ensure_future(up.start())
    await until(lambda: conns and conns[0].sent, "sending session.update")
    await stop_it(up, how, starting)


async def _collect(up: RealtimeUpstream, into: list[E.UpstreamEvent]) -> None:
    async for e in up.events():
        into.append(e)


# --------------------------------------------------------------------------- over a real socket on loopback


@pytest.fixture
async def ws_upstream():
    server = FakeRealtimeServer(reply_ms=60_000)
    ws = await serve_websocket(server)
    port = ws.sockets[0].getsockname()[1]
    with TCPProxy("127.0.0.1", port) as net:
        yield server, f"ws://127.0.0.1:{net.port}/v1/realtime?model=gpt-realtime", net
    ws.close()
    await ws.wait_closed()


@pytest.fixture
async def silent_tcp():
    """Accepts TCP connections and never answers the WebSocket handshake."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    srv = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1/realtime?model=m", held
    for w in held:
        w.transport.abort()
    srv.close()
    await srv.wait_closed()


@pytest.mark.parametrize("how", [*HOW, "cancel_start"])
async def test_websocket_connecting(how, silent_tcp):
    url, held = silent_tcp
    up = client(url=url)
    starting = asyncio.ensure_future(up.start())
    await until(lambda: held, "the TCP connection open, the handshake unanswered")
    await stop_it(up, how, starting)


@pytest.mark.parametrize("how", [*HOW, "cancel_start"])
async def test_websocket_setting_up(how, ws_upstream):
    server, url, _ = ws_upstream
    server.hang_next = 1
    up = client(url=url)
    starting = asyncio.ensure_future(up.start())
    await until(lambda: server.sessions, "connected, no session.created")
    await stop_it(up, how, starting)


@pytest.mark.parametrize("how", HOW)
async def test_websocket_connected_in_a_reply(how, ws_upstream):
    _, url, _ = ws_upstream
    up = client(url=url, timeouts=Timeouts(connect_s=60, first_event_s=60, response_s=60, idle_s=60, keepalive_s=30))
    await asyncio.wait_for(up.start(), BOUND_S)
    seen: list[E.UpstreamEvent] = []
    pump = asyncio.ensure_future(_collect(up, seen))
    await up.add_message("user", "Tell me a long story.")
    await up.create_response()
    await until(lambda: any(isinstance(e, E.AudioDelta) for e in seen), "reply audio arriving")
    await stop_it(up, how)
    await ends(pump, "the event stream")


@pytest.mark.parametrize("how", HOW)
async def test_websocket_backing_off(how, ws_upstream):
    server, url, net = ws_upstream
    up = client(url=url)
    await asyncio.wait_for(up.start(), BOUND_S)
    seen: list[E.UpstreamEvent] = []
    pump = asyncio.ensure_future(_collect(up, seen))
    net.cut()  # the upstream goes away: connections dropped, new ones refused
    await until(lambda: any(isinstance(e, E.Reconnecting) and e.delay_s > 1 for e in seen), "backing off")
    await stop_it(up, how)
    await ends(pump, "the event stream")


@pytest.mark.parametrize("how", HOW)
async def test_websocket_mid_send_into_a_frozen_network(how, ws_upstream):
    """A caller's `append_audio` blocks in a send the frozen network never drains; cancelling
    or closing the client ends the client, and the blocked caller too."""
    _, url, net = ws_upstream
    up = client(url=url)
    await asyncio.wait_for(up.start(), BOUND_S)
    net.freeze()  # nothing goes through any more, either way; no FIN, no RST
    second = Frame(np.full(24000, 300, dtype=np.int16), 24000)
    sender = asyncio.ensure_future(_send_forever(up, second))
    blocked = False
    for _ in range(400):  # until one send no longer completes (the buffers are full)
        n = _sent[0]
        await asyncio.sleep(0.05)
        if n == _sent[0] and n > 0:
            blocked = True
            break
    assert blocked, "the sends never blocked"
    await stop_it(up, how)
    if how == "close":  # the socket was closed under it: the caller's send returns
        await ends(sender, "the caller blocked in a send")
    sender.cancel()
    await asyncio.wait({sender}, timeout=BOUND_S)
    assert sender.done()
    net.thaw()


_sent = [0]


async def _send_forever(up: RealtimeUpstream, frame: Frame) -> None:
    _sent[0] = 0
    while not up._closing:
        await up.append_audio(frame)
        _sent[0] += 1
