"""Per-model executors (`moksori.providers.threads`): no cross-model starvation, priorities,
dropped work, bounded backpressure, and timeouts that do not count the queue.

These use small blocking functions in real threads (what the executors exist for), with short
real waits; every await has a timeout so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from moksori.errors import ProviderTimeout
from moksori.providers import threads
from moksori.providers.base import LLM, ChatRequest, LLMCaps, Message, TextDelta
from moksori.providers.resilience import ResilientLLM, RetryPolicy, Timeouts
from moksori.providers.threads import (
    BACKGROUND,
    INTERACTIVE,
    ModelExecutor,
    background,
    iterate_blocking,
    paced_by,
    run_blocking,
)
from moksori.testing.virtual_time import run_virtual

T = 10.0  # upper bound for any single wait in these tests


def test_llm_paused_for_its_tts_cannot_starve_the_tts() -> None:
    """The deadlock of the shared pool, in miniature: six 'LLM' generators, each paused until
    its own 'TTS' job has run (the first-clause backpressure), with one lock on the LLM."""

    async def scenario(llm_pool, tts_pool) -> list[str]:
        llm_lock = threading.Lock()
        done: list[str] = []

        def generate(stop: threading.Event):
            with llm_lock:  # the model handle: one generation at a time
                for i in range(5):
                    yield i

        def synthesize(n: int) -> str:
            time.sleep(0.01)
            return f"audio-{n}"

        async def reply(n: int) -> None:
            async for i in iterate_blocking(generate, executor=llm_pool, max_ahead=1, max_pause_s=30.0):
                if i == 0:  # first clause: stop pulling until its audio exists
                    await run_blocking(synthesize, n, executor=tts_pool)
            done.append(f"reply-{n}")

        await asyncio.wait_for(asyncio.gather(*(reply(n) for n in range(6))), T)
        return done

    # per-model executors: every reply completes
    llm, tts = ModelExecutor("test-llm"), ModelExecutor("test-tts")
    assert len(asyncio.run(scenario(llm, tts))) == 6

    # the old design (one shared 6-thread pool) deadlocks on exactly this (run on a helper
    # thread: CPython 3.11.7 then trips over its AST recursion check in pytest's next import)
    shared = ThreadPoolExecutor(6)
    outcome: list[BaseException | None] = []

    def old_design() -> None:
        try:
            asyncio.run(_bounded(scenario(shared, shared), 2.0))
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - inspected below
            outcome.append(e)

    helper = threading.Thread(target=old_design)
    helper.start()
    helper.join(T)
    shared.shutdown(wait=True, cancel_futures=True)  # its threads see `stop` and end
    assert len(outcome) == 1 and isinstance(outcome[0], (asyncio.TimeoutError, TimeoutError)), outcome


async def _bounded(coro, seconds: float):
    return await asyncio.wait_for(coro, seconds)


def test_interactive_work_goes_before_background_work() -> None:
    ex = ModelExecutor("test-priority")
    gate = threading.Event()
    order: list[str] = []

    async def main() -> None:
        blocker = asyncio.ensure_future(run_blocking(gate.wait, executor=ex))
        await asyncio.sleep(0.05)  # the blocker runs; everything below queues behind it
        with background():
            bulk = [asyncio.ensure_future(run_blocking(order.append, f"bulk-{i}", executor=ex)) for i in range(3)]
        live = [asyncio.ensure_future(run_blocking(order.append, f"live-{i}", executor=ex)) for i in range(2)]
        await asyncio.sleep(0.05)
        assert ex.stats.queued == 5 and ex.stats.queued_interactive == 2
        gate.set()
        await asyncio.wait_for(asyncio.gather(blocker, *bulk, *live), T)

    asyncio.run(main())
    assert order == ["live-0", "live-1", "bulk-0", "bulk-1", "bulk-2"]
    assert INTERACTIVE < BACKGROUND


def test_work_whose_caller_left_is_dropped_before_it_starts() -> None:
    ex = ModelExecutor("test-drop")
    gate = threading.Event()
    ran: list[int] = []

    async def main() -> None:
        blocker = asyncio.ensure_future(run_blocking(gate.wait, executor=ex))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(run_blocking(ran.append, i, executor=ex)) for i in range(4)]

        def gen(stop: threading.Event):
            ran.append(99)
            yield 1

        async def consume() -> None:
            async for _ in iterate_blocking(gen, executor=ex):
                pass

        streaming = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        assert ex.queued == 5
        for t in waiting + [streaming]:
            t.cancel()  # the session closed
        await asyncio.gather(*waiting, streaming, return_exceptions=True)
        assert ex.queued == 0 and ex.stats.dropped == 5
        gate.set()
        await asyncio.wait_for(blocker, T)
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert ran == []  # none of them ever ran


def test_backpressure_pause_is_bounded_and_yields_to_waiting_work() -> None:
    ex = ModelExecutor("test-pause")
    produced: list[float] = []

    def gen(stop: threading.Event):
        for i in range(6):
            produced.append(time.monotonic())
            yield i

    async def slow_consumer(max_pause_s: float) -> float:
        t0 = time.monotonic()
        async for i in iterate_blocking(gen, executor=ex, max_ahead=1, max_pause_s=max_pause_s):
            if i == 0:
                await asyncio.sleep(1.0)  # e.g. waiting for the first clause's audio
        return time.monotonic() - t0

    # alone: the generator waits for the consumer, but at most max_pause_s, then runs freely
    produced.clear()
    asyncio.run(_bounded(slow_consumer(0.2), T))
    assert len(produced) == 6
    assert produced[-1] - produced[0] < 0.8  # did not wait the consumer's whole second

    # with other interactive work queued for the model: no pause at all
    async def with_queue() -> None:
        other = ModelExecutor("test-pause-2")
        gate = threading.Event()

        def gen2(stop: threading.Event):
            for i in range(6):
                produced.append(time.monotonic())
                yield i

        async def consumer() -> None:
            async for i in iterate_blocking(gen2, executor=other, max_ahead=1, max_pause_s=5.0):
                if i == 0:
                    await asyncio.sleep(1.0)

        c = asyncio.ensure_future(consumer())
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(run_blocking(gate.set, executor=other))  # someone else waits
        await asyncio.wait_for(queued, T)  # ...and gets the model long before the 5 s pause
        await asyncio.wait_for(c, T)

    produced.clear()
    t0 = time.monotonic()
    asyncio.run(with_queue())
    assert time.monotonic() - t0 < 4.0


def test_paced_by_pauses_the_generator_before_its_next_item() -> None:
    """Inside `paced_by(go)`, clearing `go` stops the thread before it computes another item (no
    `max_ahead` items first); setting it again resumes; the pause is bounded like max_ahead's."""
    ex = ModelExecutor("test-paced")
    produced: list[int] = []

    def gen(stop: threading.Event):
        for i in range(8):
            produced.append(i)  # started making item i
            time.sleep(0.03)  # a token's compute: the consumer keeps up
            yield i

    async def consumer(max_pause_s: float, hold_s: float) -> tuple[list[int], list[int]]:
        go = threading.Event()
        go.set()
        got: list[int] = []
        during: list[int] = []
        with paced_by(go):
            async for i in iterate_blocking(gen, executor=ex, max_ahead=3, max_pause_s=max_pause_s):
                got.append(i)
                if i == 1:
                    go.clear()  # e.g. the first clause is complete: its TTS gets the cores
                    await asyncio.sleep(hold_s)
                    during = list(produced)
                    go.set()
        return got, during

    got, during = asyncio.run(_bounded(consumer(5.0, 0.3), T))
    assert got == list(range(8))
    # go was cleared as item 1 was taken: only the item already being made (2) went on, not
    # max_ahead (3) more
    assert during[-1] <= 2, during

    # bounded: a consumer that never sets go again does not hold the generator past max_pause_s
    async def stuck() -> float:
        go = threading.Event()
        t0 = time.monotonic()
        with paced_by(go):
            async for _ in iterate_blocking(gen, executor=ex, max_ahead=3, max_pause_s=0.2):
                pass
        return time.monotonic() - t0

    produced.clear()
    assert asyncio.run(_bounded(stuck(), T)) < 2.0
    assert produced == list(range(8))

    # without paced_by the generator runs max_ahead items ahead, as before
    async def unpaced() -> list[int]:
        during: list[int] = []
        async for i in iterate_blocking(gen, executor=ex, max_ahead=3, max_pause_s=5.0):
            if i == 1:
                await asyncio.sleep(0.3)
                during = list(produced)
        return during

    produced.clear()
    assert asyncio.run(_bounded(unpaced(), T))[-1] >= 4


class _QueuedLLM(LLM):
    """A local-model-like LLM: each call waits its turn on one executor, then takes `think_s`
    before its first token."""

    name = "queued"

    def __init__(self, ex: ModelExecutor, think_s: float) -> None:
        self.ex, self.think_s = ex, think_s
        self.caps = LLMCaps()

    async def chat(self, request: ChatRequest):
        def gen(stop: threading.Event):
            time.sleep(self.think_s)
            yield "hello"

        async for text in iterate_blocking(gen, executor=self.ex):
            yield TextDelta(text)


def test_first_token_timeout_measures_the_provider_not_the_queue() -> None:
    ex = ModelExecutor("test-timeout")
    gate = threading.Event()
    req = ChatRequest(messages=(Message("user", "hi"),), max_tokens=4)

    async def first(llm: LLM) -> object:
        async for ev in llm.chat(req):
            return ev
        return None

    async def main() -> None:
        blocker = asyncio.ensure_future(run_blocking(gate.wait, executor=ex))
        await asyncio.sleep(0.05)
        fast = ResilientLLM([_QueuedLLM(ex, 0.05)], policy=RetryPolicy(1), timeouts=Timeouts(first_item_s=0.5))
        task = asyncio.ensure_future(first(fast))
        await asyncio.sleep(1.2)  # queued behind another session for longer than the timeout
        gate.set()
        ev = await asyncio.wait_for(task, T)
        assert isinstance(ev, TextDelta)  # not a provider_timeout
        await blocker

        slow = ResilientLLM([_QueuedLLM(ex, 1.0)], policy=RetryPolicy(1), timeouts=Timeouts(first_item_s=0.3))
        with pytest.raises(ProviderTimeout):  # the provider itself is too slow: still a timeout
            await asyncio.wait_for(first(slow), T)

    asyncio.run(main())


def test_executors_still_count_as_real_work_in_virtual_time() -> None:
    """The virtual-time loop must not jump its clock while a model job runs."""
    ex = ModelExecutor("test-virtual")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sleeper = asyncio.ensure_future(asyncio.sleep(100))  # a timer far in the future
        await run_blocking(time.sleep, 0.2, executor=ex)
        elapsed = loop.time() - t0
        sleeper.cancel()
        return elapsed

    elapsed = run_virtual(main())
    assert elapsed < 1.0  # the clock did not jump to the 100 s timer while the job ran


def test_expected_wait_reflects_the_queue() -> None:
    ex = ModelExecutor("test-wait")
    gate = threading.Event()

    async def main() -> None:
        await run_blocking(time.sleep, 0.1, executor=ex)  # one job sets the service time
        blocker = asyncio.ensure_future(run_blocking(gate.wait, executor=ex))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(run_blocking(time.sleep, 0, executor=ex)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert ex.expected_wait_s() >= 5 * 0.05
        with background():
            bulk = [asyncio.ensure_future(run_blocking(time.sleep, 0, executor=ex)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert ex.expected_wait_s(BACKGROUND) > ex.expected_wait_s(INTERACTIVE)
        gate.set()
        await asyncio.wait_for(asyncio.gather(blocker, *queued, *bulk), T)
        assert ex.queued == 0 and ex.running == 0

    asyncio.run(main())
    assert "test-wait" in [e.name for e in threads.executors()]


def test_background_work_waits_while_any_model_serves_a_live_session() -> None:
    """Models share the cores: a background job (e.g. /v1/audio/speech on the TTS) does not start
    while an interactive job runs on another model (e.g. a live reply's LLM), up to MAX_DEFER_S."""
    live_model, bulk_model = ModelExecutor("test-live"), ModelExecutor("test-bulk")
    gate = threading.Event()
    started: list[float] = []

    async def main() -> float:
        live = asyncio.ensure_future(run_blocking(gate.wait, executor=live_model))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with background():
            bulk = asyncio.ensure_future(run_blocking(lambda: started.append(time.monotonic()), executor=bulk_model))
        await asyncio.sleep(0.5)
        assert started == []  # deferred while the live job runs
        gate.set()
        await asyncio.wait_for(asyncio.gather(live, bulk), T)
        return started[0] - t0

    waited = asyncio.run(main())
    assert 0.5 <= waited < threads.MAX_DEFER_S

    # and never for longer than MAX_DEFER_S, however busy the live side stays
    gate2 = threading.Event()

    async def starving() -> float:
        live = asyncio.ensure_future(run_blocking(gate2.wait, executor=live_model))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with background():
            await asyncio.wait_for(run_blocking(time.sleep, 0, executor=bulk_model), T)
        gate2.set()
        await live
        return time.monotonic() - t0

    assert threads.MAX_DEFER_S - 0.1 <= asyncio.run(starving()) < threads.MAX_DEFER_S + 2
