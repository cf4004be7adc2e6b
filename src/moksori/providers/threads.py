"""Run blocking model code off the event loop: one small executor per model, fair and bounded.

Every model instance (Whisper, llama.cpp, a Piper voice, smart-turn, espeak-ng) owns a
`ModelExecutor` sized to how many calls the model serves at once: one for each embedded model
(their handles are not re-entrant, and each call already uses the cores it is given). Work waits
in a queue in front of the model, not in a thread blocked on the model's lock. So:

* no model can wait for a thread that another kind of model holds. (The shared 6-thread pool
  this replaces deadlocked: six LLM calls, each paused until its own first clause was
  synthesised, took every thread, and the TTS never got one.)
* the queue is visible: depth, waits and service times feed admission control and `/metrics`;
* work whose caller went away before it started is dropped (its future is cancelled);
* interactive work (a live turn's STT, a reply's LLM and TTS) goes before background work
  (uploads, `/v1/audio/speech`, live captions): first in each queue, and a background job
  also waits (up to MAX_DEFER_S) while an interactive job runs on *any* model, since they
  all share the same cores. A background job that may be abandoned (a live caption's
  decode) asks `should_yield()` between its steps and stops once interactive work waits
  for its model (a running job cannot be pre-empted from outside). The caller sets the priority with `background()`, a context
  variable, so providers need not know who asks.

Everything goes through `loop.run_in_executor`, which is what the virtual-time loop in
`moksori.testing` counts to know when real work is still in flight.

`queue_meter()` lets a caller measure how long its calls waited in these queues: the LLM's
first-token timeout (`providers/resilience.py`) subtracts that wait, so a timeout measures the
provider, not the queue in front of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import itertools
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

INTERACTIVE = 0
BACKGROUND = 1

_priority: contextvars.ContextVar[int] = contextvars.ContextVar("moksori_work_priority", default=INTERACTIVE)


_go: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("moksori_stream_go", default=None)


@contextlib.contextmanager
def paced_by(go: threading.Event) -> Iterator[None]:
    """Blocking streams that `iterate_blocking` starts inside this block (in this task: an LLM's
    tokens) compute their next item only while `go` is set. Clearing it pauses the model before
    its next step, at once, not `max_ahead` items later (the reply's first clause: its TTS gets
    the cores); the pause has the same bounds as `max_ahead`'s."""
    token = _go.set(go)
    try:
        yield
    finally:
        _go.reset(token)


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Model calls made inside this block (in this task) queue behind interactive ones."""
    token = _priority.set(BACKGROUND)
    try:
        yield
    finally:
        _priority.reset(token)


def set_background() -> None:
    """Mark the rest of the current task as background work. Call it at the top of a task's
    own coroutine (each task runs in its own copy of the context, so no other task sees it)."""
    _priority.set(BACKGROUND)


def current_priority() -> int:
    """INTERACTIVE or BACKGROUND: the priority model calls made now, in this task, would get."""
    return _priority.get()


def background_context() -> contextvars.Context:
    """A copy of the current context in which model calls are background work (run a task in
    it: `asyncio.create_task(coro, context=background_context())`)."""
    ctx = contextvars.copy_context()
    ctx.run(_priority.set, BACKGROUND)
    return ctx


# --------------------------------------------------------------------------- queue meter


class QueueMeter:
    """Seconds the calls of one caller spent queued for a model (loop time, loop thread only)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._since: dict[int, float] = {}
        self._ids = itertools.count()

    def enter(self, now: float) -> int:
        key = next(self._ids)
        self._since[key] = now
        return key

    def leave(self, key: int, now: float) -> None:
        since = self._since.pop(key, None)
        if since is not None:
            self.total += max(0.0, now - since)

    def queued(self, now: float) -> float:
        """Queue time so far, including calls still waiting now."""
        return self.total + sum(max(0.0, now - s) for s in self._since.values())


_meter: contextvars.ContextVar[QueueMeter | None] = contextvars.ContextVar("moksori_queue_meter", default=None)


def context_with_meter(meter: QueueMeter) -> contextvars.Context:
    """A copy of the current context in which model calls report their queue time to `meter`
    (run a task in it: `asyncio.create_task(coro, context=ctx)`)."""
    ctx = contextvars.copy_context()
    ctx.run(_meter.set, meter)
    return ctx


# --------------------------------------------------------------------------- executor


@dataclass
class ExecutorStats:
    submitted: int = 0
    completed: int = 0
    dropped: int = 0  # cancelled before they started
    queued: int = 0
    queued_interactive: int = 0
    running: int = 0
    busy_s: float = 0.0  # total time spent running jobs
    wait_s: float = 0.0  # total time jobs waited before running
    service_ewma_s: float = 0.0  # recent mean time per job
    recent_waits: list[float] = field(default_factory=list)  # waits of the last 32-64 jobs


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    future: Future = field(compare=False)
    fn: Callable[[], Any] = field(compare=False)
    queued_at: float = field(compare=False, default=0.0)


_executors: weakref.WeakSet[ModelExecutor] = weakref.WeakSet()
_exiting = False

# Interactive jobs running right now, over every executor. Models share the CPU cores, so a
# background job (an upload's STT, /v1/audio/speech) waits while any interactive one runs
# (up to MAX_DEFER_S since it was queued), not just while its own model is busy.
_interactive_running = 0
_interactive_lock = threading.Lock()
MAX_DEFER_S = 3.0


def _interactive_delta(delta: int) -> None:
    global _interactive_running
    with _interactive_lock:
        _interactive_running += delta


def interactive_running() -> int:
    return _interactive_running


_running = threading.local()  # in a model's worker thread: the executor and priority of its job


def should_yield() -> bool:
    """Called by model code in its worker thread, between steps: True if the job running is
    background work and interactive work is waiting for the same model. A background job that
    can give up (a live partial transcript, stale once the user has stopped) should then stop,
    so that the interactive one (that turn's final decode) starts now, not after it."""
    ex: ModelExecutor | None = getattr(_running, "executor", None)
    return ex is not None and getattr(_running, "priority", INTERACTIVE) > INTERACTIVE \
        and ex.stats.queued_interactive > 0


class ModelExecutor(Executor):
    """A priority FIFO in front of `workers` threads, for one model.

    `submit` never blocks; jobs start in (priority, arrival) order. A job cancelled before it
    starts is dropped. Threads start on first use and end at interpreter exit.
    """

    def __init__(self, name: str, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.name = name
        self.workers = workers
        self._cond = threading.Condition()
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._shutdown = False
        self.stats = ExecutorStats()
        _executors.add(self)

    # -- the Executor contract

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        job = _Job(_priority.get(), next(self._seq), future, functools.partial(fn, *args, **kwargs),
                   time.monotonic())
        with self._cond:
            if self._shutdown or _exiting:
                raise RuntimeError(f"executor {self.name} is shut down")
            heapq.heappush(self._heap, job)
            self._count(job, +1)
            self.stats.submitted += 1
            if len(self._threads) < self.workers and self.stats.running + len(self._heap) > len(self._threads):
                self._spawn()
            self._cond.notify()
        future.add_done_callback(self._on_done)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                for job in self._heap:
                    job.future.cancel()
            self._cond.notify_all()
        if wait:
            for t in list(self._threads):
                if t is not threading.current_thread():
                    t.join()

    # -- what admission control and /metrics read

    @property
    def queued(self) -> int:
        return self.stats.queued

    @property
    def running(self) -> int:
        return self.stats.running

    def expected_wait_s(self, priority: int = INTERACTIVE) -> float:
        """Rough wait for a job of `priority` submitted now: the jobs ahead of it (queued at the
        same or a higher priority, plus those running) times the recent service time."""
        s = self.stats
        queued = s.queued_interactive if priority <= INTERACTIVE else s.queued
        # a running job is half done on average; only a full house of them delays a new job
        busy = 0.5 * max(0, s.running - self.workers + 1)
        return (queued + busy) * s.service_ewma_s / self.workers

    # -- internals

    def _count(self, job: _Job, delta: int) -> None:
        self.stats.queued += delta
        if job.priority <= INTERACTIVE:
            self.stats.queued_interactive += delta

    def _spawn(self) -> None:
        t = threading.Thread(target=self._work, name=f"moksori-{self.name}-{len(self._threads)}", daemon=False)
        self._threads.append(t)
        t.start()

    def _on_done(self, future: Future) -> None:
        if future.cancelled():
            with self._cond:
                # still in the heap (lazy removal): no longer counted as queued
                for job in self._heap:
                    if job.future is future:
                        self._heap.remove(job)
                        heapq.heapify(self._heap)
                        self._count(job, -1)
                        self.stats.dropped += 1
                        break

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    while not self._heap and not (self._shutdown or _exiting):
                        self._cond.wait()
                    if not self._heap:
                        return
                    top = self._heap[0]
                    if top.priority > INTERACTIVE and _interactive_running > 0 and not (self._shutdown or _exiting) \
                            and time.monotonic() - top.queued_at < MAX_DEFER_S:
                        self._cond.wait(0.02)  # a live session is using the CPU: let it finish first
                        continue
                    break
                job = heapq.heappop(self._heap)
                self._count(job, -1)
                self.stats.running += 1
            interactive = job.priority <= INTERACTIVE
            if interactive:
                _interactive_delta(+1)
            started = time.monotonic()
            _running.executor, _running.priority = self, job.priority
            try:
                if job.future.set_running_or_notify_cancel():
                    try:
                        result = job.fn()
                    except BaseException as e:  # noqa: BLE001 - handed to the caller
                        job.future.set_exception(e)
                    else:
                        job.future.set_result(result)
            finally:
                _running.executor = None
                if interactive:
                    _interactive_delta(-1)
                done = time.monotonic()
                with self._cond:
                    s = self.stats
                    s.running -= 1
                    s.completed += 1
                    wait, busy = started - job.queued_at, done - started
                    s.wait_s += wait
                    s.busy_s += busy
                    s.service_ewma_s = busy if s.completed == 1 else 0.8 * s.service_ewma_s + 0.2 * busy
                    s.recent_waits.append(wait)
                    if len(s.recent_waits) > 64:
                        del s.recent_waits[:32]
                del job


def executors() -> list[ModelExecutor]:
    """Every live model executor (for metrics and admission control)."""
    return sorted(_executors, key=lambda e: e.name)


def _at_exit() -> None:
    global _exiting
    _exiting = True
    for ex in list(_executors):
        with ex._cond:  # noqa: SLF001 - this module's own class, at interpreter exit
            for job in ex._heap:  # noqa: SLF001 - as above
                job.future.cancel()
            ex._cond.notify_all()  # noqa: SLF001 - as above


if hasattr(threading, "_register_atexit"):
    # like concurrent.futures.thread: runs before the interpreter joins non-daemon threads
    threading._register_atexit(_at_exit)  # noqa: SLF001 - the hook concurrent.futures uses; no public one

# Blocking work that is not a model (decoding an upload, the VAD over a whole file): its own
# small executor, so it never delays a model and a model never delays it.
_misc: ModelExecutor | None = None
_misc_lock = threading.Lock()


def misc_executor() -> ModelExecutor:
    global _misc
    with _misc_lock:
        if _misc is None:
            _misc = ModelExecutor("misc", workers=2)
        return _misc


# --------------------------------------------------------------------------- awaiting it


def _on_start(loop: asyncio.AbstractEventLoop, meter: QueueMeter | None, key: int | None) -> None:
    if meter is not None and key is not None:
        try:
            loop.call_soon_threadsafe(lambda: meter.leave(key, loop.time()))
        except RuntimeError:  # the loop is closed
            pass


async def run_blocking(fn: Callable[..., T], *args: Any, executor: Executor | None = None,
                       **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on `executor` (default: the misc one). Cancelling the caller before
    the job starts drops the job; once started it runs to the end (threads cannot be killed)."""
    loop = asyncio.get_running_loop()
    ex = executor or misc_executor()
    meter = _meter.get()
    key = meter.enter(loop.time()) if meter is not None else None

    def job() -> T:
        _on_start(loop, meter, key)
        return fn(*args, **kwargs)

    try:
        return await loop.run_in_executor(ex, job)
    finally:
        if meter is not None and key is not None:
            meter.leave(key, loop.time())


_END = object()


async def iterate_blocking(make: Callable[[threading.Event], Iterator[T]], *,
                           executor: Executor | None = None,
                           max_ahead: int | None = None, max_pause_s: float = 0.75) -> AsyncIterator[T]:
    """Drive a blocking generator on `executor` and yield its items on the loop.

    `make(stop)` builds the generator; it should check `stop.is_set()` between steps. When the
    consumer stops early (break, cancel, aclose), `stop` is set: a job that has not started is
    dropped, a running one is closed in its thread at its next step, so a cancelled reply stops
    burning CPU within one token.

    With `max_ahead`, the thread runs at most that many items ahead of the consumer and then
    waits: a consumer that stops pulling (e.g. while the first clause is being synthesised)
    pauses the model and frees the CPU for whatever is on the critical path. The pause is
    bounded: after `max_pause_s` without the consumer taking an item, or as soon as other
    interactive work is queued for the same executor, the generator runs on freely, so a slow
    consumer never holds a model that other sessions are waiting for. Inside `paced_by(go)` the
    thread also waits for `go` before each item (same bounds): the consumer pauses it at once.
    """
    loop = asyncio.get_running_loop()
    ex = executor or misc_executor()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()
    credits = threading.Semaphore(max_ahead) if max_ahead else None
    meter = _meter.get()
    key = meter.enter(loop.time()) if meter is not None else None

    free = threading.Event()  # set once a pause ran out: no more backpressure for this stream
    go = _go.get()

    def wait_for(ready: Callable[[float], bool]) -> bool:
        """False: stop. True: go on (`ready` said so, or the consumer paused for too long)."""
        if free.is_set() or getattr(getattr(ex, "stats", None), "queued_interactive", 0) > 0:
            # others are queued for this model: pausing it would make them wait, not go faster
            free.set()
            return not stop.is_set()
        deadline = time.monotonic() + max_pause_s
        while not ready(0.05):
            if stop.is_set():
                return False
            if time.monotonic() >= deadline:
                free.set()
                return True
        return True

    def wait_credit() -> bool:
        assert credits is not None
        return wait_for(lambda timeout: credits.acquire(timeout=timeout))

    def wait_go() -> bool:
        assert go is not None
        return go.is_set() or wait_for(go.wait)

    def post(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # loop closed while we were computing
            stop.set()

    def worker() -> None:
        _on_start(loop, meter, key)
        if stop.is_set():
            return
        gen = None
        try:
            gen = make(stop)
            items = iter(gen)
            while True:
                if go is not None and not wait_go():
                    break  # paused by the consumer (paced_by), and then stopped
                try:
                    item = next(items)
                except StopIteration:
                    break
                if stop.is_set():
                    break
                if credits is not None and not wait_credit():
                    break
                post("item", item)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, re-raised there
            post("error", e)
            return
        finally:
            if gen is not None and hasattr(gen, "close"):
                try:
                    gen.close()
                except Exception:  # noqa: BLE001 - a generator failing to close must not hide the result
                    pass
        post("end", _END)

    fut = loop.run_in_executor(ex, worker)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                if credits is not None:
                    credits.release()
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        if meter is not None and key is not None:
            meter.leave(key, loop.time())
        fut.cancel()  # not started yet: dropped; running: finishes its current step and stops
        # Do not block the loop on the thread; just make sure its outcome is retrieved.
        fut.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
