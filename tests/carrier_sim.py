"""A simulated phone carrier: the far end of a media-stream WebSocket, the way Twilio (and Telnyx,
Plivo, Vonage) drive it during a call.

* Caller audio leaves as one 20 ms message every 20 ms, at real-time pace, for the whole call
  (silence between utterances, as a phone line does), μ-law 8 kHz (or L16 16 kHz for Vonage).
* Agent audio is "played" on a model of the carrier's buffer: each chunk starts when it arrives
  or when the previous one ends, whichever is later. A mark is echoed when everything queued
  before it has finished playing; a clear drops what has not played yet and (like Twilio) sends
  back the marks that were still queued.
* Everything is recorded with `time.monotonic()` stamps, so a test can ask when the first reply
  audio arrived after the end of the caller's speech.

    async with CarrierSim.connect(url, dialect=TWILIO, call_id="CA1", params={"token": tok}) as call:
        await call.start()
        await call.wait_audio(timeout=5)              # the greeting
        t_end = await call.speak(frame_8k)            # returns when the last frame was sent
        first = await call.wait_audio(after=t_end)    # first reply media after that
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import websockets

from moksori.audio.frames import Frame
from moksori.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

FRAME_S = 0.02

# --------------------------------------------------------------------------- dialects
# Each carrier's own message shapes, written out here from the carriers' docs (independently of
# the server's codecs, so the two check each other).


class Dialect:
    name = "?"
    rate = 8000
    encoding = "pcmu"

    def __init__(self, call_id: str, stream_id: str, params: dict[str, str]) -> None:
        self.call_id, self.stream_id, self.params = call_id, stream_id, params
        self.seq = 0

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    def audio_bytes(self, pcm: np.ndarray) -> bytes:
        if self.encoding == "pcmu":
            return ulaw_encode(pcm)
        if self.encoding == "pcma":
            return alaw_encode(pcm)
        return pcm.astype("<i2").tobytes()

    def pcm(self, data: bytes) -> np.ndarray:
        if self.encoding == "pcmu":
            return ulaw_decode(data)
        if self.encoding == "pcma":
            return alaw_decode(data)
        return np.frombuffer(data, dtype="<i2").astype(np.int16)

    # inbound (carrier -> server)
    def opening(self) -> list[str | bytes]: ...
    def media(self, pcm: np.ndarray, chunk: int, ts_ms: int) -> str | bytes: ...
    def dtmf(self, digit: str) -> str: ...
    def mark_echo(self, name: str) -> str: ...
    def stop(self) -> str | None: ...

    # outbound (server -> carrier): ("media", pcm) | ("mark", name) | ("clear", None) | ("other", obj)
    def parse(self, message: str | bytes) -> tuple[str, Any]: ...


class Twilio(Dialect):
    name = "twilio"

    def opening(self) -> list[str | bytes]:
        return [
            json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
            json.dumps({"event": "start", "sequenceNumber": self._next(), "streamSid": self.stream_id, "start": {
                "accountSid": "AC00000000000000000000000000000000", "streamSid": self.stream_id,
                "callSid": self.call_id, "tracks": ["inbound"], "customParameters": self.params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}),
        ]

    def media(self, pcm: np.ndarray, chunk: int, ts_ms: int) -> str:
        payload = base64.b64encode(self.audio_bytes(pcm)).decode()
        return json.dumps({"event": "media", "sequenceNumber": self._next(), "streamSid": self.stream_id,
                           "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(ts_ms),
                                     "payload": payload}})

    def dtmf(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "streamSid": self.stream_id, "sequenceNumber": self._next(),
                           "dtmf": {"track": "inbound_track", "digit": digit}})

    def mark_echo(self, name: str) -> str:
        return json.dumps({"event": "mark", "sequenceNumber": self._next(), "streamSid": self.stream_id,
                           "mark": {"name": name}})

    def stop(self) -> str:
        return json.dumps({"event": "stop", "sequenceNumber": self._next(), "streamSid": self.stream_id,
                           "stop": {"accountSid": "AC00000000000000000000000000000000", "callSid": self.call_id}})

    def parse(self, message: str | bytes) -> tuple[str, Any]:
        obj = json.loads(message)
        assert obj.get("streamSid") == self.stream_id, f"twilio messages carry the streamSid: {obj}"
        ev = obj["event"]
        if ev == "media":
            return "media", self.pcm(base64.b64decode(obj["media"]["payload"]))
        if ev == "mark":
            return "mark", obj["mark"]["name"]
        if ev == "clear":
            return "clear", None
        return "other", obj


class Telnyx(Dialect):
    name = "telnyx"

    def opening(self) -> list[str | bytes]:
        return [
            json.dumps({"event": "connected", "version": "1.0.0"}),
            json.dumps({"event": "start", "sequence_number": self._next(), "stream_id": self.stream_id, "start": {
                "user_id": "3e6f995f-85f7-4705-9741-53b116d28237", "call_control_id": self.call_id,
                "call_session_id": "ff55a038-6f2d-11ef-9692-02420aef00b4", "from": "+15557654321", "to": "+15551112222",
                "custom_parameters": self.params,
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}),
        ]

    def media(self, pcm: np.ndarray, chunk: int, ts_ms: int) -> str:
        payload = base64.b64encode(self.audio_bytes(pcm)).decode()
        return json.dumps({"event": "media", "sequence_number": self._next(), "stream_id": self.stream_id,
                           "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(ts_ms),
                                     "payload": payload}})

    def dtmf(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "stream_id": self.stream_id, "sequence_number": self._next(),
                           "dtmf": {"digit": digit}})

    def mark_echo(self, name: str) -> str:
        return json.dumps({"event": "mark", "sequence_number": self._next(), "stream_id": self.stream_id,
                           "mark": {"name": name}})

    def stop(self) -> str:
        return json.dumps({"event": "stop", "sequence_number": self._next(), "stream_id": self.stream_id,
                           "stop": {"call_control_id": self.call_id}})

    def parse(self, message: str | bytes) -> tuple[str, Any]:
        obj = json.loads(message)
        ev = obj["event"]
        if ev == "media":
            return "media", self.pcm(base64.b64decode(obj["media"]["payload"]))
        if ev == "mark":
            return "mark", obj["mark"]["name"]
        if ev == "clear":
            return "clear", None
        return "other", obj


class Plivo(Dialect):
    name = "plivo"

    def opening(self) -> list[str | bytes]:
        headers = ";".join(f"{k}={v}" for k, v in self.params.items())
        return [json.dumps({"event": "start", "sequenceNumber": 0, "start": {
            "callId": self.call_id, "streamId": self.stream_id, "accountId": "MA000000000000000000",
            "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
            "extra_headers": headers})]

    def media(self, pcm: np.ndarray, chunk: int, ts_ms: int) -> str:
        payload = base64.b64encode(self.audio_bytes(pcm)).decode()
        return json.dumps({"event": "media", "sequenceNumber": int(self._next()), "streamId": self.stream_id,
                           "media": {"track": "inbound", "timestamp": str(ts_ms), "chunk": chunk, "payload": payload}})

    def dtmf(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "sequenceNumber": int(self._next()), "streamId": self.stream_id,
                           "dtmf": {"track": "inbound", "digit": digit}})

    def mark_echo(self, name: str) -> str:
        return json.dumps({"event": "playedStream", "sequenceNumber": int(self._next()), "streamId": self.stream_id,
                           "name": name})

    def stop(self) -> None:
        return None  # Plivo has no stop message: the socket closes

    def parse(self, message: str | bytes) -> tuple[str, Any]:
        obj = json.loads(message)
        ev = obj["event"]
        if ev == "playAudio":
            media = obj["media"]
            assert media["contentType"] == "audio/x-mulaw" and media["sampleRate"] == 8000, media
            return "media", self.pcm(base64.b64decode(media["payload"]))
        if ev == "checkpoint":
            assert obj["streamId"] == self.stream_id
            return "mark", obj["name"]
        if ev == "clearAudio":
            assert obj["streamId"] == self.stream_id
            return "clear", None
        return "other", obj


class Vonage(Dialect):
    name = "vonage"
    rate = 16000
    encoding = "l16"

    def opening(self) -> list[str | bytes]:
        return [json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                            "call_uuid": self.call_id, **self.params})]

    def media(self, pcm: np.ndarray, chunk: int, ts_ms: int) -> bytes:
        return self.audio_bytes(pcm)

    def dtmf(self, digit: str) -> str:
        return json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 260})

    def mark_echo(self, name: str) -> str:
        return json.dumps({"event": "websocket:notify", "payload": {"name": name}})

    def stop(self) -> None:
        return None

    def parse(self, message: str | bytes) -> tuple[str, Any]:
        if isinstance(message, bytes):
            assert len(message) == 640, f"vonage audio comes in 20 ms messages of 640 bytes, got {len(message)}"
            return "media", self.pcm(message)
        obj = json.loads(message)
        if obj.get("action") == "notify":
            return "mark", obj["payload"]["name"]
        if obj.get("action") == "clear":
            return "clear", None
        return "other", obj


DIALECTS: dict[str, type[Dialect]] = {"twilio": Twilio, "telnyx": Telnyx, "plivo": Plivo, "vonage": Vonage}

# --------------------------------------------------------------------------- the simulated call


@dataclass
class Chunk:
    arrived: float
    start: float  # when it starts playing
    samples: np.ndarray
    played: int  # samples actually played (less than all if a clear cut it)


@dataclass
class CarrierSim:
    ws: Any
    dialect: Dialect
    echo_marks_on_clear: bool = True
    chunks: list[Chunk] = field(default_factory=list)
    marks_sent: list[tuple[float, str]] = field(default_factory=list)  # (when echoed, name)
    clears: list[float] = field(default_factory=list)
    others: list[tuple[float, Any]] = field(default_factory=list)
    closed_at: float | None = None
    close_code: int | None = None
    started_at: float | None = None
    _play_end: float = 0.0
    _pending_marks: list[tuple[float, str, asyncio.TimerHandle]] = field(default_factory=list)
    _talk: asyncio.Queue = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _audio_event: asyncio.Event = field(default_factory=asyncio.Event)
    _chunk_no: int = 0
    _t0: float = 0.0

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, *, dialect: str = "twilio", call_id: str = "CA0123456789abcdef0123456789abcdef",
                      stream_id: str = "MZ0123456789abcdef0123456789abcdef", params: dict[str, str] | None = None,
                      **kw: Any):
        d = DIALECTS[dialect](call_id, stream_id, dict(params or {}))
        ws = await websockets.connect(url, max_size=2**22, open_timeout=10)
        sim = cls(ws, d, **kw)
        sim._tasks.append(asyncio.create_task(sim._reader()))
        try:
            yield sim
        finally:
            await sim.hang_up(send_stop=False)

    @property
    def rate(self) -> int:
        return self.dialect.rate

    async def start(self, *, stream: bool = True) -> None:
        for m in self.dialect.opening():
            await self.ws.send(m)
        self.started_at = time.monotonic()
        if stream:
            self._tasks.append(asyncio.create_task(self._pace()))

    async def send_raw(self, message: str | bytes) -> None:
        await self.ws.send(message)

    async def hang_up(self, *, send_stop: bool = True) -> None:
        """The caller hangs up: `stop` (where the carrier has one), then the socket closes."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for _, _, h in self._pending_marks:
            h.cancel()
        self._pending_marks.clear()
        if send_stop and self.closed_at is None:
            stop = self.dialect.stop()
            if stop is not None:
                with contextlib.suppress(Exception):
                    await self.ws.send(stop)
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def drop(self) -> None:
        """The line drops: no `stop`, no WebSocket close handshake, the TCP connection just ends."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for _, _, h in self._pending_marks:
            h.cancel()
        self._pending_marks.clear()
        self.ws.transport.abort()

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close the socket; returns the close code."""
        deadline = time.monotonic() + timeout
        while self.closed_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.close_code if self.closed_at is not None else None

    # ----------------------------------------------------------------- caller audio

    async def _pace(self) -> None:
        """One frame every 20 ms for the whole call: speech when queued, else silence."""
        n = int(self.rate * FRAME_S)
        current: tuple[np.ndarray, asyncio.Future, list[float]] | None = None
        pos = 0
        self._t0 = time.monotonic()
        k = 0
        while True:
            if current is None and not self._talk.empty():
                current, pos = self._talk.get_nowait(), 0
            if current is not None:
                audio, done, stamps = current
                frame = audio[pos:pos + n]
                if len(frame) < n:
                    frame = np.concatenate([frame, np.zeros(n - len(frame), dtype=np.int16)])
                pos += n
            else:
                frame = np.zeros(n, dtype=np.int16)
            k += 1
            target = self._t0 + k * FRAME_S
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._chunk_no += 1
            try:
                await self.ws.send(self.dialect.media(frame, self._chunk_no, int(1000 * k * FRAME_S)))
            except websockets.ConnectionClosed:
                if current is not None and not current[1].done():
                    current[1].set_result(None)
                return
            now = time.monotonic()
            if current is not None:
                current[2].append(now)
                if pos >= len(current[0]):
                    current[1].set_result(None)
                    current = None

    async def speak(self, audio: Frame) -> list[float]:
        """Queue caller audio; returns once its last frame has been sent, with the send time of
        each of its 20 ms frames (frame i holds samples [i*20 ms, (i+1)*20 ms))."""
        assert audio.rate == self.rate, f"{self.dialect.name} streams {self.rate} Hz audio"
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        stamps: list[float] = []
        await self._talk.put((audio.samples.astype(np.int16), done, stamps))
        await done
        return stamps

    async def dtmf(self, digit: str) -> None:
        await self.ws.send(self.dialect.dtmf(digit))

    # ----------------------------------------------------------------- agent audio

    async def _reader(self) -> None:
        try:
            async for message in self.ws:
                now = time.monotonic()
                kind, value = self.dialect.parse(message)
                if kind == "media":
                    start = max(now, self._play_end)
                    self._play_end = start + len(value) / self.rate
                    self.chunks.append(Chunk(now, start, value, len(value)))
                    self._audio_event.set()
                elif kind == "mark":
                    delay = max(0.0, self._play_end - now)
                    handle = asyncio.get_running_loop().call_later(delay, self._echo_mark, value)
                    self._pending_marks.append((self._play_end, value, handle))
                elif kind == "clear":
                    self._clear(now)
                else:
                    self.others.append((now, value))
        except websockets.ConnectionClosed as e:
            self.close_code = e.rcvd.code if e.rcvd is not None else 1006
        else:
            self.close_code = self.ws.close_code
        self.closed_at = time.monotonic()  # (not when the reader is cancelled: we hang up then)
        self._audio_event.set()

    def _echo_mark(self, name: str) -> None:
        self._pending_marks = [p for p in self._pending_marks if p[1] != name]
        self.marks_sent.append((time.monotonic(), name))
        asyncio.ensure_future(self._send_quiet(self.dialect.mark_echo(name)))

    async def _send_quiet(self, message: str | bytes) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send(message)

    def _clear(self, now: float) -> None:
        self.clears.append(now)
        for c in self.chunks:
            if c.start >= now:
                c.played = 0
            elif c.start + len(c.samples) / self.rate > now:
                c.played = int((now - c.start) * self.rate)
        self._play_end = now
        pending, self._pending_marks = self._pending_marks, []
        for _, name, handle in pending:
            handle.cancel()
            if self.echo_marks_on_clear:
                self.marks_sent.append((now, name))
                asyncio.ensure_future(self._send_quiet(self.dialect.mark_echo(name)))

    async def wait_audio(self, *, after: float | None = None, timeout: float = 10.0) -> float:
        """Arrival time of the first agent audio that arrived after `after` (default: any)."""
        after = -1.0 if after is None else after
        deadline = time.monotonic() + timeout
        while True:
            for c in self.chunks:
                if c.arrived > after:
                    return c.arrived
            if self.closed_at is not None:
                raise ConnectionError(f"the server closed the stream (code {self.close_code})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no agent audio within {timeout} s")
            self._audio_event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._audio_event.wait(), min(left, 0.5))

    async def wait_quiet(self, *, quiet_s: float = 0.8, timeout: float = 30.0) -> float:
        """Wait until the agent has finished playing and sent nothing for `quiet_s`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            last = max([c.arrived for c in self.chunks] + [0.0])
            if now - last >= quiet_s and now >= self._play_end:
                return now
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the agent was still talking after {timeout} s")

    def audio_between(self, t0: float, t1: float = float("inf")) -> float:
        """Seconds of agent audio that arrived in [t0, t1)."""
        return sum(len(c.samples) for c in self.chunks if t0 <= c.arrived < t1) / self.rate

    def heard_seconds(self) -> float:
        return sum(c.played for c in self.chunks) / self.rate


# --------------------------------------------------------------------------- a fake carrier REST API


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True)

    def json(self) -> Any:
        return json.loads(self.body)


@contextlib.contextmanager
def recording_api() -> Iterator[tuple[str, list[Recorded]]]:
    """A local HTTP server that answers 200 {} to everything and records each request."""
    requests: list[Recorded] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            requests.append(Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            out = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
