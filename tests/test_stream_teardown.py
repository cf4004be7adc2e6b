"""A reply cancelled while it waits for its provider's next item is freed at once.

A hang-up cancels the reply's task while it waits for the LLM's next token (or the TTS's next
chunk): `resilient_stream` waits for each item after the first under an `asyncio.timeout` of
the provider's idle limit (30 s by default). Cancelling the wait cancels that timer, but asyncio
keeps a cancelled timer in its heap, with the context it was made in, until it reaches the
heap's head: while any live timer is due earlier (a server always has some: watchdogs, pings,
the loop-lag probe), up to the idle limit. That context held the stream's progress hook, which
held the timeout, the cancelled task, and through the task's CancelledError every frame of the
reply and its session: a phone call dropped mid-reply left its Session and PhoneCall alive for
seconds after the call had ended (tests/test_telephony_calls.py's leak test).

Real asyncio loop and real `resilient_stream`; the provider is an in-test fake stream.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

from test_resilience import Pause, Script

from moksori.providers.resilience import Timeouts, resilient_stream

IDLE_S = 60.0


class Reply:
    """Stands in for what a reply's frames hold (its Response, the Session)."""


async def test_a_reply_cancelled_while_waiting_for_its_next_item_is_freed_at_once() -> None:
    loop = asyncio.get_running_loop()
    # a live timer due before the stream's idle deadline, as a server always has one: asyncio
    # drops a cancelled timer only from the heap's head, so the stream's stay behind this one
    earlier = loop.call_later(IDLE_S / 2, lambda: None)
    script = Script(["one", "two", "three", Pause(3600), "never"])
    got: list[str] = []
    waiting = asyncio.Event()

    async def speak(reply: Reply) -> None:  # `reply` is in this frame, as a Response's is
        async for item in resilient_stream(script.make, timeouts=Timeouts(first_item_s=IDLE_S, idle_s=IDLE_S),
                                           provider="fake"):
            got.append(item)
            if len(got) == 3:
                waiting.set()

    reply = Reply()
    task = asyncio.create_task(speak(reply))
    await waiting.wait()
    await asyncio.sleep(0)  # the reply now waits for its fourth item, which never comes
    cancelled_before = sum(h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]
    task.cancel()  # the caller hangs up
    await asyncio.gather(task, return_exceptions=True)
    for _ in range(3):
        await asyncio.sleep(0)
    freed = weakref.ref(reply)
    del reply, task
    gc.collect()
    try:
        assert got == ["one", "two", "three"] and script.closed == 1
        # the situation this is about: the stream's cancelled idle timers are still in the heap
        assert sum(h.cancelled() for h in loop._scheduled) > cancelled_before  # type: ignore[attr-defined]
        assert freed() is None, "the cancelled reply is still referenced (by a cancelled timer's context)"
    finally:
        earlier.cancel()
