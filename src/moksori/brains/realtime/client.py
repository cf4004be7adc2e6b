"""`RealtimeUpstream`: the I/O around `UpstreamProtocol` — one connection at a time, timeouts,
keepalive, reconnects with backoff, re-seeding, and the typed event stream.

    up = RealtimeUpstream(UpstreamOptions(resolve_endpoint(url, api_key=key), SessionOptions(...)))
    await up.start()                       # connected and configured, or ProviderError
    async for e in up.events():            # typed events (moksori.brains.realtime.events)
        ...
    await up.append_audio(frame)           # any rate: resampled here, once, to the upstream's
    await up.interrupt(heard_ms=850)       # barge-in: cancel + clamped truncate
    await up.close()

Calls made while the upstream is down are not lost: audio (up to `buffer_while_down_s`),
commits, new items and response requests wait and go out, in order, right after the new
connection is configured and re-seeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from moksori import cancellation
from moksori.audio.frames import Frame
from moksori.audio.resample import StreamResampler
from moksori.errors import ProviderError

from . import events as ev
from .conversation import HistoryItem, InputRing
from .options import SessionOptions, UpstreamOptions
from .protocol import InputEntry, TruncateResult, UpstreamProtocol
from .transport import Connection, Connector, TransportClosed, websocket_connector

log = logging.getLogger("moksori.brains.realtime")

__all__ = ["RealtimeUpstream"]


class _Drop(Exception):
    def __init__(self, reason: str, detail: str, *, planned: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.planned = reason, detail, planned


def _new_item_id() -> str:
    return "item_mk" + uuid.uuid4().hex[:20]


class RealtimeUpstream:
    def __init__(self, options: UpstreamOptions, *, connector: Connector | None = None,
                 clock: Callable[[], float] | None = None, rand: Callable[[], float] = random.random) -> None:
        self.options = options
        self.proto = UpstreamProtocol(options)
        self._connector = connector or websocket_connector
        self._clock = clock
        self._rand = rand
        self._events: asyncio.Queue[ev.UpstreamEvent | None] = asyncio.Queue()
        self._conn: Connection | None = None
        self._live = False  # configured and re-seeded: calls go straight out
        self._deferred: deque[tuple[str, Any]] = deque()
        self._deferred_audio_ms = 0.0
        self._kick = asyncio.Event()
        self._ready: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._failed: ev.UpstreamFailed | None = None
        self._drop_request: _Drop | None = None
        self._retrievals: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._resamplers: dict[int, StreamResampler] = {}
        self._replay: Frame | None = None  # input audio the last drop left unfinished
        self.drops = 0

    # ------------------------------------------------------------------ properties
    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    @property
    def connected(self) -> bool:
        return self._live

    @property
    def failure(self) -> ev.UpstreamFailed | None:
        """Set once the client gave up (the last event it emitted)."""
        return self._failed

    @property
    def conn(self) -> int:
        return self.proto.conn

    @property
    def input_rate(self) -> int:
        return self.options.session.input_format.rate

    @property
    def output_rate(self) -> int:
        return self.options.session.output_format.rate

    @property
    def in_response(self) -> bool:
        return self.proto.in_response

    def history(self) -> list[HistoryItem]:
        """The conversation as the client knows it, in upstream order (across reconnects)."""
        return self.proto.conv.history()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect and configure. Raises `ProviderError` if no connection could be set up
        (a permanent refusal at once; otherwise after the reconnect policy's tries)."""
        if self._runner is not None:
            raise RuntimeError("already started")
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._runner = asyncio.create_task(self._run(), name="realtime-upstream")
        try:
            await asyncio.shield(self._ready)
        except asyncio.CancelledError:  # the caller gave up: nothing may go on connecting
            self._closing = True
            await cancellation.stop(self._runner)
            if not self._ready.cancelled() and self._ready.done():
                self._ready.exception()  # nobody waits for it now: no "never retrieved" report
            raise

    async def close(self) -> None:
        """Stop for good, whatever the client is doing (connecting, setting up, connected, backing
        off, sending): the connection task is cancelled and awaited first, then the socket gets
        its closing handshake (at most 2 s; aborted if this call is cancelled meanwhile)."""
        self._closing = True
        try:
            if self._runner is not None:
                await cancellation.stop(self._runner)
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    await conn.close()
                except BaseException:
                    conn.abort()
                    raise
        finally:
            self._live = False
            if self._conn is not None:  # cancelled before it could be closed
                self._conn.abort()
                self._conn = None
            self._events.put_nowait(None)

    async def events(self) -> AsyncIterator[ev.UpstreamEvent]:
        """Every event, in order; ends after `close()` or `UpstreamFailed`."""
        while True:
            e = await self._events.get()
            if e is None:
                self._events.put_nowait(None)  # a second reader ends too
                return
            yield e

    async def next_event(self, timeout: float | None = None) -> ev.UpstreamEvent | None:
        """The next event, or None after the stream ended (TimeoutError after `timeout`)."""
        e = await cancellation.wait_for(self._events.get(), timeout)
        if e is None:
            self._events.put_nowait(None)
        return e

    def discard_pending(self) -> None:
        """Drop the events received so far and not yet read (a stream's end stays)."""
        while not self._events.empty():
            e = self._events.get_nowait()
            if e is None:
                self._events.put_nowait(None)
                return

    async def reconnect(self, reason: str = "requested") -> None:
        """Drop the current connection and open a fresh one (re-seeded as after any drop)."""
        self._drop_request = _Drop("requested", reason, planned=True)
        conn = self._conn
        if conn is not None:
            conn.abort()

    # ------------------------------------------------------------------ calls
    async def append_audio(self, frame: Frame) -> None:
        """User audio as PCM16 at any rate (resampled here to the upstream's input rate)."""
        rate = self.input_rate
        if frame.rate != rate:
            rs = self._resamplers.get(frame.rate)
            if rs is None:
                rs = self._resamplers[frame.rate] = StreamResampler(frame.rate, rate)
            samples = rs.process(frame.samples)
            if len(samples) == 0:
                return
            frame = Frame(samples, rate)
        if len(frame) == 0:
            return
        await self._call("audio", frame)

    async def commit(self) -> None:
        """End the user's turn (manual turns): the input buffer becomes a user item."""
        await self._call("commit", None)

    async def clear_input(self) -> None:
        await self._call("clear", None)

    async def create_response(self, *, instructions: str | None = None, modalities: tuple[str, ...] | None = None,
                              tools: tuple[dict[str, Any], ...] | None = None, tool_choice: Any = None,
                              metadata: dict[str, str] | None = None,
                              input: Sequence[InputEntry] | None = None) -> None:
        """Ask for a response. `input` (role, text pairs; role, parts: a user message whose audio
        parts the upstream hears; `InputRef`: items it has, named; `UpstreamProtocol.input_items`):
        out of band, reading only those messages, its output kept out of the conversation."""
        arg: dict[str, Any] = {"instructions": instructions, "modalities": modalities, "tools": tools,
                               "tool_choice": tool_choice, "metadata": metadata}
        if input is not None:  # (encoded when it goes: after a drop, against the re-seeded conversation)
            arg.update(conversation="none", input=list(input))
        await self._call("response", arg)

    async def cancel_response(self) -> bool:
        """Cancel the response in progress; False when there was none (nothing sent)."""
        if not self._live:
            self._deferred = deque(op for op in self._deferred if op[0] != "response")
            return False
        msg = self.proto.response_cancel()
        if msg is None:
            return False
        await self._send(msg)
        return True

    async def truncate(self, item_id: str, audio_end_ms: float) -> TruncateResult:
        """Cut an assistant item's audio at what was heard, clamped to what it generated (never
        rejected for being too long). Works while down too: the cut is kept for re-seeding."""
        msg, result = self.proto.truncate(item_id, audio_end_ms, live=self._live)
        if msg is not None:
            await self._send(msg)
        return result

    async def interrupt(self, heard_ms: float | None, *, item_id: str | None = None) -> TruncateResult | None:
        """Barge-in: cancel the response in progress, then truncate its audio item (or
        `item_id`) at `heard_ms`. Returns the truncate's result (None when there was nothing to cut)."""
        target = item_id or self._current_audio_item()
        await self.cancel_response()
        if target is None or heard_ms is None:
            return None
        return await self.truncate(target, heard_ms)

    def _current_audio_item(self) -> str | None:
        for iid in reversed(self.proto.conv.order):
            rec = self.proto.conv.items[iid]
            if rec.role == "assistant" and rec.kind == "message" and rec.audio_ms > 0:
                return iid
            if rec.role == "user":
                return None
        return None

    def set_heard_text(self, item_id: str, text: str) -> None:
        """The engine knows exactly which words were heard: use them when re-seeding."""
        rec = self.proto.conv.get(item_id)
        if rec is not None:
            rec.heard_text = text

    async def add_message(self, role: str, text: str, *, item_id: str | None = None,
                          previous_item_id: str | None = None) -> str:
        """Add a text message (user, assistant or system) to the upstream conversation."""
        iid = item_id or _new_item_id()
        await self._call("message", (role, text, iid, previous_item_id))
        return iid

    async def add_user_audio(self, content: list[str | Frame], *, item_id: str | None = None,
                             previous_item_id: str | None = None) -> str:
        """Add a client's user message with audio, which the upstream hears as audio: `content`
        in order, text as it is and audio (PCM16 at any rate), resampled and encoded to the
        upstream's input format when it is sent."""
        iid = item_id or _new_item_id()
        await self._call("user_audio", (content, iid, previous_item_id))
        return iid

    async def add_function_output(self, call_id: str, output: str, *, item_id: str | None = None) -> str:
        iid = item_id or _new_item_id()
        await self._call("function_output", (call_id, output, iid))
        return iid

    async def add_function_call(self, call_id: str, name: str, arguments: str, *, item_id: str | None = None) -> str:
        """Add a function call item (the model's call, e.g. when mirroring a conversation)."""
        iid = item_id or _new_item_id()
        await self._call("function_call", (call_id, name, arguments, iid))
        return iid

    async def delete_item(self, item_id: str) -> None:
        """Remove an item from the upstream conversation (and from what a reconnect re-seeds)."""
        await self._call("delete", item_id)

    async def retrieve_item(self, item_id: str, *, timeout: float = 5.0) -> dict[str, Any] | None:
        """The upstream's copy of an item (`conversation.item.retrieve`); None if it errs or
        does not answer in time."""
        if not self._live:
            return None
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._retrievals.setdefault(item_id, []).append(fut)
        await self._send(self.proto.retrieve(item_id))
        try:
            return await cancellation.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            waiting = self._retrievals.get(item_id, [])
            if fut in waiting:
                waiting.remove(fut)

    async def update_session(self, session: SessionOptions) -> None:
        """New session options: sent now, and on every later connection."""
        if session.input_format.rate != self.proto.ring.rate:  # keep the input axis, at the new rate
            ring = InputRing(session.input_format.rate, self.proto.ring.keep_ms / 1000)
            ring.sent_ms = self.proto.ring.sent_ms
            self.proto.ring = ring
        self.proto.session = session
        self.options = _replace_session(self.options, session)
        if self._live:
            await self._send(self.proto.wire.session_update(session))

    # ------------------------------------------------------------------ sending
    async def _call(self, kind: str, arg: Any) -> None:
        if self._failed is not None:
            raise ProviderError(f"the upstream is gone: {self._failed.detail}", retryable=False, provider="realtime")
        if not self._live:
            self._defer(kind, arg)
            return
        await self._do(kind, arg)

    def _defer(self, kind: str, arg: Any) -> None:
        self._deferred.append((kind, arg))
        if kind == "audio":
            self._deferred_audio_ms += 1000.0 * len(arg) / arg.rate
            limit = 1000.0 * self.options.reconnect.buffer_while_down_s
            while self._deferred_audio_ms > limit:
                for i, (k, a) in enumerate(self._deferred):
                    if k == "audio":
                        del self._deferred[i]
                        self._deferred_audio_ms -= 1000.0 * len(a) / a.rate
                        break
                else:
                    break

    async def _do(self, kind: str, arg: Any) -> None:
        p, now = self.proto, self.now()
        if kind == "audio":
            await self._send(p.append(arg))
        elif kind == "commit":
            await self._send(p.commit(now))
        elif kind == "clear":
            await self._send(p.clear())
        elif kind == "response":
            await self._send(p.response_create(now, **arg))
            self._kick.set()
        elif kind == "message":
            role, text, iid, prev = arg
            await self._send(p.add_message(role, text, item_id=iid, previous_item_id=prev))
        elif kind == "user_audio":
            content, iid, prev = arg
            await self._send(p.add_user_audio(content, item_id=iid, previous_item_id=prev))
        elif kind == "function_output":
            call_id, output, iid = arg
            await self._send(p.add_function_output(call_id, output, item_id=iid))
        elif kind == "function_call":
            call_id, name, arguments, iid = arg
            await self._send(p.add_function_call(call_id, name, arguments, item_id=iid))
        elif kind == "delete":
            await self._send(p.delete(arg))

    async def _send(self, msg: dict[str, Any]) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            await conn.send(json.dumps(msg, ensure_ascii=False))
        except TransportClosed:
            pass  # the reader sees the close and reconnects
        except Exception as e:  # noqa: BLE001 - a broken socket must not break the caller
            log.warning("sending to the upstream failed: %s", e)

    def _emit(self, e: ev.UpstreamEvent) -> None:
        if isinstance(e, ev.ItemRetrieved):
            for fut in self._retrievals.pop(str(e.item.get("id")), []):
                if not fut.done():
                    fut.set_result(e.item)
        self._events.put_nowait(e)

    # ------------------------------------------------------------------ the connection loop
    async def _run(self) -> None:
        attempt = 0  # the try after a drop (1 = the first); 0 = the very first connection
        # failed tries in a row: connections that could not be set up, and connections that were
        # set up but dropped while a reply was pending without it advancing (an upstream that
        # never answers must not be reconnected to, and re-seeded, for ever)
        failures = 0
        dropped_at: float | None = None
        resume: str | None = None
        try:
            while not self._closing:
                cancellation.raise_if_cancelled()  # asked to stop, and a library swallowed it
                if attempt > 0:
                    delay = self.options.reconnect.delay(attempt, self._rand())
                    self._emit(ev.Reconnecting(t=self.now(), conn=self.proto.conn, attempt=attempt, delay_s=delay))
                    if delay > 0:
                        await asyncio.sleep(delay)
                try:
                    conn = await self._open(attempt, dropped_at, resume)
                except ProviderError as e:
                    failures += 1
                    log.warning("upstream connection failed (try %d): %s", failures, e)
                    if self._conn is not None:
                        self._conn.abort()
                        self._conn = None
                    if not e.retryable or failures >= self.options.reconnect.max_attempts:
                        self._fail("connect_failed" if not e.retryable else "gave_up", str(e))
                        return
                    attempt += 1
                    continue
                resume = None
                drop = await self._serve(conn)
                if self._closing:  # our own close(): not a drop
                    return
                dropped_at = self.now()
                self._live = False
                self._conn = None
                with contextlib.suppress(Exception):
                    await conn.close()
                in_response = self.proto.in_response
                stalled = in_response and not self.proto.progressed and not drop.planned
                start = self.proto.replay_start_ms()
                self._replay = self.proto.ring.slice(start) if start is not None else None
                lost, resume = self.proto.connection_lost(dropped_at)
                if not self.options.reconnect.resume:
                    resume = None
                for event in lost:
                    self._emit(event)
                self.drops += 1
                self._emit(ev.UpstreamDropped(t=dropped_at, conn=self.proto.conn, reason=drop.reason,
                                              detail=drop.detail, age_s=dropped_at - self.proto.t_open,
                                              in_response=in_response, planned=drop.planned))
                log.log(logging.INFO if drop.planned else logging.WARNING, "upstream connection %d ended: %s (%s)",
                        self.proto.conn, drop.reason, drop.detail)
                if self._closing:
                    return
                if not stalled:  # as any drop: the first try at once
                    attempt, failures = 1, 0
                    continue
                failures += 1  # the pending reply got nothing from this connection: a failed try
                if failures >= self.options.reconnect.max_attempts:
                    self._fail("gave_up", f"the upstream answered nothing on {failures} tries in a row "
                                          f"(last: {drop.reason})")
                    return
                attempt += 1
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("realtime upstream client failed")
            self._fail("internal_error", f"{type(e).__name__}: {e}")
        finally:
            self._live = False
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(ProviderError("closed before the upstream was ready", retryable=False,
                                                        provider="realtime"))

    def _fail(self, reason: str, detail: str) -> None:
        self._failed = ev.UpstreamFailed(t=self.now(), conn=self.proto.conn, reason=reason, detail=detail)
        self._emit(self._failed)
        self._events.put_nowait(None)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ProviderError(f"cannot set up the upstream session: {detail}", retryable=False,
                                                    provider="realtime"))

    async def _recv_until(self, conn: Connection, done: Callable[[], bool], timeout: float, reason: str) -> None:
        """Read and handle messages until `done()`; `ProviderError` after `timeout` seconds."""
        deadline = self.now() + timeout
        while not done():
            cancellation.raise_if_cancelled()
            left = deadline - self.now()
            if left <= 0:
                raise ProviderError(f"upstream: {reason.replace('_', ' ')} after {timeout:g} s", retryable=True,
                                    provider="realtime")
            try:
                raw = await cancellation.wait_for(conn.recv(), left)
            except TimeoutError:
                continue
            except TransportClosed as e:
                raise ProviderError(f"upstream closed during set-up: {e}", retryable=e.code not in (1008, 4001, 4003),
                                    provider="realtime") from None
            for event in self.proto.receive(raw, self.now()):
                self._emit(event)
            for msg in self.proto.take_outbox():
                await self._send(msg)
            if self.proto.config_error is not None:
                raise ProviderError(f"upstream rejected the session: {self.proto.config_error}", retryable=False,
                                    provider="realtime")

    async def _open(self, attempt: int, dropped_at: float | None, resume: str | None) -> Connection:
        t = self.options.timeouts
        conn = await self._connector(self.options.endpoint, t, max_message_bytes=self.options.max_message_bytes)
        self._conn = conn
        p = self.proto
        replay = self._replay
        was_reconnect = p.conn > 0
        p.begin_connection(self.now())
        await self._recv_until(conn, lambda: p.session_created, t.first_event_s, "first_event_timeout")
        await self._send(p.configure())
        await self._recv_until(conn, lambda: p.configured, t.first_event_s, "first_event_timeout")
        reseeded = chars = replayed_ms = errors = 0
        if was_reconnect:
            plan = p.reseed()
            for m in plan.messages:
                await self._send(m)
            reseeded, chars = plan.items, plan.chars
            if plan.messages:  # wait until the upstream has taken (or refused) every item
                await self._recv_until(conn, lambda: not p.reseeding, t.response_s, "response_timeout")
            errors = p.reseed_errors
            if replay is not None:
                replayed_ms += int(1000 * len(replay) / replay.rate)
                await self._send(p.append(replay))
        replayed_ms += int(self._deferred_audio_ms)
        self._replay = None
        resumed = False
        if resume is not None and not any(k == "response" for k, _ in self._deferred) and replay is None:
            note = self.options.reconnect.resume_note
            instructions = (p.session.instructions + "\n\n" + note).strip() if resume == "cut" else None
            await self._send(p.response_create(self.now(), instructions=instructions))
            p.resumes += 1
            resumed = True
        while self._deferred:  # calls made while down, in order (new ones join the queue meanwhile)
            kind, arg = self._deferred.popleft()
            if kind == "audio":
                self._deferred_audio_ms -= 1000.0 * len(arg) / arg.rate
            await self._do(kind, arg)
        self._deferred_audio_ms = 0.0
        self._live = True
        self._kick.set()
        now = self.now()
        if was_reconnect:
            self._emit(ev.Reconnected(t=now, conn=p.conn, attempt=attempt, gap_s=now - (dropped_at or now),
                                      reseeded=reseeded, reseeded_chars=chars, replayed_audio_ms=replayed_ms,
                                      resumed=resumed, reseed_errors=errors))
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        return conn

    async def _serve(self, conn: Connection) -> _Drop:
        watchdog = asyncio.create_task(self._watchdog(conn), name="realtime-upstream-watchdog")
        try:
            while True:
                raw = await conn.recv()
                for e in self.proto.receive(raw, self.now()):
                    self._emit(e)
                for msg in self.proto.take_outbox():
                    await self._send(msg)
        except TransportClosed as e:
            if self._drop_request is not None:
                drop, self._drop_request = self._drop_request, None
                return drop
            if self.proto.drop_hint is not None:
                return _Drop(*self.proto.drop_hint)
            if e.code == 1011 and "keepalive" in e.reason:
                return _Drop("keepalive_timeout", e.reason)
            return _Drop("closed", str(e))
        finally:
            await cancellation.stop(watchdog)

    async def _watchdog(self, conn: Connection) -> None:
        while True:
            cancellation.raise_if_cancelled()
            self._kick.clear()
            dl = self.proto.deadline(self.now())
            if dl is None:
                await self._kick.wait()
                continue
            left = dl[0] - self.now()
            if left <= 1e-3:  # a millisecond early is due (and float rounding cannot spin us)
                if dl[1] == "rotation" and self.proto.busy:
                    await asyncio.sleep(0.5)  # a reply or the user's speech first
                    continue
                reason = dl[1]
                planned = reason == "rotation"
                detail = "planned reconnect before the upstream's time limit" if planned else \
                    f"no answer from the upstream ({reason.replace('_', ' ')})"
                self._drop_request = _Drop(reason, detail, planned=planned)
                conn.abort()
                return
            with contextlib.suppress(TimeoutError):
                await cancellation.wait_for(self._kick.wait(), left)


def _replace_session(opts: UpstreamOptions, session: SessionOptions) -> UpstreamOptions:
    from dataclasses import replace

    return replace(opts, session=session)
