"""A small incremental Server-Sent Events decoder (the `text/event-stream` format).

Bytes go in as they arrive from the network; complete events come out. It follows the
WHATWG event-stream rules that matter to API clients:

* lines end in LF, CRLF or a lone CR, and a CRLF may be split across two network reads;
* a line starting with ``:`` is a comment (servers use them as keep-alive pings);
* ``field: value`` loses exactly one space after the colon; several ``data`` lines of one
  event are joined with ``\\n``;
* a blank line ends an event; an event without any ``data`` line is dropped.

One deliberate leniency: data still pending when the stream ends is delivered as a last event
(some servers omit the final blank line after ``data: [DONE]``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """The byte stream is not a usable event stream (e.g. a line too long to be real)."""


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Feed bytes with `feed()`, call `close()` at end of stream; both return finished events."""

    def __init__(self, *, max_pending_bytes: int = 4 * 1024 * 1024) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._last_id: str | None = None
        self._started = False
        self._max = max_pending_bytes
        self._pending = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else bytes(chunk)
        if not self._started and buf:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf
                return []
            if buf.startswith(_BOM):
                buf = buf[len(_BOM):]
            self._started = True
        out: list[SSEEvent] = []
        start = 0
        n = len(buf)
        while True:
            m = _EOL.search(buf, start)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == n:
                break  # may be the first half of a CRLF: wait for the next read
            self._line(buf[start:m.start()], out)
            start = m.end()
        self._buf = buf[start:]
        if len(self._buf) + self._pending > self._max:
            raise SSEError(f"event stream line longer than {self._max} bytes")
        return out

    def close(self) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        buf, self._buf = self._buf, b""
        if buf.endswith(b"\r"):
            buf = buf[:-1]
        if buf:
            self._line(buf, out)
        self._dispatch(out)
        return out

    # ------------------------------------------------------------------ internals

    def _line(self, raw: bytes, out: list[SSEEvent]) -> None:
        if not raw:
            self._dispatch(out)
            return
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._pending += len(raw)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._id = value
        # "retry" and unknown fields carry nothing an API client needs

    def _dispatch(self, out: list[SSEEvent]) -> None:
        if self._id is not None:
            self._last_id = self._id
        if self._data:
            out.append(SSEEvent(data="\n".join(self._data), event=self._event or "message", id=self._last_id))
        self._data = []
        self._event = ""
        self._id = None
        self._pending = 0


async def aiter_sse(chunks: AsyncIterable[bytes], **kwargs: int) -> AsyncGenerator[SSEEvent, None]:
    """Events from an async stream of byte chunks."""
    decoder = SSEDecoder(**kwargs)
    async for chunk in chunks:
        for ev in decoder.feed(chunk):
            yield ev
    for ev in decoder.close():
        yield ev
