"""Paced audio output, and knowing what the listener has actually heard.

Reply audio leaves the engine in small chunks at real-time pace, at most `lead_ms` ahead of
the listener, so a barge-in never has seconds of audio queued at the client. The speaker keeps
a model of the listener's playback (each chunk starts playing when it arrives or when the
previous one ends, whichever is later), which gives "samples heard" at any moment. Transports
that can confirm playback (Twilio marks) override the model with acknowledgements.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from moksori.audio.frames import Frame
from moksori.engine import events as E
from moksori.engine.clock import Clock

log = logging.getLogger("moksori.speaker")


@dataclass(frozen=True)
class PartMark:
    """A place in a reply's audio where a new message item starts (`engine/reply_parts.py`):
    the audio after it is `item_id`'s; `said()` is called once everything before it was sent."""

    item_id: str
    said: Callable[[], None] | None = None

    def tell(self) -> None:
        """Call `said` (a transport's: its failure is logged, never the speaker's)."""
        if self.said is None:
            return
        try:
            self.said()
        except Exception:  # the speaker goes on whatever a transport does
            log.exception("reply part %s: the transport failed on its end", self.item_id)


@dataclass
class Playback:
    """One response's audio on its way out."""

    response_id: str
    item_id: str
    rate: int
    queue: asyncio.Queue[Frame | PartMark | None] = field(default_factory=asyncio.Queue)
    segments: list[tuple[str, int]] = field(default_factory=list)  # (clause text, samples)
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (playout start, samples)
    sent: int = 0
    acked: int | None = None  # samples confirmed played by the transport
    started_at: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    stopped_at: float | None = None  # when the speaker stopped it: nothing is heard after that
    # a backchannel ("mm-hmm" in the user's pause): plays through the hold and does not make the
    # agent audible (the user talking over it is not a barge-in, the turn goes on)
    side: bool = False
    part_item_id: str | None = None  # the message item the audio being sent is in (None: `item_id`)

    def add(self, frame: Frame, text: str, *, more: bool = False) -> None:
        """Queue a clause's audio (already at the output rate); `more`: the next piece of the
        clause added last (a TTS that streams a clause in pieces), counted as one segment."""
        if more and self.segments:
            last, n = self.segments[-1]
            self.segments[-1] = (last, n + len(frame))
        else:
            self.segments.append((text, len(frame)))
        self.queue.put_nowait(frame)

    def end(self) -> None:
        self.queue.put_nowait(None)

    def mark(self, item_id: str, said: Callable[[], None] | None = None) -> None:
        """The audio queued from now on is message item `item_id`'s; `said()` once the audio
        queued so far has all been sent (never, if the playback is stopped first)."""
        self.queue.put_nowait(PartMark(item_id, said))

    def played(self, now: float) -> int:
        total = 0
        for start, n in self.chunks:
            if now <= start:
                break
            total += min(n, int(round((now - start) * self.rate)))
        return total

    @property
    def play_end(self) -> float:
        """When the listener finishes hearing what was sent so far."""
        if not self.chunks:
            return 0.0
        start, n = self.chunks[-1]
        return start + n / self.rate

    def stop_hearing(self, at: float) -> None:
        """Nothing played after `at` counts as heard (the listener was gone by then)."""
        self.stopped_at = at if self.stopped_at is None else min(self.stopped_at, at)

    def heard(self, now: float) -> int:
        if self.acked is not None:
            return self.acked
        return self.played(now if self.stopped_at is None else min(now, self.stopped_at))

    @property
    def generated(self) -> int:
        return sum(n for _, n in self.segments)


Publish = Callable[[E.Event], None]


class Speaker:
    def __init__(self, clock: Clock, publish: Publish, *, rate: int, chunk_ms: int = 40, lead_ms: int = 200,
                 on_audible: Callable[[bool], None] | None = None) -> None:
        self.clock = clock
        self.publish = publish
        self.rate = rate
        self.chunk = max(1, rate * chunk_ms // 1000)
        self.lead = lead_ms / 1000
        self.on_audible = on_audible or (lambda _: None)
        self._order: deque[Playback] = deque()
        self._wake = asyncio.Event()
        self.current: Playback | None = None
        self._playout_end = 0.0
        self._audible = False
        self._task: asyncio.Task[None] | None = None
        self._quiet_task: asyncio.Task[None] | None = None
        self._hold = False

    # -------------------------------------------------------------- control

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="speaker")

    async def close(self) -> None:
        for t in (self._task, self._quiet_task):
            if t:
                t.cancel()
        for t in (self._task, self._quiet_task):
            if t:
                try:
                    await t
                except asyncio.CancelledError:
                    pass
        self._task = None

    def enqueue(self, pb: Playback) -> None:
        self._order.append(pb)
        self._wake.set()

    def interrupt(self) -> list[tuple[Playback, int]]:
        """Stop now: drop everything queued. Returns [(playback, samples heard)]."""
        now = self.clock.now()
        victims = ([self.current] if self.current else []) + list(self._order)
        self._order.clear()
        out = [self._stop(pb, now) for pb in victims]
        self.current = None
        self._playout_end = now
        if victims:
            self.publish(E.AgentAudioCleared(t=now, response_ids=tuple(pb.response_id for pb, _ in out)))
        self._wake.set()
        self._set_audible(False)
        return out

    def cancel(self, response_id: str) -> tuple[Playback, int] | None:
        """Stop one reply's audio, playing or queued; the other replies keep their place."""
        now = self.clock.now()
        if self.current is not None and self.current.response_id == response_id:
            pb = self.current
            self.current = None
            self._playout_end = now
            cut = self._stop(pb, now)
            self.publish(E.AgentAudioCleared(t=now, response_ids=(response_id,)))
            self._wake.set()
            self._set_audible(False)
            return cut
        for pb in self._order:
            if pb.response_id == response_id:
                self._order.remove(pb)
                return self._stop(pb, now)
        return None

    @staticmethod
    def _stop(pb: Playback, now: float) -> tuple[Playback, int]:
        pb.cancelled = True
        pb.stopped_at = now if pb.stopped_at is None else pb.stopped_at
        pb.finished.set()
        pb.queue.put_nowait(None)  # the player may be waiting for this reply's next clause
        return pb, min(pb.heard(now), pb.sent)

    def listener_lost(self, at: float) -> None:
        """The listener was last known to be there at `at` (session time): of the replies playing
        or queued, nothing after it counts as heard."""
        for pb in ([self.current] if self.current else []) + list(self._order):
            pb.stop_hearing(at)

    def ack(self, response_id: str, samples: int) -> None:
        for pb in ([self.current] if self.current else []) + list(self._order):
            if pb.response_id == response_id:
                pb.acked = max(pb.acked or 0, samples)

    @property
    def hold(self) -> bool:
        """While held, no reply starts being heard (one already audible continues)."""
        return self._hold

    @hold.setter
    def hold(self, value: bool) -> None:
        self._hold = value
        self._wake.set()

    @property
    def playout_end(self) -> float:
        """When the listener will have heard everything sent so far (session time)."""
        return self._playout_end

    @property
    def audible(self) -> bool:
        return self._audible

    def busy(self) -> bool:
        return self.current is not None or bool(self._order)

    # -------------------------------------------------------------- loop

    def _set_audible(self, value: bool) -> None:
        if value != self._audible:
            self._audible = value
            self.on_audible(value)

    async def _run(self) -> None:
        while True:
            while not self._order or (self._hold and not self._order[0].side):
                self._wake.clear()
                await self._wake.wait()
            pb = self._order.popleft()
            self.current = pb
            try:
                await self._play(pb)
            finally:
                if self.current is pb:
                    self.current = None
                pb.finished.set()
            if not self._order and not pb.cancelled and not pb.side:
                self._schedule_quiet()

    def _schedule_quiet(self) -> None:
        if self._quiet_task and not self._quiet_task.done():
            self._quiet_task.cancel()

        async def quiet() -> None:
            await self.clock.sleep(self._playout_end - self.clock.now())
            if self.current is None and not self._order:
                self._set_audible(False)

        self._quiet_task = asyncio.create_task(quiet(), name="speaker-quiet")

    async def _wait_unheld(self, pb: Playback) -> None:
        while self._hold and not pb.cancelled:
            self._wake.clear()
            await self._wake.wait()

    async def _play(self, pb: Playback) -> None:
        offset = 0
        while True:
            frame = await pb.queue.get()
            if frame is None or pb.cancelled:
                break
            if isinstance(frame, PartMark):  # the message item before it has all gone out
                pb.part_item_id = frame.item_id
                frame.tell()
                continue
            samples = frame.samples
            for i in range(0, len(samples), self.chunk):
                if pb.cancelled:
                    return
                if pb.started_at is None and self._hold and not pb.side:
                    await self._wait_unheld(pb)  # a reply nobody has heard yet never starts over the user
                    if pb.cancelled:
                        return
                piece = samples[i:i + self.chunk]
                now = self.clock.now()
                wait = self._playout_end - self.lead - now
                if wait > 0:
                    await self.clock.sleep(wait)
                    if pb.cancelled:
                        return
                    now = self.clock.now()
                start = max(now, self._playout_end)
                self._playout_end = start + len(piece) / self.rate
                pb.chunks.append((start, len(piece)))
                if pb.started_at is None:
                    pb.started_at = now
                    if not pb.side:
                        self._set_audible(True)
                    self.publish(E.AgentAudioStarted(t=now, response_id=pb.response_id, item_id=pb.item_id))
                self.publish(E.AgentAudio(t=now, response_id=pb.response_id, item_id=pb.part_item_id or pb.item_id,
                                          frame=Frame(np.ascontiguousarray(piece), self.rate),
                                          offset=offset, play_at=start))
                offset += len(piece)
                pb.sent = offset
        if not pb.cancelled:
            self.publish(E.AgentAudioDone(t=self.clock.now(), response_id=pb.response_id, item_id=pb.item_id,
                                          samples=pb.sent))
