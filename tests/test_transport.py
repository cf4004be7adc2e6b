"""`moksori.transport`: the receive loop, the inbox and the outbox, logic only.

A fake socket stands in for the WebSocket (these test the loop, not Starlette; the routes that
use them are covered against real servers in test_realtime_server.py, test_telephony_*.py,
test_webrtc.py and test_admission.py). Time is virtual (`run_virtual`): a stuck write of
10 minutes costs nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from moksori.testing.virtual_time import run_virtual
from moksori.transport import Inbox, Outbox, receive_loop


class FakeSocket:
    """An ASGI-style `receive()` fed from a list; an exception in the list is raised."""

    def __init__(self, messages: list[Any]) -> None:
        self.messages = list(messages)

    async def receive(self) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        item = self.messages.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


def test_receive_loop_hands_text_and_bytes_in_order_until_disconnect() -> None:
    async def main() -> tuple[str, list[str | bytes]]:
        got: list[str | bytes] = []

        async def handle(m: str | bytes) -> None:
            got.append(m)

        ws = FakeSocket([{"type": "websocket.receive", "text": "a"}, {"type": "websocket.receive", "bytes": b"\x01"},
                         {"type": "websocket.receive"}, {"type": "websocket.disconnect", "code": 1000},
                         {"type": "websocket.receive", "text": "never read"}])
        return await receive_loop(ws, handle), got

    end, got = run_virtual(main())
    assert end == "disconnected"
    assert got == ["a", b"\x01", b""]  # a message with neither is an empty binary one


def test_receive_loop_a_broken_socket_is_a_reason_not_an_exception() -> None:
    async def handle(m: str | bytes) -> None:
        pass

    for exc in (OSError("reset"), RuntimeError('Cannot call "receive" once a disconnect message has been received'),
                ValueError("odd")):
        ws = FakeSocket([{"type": "websocket.receive", "text": "a"}, exc])
        assert run_virtual(receive_loop(ws, handle)) == "socket_error"


def test_receive_loop_a_handler_bug_propagates() -> None:
    async def handle(m: str | bytes) -> None:
        raise KeyError("bug")

    async def main() -> None:
        try:
            await receive_loop(FakeSocket([{"type": "websocket.receive", "text": "a"}]), handle)
        except KeyError:
            return
        raise AssertionError("the handler's exception was swallowed")

    run_virtual(main())


class BufferedSocket:
    """uvicorn's `receive()` with messages already queued: `Queue.get` returns without suspending."""

    def __init__(self, messages: list[Any]) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        for m in messages:
            self.queue.put_nowait(m)

    async def receive(self) -> dict[str, Any]:
        return await self.queue.get()


def test_receive_loop_a_burst_of_buffered_messages_lets_other_tasks_run_between_them() -> None:
    """A peer sending faster than real time fills the socket's queue (one read is hundreds of
    20 ms phone frames) and its messages are handled inline: without a yield between them the
    whole burst ran in one go and every other call's audio waited for it."""

    async def main() -> list[str]:
        order: list[str] = []
        done = False

        async def handle(m: str | bytes) -> None:
            order.append("message")  # a handler that never suspends (decoding a media frame)

        async def other_call() -> None:
            while not done:
                order.append("other")
                await asyncio.sleep(0)

        ws = BufferedSocket([{"type": "websocket.receive", "text": str(i)} for i in range(50)]
                            + [{"type": "websocket.disconnect", "code": 1000}])
        other = asyncio.create_task(other_call())
        await asyncio.sleep(0)  # the other task is running
        assert await receive_loop(ws, handle) == "disconnected"
        done = True
        await other
        return order

    order = run_virtual(main())
    assert_interleaved(order, 50)


def assert_interleaved(order: list[str], n: int) -> None:
    """All `n` messages were handled, and another task ran between each two of them."""
    assert order.count("message") == n
    first, last = order.index("message"), len(order) - 1 - order[::-1].index("message")
    during = order[first:last + 1]
    assert all(a != b for a, b in zip(during, during[1:])), "".join("M" if x == "message" else "." for x in order)


def test_inbox_a_backlog_lets_other_tasks_run_between_its_messages() -> None:
    """The same for an inbox that filled while its handler waited (a WebRTC data channel's
    burst, a Realtime client's appends behind a slow message): one message per loop turn."""

    async def main() -> list[str]:
        order: list[str] = []
        done = False

        async def handle(m: str) -> None:
            order.append("message")

        async def other_call() -> None:
            while not done:
                order.append("other")
                await asyncio.sleep(0)

        inbox: Inbox[str] = Inbox(handle, name="t", limit=100, start=False)
        for i in range(50):
            assert inbox.offer(str(i))
        other = asyncio.create_task(other_call())
        await asyncio.sleep(0)
        inbox.start()
        for _ in range(1000):  # loop turns (the clock is virtual and never idle here: no timed waits)
            if order.count("message") == 50:
                break
            await asyncio.sleep(0)
        done = True
        await other
        await inbox.close()
        return order

    order = run_virtual(main())
    assert_interleaved(order, 50)


def test_receive_loop_a_full_inbox_pauses_reading() -> None:
    """The Realtime route's backpressure: the loop awaits `Inbox.put`, so a full inbox stops reads;
    once the handler takes messages again, reading goes on, in order."""

    async def main() -> tuple[int, list[str | bytes]]:
        handled: list[str | bytes] = []
        go = asyncio.Event()

        async def handle(m: str | bytes) -> None:
            await go.wait()  # a handler stuck on something slow (a transcription)
            handled.append(m)

        inbox: Inbox[str | bytes] = Inbox(handle, name="t", limit=2)
        ws = FakeSocket([{"type": "websocket.receive", "text": str(i)} for i in range(10)]
                        + [{"type": "websocket.disconnect", "code": 1000}])
        task = asyncio.create_task(receive_loop(ws, inbox.put))
        await asyncio.sleep(5)
        read = 11 - len(ws.messages)
        go.set()
        assert await asyncio.wait_for(task, 5) == "disconnected"
        await asyncio.sleep(0.1)
        await inbox.close()
        return read, handled

    read, handled = run_virtual(main())
    assert read == 4  # one taken by the stuck handler, two queued, the fourth waiting for room
    assert handled == [str(i) for i in range(10)]


def test_inbox_offer_refuses_past_the_limit_and_reports_once_until_it_catches_up() -> None:
    """The WebRTC data channel cannot wait: a full inbox refuses, says so once, then again only
    after the handler has taken a message."""

    async def main() -> None:
        handled: list[int] = []
        overflows: list[int] = []
        gate = asyncio.Event()

        async def handle(m: int) -> None:
            await gate.wait()
            handled.append(m)

        inbox: Inbox[int] = Inbox(handle, name="t", limit=3, on_overflow=lambda: overflows.append(len(handled)))
        await asyncio.sleep(0)
        assert inbox.offer(0)  # taken by the handler at once
        await asyncio.sleep(0.01)
        assert [inbox.offer(i) for i in (1, 2, 3, 4, 5)] == [True, True, True, False, False]
        assert len(inbox) == 3 and inbox.refused == 2 and overflows == [0]  # reported once
        gate.set()
        await asyncio.sleep(0.01)
        assert handled == [0, 1, 2, 3] and len(inbox) == 0
        gate.clear()
        assert inbox.offer(6)
        await asyncio.sleep(0.01)
        assert all(inbox.offer(i) for i in (7, 8, 9)) and not inbox.offer(10)
        assert overflows == [0, 4]  # after catching up, a new overflow is reported again
        await inbox.close()
        assert len(inbox) == 0 and inbox.task is not None and inbox.task.done()

    run_virtual(main())


def test_inbox_waits_for_start_and_a_handler_bug_ends_its_task() -> None:
    async def main() -> None:
        handled: list[str] = []

        async def handle(m: str) -> None:
            if m == "bug":
                raise KeyError("bug")
            handled.append(m)

        inbox: Inbox[str] = Inbox(handle, name="t", limit=8, start=False)
        assert inbox.offer("a") and inbox.offer("b")
        await asyncio.sleep(1)
        assert handled == [] and inbox.task is None  # nothing handled before start
        task = inbox.start()
        assert inbox.start() is task
        await inbox.put("bug")
        await inbox.put("never")
        await asyncio.sleep(0.01)
        assert handled == ["a", "b"]
        assert task.done() and isinstance(task.exception(), KeyError)  # the owner reads it
        await inbox.close()  # idempotent on an ended task; the rest is dropped
        await inbox.close()
        assert len(inbox) == 0

    run_virtual(main())


def test_outbox_sends_in_order_with_urgent_items_first() -> None:
    async def main() -> list[str]:
        sent: list[str] = []

        async def send(item: str) -> None:
            await asyncio.sleep(0.02)  # a 20 ms write
            sent.append(item)

        box: Outbox[str] = Outbox(send, name="t")
        for item in ("a1", "m1", "a2", "m2", "a3"):
            box.put(item)
        await asyncio.sleep(0.03)  # a1 is out, m1 is being written
        # a barge-in: what is queued and not written is dropped, the clear goes first
        assert box.drop(lambda i: i.startswith("a")) == 2
        box.put("clear", urgent=True)
        box.put("a4")
        await box.close(drain_s=1.0)
        return sent

    assert run_virtual(main()) == ["a1", "m1", "clear", "m2", "a4"]


def test_outbox_stops_when_the_peer_is_not_reading() -> None:
    async def main() -> None:
        stops: list[str] = []

        async def send(item: int) -> None:
            await asyncio.sleep(600)  # the write never completes: nobody reads

        box: Outbox[int] = Outbox(send, name="t", limit=3, on_stop=stops.append)
        assert box.put(0)
        await asyncio.sleep(0.01)  # 0 is being written
        for i in (1, 2, 3):
            assert box.put(i)  # they wait
        assert not box.put(4)  # a fourth waiting: the peer is not reading
        assert box.reason == "not_reading" and stops == ["not_reading"]
        await asyncio.wait_for(box.task, 1.0)  # the stuck write was cancelled; the task ended cleanly
        assert not box.task.cancelled()
        assert not box.put(5)  # refuses everything after
        await box.close(drain_s=2.0)
        assert stops == ["not_reading"] and box.reason == "not_reading"  # called once, the first reason kept

    run_virtual(main())


def test_outbox_a_failed_send_stops_it() -> None:
    async def main() -> None:
        stops: list[str] = []
        sent: list[int] = []

        async def send(item: int) -> None:
            if item == 2:
                raise ConnectionResetError("gone")
            sent.append(item)

        box: Outbox[int] = Outbox(send, name="t", on_stop=stops.append)
        for i in range(5):
            box.put(i)
        await asyncio.wait_for(box.task, 1.0)
        assert sent == [0, 1] and stops == ["send_failed"] and box.reason == "send_failed"
        assert not box.put(9)

    run_virtual(main())


def test_outbox_close_drains_within_its_time_then_cancels() -> None:
    async def main() -> None:
        sent: list[int] = []

        async def send(item: int) -> None:
            await asyncio.sleep(1.0)
            sent.append(item)

        box: Outbox[int] = Outbox(send, name="t")
        for i in range(5):
            box.put(i)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await box.close(drain_s=2.5)
        assert sent == [0, 1] and loop.time() - t0 < 2.6  # not 5 s: the rest is dropped
        assert box.task.done() and len(box) == 0 and box.reason == "closed"
        assert not box.put(1)
        await box.close(drain_s=2.5)  # idempotent

        quick: Outbox[int] = Outbox(send, name="t")
        quick.put(1)
        await quick.close()  # no drain: dropped at once
        assert quick.task.done() and loop.time() - t0 < 2.7

        finishing: Outbox[int] = Outbox(send, name="t")
        finishing.put(7)
        finishing.finish()  # a sideband detached: send what is queued, then end
        assert not finishing.put(8)
        await asyncio.wait_for(finishing.task, 5.0)
        assert sent[-1] == 7

    run_virtual(main())


def test_outbox_an_idle_outbox_wakes_for_a_put() -> None:
    async def main() -> list[tuple[float, str]]:
        loop = asyncio.get_running_loop()
        sent: list[tuple[float, str]] = []

        async def send(item: str) -> None:
            sent.append((round(loop.time() - t0, 3), item))

        t0 = loop.time()
        box: Outbox[str] = Outbox(send, name="t")
        await asyncio.sleep(10)
        box.put("late")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await box.close(drain_s=1.0)
        return sent

    assert run_virtual(main()) == [(10.0, "late")]  # no polling delay
