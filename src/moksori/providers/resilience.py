"""Retries, timeouts and fallbacks for streaming providers, in one place.

Providers translate their failures into `ProviderError(retryable=...)` and never retry on their
own. This module decides what happens next:

* a retryable failure *before the first item* is retried with full-jitter exponential backoff;
* once an item has been handed to the caller, any failure propagates (retrying would repeat
  output the caller has already spoken);
* `Timeouts` bound the wait for the first item, the gap between items and the whole call;
  output a provider holds back (a tool call's arguments, `note_progress()`) restarts the first /
  idle clock but is not an item: nothing was handed on, so a failure after it is still retried;
* `ResilientLLM`, `ResilientSTT` and `ResilientTTS` chain providers: primary first, then each
  fallback, each with its own retries (`_Chain`: one implementation for the three kinds).

Any other exception escaping a provider is a bug in that provider; it is reported as a
permanent `ProviderError` naming the original exception type.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import random
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from moksori import cancellation
from moksori.audio.frames import Frame
from moksori.errors import ProviderError, ProviderTimeout
from moksori.providers.base import LLM, STT, TTS, ChatEvent, ChatRequest, Provider, STTOptions, Transcript, TTSOptions
from moksori.providers.threads import QueueMeter, context_with_meter

if TYPE_CHECKING:
    from moksori.settings import LLMSettings, STTSettings, TTSSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P", bound=Provider)
Sleep = Callable[[float], Awaitable[Any]]

_END: Any = object()

# set (in the task that awaits a provider's next item) to what restarts that wait's clock
_progress: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "moksori_provider_progress", default=None)


def note_progress() -> None:
    """A provider received output it does not hand on yet (a tool call's arguments, kept until
    the call is whole): the attempt is alive. The first-item / idle clock of the resilient stream
    waiting for its next item starts again, with the idle limit (the total limit still holds)."""
    cb = _progress.get()
    if cb is not None:
        cb()


def _chained(cb: Callable[[], None]) -> Callable[[], None]:
    outer = _progress.get()  # an enclosing resilient stream (if any) hears of progress too
    if outer is None:
        return cb

    def both() -> None:
        cb()
        outer()

    return both


@contextlib.contextmanager
def _progress_calls(cb: Callable[[], None]) -> Iterator[None]:
    token = _progress.set(_chained(cb))
    try:
        yield
    finally:
        _progress.reset(token)


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts the first try: 3 means one try plus up to two retries."""

    max_attempts: int = 3
    base_delay_s: float = 0.25
    max_delay_s: float = 4.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("delays must not be negative")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        Full jitter: uniform in [0, min(max_delay_s, base_delay_s * 2**(attempt-1))).
        """
        exp = self.base_delay_s * math.pow(2.0, max(0, attempt - 1))
        cap = min(self.max_delay_s, exp)
        draw = (rng.random if rng is not None else random.random)()
        return cap * draw

    @classmethod
    def from_settings(cls, s: LLMSettings | STTSettings | TTSSettings) -> RetryPolicy:
        return cls(max_attempts=s.max_retries + 1)


@dataclass(frozen=True)
class Timeouts:
    """`None` disables a bound.

    first_item_s: from the start of an attempt to its first item (covers connect + prefill), not
        counting time the attempt waited in the queue for a local model (`providers/threads.py`).
    idle_s: the longest wait for any later item.
    total_s: the whole `resilient_stream` call, retries and backoff included.
    """

    first_item_s: float | None = None
    idle_s: float | None = None
    total_s: float | None = None

    @classmethod
    def from_settings(cls, s: LLMSettings) -> Timeouts:
        return cls(first_item_s=s.first_token_timeout_s, idle_s=s.timeout_s, total_s=None)

    @classmethod
    def for_stt(cls, s: STTSettings) -> Timeouts:
        """A batch recogniser answers with one final transcript: its first item is the whole call."""
        return cls(first_item_s=s.timeout_s, idle_s=s.timeout_s, total_s=None)

    @classmethod
    def for_tts(cls, s: TTSSettings) -> Timeouts:
        return cls(first_item_s=s.first_audio_timeout_s, idle_s=s.timeout_s, total_s=None)


def _as_provider_error(exc: BaseException, provider: str) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    text = str(exc).strip()
    detail = f": {text}" if text else ""
    return ProviderError(
        f"{provider} failed with unexpected {type(exc).__name__}{detail}",
        retryable=False,
        provider=provider,
        hint="this is a bug in the provider; it should raise ProviderError",
    )


async def _aclose(it: Any) -> None:
    close = getattr(it, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:  # closing must never mask the real outcome
        log.debug("error while closing a provider stream", exc_info=True)


async def _next_item(
    it: AsyncIterator[T],
    *,
    limit_s: float | None,
    total_deadline: float | None,
    first: bool,
    provider: str,
    idle_s: float | None = None,
) -> T:
    loop = asyncio.get_running_loop()
    if first and limit_s is not None:
        return await _first_item(it, limit_s=limit_s, idle_s=idle_s, total_deadline=total_deadline,
                                 provider=provider)
    deadline = None if limit_s is None else loop.time() + limit_s
    if total_deadline is not None and (deadline is None or total_deadline < deadline):
        deadline = total_deadline
    if deadline is None:
        return await anext(it, _END)
    cm = asyncio.timeout_at(deadline)
    # weakly: a cancelled timer stays in the loop's heap until its time (up to idle_s) with the
    # context it was made in, which holds this; through `cm` it held the reply's task and session
    timer = weakref.ref(cm)

    def progressed() -> None:  # `note_progress`: the silence so far ends here
        t = timer()
        if t is not None and limit_s is not None and not t.expired():
            later = loop.time() + limit_s
            t.reschedule(later if total_deadline is None else min(later, total_deadline))

    try:
        with _progress_calls(progressed):
            async with cm:
                return await anext(it, _END)
    except TimeoutError:
        if not cm.expired():
            raise  # the provider's own TimeoutError: a bug, wrapped by the caller
        if total_deadline is not None and (cm.when() or deadline) >= total_deadline:
            what = "did not finish within the total time limit"
        else:
            what = f"went silent for more than {limit_s:g} s"
        raise ProviderTimeout(f"{provider} {what}", provider=provider) from None


async def _first_item(it: AsyncIterator[T], *, limit_s: float, total_deadline: float | None, provider: str,
                      idle_s: float | None = None) -> T:
    """The first item, within `limit_s` of the provider's own time: time its calls spent queued
    for a local model (behind other sessions' replies) does not count against it. Once the
    provider reports progress (`note_progress`), each silence is bounded by `idle_s` instead.
    The total limit, if any, counts everything."""
    loop = asyncio.get_running_loop()
    meter = QueueMeter()
    start = loop.time()
    last: float | None = None  # when the provider last reported progress

    def progressed() -> None:
        nonlocal last
        last = loop.time()

    ctx = context_with_meter(meter)
    ctx.run(_progress.set, _chained(progressed))
    task = asyncio.create_task(anext(it, _END), context=ctx)
    try:
        while True:
            now = loop.time()
            if last is None:
                deadline = start + limit_s + meter.queued(now)
            else:
                deadline = math.inf if idle_s is None else last + idle_s
            if total_deadline is not None and total_deadline < deadline:
                deadline = total_deadline
            if now >= deadline:
                break
            done, _ = await asyncio.wait({task}, timeout=None if deadline == math.inf else deadline - now)
            if done:
                return task.result()
        if total_deadline is not None and loop.time() >= total_deadline:
            what = "did not finish within the total time limit"
        elif last is not None:
            what = f"went silent for more than {idle_s:g} s"
        else:
            what = f"sent nothing within {limit_s:g} s"
            if meter.total >= 0.1:
                what += f" (after {meter.total:.1f} s in the queue for the model)"
        raise ProviderTimeout(f"{provider} {what}", provider=provider)
    finally:
        await _stop_reader(task)


async def _stop_reader(task: asyncio.Task[Any]) -> None:
    """Stop `_first_item`'s reader and wait until it has ended, before the caller closes the
    stream it reads (`resilient_stream`). A second cancellation of the caller meanwhile does not
    cut that wait short: it did, and the stream was closed while the reader was still inside it
    ("aclose(): asynchronous generator is already running"), the reader's own failure never
    retrieved. That cancellation is raised once the reader has ended (not swallowed: the retry
    loop would try again)."""
    task.cancel()
    again: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as e:
            again = e
    await cancellation.stop(task)  # ended: only retrieves its outcome
    if again is not None:
        raise again


async def resilient_stream(
    make: Callable[[], AsyncIterator[T]],
    *,
    policy: RetryPolicy = RetryPolicy(),
    timeouts: Timeouts = Timeouts(),
    provider: str = "provider",
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
) -> AsyncGenerator[T, None]:
    """Re-yield the items of `make()`, retrying failures that happen before the first item.

    `make` is called once per attempt and must return a fresh iterator. The iterator of the
    current attempt is always closed (`aclose`) before this generator finishes, whether it
    ended, failed, timed out or the consumer stopped early. Consumers should close this
    generator promptly, e.g. `async with contextlib.aclosing(resilient_stream(...)) as s`.
    """
    loop = asyncio.get_running_loop()
    total_deadline = None if timeouts.total_s is None else loop.time() + timeouts.total_s
    attempt = 0
    while True:
        attempt += 1
        started = False
        it: AsyncIterator[T] | None = None
        try:
            try:
                it = aiter(make())
                while True:
                    item = await _next_item(
                        it,
                        limit_s=timeouts.idle_s if started else timeouts.first_item_s,
                        total_deadline=total_deadline,
                        first=not started,
                        provider=provider,
                        idle_s=timeouts.idle_s,
                    )
                    if item is _END:
                        return
                    started = True
                    yield item
            finally:
                if it is not None:
                    await _aclose(it)
        except Exception as exc:
            err = _as_provider_error(exc, provider)
            out_of_time = total_deadline is not None and loop.time() >= total_deadline
            if started or not err.retryable or attempt >= policy.max_attempts or out_of_time:
                if err is exc:
                    raise
                raise err from exc
            wait = policy.delay(attempt, rng)
            retry_after = getattr(err, "retry_after", None)
            if isinstance(retry_after, int | float) and retry_after > wait:
                wait = min(float(retry_after), policy.max_delay_s)
            if total_deadline is not None and loop.time() + wait >= total_deadline:
                raise err from (None if err is exc else exc)
            log.warning(
                "%s attempt %d/%d failed (%s); retrying in %.2f s",
                provider, attempt, policy.max_attempts, err, wait,
            )
            await sleep(wait)


class _Chain(Generic[P]):
    """Providers of one kind tried in order, each with `policy` retries and `timeouts`.

    A provider is abandoned for the next one when it fails before producing any output, with
    a permanent error or after its retries are used up. Once output has started, a failure is
    raised to the caller as is (a fallback would repeat what was already said). If every
    provider fails, the last error is raised.
    """

    what = "provider"

    def __init__(
        self,
        providers: Sequence[P],
        *,
        policy: RetryPolicy = RetryPolicy(),
        timeouts: Timeouts = Timeouts(),
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not providers:
            raise ValueError(f"{type(self).__name__} needs at least one provider")
        self.providers: tuple[P, ...] = tuple(providers)
        self.policy = policy
        self.timeouts = timeouts
        self._sleep = sleep
        self._rng = rng
        self.name = "→".join(p.name for p in self.providers)

    async def load(self) -> None:
        """Load the primary (errors propagate) and every fallback (errors are only logged:
        a fallback that is down at startup may be back by the time it is needed)."""
        await self.providers[0].load()
        for p in self.providers[1:]:
            try:
                await p.load()
            except ProviderError as e:
                log.warning("fallback %s %s failed to load: %s", self.what, p.name, e)

    async def close(self) -> None:
        first: BaseException | None = None
        for p in self.providers:
            try:
                await p.close()
            except Exception as e:  # noqa: BLE001 - close the others, then re-raise the first
                log.warning("closing %s %s failed: %s", self.what, p.name, e)
                first = first or e
        if first is not None:
            raise first

    async def _stream(self, make: Callable[[P], AsyncIterator[T]]) -> AsyncGenerator[T, None]:
        last: ProviderError | None = None
        for i, p in enumerate(self.providers):
            stream = resilient_stream(
                functools.partial(make, p),  # bind this provider, not the loop's last
                policy=self.policy,
                timeouts=self.timeouts,
                provider=p.name,
                sleep=self._sleep,
                rng=self._rng,
            )
            produced = False
            try:
                async for item in stream:
                    produced = True
                    yield item
                return
            except ProviderError as e:
                if produced:
                    raise
                last = e
                if i + 1 < len(self.providers):
                    log.warning("%s %s failed (%s); falling back to %s", self.what, p.name, e,
                                self.providers[i + 1].name)
            finally:
                await stream.aclose()
        assert last is not None
        raise last


class ResilientLLM(_Chain[LLM], LLM):
    """An `LLM` that tries `providers` in order (see `_Chain`)."""

    what = "LLM"

    def __init__(self, providers: Sequence[LLM], **kw: Any) -> None:
        super().__init__(providers, **kw)
        self.caps = self.providers[0].caps

    async def warm(self, system_prompt: str) -> None:
        """Warm the primary (e.g. put the system prompt in a local model's KV cache)."""
        warm = getattr(self.providers[0], "warm", None)
        if warm is not None:
            await warm(system_prompt)

    async def prefill(self, request: ChatRequest, upto: str) -> int:
        """Prefill the primary's prompt cache (a fallback has its own, or none)."""
        return await self.providers[0].prefill(request, upto)

    async def prefill_history(self, request: ChatRequest) -> int:
        """Prefill the primary's prompt cache with the history before the user's words."""
        return await self.providers[0].prefill_history(request)

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        async with aclosing(self._stream(lambda p: p.chat(request))) as events:
            async for event in events:
                yield event


class ResilientSTT(_Chain[STT], STT):
    """An `STT` that tries `providers` in order (see `_Chain`).

    The audio is collected before the first attempt so that a retry or a fallback can send it
    again: fine for batch recognisers (every one we have); a streaming one would lose its
    partial results' head start behind this wrapper.
    """

    what = "STT"

    def __init__(self, providers: Sequence[STT], **kw: Any) -> None:
        super().__init__(providers, **kw)
        self.caps = self.providers[0].caps

    async def transcribe(self, audio: AsyncIterable[np.ndarray],
                         opts: STTOptions) -> AsyncIterator[Transcript]:
        chunks = [a async for a in audio]

        async def replay() -> AsyncIterator[np.ndarray]:
            for chunk in chunks:
                yield chunk

        async with aclosing(self._stream(lambda p: p.transcribe(replay(), opts))) as results:
            async for tr in results:
                yield tr


class ResilientTTS(_Chain[TTS], TTS):
    """A `TTS` that tries `providers` in order (see `_Chain`). A clause whose audio has begun
    is never restarted: a failure after the first frame is raised (the speaker skips it)."""

    what = "TTS"

    def __init__(self, providers: Sequence[TTS], **kw: Any) -> None:
        super().__init__(providers, **kw)
        self.caps = self.providers[0].caps

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        async with aclosing(self._stream(lambda p: p.synthesize(text, opts))) as frames:
            async for frame in frames:
                yield frame
