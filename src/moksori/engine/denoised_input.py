"""Noise suppression in a session's input path: caller audio -> denoiser -> the session.

`NoiseReduction` is the session's switch (`noise_reduction`: off | near_field | far_field): it
asks the `AgentKit` for the packaged denoiser, puts a `DenoisedInput` in front of the session's
input (or takes it out) when the mode changes, and says so on the timeline
(`session.noise_reduction`), or gives the session a `session.warning` when it cannot.

`DenoisedInput.push` is synchronous (transports call `Session.push_audio` from their read loops); the model
runs in the model thread pool, never on the event loop, so frames go through a queue and one
task per session, in order. Each input rate gets its own stream (its own model state), made
on the first frame at that rate; frames wait in the queue meanwhile (~0.3 s, once).

A rate the model does not take, or a stream that fails, does not lose audio: the frames go on
as they came and the session gets one `session.warning`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from moksori.audio.frames import Frame
from moksori.engine import events as E
from moksori.engine.clock import Clock
from moksori.errors import MoksoriError
from moksori.providers.base import Denoiser, DenoiseStream

if TYPE_CHECKING:
    from moksori.agent_kit import AgentKit

__all__ = ["DenoisedInput", "NoiseReduction", "NoiseReductionHost"]

log = logging.getLogger(__name__)
session_log = logging.getLogger("moksori.session")

MAX_QUEUED = 500  # frames (~10 s of 20 ms chunks) before the oldest are passed through raw


class DenoisedInput:
    def __init__(self, denoiser: Denoiser, deliver: Callable[[Frame], None], warn: Callable[[str], None]) -> None:
        self.denoiser = denoiser
        self._deliver = deliver
        self._warn = warn
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._streams: dict[int, DenoiseStream | None] = {}
        self._task: asyncio.Task[None] | None = None
        self.frames_denoised = 0
        self._pending = 0  # pushed, not yet delivered

    def push(self, frame: Frame) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="denoise-input")
        if self._queue.qsize() >= MAX_QUEUED:  # the model falls behind: never let latency grow without bound
            stale = self._queue.get_nowait()
            if stale is not None:
                self._pending -= 1
                self._deliver(stale)
        self._pending += 1
        self._queue.put_nowait(frame)

    async def _stream(self, rate: int) -> DenoiseStream | None:
        if rate not in self._streams:
            try:
                if rate not in self.denoiser.caps.input_rates:
                    raise MoksoriError(f"noise reduction takes {self.denoiser.caps.input_rates} Hz audio, not {rate}")
                self._streams[rate] = await self.denoiser.stream(rate)
            except MoksoriError as e:
                self._streams[rate] = None
                self._warn(f"noise reduction is unavailable for {rate} Hz input: {e}; audio is used as it is")
        return self._streams[rate]

    async def _run(self) -> None:
        while True:
            frame = await self._queue.get()
            if frame is None:
                return
            try:
                await self._one(frame)
            finally:
                self._pending -= 1

    async def _one(self, frame: Frame) -> None:
        stream = await self._stream(frame.rate)
        if stream is None:
            self._deliver(frame)
            return
        try:
            out = await stream.process(frame.samples.astype(np.float32) / 32768.0)
        except MoksoriError as e:
            self._streams[frame.rate] = None
            stream.close()
            self._warn(f"noise reduction failed: {e}; audio is used as it is")
            self._deliver(frame)
            return
        self.frames_denoised += 1
        self._deliver(Frame.from_float(out, frame.rate))

    async def drain(self) -> None:
        """Wait until every frame pushed so far has been delivered (tests, end of input)."""
        while self._pending > 0:
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for s in self._streams.values():
            if s is not None:
                s.close()
        self._streams.clear()


class NoiseReductionHost(Protocol):
    """What the switch needs of its session (`SessionContext` is one)."""

    id: str
    kit: AgentKit | None
    clock: Clock

    def publish(self, ev: E.Event) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...


class NoiseReduction:
    """A session's noise-reduction switch. `push(frame)` takes the frame when a denoiser is in
    the path (it reaches `deliver` later, cleaned) and returns False when audio goes on as it is."""

    def __init__(self, host: NoiseReductionHost, deliver: Callable[[Frame], None]) -> None:
        self._host = host
        self._deliver = deliver
        self.mode = "off"  # the mode asked for last (even when it could not be had)
        self.input: DenoisedInput | None = None  # in the path now

    def set(self, mode: str) -> None:
        """`noise_reduction` (off | near_field | far_field): the packaged denoiser goes in (or
        out of) the input path, or the session gets a `session.warning` saying why it cannot."""
        if mode == self.mode:
            return
        host = self._host
        old, self.input, self.mode = self.input, None, mode
        if old is not None:
            host.spawn(old.close(), "denoise-close")
        if mode == "off":
            if old is not None:
                host.publish(E.SessionNoiseReduction(t=host.clock.now(), mode="off"))
            return
        kit = host.kit
        if kit is None:
            self._warn(f"noise reduction {mode} is not available in this session; audio is used as it is")
            return
        denoiser, warning = kit.denoiser(mode)
        if denoiser is None:
            self._warn(warning or f"noise reduction {mode} is unavailable")
            return
        self.input = DenoisedInput(denoiser, self._deliver, self._warn)
        host.publish(E.SessionNoiseReduction(t=host.clock.now(), mode=mode, model=denoiser.name,
                                             delay_ms=round(denoiser.caps.delay_ms, 1)))

    def push(self, frame: Frame) -> bool:
        if self.input is None:
            return False
        self.input.push(frame)
        return True

    async def drain(self) -> None:
        """Wait until audio pushed so far has gone through the denoiser (a no-op without one)."""
        if self.input is not None:
            await self.input.drain()

    async def close(self) -> None:
        if self.input is not None:
            await self.input.close()

    def _warn(self, message: str) -> None:
        host = self._host
        session_log.warning("session %s: %s", host.id, message)
        host.publish(E.SessionWarning(t=host.clock.now(), code="noise_reduction_unavailable", message=message))
