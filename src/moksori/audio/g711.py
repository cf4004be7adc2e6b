"""G.711 μ-law and A-law, as pure table look-ups (ITU-T G.711 segment encoding).

The tables are built once, vectorised, from the segment rules of the reference coder; encoding a frame is then one numpy
indexing operation, cheap enough for hundreds of concurrent phone calls.
"""

from __future__ import annotations

import numpy as np

_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _build_ulaw_encoder() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int64) >> 2  # 14-bit magnitude, as in the reference
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), 8159) + 0x21
    seg = np.searchsorted(_ULAW_SEG_END, x)  # first segment whose end is >= x
    val = (seg << 4) | ((x >> (seg + 1)) & 0x0F)
    return (np.where(seg >= 8, 0x7F, val) ^ mask).astype(np.uint8)


def _build_alaw_encoder() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int64) >> 3  # 13-bit
    mask = np.where(x >= 0, 0xD5, 0x55)
    x = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(_ALAW_SEG_END, x)
    quant = np.where(seg < 2, x >> 1, x >> np.minimum(seg, 7)) & 0x0F
    val = (seg << 4) | quant
    return (np.where(seg >= 8, 0x7F, val) ^ mask).astype(np.uint8)


def _build_ulaw_decoder() -> np.ndarray:
    b = ~np.arange(256, dtype=np.int64) & 0xFF
    t = (((b & 0x0F) << 3) + 0x84) << ((b & 0x70) >> 4)
    return np.where(b & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _build_alaw_decoder() -> np.ndarray:
    b = np.arange(256, dtype=np.int64) ^ 0x55
    t = (b & 0x0F) << 4
    seg = (b & 0x70) >> 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where(b & 0x80, t, -t).astype(np.int16)


_ULAW_ENC = _build_ulaw_encoder()
_ALAW_ENC = _build_alaw_encoder()
_ULAW_DEC = _build_ulaw_decoder()
_ALAW_DEC = _build_alaw_decoder()


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """int16 PCM -> μ-law bytes."""
    return _ULAW_ENC[pcm.astype(np.int32) + 32768].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """μ-law bytes -> int16 PCM."""
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: np.ndarray) -> bytes:
    """int16 PCM -> A-law bytes."""
    return _ALAW_ENC[pcm.astype(np.int32) + 32768].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    """A-law bytes -> int16 PCM."""
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)]
