"""A scripted, in-memory Realtime (GA) upstream for logic tests in virtual time.

Not a model: it "transcribes" a committed turn by taking the next text from `transcripts` (or
"(speech)"), and answers every response with `reply_ms` of a tone and the text
`reply_text(session)`, paced in real (or virtual) time. Enough to test a client's bookkeeping,
timeouts and reconnects over a 20-minute conversation in milliseconds:

    server = FakeRealtimeServer(max_session_s=600)
    up = RealtimeUpstream(options, connector=server.connector)
    run_virtual(main())          # moksori.testing.virtual_time

Scripts: `transcripts` (the next user turns' words), `transcript_delay_s` (the transcript comes
that long after the commit, e.g. after the reply started, as real transcription often does),
`function_calls` (the next response calls this tool instead of speaking; a list of calls: all of
them, in one response).

Faults: `drop()` (the connection vanishes), `stall()` (it stays open but says nothing),
`refuse_next`/`hang_next` (the next connects fail / never send `session.created`), and
`max_session_s` (the session ends with `session_expired`, as OpenAI's do at 60 minutes).
A hostile upstream: `ignore_responses` (the next `response.create`s are never answered),
`scripts` (the next responses are written by the test: `begin_response`, `audio_delta`,
`send_raw` for what a real server would never send, such as a number `1e999`).
A `response.create` whose `input` names (`item_reference`) an item the conversation does not
hold is an `error` (`item_not_found`: there is nothing to read); `FakeSession.response_inputs()`
is what each `response.create` gave the model to read.
For real network faults against a real server use `moksori.testing.ws_fault_proxy`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moksori.audio.frames import Frame
from moksori.brains.realtime.options import Endpoint, Timeouts
from moksori.brains.realtime.transport import TransportClosed
from moksori.errors import ProviderError
from moksori.protocols import realtime as rt
from moksori.protocols.realtime.items import ResponseStatus

__all__ = ["FakeRealtimeServer", "FakeSession"]

RATE = 24000
_CLOSED = object()


@dataclass
class FakeSession:
    """One connection's server-side state (inspect it in tests)."""

    number: int
    t_open: float
    session: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)  # the conversation, in order
    received: list[dict[str, Any]] = field(default_factory=list)  # client events (audio elided)
    audio_ms: float = 0.0  # input audio received
    generated_ms: dict[str, float] = field(default_factory=dict)  # assistant item -> audio sent
    responses: int = 0
    truncates: list[tuple[str, int]] = field(default_factory=list)
    closed: bool = False
    overlapping: int = 0  # `response.create`s received while a response ran (a real server refuses them)
    out_of_band: list[str] = field(default_factory=list)  # what out-of-band responses (`conversation: "none"`) said

    def item(self, item_id: str) -> dict[str, Any] | None:
        return next((i for i in self.items if i["id"] == item_id), None)

    def response_inputs(self) -> list[list[dict[str, Any]] | None]:
        """The `input` of each `response.create` received, in order (None: the conversation)."""
        return [(e.get("response") or {}).get("input") for e in self.received if e.get("type") == "response.create"]

    def texts(self) -> list[tuple[str, str]]:
        """(role, text) of every message, in order."""
        out = []
        for it in self.items:
            if it.get("type") == "message":
                parts = it.get("content") or []
                text = " ".join(str(p.get("text") or p.get("transcript") or "") for p in parts)
                out.append((it["role"], text))
        return out


class _Conn:
    """The client's end of an in-memory connection."""

    def __init__(self, server: FakeRealtimeServer, sess: FakeSession) -> None:
        self.server, self.sess = server, sess
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.closed: tuple[int | None, str] | None = None

    async def send(self, text: str) -> None:
        if self.closed is not None:
            raise TransportClosed(*self.closed)
        await asyncio.sleep(0)
        self.server.on_client(self, json.loads(text))

    async def recv(self) -> str:
        if self.closed is not None and self.inbox.empty():
            raise TransportClosed(*self.closed)
        msg = await self.inbox.get()
        if msg is _CLOSED:
            self.inbox.put_nowait(_CLOSED)
            raise TransportClosed(*(self.closed or (None, "closed")))
        return msg

    def close_now(self, code: int | None, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self.sess.closed = True
            self.inbox.put_nowait(_CLOSED)
            self.server.stop_tasks(self)

    async def close(self) -> None:
        self.close_now(1000, "client closed")

    def abort(self) -> None:
        self.close_now(None, "aborted")


ResponseScript = Callable[["FakeRealtimeServer", "_Conn", str, str], Awaitable[None]]
"""A scripted response: `(server, conn, response_id, item_id)`; cancelled by a `response.cancel`
or when the connection ends."""


class FakeRealtimeServer:
    def __init__(self, *, reply_ms: int = 2000, chunk_ms: int = 100, max_session_s: float | None = None,
                 reply_text: Callable[[FakeSession], str] | None = None, vad_threshold: float = 0.02,
                 silence_ms: int = 500, transcript_delay_s: float = 0.0) -> None:
        self.reply_ms, self.chunk_ms = reply_ms, chunk_ms
        self.transcript_delay_s = transcript_delay_s
        # (name, arguments) for the next responses, or a list of them for one response calling several
        self.function_calls: deque[tuple[str, str] | list[tuple[str, str]]] = deque()
        self.max_session_s = max_session_s
        self.reply_text = reply_text or _default_reply
        self.vad_threshold, self.silence_ms = vad_threshold, silence_ms
        self.transcripts: deque[str] = deque()
        self.sessions: list[FakeSession] = []
        self.refuse_next = 0
        self.refuse_status = 503
        self.hang_next = 0
        self.reject_truncates = 0  # reject the next N truncates even when valid
        self.ignore_responses = 0  # the next N response.create are never answered (not even an error)
        self.scripts: deque[ResponseScript] = deque()  # the next responses, as the test writes them
        self._ids = itertools.count(1)
        self._conn: _Conn | None = None
        self._tasks: dict[_Conn, set[asyncio.Task[Any]]] = {}
        self._stalled: set[_Conn] = set()
        self._vad: dict[_Conn, dict[str, Any]] = {}
        self._responding: dict[_Conn, set[asyncio.Task[Any]]] = {}

    # ------------------------------------------------------------------ faults
    def drop(self) -> None:
        """The current connection vanishes (no close frame)."""
        if self._conn is not None:
            self._conn.abort()

    def stall(self) -> None:
        """The current connection stays open but the server says nothing more."""
        if self._conn is not None:
            self._stalled.add(self._conn)

    @property
    def current(self) -> FakeSession | None:
        return self._conn.sess if self._conn is not None else None

    # ------------------------------------------------------------------ for response scripts
    def send_raw(self, conn: _Conn, message: str | dict[str, Any]) -> None:
        """Send anything (text as is, a dict as JSON): what a real server never would."""
        if conn.closed is None and conn not in self._stalled:
            conn.inbox.put_nowait(message if isinstance(message, str) else json.dumps(message))

    def begin_response(self, conn: _Conn, rid: str, iid: str) -> None:
        """`response.created` and the opening of one assistant audio item."""
        ev = self._ev(conn)
        self._emit(conn, ev.response_created(rt.response_object(rid, rt.Flavor.GA)))
        item = rt.message_item(iid, "assistant", [], rt.Flavor.GA, status="in_progress")
        conn.sess.generated_ms.setdefault(iid, 0.0)
        self._emit(conn, ev.response_output_item_added(rid, 0, item))
        self._emit(conn, ev.conversation_item_added(item, None))
        self._emit(conn, ev.response_content_part_added(rid, iid, 0, 0, rt.event_part("audio")))

    def audio_delta(self, conn: _Conn, rid: str, iid: str, ms: int = 100, text: str | None = None) -> None:
        """`ms` of the reply's tone (none when 0), and a transcript delta with it when `text` is given."""
        ev = self._ev(conn)
        if ms > 0:
            out = self._format(conn.sess, "output")
            t = np.arange(out.rate * ms // 1000) / out.rate
            tone = (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
            self._emit(conn, ev.output_audio_delta(rid, iid, 0, 0, out.encode(Frame(tone, out.rate))))
            conn.sess.generated_ms[iid] = conn.sess.generated_ms.get(iid, 0.0) + ms
        if text:
            self._emit(conn, ev.output_audio_transcript_delta(rid, iid, 0, 0, text))

    # ------------------------------------------------------------------ connector
    async def connector(self, endpoint: Endpoint | None, timeouts: Timeouts | None, *,
                        max_message_bytes: int) -> _Conn:
        await asyncio.sleep(0.02)  # a connect takes a little time
        if self.refuse_next > 0:
            self.refuse_next -= 1
            raise ProviderError(f"upstream refused the connection: HTTP {self.refuse_status}",
                                retryable=self.refuse_status >= 500 or self.refuse_status == 429,
                                status=self.refuse_status, provider="realtime")
        loop = asyncio.get_running_loop()
        sess = FakeSession(len(self.sessions) + 1, loop.time())
        self.sessions.append(sess)
        conn = _Conn(self, sess)
        self._conn = conn
        self._tasks[conn] = set()
        self._vad[conn] = {"speaking": False, "start": 0.0, "quiet": 0.0, "item": None}
        if self.hang_next > 0:
            self.hang_next -= 1
            self._stalled.add(conn)
        self._emit(conn, self._ev(conn).session_created(rt.session_to_wire(
            rt.SessionConfig(), rt.Flavor.GA, session_id=f"sess_{sess.number}", model="fake")))
        if self.max_session_s is not None:
            self._spawn(conn, self._expire(conn, self.max_session_s))
        return conn

    # ------------------------------------------------------------------ plumbing
    def _ev(self, conn: _Conn) -> rt.ServerEvents:
        return rt.ServerEvents(rt.Flavor.GA, ids=self._ids)

    def _emit(self, conn: _Conn, event: dict[str, Any] | None) -> None:
        if event is None or conn.closed is not None or conn in self._stalled:
            return
        conn.inbox.put_nowait(json.dumps(event))

    def _spawn(self, conn: _Conn, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.setdefault(conn, set()).add(task)
        task.add_done_callback(lambda t: self._tasks.get(conn, set()).discard(t))
        return task

    def _spawn_response(self, conn: _Conn, instructions: str | None, *, out_of_band: bool = False) -> None:
        if any(not t.done() for t in self._responding.get(conn, set())):
            conn.sess.overlapping += 1
        task = self._spawn(conn, self._respond(conn, instructions, out_of_band=out_of_band))
        self._responding.setdefault(conn, set()).add(task)
        task.add_done_callback(lambda t: self._responding.get(conn, set()).discard(t))

    def stop_tasks(self, conn: _Conn) -> None:
        for t in self._tasks.pop(conn, set()):
            t.cancel()
        if self._conn is conn:
            self._conn = None

    async def _expire(self, conn: _Conn, after_s: float) -> None:
        await asyncio.sleep(after_s)
        self._emit(conn, self._ev(conn).error("Your session hit the maximum duration of "
                                              f"{after_s / 60:g} minutes.", code="session_expired"))
        await asyncio.sleep(0.01)
        conn.close_now(1000, "session expired")

    def _error(self, conn: _Conn, message: str, code: str, event_id: str | None, param: str | None = None) -> None:
        self._emit(conn, self._ev(conn).error(message, code=code, event_id=event_id, param=param))

    # ------------------------------------------------------------------ client events
    def on_client(self, conn: _Conn, e: dict[str, Any]) -> None:
        sess, ev, kind, eid = conn.sess, self._ev(conn), e.get("type"), e.get("event_id")
        logged = dict(e)
        if kind == "input_audio_buffer.append":
            logged["audio"] = f"<{len(e.get('audio') or '')} b64 chars>"
        sess.received.append(logged)
        if kind == "session.update":
            sess.session.update(e.get("session") or {})
            self._emit(conn, ev.session_updated({"type": "realtime", **sess.session}))
        elif kind == "input_audio_buffer.append":
            frame = self._format(sess, "input").decode(e["audio"])
            pcm = frame.samples
            ms = 1000.0 * len(pcm) / frame.rate
            self._vad_step(conn, pcm, ms)
            sess.audio_ms += ms
        elif kind == "input_audio_buffer.commit":
            self._commit(conn)
        elif kind == "input_audio_buffer.clear":
            self._emit(conn, ev.input_audio_buffer_cleared())
        elif kind == "conversation.item.create":
            item = dict(e["item"])
            item.setdefault("id", f"item_f{next(self._ids)}")
            if sess.item(item["id"]) is not None:
                self._error(conn, f"item {item['id']} already exists", "item_exists", eid)
                return
            if item.get("type") == "message" and any(p.get("type") == "input_audio" for p in item["content"]):
                item["content"] = [{"type": "input_audio", "transcript": self._transcript()}]
            prev = sess.items[-1]["id"] if sess.items else None
            sess.items.append(item)
            self._emit(conn, ev.conversation_item_added(item, prev))
            self._emit(conn, ev.conversation_item_done(item, prev))
        elif kind == "conversation.item.delete":
            found = sess.item(str(e.get("item_id")))
            if found is None:
                self._error(conn, "no such item", "item_not_found", eid)
            else:
                sess.items.remove(found)
                self._emit(conn, ev.conversation_item_deleted(found["id"]))
        elif kind == "conversation.item.retrieve":
            found = sess.item(e["item_id"])
            if found is None:
                self._error(conn, "no such item", "item_not_found", eid)
            else:
                self._emit(conn, ev.conversation_item_retrieved(found))
        elif kind == "conversation.item.truncate":
            self._truncate(conn, e)
        elif kind == "response.create":
            r = e.get("response") or {}
            missing = [i.get("id") for i in r.get("input") or [] if isinstance(i, dict)
                       and i.get("type") == "item_reference" and sess.item(str(i.get("id"))) is None]
            if missing:  # (nothing to read: refused, never answered)
                self._error(conn, f"item {missing[0]} does not exist", "item_not_found", eid, "response.input")
                return
            self._spawn_response(conn, r.get("instructions"), out_of_band=r.get("conversation") == "none")
        elif kind == "response.cancel":
            active = [t for t in self._responding.get(conn, set()) if not t.done()]
            if not active:
                self._error(conn, "no active response", "response_cancel_not_active", eid)
            for t in active:
                t.cancel()

    @staticmethod
    def _format(sess: FakeSession, direction: str) -> rt.AudioFormat:
        """The session's audio format (GA `audio.<direction>.format`; 24 kHz PCM by default)."""
        fmt = ((sess.session.get("audio") or {}).get(direction) or {}).get("format")
        return rt.parse_audio_format(fmt, param="format") if fmt else rt.PCM16_24K

    def _transcript(self) -> str:
        return self.transcripts.popleft() if self.transcripts else "(speech)"

    def _vad_step(self, conn: _Conn, pcm: np.ndarray, ms: float) -> None:
        td = ((conn.sess.session.get("audio") or {}).get("input") or {}).get("turn_detection")
        if not td:
            return
        v = self._vad[conn]
        loud = len(pcm) > 0 and float(np.sqrt(np.mean((pcm / 32768.0) ** 2))) > self.vad_threshold
        now_ms = conn.sess.audio_ms
        if loud and not v["speaking"]:
            v.update(speaking=True, start=now_ms, quiet=0.0, item=f"item_f{next(self._ids)}")
            self._emit(conn, self._ev(conn).input_audio_buffer_speech_started(int(now_ms), v["item"]))
        elif v["speaking"]:
            v["quiet"] = 0.0 if loud else v["quiet"] + ms
            if v["quiet"] >= self.silence_ms:
                v["speaking"] = False
                self._emit(conn, self._ev(conn).input_audio_buffer_speech_stopped(int(now_ms + ms), v["item"]))
                self._commit(conn, v["item"])
                if td.get("create_response", True):
                    self._spawn_response(conn, None)

    def _commit(self, conn: _Conn, item_id: str | None = None) -> None:
        sess, ev = conn.sess, self._ev(conn)
        iid = item_id or f"item_f{next(self._ids)}"
        prev = sess.items[-1]["id"] if sess.items else None
        item = {"id": iid, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        sess.items.append(item)
        self._emit(conn, ev.input_audio_buffer_committed(iid, prev))
        self._emit(conn, ev.conversation_item_added(item, prev))
        text = self._transcript()
        item["content"] = [{"type": "input_audio", "transcript": text}]
        if self.transcript_delay_s > 0:
            self._spawn(conn, self._late_transcript(conn, iid, text))
        else:
            self._emit(conn, ev.input_audio_transcription_completed(iid, 0, text, audio_seconds=1.0))

    async def _late_transcript(self, conn: _Conn, iid: str, text: str) -> None:
        await asyncio.sleep(self.transcript_delay_s)
        self._emit(conn, self._ev(conn).input_audio_transcription_completed(iid, 0, text, audio_seconds=1.0))

    def _truncate(self, conn: _Conn, e: dict[str, Any]) -> None:
        sess, iid, ms, eid = conn.sess, e.get("item_id"), int(e.get("audio_end_ms") or 0), e.get("event_id")
        if self.reject_truncates > 0:
            self.reject_truncates -= 1
            self._error(conn, "injected rejection", "invalid_value", eid, "audio_end_ms")
            return
        have = sess.generated_ms.get(str(iid))
        if have is None:
            self._error(conn, f"item {iid} has no audio", "invalid_value", eid, "item_id")
            return
        if ms > have:
            self._error(conn, f"Audio content of {int(have)}ms is already shorter than {ms}ms", "invalid_value", eid,
                         "audio_end_ms")
            return
        sess.generated_ms[str(iid)] = ms
        sess.truncates.append((str(iid), ms))
        self._emit(conn, self._ev(conn).conversation_item_truncated(str(iid), 0, ms))

    async def _respond(self, conn: _Conn, instructions: str | None, *, out_of_band: bool = False) -> None:
        sess, ev = conn.sess, self._ev(conn)
        sess.responses += 1
        rid, iid = f"resp_f{next(self._ids)}", f"item_f{next(self._ids)}"
        if self.ignore_responses > 0:
            self.ignore_responses -= 1
            return
        if self.scripts:
            await self.scripts.popleft()(self, conn, rid, iid)
            return
        if self.function_calls and not out_of_band:
            calls = self.function_calls.popleft()
            await self._call_tools(conn, rid, iid, calls if isinstance(calls, list) else [calls])
            return
        text = self.reply_text(sess) if instructions is None else self.reply_text(sess) + " [" + instructions + "]"
        self._emit(conn, ev.response_created(rt.response_object(rid, rt.Flavor.GA)))
        item = rt.message_item(iid, "assistant", [], rt.Flavor.GA, status="in_progress")
        prev = sess.items[-1]["id"] if sess.items else None
        if out_of_band:  # read only its own input, added nothing to the conversation
            sess.out_of_band.append(text)
        else:
            sess.items.append({**item, "content": [{"type": "output_audio", "transcript": text}]})
        sess.generated_ms[iid] = 0.0
        self._emit(conn, ev.response_output_item_added(rid, 0, item))
        if not out_of_band:
            self._emit(conn, ev.conversation_item_added(item, prev))
        self._emit(conn, ev.response_content_part_added(rid, iid, 0, 0, rt.event_part("audio")))
        words = text.split()
        n_chunks = max(1, self.reply_ms // self.chunk_ms)
        status: ResponseStatus = "completed"
        try:
            out = self._format(sess, "output")
            for k in range(n_chunks):
                t = np.arange(out.rate * self.chunk_ms // 1000) / out.rate
                tone = (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
                self._emit(conn, ev.output_audio_delta(rid, iid, 0, 0, out.encode(Frame(tone, out.rate))))
                sess.generated_ms[iid] += self.chunk_ms
                lo, hi = len(words) * k // n_chunks, len(words) * (k + 1) // n_chunks
                if hi > lo:
                    self._emit(conn, ev.output_audio_transcript_delta(rid, iid, 0, 0, " ".join(words[lo:hi]) + " "))
                await asyncio.sleep(self.chunk_ms / 1000)
        except asyncio.CancelledError:
            status = "cancelled"
        self._emit(conn, ev.output_audio_done(rid, iid, 0, 0))
        self._emit(conn, ev.output_audio_transcript_done(rid, iid, 0, 0, text))
        done = rt.message_item(iid, "assistant", [rt.ContentPart("output_audio", transcript=text)], rt.Flavor.GA,
                               status="completed" if status == "completed" else "incomplete")
        self._emit(conn, ev.response_output_item_done(rid, 0, done))
        usage = rt.Usage(input_text_tokens=10 * len(sess.items), input_audio_tokens=50, cached_text_tokens=8,
                         output_text_tokens=len(words), output_audio_tokens=self.reply_ms // 50)
        self._emit(conn, ev.response_done(rt.response_object(
            rid, rt.Flavor.GA, status=status, output=[done], usage=usage,
            status_details=rt.status_details(status) if status != "completed" else None)))


    async def _call_tools(self, conn: _Conn, rid: str, iid: str, calls: list[tuple[str, str]]) -> None:
        sess, ev = conn.sess, self._ev(conn)
        self._emit(conn, ev.response_created(rt.response_object(rid, rt.Flavor.GA)))
        await asyncio.sleep(0.05)
        items = []
        for n, (name, arguments) in enumerate(calls):
            call_id, item_id = f"call_f{next(self._ids)}", iid if n == 0 else f"item_f{next(self._ids)}"
            item = rt.function_call_item(item_id, call_id, name, arguments, rt.Flavor.GA)
            prev = sess.items[-1]["id"] if sess.items else None
            sess.items.append(item)
            items.append(item)
            self._emit(conn, ev.response_output_item_added(rid, n, {**item, "arguments": ""}))
            self._emit(conn, ev.conversation_item_added({**item, "arguments": ""}, prev))
            self._emit(conn, ev.function_call_arguments_done(rid, item_id, n, call_id, name, arguments))
            self._emit(conn, ev.response_output_item_done(rid, n, item))
        usage = rt.Usage(input_text_tokens=10 * len(sess.items), output_text_tokens=12)
        self._emit(conn, ev.response_done(rt.response_object(rid, rt.Flavor.GA, status="completed", output=items,
                                                             usage=usage)))


def _default_reply(sess: FakeSession) -> str:
    users = [t for r, t in sess.texts() if r == "user"]
    return f"Reply {sess.responses} in a conversation of {len(sess.items)} items; you said: {users[-1] if users else '-'}"


# --------------------------------------------------------------------------- over a real socket


async def serve_websocket(server: FakeRealtimeServer, host: str = "127.0.0.1", port: int = 0) -> Any:
    """Serve `server` as a WebSocket Realtime endpoint (any path, any key): a deterministic upstream
    for benchmarks, where the real upstream's own latency would drown what is measured. Returns the
    `websockets` server (`.sockets[0].getsockname()[1]` is the port; `close()` to stop)."""
    from websockets.asyncio.server import serve

    async def handle(ws: Any) -> None:
        conn = await server.connector(None, None, max_message_bytes=16 * 1024 * 1024)

        async def downstream() -> None:
            while True:
                await ws.send(await conn.recv())

        pump = asyncio.get_running_loop().create_task(downstream())
        try:
            async for msg in ws:
                await conn.send(msg if isinstance(msg, str) else msg.decode())
        except Exception:  # noqa: BLE001 - the client went away
            pass
        finally:
            conn.abort()
            pump.cancel()

    return await serve(handle, host, port, max_size=None)


def main() -> None:  # python -m moksori.testing.fake_realtime --port 8765
    import argparse

    ap = argparse.ArgumentParser(description="A scripted Realtime (GA) server on loopback: replies with a tone.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--reply-ms", type=int, default=1500)
    ap.add_argument("--silence-ms", type=int, default=500)
    args = ap.parse_args()

    async def run() -> None:
        srv = await serve_websocket(FakeRealtimeServer(reply_ms=args.reply_ms, silence_ms=args.silence_ms),
                                    args.host, args.port)
        print(f"fake realtime server on ws://{args.host}:{args.port}/v1/realtime", flush=True)
        await srv.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
