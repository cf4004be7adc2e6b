"""Reply audio to the carrier, and what the caller has heard of it.

* reply audio -> `PlayAudio` per 20 ms chunk, and a `SetMark` every `MARK_EVERY_MS` and at the end
  of each reply. When the carrier echoes a mark, that audio has been heard: `ack_playback` pins
  what the engine keeps of an interrupted reply to it;
* barge-in -> drop the audio and marks still queued here, then `ClearAudio`, first in line;
* one `Outbox` (`moksori.transport`) sends it all, in order; the first audio sent is timed
  (`call.first_audio`).

What was sent and heard per reply (`sent`, `heard`, `marks_in_flight`) is what the call-control
tools wait on before they hang up or transfer; how long the carrier has confirmed nothing it was
sent (`unconfirmed_s`) tells a carrier that stopped reading from one that hung up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from moksori.audio.frames import Frame
from moksori.engine import events as E
from moksori.engine.session import Session
from moksori.errors import ProtocolError
from moksori.protocols.telephony import ClearAudio, PlayAudio, SetMark, TelephonyCodec, WireMessage
from moksori.transport import Outbox, StopReason

__all__ = ["MARK_EVERY_MS", "MAX_PENDING_MARKS", "CarrierPlayout", "Outgoing"]

log = logging.getLogger("moksori.telephony")

MARK_EVERY_MS = 100  # a mark per 5 chunks of 20 ms: what was heard is known to within 100 ms
MAX_PENDING_MARKS = 4096

Outgoing = tuple[str, str | None, WireMessage]  # (kind: audio, mark or clear; response id; wire message)


class CarrierPlayout:
    """One call's outbound media, from the session's first reply to the end of the call."""

    def __init__(self, codec: TelephonyCodec, send: Callable[[WireMessage], Awaitable[None]], *, carrier: str,
                 rate: int, session: Session, started_at: float, ended: asyncio.Event,
                 on_heard: Callable[[], None], on_send_failed: Callable[[], None]) -> None:
        self.codec = codec
        self.carrier = carrier
        self.rate = rate
        self._send = send
        self._session = session
        self._started_at = started_at
        self._ended = ended
        self._on_heard = on_heard  # a mark came back (the call-control tools wait for it)
        self._on_send_failed = on_send_failed
        # marks: name -> (response id, samples played once the carrier reaches it)
        self._marks: dict[str, tuple[str, int]] = {}
        self._mark_seq = 0
        self._last_mark: dict[str, int] = {}  # response id -> samples covered by its latest mark
        self._sent: dict[str, int] = {}  # response id -> samples sent to the carrier
        self.acked: dict[str, int] = {}  # response id -> samples confirmed heard
        self.first_audio_at: float | None = None  # loop time of the first media sent
        # loop time since which the carrier has been sent a mark (or a clear it acknowledges) and
        # answered none, and of the send in progress (a carrier that stops reading leaves both growing)
        self._unechoed_since: float | None = None
        self._sending_since: float | None = None
        self._outbox: Outbox[Outgoing] = Outbox(self._deliver, name=f"{carrier}-call-send", on_stop=self._stopped)

    # ------------------------------------------------------------------ what the tools ask

    def sent(self, response_id: str) -> int:
        """Samples of this reply sent to the carrier so far."""
        return self._sent.get(response_id, 0)

    def heard(self, response_id: str) -> int:
        """Samples of this reply the carrier confirmed played (by marks)."""
        return self.acked.get(response_id, 0)

    def marks_in_flight(self, response_id: str) -> bool:
        return any(r == response_id for r, _ in self._marks.values())

    def unconfirmed_s(self, now: float) -> float:
        """Seconds the carrier has confirmed none of what it was sent: since the first mark (or
        clear) it has not answered (nor any after it), or since a send began that has not
        finished. 0 when all is confirmed (a carrier reaches a mark ~OUTPUT_LEAD_MS after it is
        sent, and answers a clear at once: Twilio and Telnyx by echoing the marks it dropped)."""
        since = [t for t in (self._unechoed_since, self._sending_since) if t is not None]
        return max(0.0, now - min(since)) if since else 0.0

    # ------------------------------------------------------------------ engine -> carrier

    def audio(self, response_id: str, frame: Frame, offset: int) -> None:
        end = offset + len(frame)
        self._queue("audio", response_id, PlayAudio(frame))
        self._sent[response_id] = end
        every = self.rate * MARK_EVERY_MS // 1000
        if end - self._last_mark.get(response_id, 0) >= every:
            self._mark(response_id, end)

    def audio_done(self, response_id: str) -> None:
        if self._sent.get(response_id, 0) > self._last_mark.get(response_id, 0):
            self._mark(response_id, self._sent[response_id])

    def clear(self, response_ids: set[str]) -> None:
        # urgent: whatever is still queued here never reaches the carrier, and the clear goes first
        self._outbox.drop(lambda item: item[0] in ("audio", "mark"))
        self._marks = {k: v for k, v in self._marks.items() if v[0] not in response_ids}
        self._queue("clear", None, ClearAudio(), front=True)

    def forget(self, response_id: str) -> None:
        """The reply is done: a late echo of its marks changes nothing."""
        for table in (self._last_mark, self._sent, self.acked):
            table.pop(response_id, None)

    # ------------------------------------------------------------------ carrier -> us

    def on_clear_ack(self) -> None:
        self._unechoed_since = None  # the carrier reads what it is sent

    def on_mark(self, name: str) -> None:
        self._unechoed_since = None  # the carrier reads what it is sent
        entry = self._marks.pop(name, None)
        if entry is None:
            return  # not ours, a repeat, or audio that a clear already dropped
        rid, samples = entry
        if rid in self._sent:  # still playing (a late echo of a finished reply changes nothing)
            self.acked[rid] = max(self.acked.get(rid, 0), samples)
            self._session.ack_playback(rid, round(1000 * samples / self.rate))
            self._on_heard()

    async def close(self) -> None:
        await self._outbox.close()  # what is still queued is dropped
        self._marks.clear()

    # ------------------------------------------------------------------ inside

    def _mark(self, rid: str, samples: int) -> None:
        self._mark_seq += 1
        name = f"m{self._mark_seq}"
        self._marks[name] = (rid, samples)
        self._last_mark[rid] = samples
        if len(self._marks) > MAX_PENDING_MARKS:  # a carrier that never echoes: forget the oldest
            self._marks.pop(next(iter(self._marks)))
        self._queue("mark", rid, SetMark(name))

    def _queue(self, kind: str, rid: str | None, command: Any, *, front: bool = False) -> None:
        if self._ended.is_set() or self.codec.started is None:
            return
        try:
            wires = self.codec.encode(command)
        except (ProtocolError, ValueError) as e:
            log.warning("%s call: cannot encode %s: %s", self.carrier, type(command).__name__, e)
            return
        items = [(kind, rid, w) for w in wires]
        for item in reversed(items) if front else items:
            self._outbox.put(item, urgent=front)

    async def _deliver(self, item: Outgoing) -> None:
        """The outbox's send: one wire message to the carrier (the first audio is timed)."""
        kind, _, wire = item
        now = asyncio.get_running_loop().time()
        if kind == "audio" and self.first_audio_at is None:
            self.first_audio_at = now
            session = self._session
            session.publish(E.CallFirstAudio(t=session.clock.now(), after_start_ms=round(
                1000 * (self.first_audio_at - self._started_at))))
        self._sending_since = now
        await self._send(wire)
        self._sending_since = None
        if self._unechoed_since is None and (kind == "mark" or (kind == "clear" and self.codec.acks_clear)):
            self._unechoed_since = now

    def _stopped(self, reason: StopReason) -> None:
        if reason == "send_failed":  # the socket is gone: the call is over
            log.info("%s call: send failed: ending the call", self.carrier)
            self._on_send_failed()
