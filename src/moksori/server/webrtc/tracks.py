"""Audio on the media tracks.

Inbound: whatever the negotiated codec decodes to (Opus: 48 kHz stereo; PCMU/PCMA: 8 kHz mono)
becomes mono 16-bit frames at the decoder's rate; the session resamples them once, to 16 kHz.

Outbound: `OutboundAudio` is both the aiortc track the sender reads from and the connection's
`AudioSink`. The engine's speaker hands it reply audio (48 kHz, a lead ahead of real time); the
track sends 20 ms frames at real-time pace from its own clock (silence when it has nothing), so
what it holds is all that is not yet sent, and `clear()` drops it at once on barge-in. It knows
when a response's audio starts leaving, when it has all left, and when it was cut, and says so
(`output_audio_buffer.started|stopped|cleared`); it also tells the session how much of each
response has been sent, which is what the listener can have heard.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame
from av.packet import Packet

from moksori.audio.frames import Frame
from moksori.audio.resample import resample

RATE = 48000
FRAME_SAMPLES = RATE // 50  # 20 ms, Opus's packet time in WebRTC
TIME_BASE = fractions.Fraction(1, RATE)
ACK_EVERY = 5  # frames (100 ms) between "sent so far" reports
RESYNC_S = 0.2  # a stalled loop does not burst more than this much audio to catch up
FLUSH_FRAMES = 2  # silent frames still encoded after audio, to empty the encoder's lookahead

Notify = Callable[[str, str], None]  # (event: started|stopped|cleared, response_id)
Played = Callable[[str, int], None]  # (response_id, ms sent)


def to_mono_pcm(frame: AudioFrame) -> Frame:
    """A decoded frame (packed s16, any channel count) as mono PCM16 at its own rate."""
    if frame.format.name != "s16":
        raise ValueError(f"unexpected decoded sample format {frame.format.name}")
    x = cast(npt.NDArray[np.int16], frame.to_ndarray()).reshape(-1)  # s16, checked above
    channels = len(frame.layout.channels)
    if channels == 2:  # Opus decodes to stereo: average the pair (cheaper than a strided reduce)
        x = ((x[0::2].astype(np.int32) + x[1::2]) >> 1).astype(np.int16)
    elif channels > 2:
        x = (x.reshape(-1, channels).astype(np.int32).sum(axis=1) // channels).astype(np.int16)
    return Frame(np.ascontiguousarray(x, dtype=np.int16), frame.sample_rate)


async def pump_inbound(track: MediaStreamTrack, on_frame: Callable[[Frame], None]) -> None:
    """Read the peer's audio until the track ends."""
    while True:
        try:
            decoded = await track.recv()
        except MediaStreamError:
            return
        if isinstance(decoded, AudioFrame):
            on_frame(to_mono_pcm(decoded))


class OutboundAudio(MediaStreamTrack):
    kind = "audio"
    rate = RATE

    def __init__(self, notify: Notify | None = None, played: Played | None = None) -> None:
        super().__init__()
        self.notify: Notify = notify or (lambda _e, _r: None)
        self.played: Played = played or (lambda _r, _ms: None)
        self._chunks: deque[tuple[str, np.ndarray]] = deque()  # (response id, samples), FIFO
        self._head = 0  # samples of the first chunk already sent
        self.buffered = 0  # samples waiting
        self._playing: str | None = None  # response whose audio is leaving now
        self._ended: set[str] = set()  # responses that will get no more audio
        self._sent: dict[str, int] = {}
        self._t0: float | None = None
        self._pts = 0
        self._frames = 0
        self.frames_sent = 0
        self.speech_frames_sent = 0
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._quiet = 0  # silent frames in a row
        # Set by the call once Opus is negotiated: while there is nothing to play, this packet
        # goes out as is (no encoder, no level computation): idle calls cost much less CPU.
        self.silence_packet: bytes | None = None
        self.clock: Callable[[], float] = time.monotonic

    # ------------------------------------------------------------------ AudioSink

    def play(self, response_id: str, item_id: str, frame: Frame) -> None:
        samples = frame.samples if frame.rate == RATE else resample(frame, RATE).samples
        if len(samples):
            self._chunks.append((response_id, samples))
            self.buffered += len(samples)
            self._ended.discard(response_id)

    def end(self, response_id: str) -> None:
        if any(r == response_id for r, _ in self._chunks):
            self._ended.add(response_id)  # stops once its last sample has left
        elif self._playing == response_id:
            self._stop_playing()

    def clear(self, response_ids: list[str]) -> None:
        """Drop the audio not sent yet of these responses (all of it if the list is empty).
        Says `cleared` once, for the response actually cut (the one playing, else the first dropped)."""
        def hit(rid: str) -> bool:
            return not response_ids or rid in response_ids

        dropped = [rid for rid, _ in self._chunks if hit(rid)]
        if dropped:
            if hit(self._chunks[0][0]):
                self._head = 0
            self._chunks = deque((rid, c) for rid, c in self._chunks if not hit(rid))
            self.buffered = sum(len(c) for _, c in self._chunks) - self._head
        playing = self._playing if self._playing is not None and hit(self._playing) else None
        if playing is not None:
            self.played(playing, self._ms(playing))
            self._playing = None
            self._sent.pop(playing, None)
        for rid in set(dropped) | ({playing} if playing else set()):
            self._ended.discard(rid)
        cut = playing or (dropped[0] if dropped else None)
        if cut is not None:
            self.notify("cleared", cut)

    # ------------------------------------------------------------------ aiortc

    async def recv(self) -> AudioFrame | Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        else:
            self._pts += FRAME_SAMPLES
            wait = self._t0 + self._pts / RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -RESYNC_S:
                self._t0 = now - self._pts / RATE  # the loop stalled: resume pacing from now
        samples = self._take()
        self.frames_sent += 1
        if samples is self._silence:
            self._quiet += 1
            # the first frame (pts 0) and a few after audio go through the encoder: it anchors the
            # RTP timestamps and empties its lookahead, so speech never comes out late or cut
            if self.silence_packet is not None and self._quiet > FLUSH_FRAMES and self._pts > 0:
                packet = Packet(self.silence_packet)
                packet.pts = self._pts
                packet.time_base = TIME_BASE
                return packet
        else:
            self._quiet = 0
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        return frame

    # ------------------------------------------------------------------ internals

    def _ms(self, response_id: str) -> int:
        return 1000 * self._sent.get(response_id, 0) // RATE

    def _stop_playing(self) -> None:
        rid, self._playing = self._playing, None
        if rid is not None:
            self.played(rid, self._ms(rid))
            self._ended.discard(rid)
            self._sent.pop(rid, None)
            self.notify("stopped", rid)

    def _take(self) -> np.ndarray:
        if not self._chunks:
            if self._playing is not None and self._playing in self._ended:
                self._stop_playing()
            return self._silence
        out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        filled = 0
        while filled < FRAME_SAMPLES and self._chunks:
            rid, chunk = self._chunks[0]
            if rid != self._playing:
                if self._playing is not None:
                    self._stop_playing()  # the previous reply's audio is all out
                self._playing = rid
                self._sent[rid] = 0
                self.notify("started", rid)
            n = min(FRAME_SAMPLES - filled, len(chunk) - self._head)
            out[filled:filled + n] = chunk[self._head:self._head + n]
            filled += n
            self._head += n
            self.buffered -= n
            self._sent[rid] = self._sent.get(rid, 0) + n
            if self._head >= len(chunk):
                self._chunks.popleft()
                self._head = 0
        self.speech_frames_sent += 1
        self._frames += 1
        if self._playing is not None and (self._frames % ACK_EVERY == 0):
            self.played(self._playing, self._ms(self._playing))
        if not self._chunks and self._playing is not None and self._playing in self._ended:
            self._stop_playing()
        return out
