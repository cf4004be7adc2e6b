"""Driving a session with audio the way a microphone would, and looking at what came out.

    result = await play_into_session(session, [speech, silence, speech2], chunk_ms=20)
    result.events, result.of(AgentInterrupted), result.reply_audio()
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import numpy as np

from moksori.audio.frames import Frame
from moksori.engine.events import AgentAudio, AgentAudioCleared, Event
from moksori.engine.session import Session

E = TypeVar("E", bound=Event)


@dataclass
class Recording:
    """Everything a session published, plus its audio placed on the session clock."""

    rate: int
    events: list[Event] = field(default_factory=list)
    _audio: list[tuple[tuple[float, float], np.ndarray]] = field(default_factory=list)
    _cleared_at: list[float] = field(default_factory=list)

    def __call__(self, ev: Event) -> None:
        match ev:
            case AgentAudio(frame=frame, play_at=play_at):
                self._audio.append(((ev.t, play_at), frame.samples))
            case AgentAudioCleared():
                self._cleared_at.append(ev.t)
        if ev.timeline:
            self.events.append(ev)

    @overload
    def of(self, kind: type[E]) -> list[E]: ...
    @overload
    def of(self, kind: str) -> list[Event]: ...

    def of(self, kind: type[Event] | str) -> list[Any]:
        """The timeline events of one kind: a class of `moksori.engine.events`, or its wire name."""
        if isinstance(kind, str):
            return [e for e in self.events if e.type == kind]
        return [e for e in self.events if isinstance(e, kind)]

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def reply_audio(self, *, min_seconds: float = 0.0) -> Frame:
        """The agent's audio as the listener heard it, on the session clock: silence where
        nothing played, playback cut where a clear (barge-in) flushed it."""
        end = max([min_seconds] + [p + len(a) / self.rate for (_, p), a in self._audio])
        out = np.zeros(int(round(end * self.rate)) + 1, dtype=np.int32)
        clears = sorted(self._cleared_at)
        for (sent, play_at), a in self._audio:
            cut = next((c for c in clears if sent <= c), None)  # the first clear after it was sent
            n = len(a) if cut is None else max(0, min(len(a), int(round((cut - play_at) * self.rate))))
            i = int(round(play_at * self.rate))
            seg = a[:n][: max(0, len(out) - i)]
            out[i:i + len(seg)] += seg.astype(np.int32)
        return Frame(np.clip(out, -32768, 32767).astype(np.int16)[:-1], self.rate)


async def play_into_session(session: Session, audio: Frame | list[Frame], *, chunk_ms: int = 20,
                            tail_s: float = 0.0, recording: Recording | None = None) -> Recording:
    """Feed audio at real-time pace on the session clock (virtual or real), then `tail_s` of silence."""
    rec = recording or Recording(session.cfg.output_rate)
    if recording is None:
        session.bus.listen(rec)
    frames = audio if isinstance(audio, list) else [audio]
    rate = frames[0].rate
    samples = np.concatenate([f.samples for f in frames] + [np.zeros(int(tail_s * rate), dtype=np.int16)])
    step = max(1, rate * chunk_ms // 1000)
    t0 = session.clock.now()
    for i in range(0, len(samples), step):
        session.push_audio(Frame(samples[i:i + step], rate))
        target = t0 + (i + step) / rate
        await session.clock.sleep(target - session.clock.now())
    return rec


async def settle(session: Session, seconds: float = 5.0) -> None:
    """Let in-flight work finish (bounded)."""
    try:
        await session.wait_idle(timeout=seconds)
    except asyncio.TimeoutError:
        pass
