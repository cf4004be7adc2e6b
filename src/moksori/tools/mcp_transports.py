"""Bounded transports for the MCP client: what an MCP server sends is capped before it is parsed.

* HTTP: `CappedHTTPTransport`, an httpx2 transport under the SDK's `streamable_http_client`,
  counts the bytes of every non-SSE response body (after decompression) and aborts it past
  `max_bytes` with `MessageTooLarge`, an `httpx2.StreamError`, which the SDK turns into a JSON-RPC
  parse error for that one request (the connection stays). SSE events are bounded by the SDK's
  own per-event limit (`max_sse_event_size`, set to the same number).
* stdio: `capped_stdio_client`, a copy of the SDK's `stdio_client` loop with the SDK's own process
  start and shutdown (close stdin, 2 s, kill the tree), and then an end to what the server left
  running (`mcp_process.ProcessFamily`: its process group and the descendants it had, also in
  sessions of their own: SIGTERM, 2 s, SIGKILL), reading stdout as bytes, a line at a time,
  never more than `max_bytes` of one line in memory (the rest of an oversized line is skipped and
  the request it answers gets an error); lines that are not JSON-RPC are logged in one short line
  and dropped. The child's stderr goes through a pipe into our log, `mcp <name>: <line>`,
  rate-limited (`StderrLog`), never to our own stderr.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx2

from moksori.tools.mcp_process import ProcessFamily

log = logging.getLogger("moksori.tools.mcp_client")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# JSON objects in one message: validating them is what stalls the loop (~30 us each for content
# blocks), not the bytes. An object here is `{` then a key: inside a JSON string a `"` is always
# escaped, so this never counts braces in text.
MAX_MESSAGE_OBJECTS = 50_000
_OBJECT = re.compile(rb'\{\s*"')
TOO_LARGE_CODE = -32001  # our own JSON-RPC error code for "a message over the limit"
BAD_MESSAGE_CODE = -32700  # parse error


def mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def too_large_text(server: str, max_bytes: int) -> str:
    return f"the MCP server {server} sent a message larger than {mib(max_bytes)}"


def too_many_text(server: str, max_objects: int = MAX_MESSAGE_OBJECTS) -> str:
    return f"the MCP server {server} sent a message with more than {max_objects} JSON objects"


class MessageTooLarge(httpx2.StreamError):
    """A response body went over the limit (a StreamError: the SDK answers the request with it)."""


# ------------------------------------------------------------------------------------- HTTP


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, encoding: str, max_bytes: int, message: str,
                 too_many: str) -> None:
        from httpx2._decoders import SUPPORTED_DECODERS, IdentityDecoder, MultiDecoder

        self._inner = inner
        self._max = max_bytes
        self._message = message
        self._too_many = too_many
        codings = [c.strip() for c in encoding.lower().split(",") if c.strip() and c.strip() != "identity"]
        if not codings:
            self._decoder: Any = IdentityDecoder()
        elif len(codings) == 1 and codings[0] in SUPPORTED_DECODERS:
            self._decoder = SUPPORTED_DECODERS[codings[0]]()
        else:
            self._decoder = MultiDecoder(codings)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = objects = 0
        async for raw in self._inner:
            for chunk in [*self._decoder.decode(raw)] if raw else ():
                seen += len(chunk)
                objects += len(_OBJECT.findall(chunk))
                if seen > self._max:
                    raise MessageTooLarge(self._message)
                if objects > MAX_MESSAGE_OBJECTS:
                    raise MessageTooLarge(self._too_many)
                yield chunk
        for chunk in self._decoder.flush():
            seen += len(chunk)
            if seen > self._max:
                raise MessageTooLarge(self._message)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class CappedHTTPTransport(httpx2.AsyncBaseTransport):
    """Every non-SSE response body is cut off past `max_bytes` (decoded here, counted decoded)."""

    def __init__(self, server: str, max_bytes: int = MAX_MESSAGE_BYTES,
                 inner: httpx2.AsyncBaseTransport | None = None) -> None:
        self._inner = inner if inner is not None else httpx2.AsyncHTTPTransport()
        self._max = max_bytes
        self._message = too_large_text(server, max_bytes)
        self._too_many = too_many_text(server)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        ctype = response.headers.get("content-type", "").lower()
        if ctype.startswith("text/event-stream"):
            return response  # bounded per event by the SDK (max_sse_event_size)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max and "content-encoding" not in response.headers:
            await response.stream.aclose()
            raise_now = self._message

            class _Refused(httpx2.AsyncByteStream):
                async def __aiter__(self) -> AsyncIterator[bytes]:
                    raise MessageTooLarge(raise_now)
                    yield b""  # pragma: no cover

            stream: httpx2.AsyncByteStream = _Refused()
        else:
            stream = _CappedStream(response.stream, response.headers.get("content-encoding", ""), self._max,
                                   self._message, self._too_many)
        headers = [(k, v) for k, v in response.headers.raw
                   if k.lower() not in (b"content-encoding", b"content-length")]
        return httpx2.Response(response.status_code, headers=headers, stream=stream,
                               extensions=response.extensions)

    async def __aenter__(self) -> CappedHTTPTransport:
        await self._inner.__aenter__()
        return self

    async def aclose(self) -> None:
        await self._inner.aclose()


class _OneLine(logging.Filter):
    """The SDK logs a parse failure with `logger.exception` (a pydantic dump and a traceback): one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = " ".join(str(exc).split())
            if isinstance(exc, MessageTooLarge):
                detail = text
            else:
                detail = f"{type(exc).__name__}: {text[:200]}"
            record.msg = f"{record.getMessage()}: {detail}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_sdk_logs() -> None:
    """Install the one-line filter on the SDK's transport loggers (idempotent)."""
    for name in ("mcp.client.streamable_http", "mcp.client.stdio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in logger.filters):
            logger.addFilter(_OneLine())


# ------------------------------------------------------------------------------------- stderr


class StderrLog:
    """A child's stderr into our log: `mcp <name>: <line>`, lines cut to `max_chars`, at most
    `burst` lines per `window_s`; the rest counted and reported once per window."""

    def __init__(self, name: str, *, burst: int = 20, window_s: float = 10.0, max_chars: int = 500,
                 level: int = logging.INFO) -> None:
        self.name = name
        self.burst = burst
        self.window_s = window_s
        self.max_chars = max_chars
        self.level = level
        self._window_start = time.monotonic()
        self._logged = 0
        self._dropped = 0
        self._dropped_bytes = 0
        self._partial = bytearray()
        self._partial_cut = False

    def _roll(self) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            self.flush_counts()
            self._window_start = now
            self._logged = 0

    def flush_counts(self) -> None:
        if self._dropped:
            log.warning("mcp %s: %d more stderr lines (%d bytes) not logged", self.name, self._dropped,
                        self._dropped_bytes)
            self._dropped = self._dropped_bytes = 0

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        text = "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in text[: self.max_chars])
        if text.strip():
            log.log(self.level, "mcp %s: %s", self.name, text)

    def feed(self, chunk: bytes) -> None:
        self._roll()
        if self._logged >= self.burst:  # flooding: count only, no splitting
            self._dropped += chunk.count(b"\n")
            self._dropped_bytes += len(chunk)
            self._partial.clear()
            return
        lines = chunk.split(b"\n")
        tail = lines.pop()
        for piece in lines:
            if len(self._partial) < self.max_chars * 4:
                self._partial += piece[: self.max_chars * 4]
            line = bytes(self._partial)
            self._partial.clear()
            if self._logged < self.burst:
                self._logged += 1
                self._emit(line)
            else:
                self._dropped += 1
                self._dropped_bytes += len(piece)
        if len(self._partial) < self.max_chars * 4:
            self._partial += tail[: self.max_chars * 4]

    def close(self) -> None:
        if self._partial and self._logged < self.burst:
            self._emit(bytes(self._partial))
        self._partial.clear()
        self.flush_counts()


# ------------------------------------------------------------------------------------- stdio

_ID_RE = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"((?:[^"\\]|\\.){0,200})")')


def _guess_id(head: bytes) -> int | str | None:
    m = _ID_RE.search(head)
    if not m:
        return None
    if m.group(2) is not None:
        return m.group(2).decode("utf-8", "replace")
    return int(m.group(1))


async def _lines(stdout: Any, max_bytes: int) -> AsyncIterator[tuple[bytes, bool]]:
    """Lines of a byte stream, never holding more than `max_bytes` of one: (line, False), or
    (its first 4 KiB, True) for a longer one, whose rest is skipped."""
    buf = bytearray()
    skipping = False
    while True:
        try:
            chunk = await stdout.receive(65536)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            return
        start = 0
        while start <= len(chunk):
            nl = chunk.find(b"\n", start)
            if not skipping:
                buf += chunk[start:] if nl < 0 else chunk[start:nl]
                if len(buf) > max_bytes:
                    head, buf = bytes(buf[:4096]), bytearray()
                    skipping = True
                    yield head, True
            if nl < 0:
                break
            start = nl + 1
            if skipping:
                skipping = False
                continue
            line, buf = bytes(buf), bytearray()
            yield line, False


@asynccontextmanager
async def capped_stdio_client(server: Any, *, name: str, max_bytes: int = MAX_MESSAGE_BYTES
                              ) -> AsyncGenerator[Any, None]:
    """`mcp.client.stdio.stdio_client` with a line cap, tolerant stdout parsing and stderr in our log."""
    import mcp_types as types
    from mcp.client import stdio as sdk
    from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
    from mcp.shared.message import SessionMessage

    command = await sdk._get_executable_command(server.command)  # noqa: SLF001 - pinned SDK
    process = await anyio.open_process(
        [command, *server.args], env=sdk.get_default_environment() | (server.env or {}),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=server.cwd,
        start_new_session=True)
    read_stream_writer, read_stream = anyio.create_memory_object_stream[Any](0)
    write_stream, write_stream_reader = anyio.create_memory_object_stream[Any](0)
    writer_done = anyio.Event()
    pending: dict[Any, None] = {}  # ids of our requests not answered yet
    notes = StderrLog(name, burst=10, window_s=10.0, max_chars=200, level=logging.WARNING)
    too_large = too_large_text(name, max_bytes)

    async def answer(head: bytes, code: int, message: str) -> bool:
        """Fail the request an unreadable line was meant to answer; False if it cannot be told."""
        if b'"method"' in head:
            return True  # a request or notification from the server: dropping it is enough
        guess = _guess_id(head)
        rid = guess if guess in pending else (next(iter(pending)) if len(pending) == 1 else None)
        if rid is None:
            return False
        pending.pop(rid, None)
        err = types.JSONRPCError(jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message))
        await read_stream_writer.send(SessionMessage(err))
        return True

    async def deliver(line: bytes) -> bool:
        if not line.strip():
            return True
        if len(_OBJECT.findall(line)) > MAX_MESSAGE_OBJECTS:
            log.warning("%s; skipped", too_many_text(name))
            if not await answer(line[:4096], TOO_LARGE_CODE, too_many_text(name)):
                return False
            return True
        try:
            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        except ValueError:
            notes.feed(b"stdout line is not JSON-RPC, dropped: " + line[:120] + b"\n")
            if b'"id"' in line[:4096]:
                return await answer(line[:4096], BAD_MESSAGE_CODE,
                                    f"the MCP server {name} sent a message that is not valid JSON-RPC") or True
            return True
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            pending.pop(message.id, None)
        await read_stream_writer.send(SessionMessage(message))
        return True

    async def stdout_reader() -> None:
        assert process.stdout
        try:
            async with read_stream_writer:  # closed before the drain: pending requests see the end
                async for line, oversized in _lines(process.stdout, max_bytes):
                    if oversized:
                        log.warning("%s; skipped", too_large)
                        ok = await answer(line, TOO_LARGE_CODE, too_large)
                    else:
                        ok = await deliver(line)
                    if not ok:
                        return  # cannot tell whom it answers: end the connection
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            await sdk._drain_stdout(process)  # noqa: SLF001 - a child blocked on stdout can then exit

    async def stderr_reader() -> None:
        assert process.stderr
        errlog = StderrLog(name)
        try:
            while True:
                errlog.feed(await process.stderr.receive(65536))
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            errlog.close()

    async def stdin_writer() -> None:
        assert process.stdin
        try:
            async with write_stream_reader:
                async for session_message in write_stream_reader:
                    msg = session_message.message
                    if isinstance(msg, types.JSONRPCRequest):
                        pending[msg.id] = None
                    elif isinstance(msg, types.JSONRPCNotification) and msg.method == "notifications/cancelled":
                        pending.pop(cancelled_request_id_from_params(msg.params), None)
                    data = msg.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await process.stdin.send(data.encode(server.encoding, server.encoding_error_handler))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await read_stream_writer.aclose()
        finally:
            writer_done.set()

    async def shutdown() -> None:
        # who the server started, taken while they are still its own: once it exits, its
        # children are init's, and one in a session of its own cannot be found any more
        family = await anyio.to_thread.run_sync(ProcessFamily.of, process.pid, name)
        read_stream.close()
        write_stream.close()
        with anyio.move_on_after(0.5):
            await writer_done.wait()
        try:  # close stdin, 2 s, then SIGTERM / SIGKILL to the group, but only if the server is still there
            await sdk._stop_server_process(process)  # noqa: SLF001 - pinned SDK
        finally:
            await family.end()  # what it left: SIGTERM, 2 s, SIGKILL
        assert process.stderr
        with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stderr.aclose()
        for s in (read_stream, write_stream, read_stream_writer, write_stream_reader):
            await s.aclose()
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stdout_reader)
        tg.start_soon(stdin_writer)
        tg.start_soon(stderr_reader)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):
                await shutdown()
            tg.cancel_scope.cancel()
    notes.close()
