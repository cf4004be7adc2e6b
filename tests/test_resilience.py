"""Retry / timeout / fallback logic of `moksori.providers.resilience`, with in-test fake streams
(the remote STT/TTS against a fault-injecting proxy on loopback: tests/test_audio_api.py)."""

from __future__ import annotations

import asyncio
import random
from contextlib import aclosing
from typing import Any

import pytest

from moksori.errors import ProviderError, ProviderTimeout
from moksori.providers.base import LLM, STT, TTS, ChatDone, ChatRequest, LLMCaps, Message, TextDelta, Transcript
from moksori.providers.resilience import (
    ResilientLLM,
    ResilientSTT,
    ResilientTTS,
    RetryPolicy,
    Timeouts,
    resilient_stream,
)


def transient(msg: str = "busy") -> ProviderError:
    return ProviderError(msg, retryable=True, status=503, provider="fake")


def permanent(msg: str = "bad key") -> ProviderError:
    return ProviderError(msg, retryable=False, status=401, provider="fake")


class Pause:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Script:
    """Each call of `make()` plays the next attempt: items are yielded, exceptions raised,
    `Pause`s awaited. Records how many attempts started and were closed."""

    def __init__(self, *attempts: list[Any]) -> None:
        self.attempts = list(attempts)
        self.started = 0
        self.closed = 0

    def make(self):
        steps = self.attempts[min(self.started, len(self.attempts) - 1)]
        self.started += 1

        async def gen():
            try:
                for step in steps:
                    if isinstance(step, BaseException):
                        raise step
                    if isinstance(step, Pause):
                        await asyncio.sleep(step.seconds)
                        continue
                    yield step
            finally:
                self.closed += 1

        return gen()


class Sleeps:
    """Injected `sleep` that records the requested delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def collect(stream) -> list[Any]:
    async with aclosing(stream) as s:
        return [x async for x in s]


FAST = RetryPolicy(max_attempts=3, base_delay_s=0.25, max_delay_s=4.0)


# --------------------------------------------------------------------------- retries


async def test_retries_before_first_item_then_succeeds():
    script = Script([transient()], [transient()], ["a", "b"])
    sleeps = Sleeps()
    out = await collect(resilient_stream(script.make, policy=FAST, provider="fake", sleep=sleeps,
                                         rng=random.Random(7)))
    assert out == ["a", "b"]
    assert script.started == 3 and script.closed == 3
    assert len(sleeps.delays) == 2
    assert 0 <= sleeps.delays[0] < 0.25 and 0 <= sleeps.delays[1] < 0.5


async def test_gives_up_after_max_attempts_with_last_error():
    script = Script([transient("one")], [transient("two")], [transient("three")])
    sleeps = Sleeps()
    with pytest.raises(ProviderError, match="three") as info:
        await collect(resilient_stream(script.make, policy=FAST, provider="fake", sleep=sleeps))
    assert info.value.retryable
    assert script.started == 3 and len(sleeps.delays) == 2


async def test_no_retry_once_an_item_was_yielded():
    script = Script(["a", transient()], ["never"])
    got: list[str] = []
    with pytest.raises(ProviderError, match="busy"):
        async with aclosing(resilient_stream(script.make, policy=FAST, provider="fake", sleep=Sleeps())) as s:
            async for x in s:
                got.append(x)
    assert got == ["a"]
    assert script.started == 1


async def test_permanent_error_is_not_retried():
    script = Script([permanent()], ["never"])
    sleeps = Sleeps()
    with pytest.raises(ProviderError, match="bad key") as info:
        await collect(resilient_stream(script.make, policy=FAST, provider="fake", sleep=sleeps))
    assert not info.value.retryable
    assert script.started == 1 and sleeps.delays == []


async def test_foreign_exception_becomes_permanent_provider_error():
    script = Script([KeyError("choices")], ["never"])
    with pytest.raises(ProviderError) as info:
        await collect(resilient_stream(script.make, policy=FAST, provider="fake", sleep=Sleeps()))
    err = info.value
    assert not err.retryable and err.provider == "fake"
    assert "KeyError" in str(err)
    assert isinstance(err.__cause__, KeyError)
    assert script.started == 1


async def test_make_raising_synchronously_is_handled():
    calls = 0

    def make():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise transient()
        return Script(["ok"]).make()

    assert await collect(resilient_stream(make, policy=FAST, provider="fake", sleep=Sleeps())) == ["ok"]
    assert calls == 2


async def test_retry_after_hint_is_honoured_up_to_max_delay():
    err = transient()
    err.retry_after = 2.5  # type: ignore[attr-defined]
    big = transient()
    big.retry_after = 60  # type: ignore[attr-defined]
    sleeps = Sleeps()
    script = Script([err], [big], ["ok"])
    await collect(resilient_stream(script.make, policy=FAST, provider="fake", sleep=sleeps))
    assert sleeps.delays == [2.5, 4.0]


# --------------------------------------------------------------------------- timeouts


async def test_first_item_timeout_is_retryable_and_retried():
    script = Script([Pause(5), "late"], ["fast"])
    out = await collect(resilient_stream(script.make, policy=FAST, timeouts=Timeouts(first_item_s=0.05),
                                         provider="fake", sleep=Sleeps()))
    assert out == ["fast"]
    assert script.started == 2 and script.closed == 2  # the stalled attempt was closed


async def test_first_item_timeout_raises_provider_timeout_when_out_of_attempts():
    script = Script([Pause(5), "late"])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ProviderTimeout, match="nothing within") as info:
        await collect(resilient_stream(script.make, policy=RetryPolicy(max_attempts=1),
                                       timeouts=Timeouts(first_item_s=0.05), provider="fake"))
    assert info.value.retryable
    assert loop.time() - t0 < 1.0
    assert script.closed == 1


async def test_idle_timeout_between_items_is_not_retried():
    script = Script(["a", Pause(5), "b"], ["never"])
    got: list[str] = []
    with pytest.raises(ProviderTimeout, match="silent"):
        async with aclosing(resilient_stream(script.make, policy=FAST, timeouts=Timeouts(idle_s=0.05),
                                             provider="fake", sleep=Sleeps())) as s:
            async for x in s:
                got.append(x)
    assert got == ["a"] and script.started == 1 and script.closed == 1


async def test_total_timeout_bounds_the_whole_stream():
    steps: list[Any] = []
    for i in range(50):
        steps += [Pause(0.02), i]
    script = Script(steps)
    got: list[int] = []
    with pytest.raises(ProviderTimeout, match="total"):
        async with aclosing(resilient_stream(script.make, timeouts=Timeouts(idle_s=1.0, total_s=0.15),
                                             provider="fake")) as s:
            async for x in s:
                got.append(x)
    assert 1 <= len(got) < 50
    assert script.closed == 1


async def test_total_timeout_is_not_retried_once_the_budget_is_spent():
    script = Script([Pause(5), "late"])
    with pytest.raises(ProviderTimeout):
        await collect(resilient_stream(script.make, policy=FAST, timeouts=Timeouts(total_s=0.05),
                                       provider="fake", sleep=Sleeps()))
    assert script.started == 1


async def test_providers_own_timeout_error_is_a_bug_not_a_timeout():
    script = Script([TimeoutError("oops")])
    with pytest.raises(ProviderError) as info:
        await collect(resilient_stream(script.make, policy=FAST, timeouts=Timeouts(first_item_s=5),
                                       provider="fake", sleep=Sleeps()))
    assert not isinstance(info.value, ProviderTimeout)
    assert not info.value.retryable and "TimeoutError" in str(info.value)


# --------------------------------------------------------------------------- closing


async def test_closing_consumer_closes_underlying_iterator():
    script = Script(["a", "b", "c"])
    stream = resilient_stream(script.make, provider="fake")
    assert await anext(stream) == "a"
    await stream.aclose()
    assert script.closed == 1


async def test_break_inside_aclosing_closes_underlying_iterator():
    script = Script(["a", "b", "c"])
    async with aclosing(resilient_stream(script.make, timeouts=Timeouts(first_item_s=1, idle_s=1),
                                         provider="fake")) as s:
        async for _ in s:
            break
    assert script.closed == 1


async def test_cancelling_consumer_task_closes_iterator_and_leaves_no_tasks():
    script = Script(["a", Pause(30), "b"])
    got: list[str] = []
    before = asyncio.all_tasks()

    async def consume():
        async with aclosing(resilient_stream(script.make, timeouts=Timeouts(idle_s=60), provider="fake")) as s:
            async for x in s:
                got.append(x)

    task = asyncio.create_task(consume())
    while not got:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert script.closed == 1
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == before


# --------------------------------------------------------------------------- backoff


def test_full_jitter_bounds():
    policy = RetryPolicy(max_attempts=10, base_delay_s=0.25, max_delay_s=4.0)
    rng = random.Random(1234)
    for attempt in range(1, 10):
        cap = min(4.0, 0.25 * 2 ** (attempt - 1))
        draws = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d < cap for d in draws)
        assert max(draws) > cap * 0.8  # really spread over the range, not a constant
        assert min(draws) < cap * 0.2


def test_jitter_extremes_and_validation():
    class Fixed(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def random(self) -> float:
            return self.value

    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=3.0)
    assert policy.delay(1, Fixed(0.0)) == 0.0
    assert policy.delay(1, Fixed(0.5)) == pytest.approx(0.25)
    assert policy.delay(3, Fixed(0.5)) == pytest.approx(1.0)
    assert policy.delay(30, Fixed(0.5)) == pytest.approx(1.5)  # capped at max_delay_s
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


# --------------------------------------------------------------------------- ResilientLLM


class FakeLLM(LLM):
    def __init__(self, name: str, script: Script, log: list[str], caps: LLMCaps | None = None) -> None:
        self.name = name
        self.script = script
        self.log = log
        self.caps = caps or LLMCaps()
        self.loaded = self.closed = False
        self.fail_load: ProviderError | None = None

    async def load(self) -> None:
        self.loaded = True
        if self.fail_load:
            raise self.fail_load

    async def close(self) -> None:
        self.closed = True

    def chat(self, request: ChatRequest):
        self.log.append(self.name)
        return self.script.make()


REQ = ChatRequest(messages=(Message("user", "hi"),))


async def test_fallback_order_and_retries_per_provider():
    log: list[str] = []
    a = FakeLLM("a", Script([permanent()]), log, caps=LLMCaps(context_tokens=8192))
    b = FakeLLM("b", Script([transient()]), log)
    c = FakeLLM("c", Script([TextDelta("hi"), ChatDone()]), log)
    llm = ResilientLLM([a, b, c], policy=RetryPolicy(max_attempts=2), sleep=Sleeps())
    assert llm.name == "a→b→c"
    assert llm.caps.context_tokens == 8192
    out = await collect(llm.chat(REQ))
    assert out == [TextDelta("hi"), ChatDone()]
    assert log == ["a", "b", "b", "c"]
    assert a.script.closed == 1 and b.script.closed == 2 and c.script.closed == 1


async def test_last_error_propagates_when_all_fail():
    log: list[str] = []
    llm = ResilientLLM([FakeLLM("a", Script([transient("a down")]), log),
                        FakeLLM("b", Script([permanent("b refused")]), log)],
                       policy=RetryPolicy(max_attempts=2), sleep=Sleeps())
    with pytest.raises(ProviderError, match="b refused"):
        await collect(llm.chat(REQ))
    assert log == ["a", "a", "b"]


async def test_no_fallback_after_output_started():
    log: list[str] = []
    llm = ResilientLLM([FakeLLM("a", Script([TextDelta("x"), transient()]), log),
                        FakeLLM("b", Script([TextDelta("y"), ChatDone()]), log)], sleep=Sleeps())
    got = []
    with pytest.raises(ProviderError):
        async with aclosing(llm.chat(REQ)) as s:
            async for ev in s:
                got.append(ev)
    assert got == [TextDelta("x")] and log == ["a"]


async def test_fallback_on_first_item_timeout():
    log: list[str] = []
    slow = FakeLLM("slow", Script([Pause(5), TextDelta("late")]), log)
    quick = FakeLLM("quick", Script([TextDelta("now"), ChatDone()]), log)
    llm = ResilientLLM([slow, quick], policy=RetryPolicy(max_attempts=1), timeouts=Timeouts(first_item_s=0.05))
    assert await collect(llm.chat(REQ)) == [TextDelta("now"), ChatDone()]
    assert log == ["slow", "quick"] and slow.script.closed == 1


async def test_closing_resilient_llm_stream_closes_provider_stream():
    log: list[str] = []
    a = FakeLLM("a", Script([TextDelta("1"), TextDelta("2"), ChatDone()]), log)
    llm = ResilientLLM([a])
    async with aclosing(llm.chat(REQ)) as s:
        async for _ in s:
            break
    assert a.script.closed == 1


async def test_load_and_close_delegate_to_all():
    log: list[str] = []
    a, b = FakeLLM("a", Script([]), log), FakeLLM("b", Script([]), log)
    b.fail_load = transient("fallback down")
    llm = ResilientLLM([a, b])
    await llm.load()  # a broken fallback does not stop startup
    assert a.loaded and b.loaded
    await llm.close()
    assert a.closed and b.closed

    a.fail_load = permanent("primary broken")
    with pytest.raises(ProviderError, match="primary broken"):
        await ResilientLLM([a, b]).load()
    with pytest.raises(ValueError):
        ResilientLLM([])


# --------------------------------------------------------------------------- ResilientSTT / ResilientTTS


class FlakySTT(STT):
    """Fails `fail` times (retryable), then answers with the number of samples it received."""

    def __init__(self, name: str, fail: int, log: list[str]) -> None:
        self.name, self.fail, self.log = name, fail, log

    async def transcribe(self, audio, opts):
        got = sum([len(a) async for a in audio])
        self.log.append(f"{self.name}:{got}")
        if self.fail > 0:
            self.fail -= 1
            raise transient()
        yield Transcript(f"{got} samples", "en", True)


class FlakyTTS(TTS):
    """Plays `script` per call: Frame counts to yield, exceptions to raise."""

    def __init__(self, name: str, *attempts: list[Any]) -> None:
        self.name = name
        self.script = Script(*attempts)

    def synthesize(self, text, opts):
        return self.script.make()


async def test_resilient_stt_replays_the_audio_on_every_attempt_and_falls_back():
    import numpy as np

    from moksori.providers.base import STTOptions, one_chunk

    log: list[str] = []
    stt = ResilientSTT([FlakySTT("a", 5, log), FlakySTT("b", 1, log)], policy=RetryPolicy(max_attempts=2),
                       sleep=Sleeps())
    assert stt.name == "a→b" and stt.caps == stt.providers[0].caps
    out = await collect(stt.transcribe(one_chunk(np.zeros(1600, np.float32)), STTOptions()))
    assert [t.text for t in out] == ["1600 samples"]
    assert log == ["a:1600", "a:1600", "b:1600", "b:1600"]  # the same audio every time


async def test_resilient_tts_retries_before_audio_never_after_and_falls_back():
    from moksori.audio.frames import Frame
    from moksori.providers.base import TTSOptions

    f = Frame.silence(0.1, 24000)
    a = FlakyTTS("a", [transient()], [f, f])
    tts = ResilientTTS([a], policy=FAST, sleep=Sleeps())
    assert len(await collect(tts.synthesize("hi", TTSOptions()))) == 2 and a.script.started == 2

    broken = FlakyTTS("broken", [f, transient("cut")], [f, f])
    spare = FlakyTTS("spare", [f])
    tts = ResilientTTS([broken, spare], policy=FAST, sleep=Sleeps())
    got = []
    with pytest.raises(ProviderError, match="cut"):
        async with aclosing(tts.synthesize("hi", TTSOptions())) as s:
            async for frame in s:
                got.append(frame)
    assert len(got) == 1 and broken.script.started == 1 and spare.script.started == 0

    down = FlakyTTS("down", [permanent()])
    tts = ResilientTTS([down, spare], policy=FAST, sleep=Sleeps())
    assert len(await collect(tts.synthesize("hi", TTSOptions()))) == 1 and spare.script.started == 1
    with pytest.raises(ValueError):
        ResilientTTS([])
