"""Per-frame costs and a fixed delay of aiortc, removed without changing what goes on the wire.

* aiortc's audio receiver holds 4 frames (80 ms) in its jitter buffer before it hands the first
  one on (`JitterBuffer(capacity=16, prefetch=4)`): every word the user says reaches the VAD
  80 ms late, which delays both the end of the turn and barge-in. The server does not play this
  audio, it only listens to it, so `low_latency_receiver` keeps one frame (a frame is complete
  when the next one arrives); reordering is still handled (the buffer orders by sequence number).

* `aiortc.rtp.compute_audio_level_dbov` (the RFC 6465 audio level of every outbound frame, for
  the `ssrc-audio-level` header extension) walks the 960 samples in a Python loop: ~0.1 ms per
  20 ms frame per call. The same formula in numpy costs ~10 us.
* Silence: the outbound track sends a pre-encoded Opus silence packet while it has nothing to
  play (`opus_silence()`), so idle calls skip the encoder thread and the level computation
  (see `tracks.OutboundAudio`).

Measured in benchmarks/webrtc.py (per-peer CPU). aiortc's known issue #1155 (CPU per peer) is
mostly this kind of per-frame Python work.
"""

from __future__ import annotations

import fractions
import math
from functools import lru_cache

import aiortc.rtp
import numpy as np

original_audio_level = aiortc.rtp.compute_audio_level_dbov  # kept for the equivalence test
_installed = False


def audio_level_dbov(frame) -> int:  # noqa: ANN001 - an av.AudioFrame
    """RFC 6465 Appendix A, exactly as aiortc computes it (same buffer, same rounding)."""
    x = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16)
    energy = float(np.dot(x.astype(np.float64), x.astype(np.float64)))
    rms = math.sqrt(energy / (frame.samples * 32767 * 32767))
    if rms <= 0:
        return -127
    return round(min(0.0, max(-127.0, 20 * math.log10(rms))))


INBOUND_PREFETCH = 1


def low_latency_receiver(receiver) -> bool:  # noqa: ANN001 - an aiortc RTCRtpReceiver
    """Before any packet arrives: a 1-frame jitter buffer for an audio receiver. False if this
    aiortc does not have the (private) attribute any more; aiortc's default then applies."""
    from aiortc.jitterbuffer import JitterBuffer

    name = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, name, None)
    if not isinstance(current, JitterBuffer) or getattr(current, "_is_video", True):
        return False
    setattr(receiver, name, JitterBuffer(capacity=current.capacity, prefetch=INBOUND_PREFETCH))
    return True


def install() -> None:
    global _installed
    if _installed:
        return
    aiortc.rtp.compute_audio_level_dbov = audio_level_dbov
    _installed = True


@lru_cache(maxsize=1)
def opus_silence() -> bytes:
    """One 20 ms Opus packet of silence from aiortc's own encoder (same settings as live audio)."""
    from aiortc.codecs.opus import OpusEncoder
    from av import AudioFrame

    enc = OpusEncoder()
    payload = b""
    for i in range(6):
        f = AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
        f.sample_rate, f.pts, f.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        payloads, _ = enc.encode(f)
        if payloads:
            payload = payloads[-1]
    return payload
