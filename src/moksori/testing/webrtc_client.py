"""An aiortc client of the Realtime API over WebRTC, doing what a browser does.

* a microphone track that streams given PCM (48 kHz mono) in 20 ms frames at real time, then
  silence (a browser's mic track never stops sending);
* the `oai-events` data channel, created before the offer;
* the offer posted with the official `openai` SDK (`client.realtime.calls.create`), with an
  ephemeral key or a real one; or posted raw (`post_offer`) for the error paths;
* the reply audio recorded from the remote track with the arrival time of every frame.

Only loopback ICE candidates are offered (`moksori.server.webrtc.ice.offering`), so nothing
leaves the machine. Run as a module (`python -m moksori.testing.webrtc_client URL KEY`), it
connects, streams silence and waits to be killed: the "peer that vanishes without closing" test.

Shipped in `moksori.testing` so you can test your own agent over WebRTC the same way.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import sys
import time
from collections import deque
from typing import Any, cast

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from moksori.server.webrtc.ice import offering

RATE = 48000
FRAME = 960  # 20 ms
LOOPBACK = ["127.0.0.1"]


class MicTrack(MediaStreamTrack):
    """Queued PCM at real-time pace, silence in between."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[np.ndarray] = deque()
        self._head = 0
        self._t0: float | None = None
        self._pts = 0
        self.speech_started_at: list[float] = []  # when each queued clip's first frame left
        self.speech_ended_at: list[float] = []  # when its last frame left
        self._new_clip = False

    def say(self, pcm48: np.ndarray) -> None:
        self._queue.append(np.asarray(pcm48, dtype=np.int16))
        self._new_clip = True

    @property
    def idle(self) -> bool:
        return not self._queue

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        else:
            self._pts += FRAME
            wait = self._t0 + self._pts / RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
        out = np.zeros(FRAME, dtype=np.int16)
        filled = 0
        while filled < FRAME and self._queue:
            clip = self._queue[0]
            if self._head == 0:
                self.speech_started_at.append(time.monotonic())
            n = min(FRAME - filled, len(clip) - self._head)
            out[filled:filled + n] = clip[self._head:self._head + n]
            filled += n
            self._head += n
            if self._head >= len(clip):
                self._queue.popleft()
                self._head = 0
                self.speech_ended_at.append(time.monotonic())
        frame = AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


class RtcClient:
    def __init__(self, *, codecs: list[str] | None = None, config: RTCConfiguration | None = None) -> None:
        """`codecs`: offer only these audio codecs, e.g. ["PCMU"] (default: aiortc's, Opus first).
        `config`: the peer's ICE servers and policy (default: none, host candidates only)."""
        self.pc = RTCPeerConnection(config or RTCConfiguration(iceServers=[]))
        self.mic = MicTrack()
        self.pc.addTrack(self.mic)
        if codecs:
            from aiortc import RTCRtpSender

            wanted = {c.lower() for c in codecs}
            self.pc.getTransceivers()[0].setCodecPreferences(
                [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.split("/")[1].lower() in wanted])
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[dict[str, Any]] = []
        self.event_times: list[float] = []
        self._arrived = asyncio.Condition()
        self.opened = asyncio.Event()
        self.frames: list[tuple[float, np.ndarray]] = []  # (arrival, mono int16 at 48 kHz)
        self.codec_rate: int | None = None
        self.call_id: str | None = None
        self._tasks: list[asyncio.Task] = []
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    # ------------------------------------------------------------------ signalling

    async def offer(self) -> str:
        with offering(LOOPBACK):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def connect_sdk(self, base_url: str, key: str, session: dict[str, Any] | None = None) -> None:
        """Post the offer with `openai`'s `client.realtime.calls.create`, as documented."""
        from openai import AsyncOpenAI

        client = AsyncOpenAI(api_key=key, base_url=base_url + "/v1", max_retries=0)
        sdp = await self.offer()
        kwargs: dict[str, Any] = {"sdp": sdp}
        if session is not None:
            kwargs["session"] = session
        raw = await client.realtime.calls.with_raw_response.create(**kwargs)
        assert raw.http_response.status_code == 201, raw.http_response.status_code
        location = raw.headers.get("location", "")
        self.call_id = location.rsplit("/", 1)[-1] or None
        await self.accept(raw.http_response.text)
        await client.close()

    # ------------------------------------------------------------------ events

    def _on_message(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except (TypeError, ValueError):
            event = {"type": "<not json>", "raw": message}
        self.events.append(event)
        self.event_times.append(time.monotonic())

        async def wake() -> None:
            async with self._arrived:
                self._arrived.notify_all()

        asyncio.ensure_future(wake())

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    async def wait_event(self, typ: str, *, timeout: float = 20.0, after: int = 0, pred: Any = lambda e: True) -> dict:
        """The first event of type `typ` (matching `pred`) at index >= `after`."""
        deadline = time.monotonic() + timeout
        async with self._arrived:
            while True:
                for e in self.events[after:]:
                    if e.get("type") == typ and pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e.get("type") for e in self.events[-25:]]
                    raise AssertionError(f"no {typ} within {timeout:g} s; last events: {seen}")
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    pass

    def types(self) -> list[str]:
        return [e.get("type", "") for e in self.events]

    def time_of(self, event: dict) -> float:
        return self.event_times[self.events.index(event)]

    # ------------------------------------------------------------------ reply audio

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def read() -> None:
            while True:
                try:
                    frame = cast(AudioFrame, await track.recv())  # the reply track is audio
                except MediaStreamError:
                    return
                self.codec_rate = frame.sample_rate
                pcm = frame.to_ndarray().reshape(-1)
                channels = len(frame.layout.channels)
                if channels > 1:
                    pcm = (pcm.reshape(-1, channels).astype(np.int32).sum(axis=1) // channels).astype(np.int16)
                self.frames.append((time.monotonic(), pcm))

        self._tasks.append(asyncio.ensure_future(read()))

    def received(self, since: float = 0.0) -> np.ndarray:
        parts = [pcm for t, pcm in self.frames if t >= since]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def first_loud_frame(self, since: float, *, rms: float = 300.0) -> float | None:
        """Arrival time of the first received frame louder than `rms` after `since`."""
        for t, pcm in self.frames:
            if t >= since and len(pcm) and float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > rms:
                return t
        return None

    def last_loud_frame(self, *, rms: float = 300.0) -> float | None:
        for t, pcm in reversed(self.frames):
            if len(pcm) and float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > rms:
                return t
        return None

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()


async def one_offer() -> str:
    """A fresh client's offer, the client closed: SDP to post, or to spoil, as a test needs."""
    client = RtcClient()
    try:
        return await client.offer()
    finally:
        await client.close()


async def _vanish_main(url: str, key: str) -> None:
    client = RtcClient()
    await client.connect_sdk(url, key)
    await asyncio.wait_for(client.opened.wait(), 20)
    while len(client.frames) < 25:  # media flows both ways (0.5 s), as in a real call
        await asyncio.sleep(0.05)
    print(json.dumps({"call_id": client.call_id}), flush=True)
    await asyncio.sleep(3600)  # killed by the test (SIGKILL): no DTLS alert, no SCTP abort, nothing


if __name__ == "__main__":
    asyncio.run(_vanish_main(sys.argv[1], sys.argv[2]))
