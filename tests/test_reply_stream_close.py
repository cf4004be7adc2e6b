"""A reply's LLM stream is closed by the reply's own task, whatever ends the reply.

A reply cancelled (`response.cancel`, a barge-in, the client leaving) while it waited in the
body of its LLM loop (the first clause's audio being made) left its stream open. The reply's
task kept the CancelledError, whose traceback kept the frames, the reply and (through
`Response.task`) the task itself: a cycle, freed only by the garbage collector, which found
the whole nest of async generators under it (`ResilientLLM.chat`, the chain, `resilient_stream`,
the provider's own) unfinished at once. asyncio's finalizer hook then started one `aclose()`
task per generator; the outer one's close went down into the inner ones while their own
`aclose()` tasks ran, which raised `RuntimeError('aclose(): asynchronous generator is already
running')`, never retrieved (seen in groups of 4 in a server's log under mixed SDK traffic).

Virtual time, a real `Session` and a real `ResilientLLM`; the provider under it and the TTS are
stand-ins (named so): only who closes the stream, and when, is under test.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from moksori.audio.frames import Frame
from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.providers.base import LLM, ChatDone, ChatEvent, ChatRequest, LLMCaps, TextDelta, TTSOptions
from moksori.providers.resilience import ResilientLLM, Timeouts, resilient_stream
from moksori.testing.fakes import ToneTTS, fake_stack
from moksori.testing.virtual_time import run_virtual

STORY = " ".join(f"word{i}" for i in range(200)) + "."


class NestedStreamLLM(LLM):
    """Stands in for `OpenAICompatLLM`: `chat` re-yields an inner generator (its `_events`), whose
    cleanup takes a few loop turns (closing the HTTP response). Records the task that closed it."""

    name = "nested-stand-in"
    caps = LLMCaps()

    def __init__(self) -> None:
        self.closed_in: list[asyncio.Task[Any] | None] = []

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        async with aclosing(self._events()) as events:
            async for ev in events:
                yield ev

    async def _events(self) -> AsyncIterator[ChatEvent]:
        try:
            for w in STORY.split(" "):
                yield TextDelta(w + " ")
                await asyncio.sleep(0.01)
            yield ChatDone("stop")
        finally:
            for _ in range(3):
                await asyncio.sleep(0)
            self.closed_in.append(asyncio.current_task())


class SlowTTS(ToneTTS):
    """Stands in for a TTS that takes 5 s over the first clause: the reply waits for that
    clause's audio with its LLM stream open. `started` is set when the first clause arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        self.started.set()
        await asyncio.sleep(5.0)
        async for frame in super().synthesize(text, opts):
            yield frame


async def _end_reply_mid_clause(how: str) -> tuple[list[asyncio.Task[Any] | None], bool, list[str]]:
    loop = asyncio.get_running_loop()
    unretrieved: list[str] = []
    loop.set_exception_handler(lambda _loop, c: unretrieved.append(f"{c.get('message')}: {c.get('exception')!r}"))
    llm = NestedStreamLLM()
    tts = SlowTTS()
    s = Session(fake_stack(llm=ResilientLLM([llm], timeouts=Timeouts(first_item_s=5.0, idle_s=5.0)), tts=tts),
                SessionConfig(output_rate=16000, partial_interval_ms=0))
    s.add_user_text("tell me a long story", respond=False)
    resp = s.create_response()
    await asyncio.wait_for(tts.started.wait(), 5.0)  # the reply now waits for the first clause's audio
    await asyncio.sleep(0.1)
    task = resp.task
    assert task is not None and not task.done() and not llm.closed_in
    if how == "cancel":
        s.cancel_response(resp.id)
    elif how == "barge-in":
        s.interrupt("turn_detected")
    else:
        await s.close()
    await asyncio.wait([task])  # ended; nobody retrieves its CancelledError (as in a server)
    closed_in = list(llm.closed_in)
    closed_by_reply = closed_in == [task]
    if how != "close":
        await s.close()
    del resp, task, s
    for _ in range(3):  # what the garbage collector finds later, and what that sets off
        gc.collect()
        await asyncio.sleep(0.1)
    loop.set_exception_handler(None)
    return closed_in, closed_by_reply, unretrieved


@pytest.mark.parametrize("how", ["cancel", "barge-in", "close"])
def test_a_reply_ended_mid_clause_closes_its_llm_stream_itself(how: str) -> None:
    closed_in, closed_by_reply, unretrieved = run_virtual(_end_reply_mid_clause(how))
    assert closed_by_reply, f"the LLM stream was not closed by the reply's task as it ended (closed in {closed_in})"
    assert unretrieved == []


class _SlowToStopStream:
    """Stands in for a provider's stream waiting for its first item (a remote model's prefill)
    whose teardown on cancellation takes a few loop turns and then fails (a connection reset).
    Records every `aclose()` made while the stream was still inside a `__anext__`."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.tearing_down = asyncio.Event()
        self.closed_while_running = 0
        self._gen = self._items()

    async def _items(self) -> AsyncIterator[str]:
        self.reading.set()
        try:
            await asyncio.Event().wait()  # the first item never comes
            yield "never"
        finally:
            self.tearing_down.set()
            for _ in range(5):
                await asyncio.sleep(0)
            raise ConnectionResetError("reset while closing")  # the teardown fails

    def __aiter__(self) -> _SlowToStopStream:
        return self

    def __anext__(self) -> Any:
        return self._gen.__anext__()

    async def aclose(self) -> None:
        if self._gen.ag_running:
            self.closed_while_running += 1
        await self._gen.aclose()


async def test_a_stream_waiting_for_its_first_item_is_closed_only_once_its_reader_has_ended() -> None:
    """`resilient_stream` reads the first item in a task of its own (`_first_item`). A consumer
    cancelled twice (a barge-in, then the session closing) cut short the wait for that reader:
    the stream was closed while the reader was still inside it, and the reader's failure was
    never retrieved."""
    loop = asyncio.get_running_loop()
    unretrieved: list[str] = []
    loop.set_exception_handler(lambda _loop, c: unretrieved.append(f"{c.get('message')}: {c.get('exception')!r}"))
    stream = _SlowToStopStream()

    async def consume() -> None:
        async with aclosing(resilient_stream(lambda: stream, timeouts=Timeouts(first_item_s=30.0, idle_s=30.0),
                                             provider="stand-in")) as items:
            async for _ in items:
                pass

    try:
        task = asyncio.create_task(consume())
        await asyncio.wait_for(stream.reading.wait(), 5.0)
        task.cancel()  # the reply is cancelled
        await asyncio.wait_for(stream.tearing_down.wait(), 5.0)
        task.cancel()  # and cancelled again while its stream is still being torn down
        await asyncio.wait([task], timeout=5.0)
        assert task.cancelled()
        del task
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0.01)
        assert (stream.closed_while_running, unretrieved) == (0, [])
    finally:
        loop.set_exception_handler(None)
