"""The store's writer: records in from any thread or event loop, batched transactions out.

`submit()` never blocks and never awaits: it appends to a bounded buffer and wakes a background
thread that runs its own event loop and its own database engine, so no SQL is compiled, sent or
waited for on the audio loop. The thread gathers what arrived within `flush_interval_s` (many
small records per turn become one transaction) and writes up to `max_batch` records at a time.
A barrier (`flush()`, or `write_now()` when a session closes) cuts that wait short: what is queued
is written at once, so another process (a worker the user reconnects to) can read it.

Records submitted before `start()` (the database was down when the server started) wait in the
same buffer, in order, and are written when the writer starts.

A dead or slow database: the batch stays at the head of the buffer and is retried with
exponential backoff (0.1 s → 5 s) for as long as the outage lasts; new records keep queueing up
to `max_pending`. Past that, new records are dropped with a warning that says how many (never
silently). With a `spool` (the data dir's `store-spool/`), what is still unwritten when the writer
closes (a clean stop during an outage) is saved there, and `load_spool()` puts it back at the head
of the queue at the next start, before anything new; the files go once their records are written. A record the database rejects for its own content (a constraint) is isolated by
writing the batch one record at a time, and only that one is dropped, with a log line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from moksori import cancellation
from moksori.store import db as dbmod
from moksori.store.records import Record, ReplyProgress, storable
from moksori.store.spool import Spool
from moksori.store.writes import write_batch

# what makes the database refuse a record, not a sign that it is away: written one by one, the
# bad ones dropped (UnicodeError: text a driver cannot encode, should `storable` ever miss some)
REJECTED = (IntegrityError, DataError, UnicodeError)

log = logging.getLogger("moksori.store")

Pricer = Callable[..., float]


@dataclass
class WriterStats:
    submitted: int = 0
    written: int = 0
    dropped_full: int = 0  # rejected because the buffer was full
    dropped_bad: int = 0  # rejected by the database (constraint, bad data)
    batches: int = 0
    failures: int = 0  # failed write attempts (each is retried)
    pending: int = 0
    spooled: int = 0  # records saved to the spool at a stop (database unavailable)
    replayed: int = 0  # records of an earlier run's spool queued at start


class StoreWriter:
    def __init__(self, url: str, *, max_pending: int = 50_000, flush_interval_s: float = 0.05,
                 max_batch: int = 500, write_timeout_s: float = 15.0, pricer: Pricer | None = None,
                 retry_base_s: float = 0.1, retry_max_s: float = 5.0, spool: Spool | None = None) -> None:
        self.url = dbmod.normalise_url(url)
        self.spool = spool
        self.owner: str | None = None  # this process, stamped on the replies it has in progress
        self._spool_loaded = False
        self._spool_done_at: int | None = None  # `_done` when the spooled records are all written
        self.max_pending = max_pending
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.write_timeout_s = write_timeout_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.pricer = pricer
        self.stats = WriterStats()
        self._buf: deque[Record] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._urgent: asyncio.Event | None = None  # a barrier is waiting: no gather wait
        self._wake_pending = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._done = 0  # records finished (written or dropped as bad), for barriers
        self._barriers: list[tuple[int, concurrent.futures.Future[bool]]] = []
        self._last_drop_log = 0.0
        self._drops_since_log = 0
        self._outage_since: float | None = None

    # ------------------------------------------------------------------ any thread

    def load_spool(self) -> int:
        """Queue the records an earlier run spooled, ahead of everything (once; before `start`)."""
        if self.spool is None or self._spool_loaded:
            return 0
        self._spool_loaded = True
        try:
            records = self.spool.claim(self.max_pending)
        except OSError as e:
            log.error("store: cannot read the spool %s: %s", self.spool.dir, e)
            return 0
        # a reply's progress is worth nothing after a restart (its ending follows it in the
        # queue, and would be stamped with this run's owner: in progress for as long as it lives)
        records = [r for r in records if not isinstance(r, ReplyProgress)]
        with self._lock:
            self._buf.extendleft(reversed([storable(r) for r in records]))  # spools of older versions too
            self.stats.submitted += len(records)
            self.stats.replayed += len(records)
            self.stats.pending = len(self._buf)
            if self.spool.claimed:
                self._spool_done_at = self._done + len(records)
        if self.spool.claimed and not records:
            self._spool_written()
        return len(records)

    def _spool_written(self) -> None:
        self._spool_done_at = None
        if self.spool is not None:
            try:
                self.spool.release()
            except OSError as e:
                log.warning("store: cannot remove written spool files: %s", e)

    def start(self) -> StoreWriter:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._thread_main, name="moksori-store-writer", daemon=True)
        self._thread.start()
        self._started.wait(10)
        return self

    def submit(self, record: Record) -> bool:
        """Queue a record. Never blocks. False if the buffer is full (the record is dropped)."""
        with self._lock:
            if self._stopping:
                self._note_drop_locked("the store is closing")
                return False
            if len(self._buf) >= self.max_pending:
                self._note_drop_locked("the buffer is full (database down or too slow)")
                return False
            self._buf.append(storable(record))
            self.stats.submitted += 1
            wake = not self._wake_pending
            self._wake_pending = True
        if wake and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake_set)
            except RuntimeError:  # the writer loop is gone
                pass
        return True

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def failing(self) -> bool:
        """Writes are failing right now (the database is down or unreachable); records queue."""
        return self._outage_since is not None

    def barrier(self) -> concurrent.futures.Future[bool]:
        """A future that is done (True) once every record submitted so far is written or dropped."""
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
        with self._lock:
            target = self.stats.submitted
            if self._done >= target:
                fut.set_result(True)
                return fut
            self._barriers.append((target, fut))
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._urge)
            except RuntimeError:
                pass
        return fut

    def write_now(self) -> None:
        """Write what is queued now, without the batch's gather wait (never blocks)."""
        self.barrier()

    async def flush(self, timeout_s: float | None = 10.0) -> bool:
        """Wait until everything submitted so far is written. False on timeout."""
        try:
            return await cancellation.wait_for(asyncio.wrap_future(self.barrier()), timeout_s)
        except TimeoutError:
            return False

    def flush_sync(self, timeout_s: float | None = 10.0) -> bool:
        try:
            return self.barrier().result(timeout_s)
        except concurrent.futures.TimeoutError:
            return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is pending (for up to `timeout_s`; 3 s at most while writes fail), then
        stop the thread; what is still unwritten goes to the spool (if there is one)."""
        thread = self._thread
        if thread is None:
            with self._lock:
                self._stopping = True
            self._release_barriers(force=True)
            self._keep_unwritten("the database never came up")
            return
        self.flush_sync(min(timeout_s, 3.0) if self.failing else timeout_s)
        with self._lock:
            self._stopping = True
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._urge)
            except RuntimeError:
                pass
        thread.join(timeout_s + 5)
        self._thread = None
        # (a write still hanging in a thread that did not end may land too: replaying it is harmless)
        self._keep_unwritten("database unavailable")

    def _keep_unwritten(self, why: str) -> None:
        with self._lock:
            rest = list(self._buf)
        if self.spool is None:
            if rest:
                log.error("store: %d records were not written before shutdown (%s)", len(rest), why)
            return
        try:
            path = self.spool.save(rest)
        except OSError as e:
            log.error("store: %d records were not written before shutdown (%s) and cannot be spooled: %s",
                      len(rest), why, e)
            return
        self.stats.spooled += len(rest)
        if path is not None:
            log.warning("store: %d records not written before shutdown (%s) were spooled to %s; the next "
                        "start writes them", len(rest), why, path)
        # the claimed files' records were written, or are in the new file
        self._spool_written()

    async def aclose(self, timeout_s: float = 10.0) -> None:
        await asyncio.to_thread(self.close, timeout_s)

    # ------------------------------------------------------------------ writer thread

    def _note_drop_locked(self, why: str) -> None:
        self.stats.dropped_full += 1
        self._drops_since_log += 1
        now = time.monotonic()
        if now - self._last_drop_log >= 5.0:
            log.warning("store: dropped %d record(s): %s (%d pending, limit %d)",
                        self._drops_since_log, why, len(self._buf), self.max_pending)
            self._last_drop_log = now
            self._drops_since_log = 0

    def _wake_set(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _urge(self) -> None:
        if self._urgent is not None:
            self._urgent.set()
        self._wake_set()

    async def _gather(self) -> None:
        """Let a turn's records gather for `flush_interval_s`, unless a barrier wants them now."""
        assert self._urgent is not None
        try:
            await cancellation.wait_for(self._urgent.wait(), self.flush_interval_s)
        except TimeoutError:
            pass

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("store: writer thread failed")
        finally:
            self._release_barriers(force=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        engine = dbmod.make_engine(self.url)
        self._started.set()
        if self._buf:  # records submitted before the thread started
            self._wake.set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                with self._lock:
                    self._wake_pending = False
                if self.flush_interval_s > 0 and self._buf and not self._stopping and not self._barriers:
                    await self._gather()
                self._urgent.clear()
                await self._drain(engine)
                if self._stopping:
                    break
        finally:
            await engine.dispose()

    async def _drain(self, engine) -> None:  # noqa: ANN001 - AsyncEngine
        delay = self.retry_base_s
        while True:
            with self._lock:
                batch = [self._buf[i] for i in range(min(self.max_batch, len(self._buf)))]
            if not batch:
                self._release_barriers()
                return
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await write_batch(engine, batch, pricer=self.pricer, owner=self.owner)
            except REJECTED:
                await self._write_one_by_one(engine, batch)
            except Exception as e:  # noqa: BLE001 - connection refused, timeouts, server gone: retry
                self.stats.failures += 1
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    log.warning("store: write failed (%s: %s); retrying, %d records buffered",
                                type(e).__name__, _short(e), len(self._buf))
                if self._stopping:
                    self._release_barriers(force=True)
                    return
                await self._sleep_or_stop(delay)
                delay = min(self.retry_max_s, delay * 2)
                continue
            else:
                if self._outage_since is not None:
                    log.warning("store: database back after %.1f s; writing %d buffered records",
                                time.monotonic() - self._outage_since, len(self._buf))
                    self._outage_since = None
                self._finish(len(batch), written=len(batch))
            delay = self.retry_base_s

    async def _write_one_by_one(self, engine: AsyncEngine, batch: list[Record]) -> None:
        written = 0
        for rec in batch:
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await write_batch(engine, [rec], pricer=self.pricer, owner=self.owner)
                written += 1
            except REJECTED as e:
                self.stats.dropped_bad += 1
                log.error("store: dropped a %s record for conversation %s: the database rejected it (%s)",
                          type(rec).__name__, getattr(rec, "conversation_id", "?"), _short(e))
        self._finish(len(batch), written=written)

    def _finish(self, n: int, *, written: int) -> None:
        with self._lock:
            for _ in range(n):
                self._buf.popleft()
            self._done += n
            self.stats.written += written
            self.stats.batches += 1
            self.stats.pending = len(self._buf)
            spool_done = self._spool_done_at is not None and self._done >= self._spool_done_at
        if spool_done:
            self._spool_written()
        self._release_barriers()

    def _release_barriers(self, *, force: bool = False) -> None:
        with self._lock:
            keep = []
            for target, fut in self._barriers:
                if self._done >= target:
                    if not fut.done():
                        fut.set_result(True)
                elif force:
                    if not fut.done():
                        fut.set_result(False)
                else:
                    keep.append((target, fut))
            self._barriers = keep

    async def _sleep_or_stop(self, delay: float) -> None:
        """Back off for `delay`; new records do not cut it short (that would hammer a dead
        database once per record), only closing does."""
        end = time.monotonic() + delay
        while not self._stopping and time.monotonic() < end:
            await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))

def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("…" if len(text) > 200 else "")
