"""Audio formats of the Realtime protocols: parse, serialise, and base64 <-> Frame.

Wire spellings accepted on input (in any dialect, since clients mix them):

* GA objects: ``{"type": "audio/pcm", "rate": 24000}``, ``{"type": "audio/pcmu"}``,
  ``{"type": "audio/pcma"}``.
* Beta strings: ``pcm16`` (24 kHz), ``g711_ulaw``, ``g711_alaw``.
* Azure strings: ``pcm16_8000hz``, ``pcm16_16000hz``, ``pcm16_24000hz`` (also with ``-``).

No resampling happens here: :meth:`AudioFormat.decode` returns audio at the format's own
rate and :meth:`AudioFormat.encode` requires a frame already at that rate.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from moksori.audio.frames import Frame
from moksori.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from moksori.errors import ProtocolError

from .flavor import Flavor

__all__ = ["AudioFormat", "Encoding", "PCM16_24K", "PCMU", "PCMA", "PCM16_RATES", "parse_audio_format"]

Encoding = Literal["pcm16", "pcmu", "pcma"]

PCM16_RATES = (8000, 16000, 24000)
"""Sample rates a client may ask for with pcm16."""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """An audio encoding at a fixed sample rate (G.711 is always 8 kHz)."""

    encoding: Encoding = "pcm16"
    rate: int = 24000

    def __post_init__(self) -> None:
        if self.encoding == "pcm16":
            if self.rate not in PCM16_RATES:
                raise ValueError(f"pcm16 rate must be one of {PCM16_RATES}, not {self.rate}")
        elif self.encoding in ("pcmu", "pcma"):
            if self.rate != 8000:
                raise ValueError("G.711 audio is always 8000 Hz")
        else:
            raise ValueError(f"unknown encoding {self.encoding!r}")

    @property
    def bytes_per_second(self) -> int:
        return self.rate * (2 if self.encoding == "pcm16" else 1)

    def to_wire(self, flavor: Flavor, *, direction: Literal["input", "output"] = "output") -> Any:
        """The format as the dialect spells it.

        Azure states the *input* pcm16 rate in a separate ``input_audio_sampling_rate``
        field, so for ``direction="input"`` it always gets plain ``pcm16`` here.
        """
        if flavor is Flavor.GA:
            if self.encoding == "pcm16":
                return {"type": "audio/pcm", "rate": self.rate}
            return {"type": "audio/pcmu" if self.encoding == "pcmu" else "audio/pcma"}
        if self.encoding == "pcmu":
            return "g711_ulaw"
        if self.encoding == "pcma":
            return "g711_alaw"
        if self.rate == 24000 or (flavor is Flavor.AZURE and direction == "input"):
            return "pcm16"
        return f"pcm16_{self.rate}hz"

    def decode(self, b64: Any, *, param: str | None = None) -> Frame:
        """Base64 audio in this format -> a PCM16 :class:`Frame` at ``self.rate``."""
        if not isinstance(b64, str):
            raise ProtocolError("audio must be a base64 string", code="invalid_type", param=param)
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("audio is not valid base64 (standard alphabet, padded)",
                                code="invalid_value", param=param) from None
        if self.encoding == "pcmu":
            return Frame(ulaw_decode(raw), 8000)
        if self.encoding == "pcma":
            return Frame(alaw_decode(raw), 8000)
        if len(raw) % 2:
            raise ProtocolError(f"pcm16 audio must have an even number of bytes, got {len(raw)}",
                                code="invalid_value", param=param)
        return Frame(np.frombuffer(raw, dtype="<i2").astype(np.int16, copy=False), self.rate)

    def encode(self, frame: Frame) -> str:
        """A :class:`Frame` already at ``self.rate`` -> base64 in this format."""
        if frame.rate != self.rate:
            raise ValueError(f"frame is {frame.rate} Hz but the format is {self.rate} Hz; resample first")
        if self.encoding == "pcmu":
            data = ulaw_encode(frame.samples)
        elif self.encoding == "pcma":
            data = alaw_encode(frame.samples)
        else:
            data = frame.to_bytes()
        return base64.b64encode(data).decode("ascii")


PCM16_24K = AudioFormat("pcm16", 24000)
PCMU = AudioFormat("pcmu", 8000)
PCMA = AudioFormat("pcma", 8000)

_STRINGS: dict[str, AudioFormat] = {
    "pcm16": PCM16_24K,
    "g711_ulaw": PCMU,
    "g711_alaw": PCMA,
    **{f"pcm16_{r}hz": AudioFormat("pcm16", r) for r in PCM16_RATES},
    **{f"pcm16-{r}hz": AudioFormat("pcm16", r) for r in PCM16_RATES},
}
_GA_TYPES: dict[str, AudioFormat] = {"audio/pcm": PCM16_24K, "audio/pcmu": PCMU, "audio/pcma": PCMA}


def parse_audio_format(value: Any, *, param: str) -> AudioFormat:
    """Parse any accepted spelling; a :class:`ProtocolError` naming ``param`` otherwise."""
    if isinstance(value, str):
        fmt = _STRINGS.get(value.lower())
        if fmt is None:
            raise ProtocolError(f"unknown audio format {value[:40]!r}; expected one of "
                                "pcm16, g711_ulaw, g711_alaw, pcm16_8000hz, pcm16_16000hz, pcm16_24000hz",
                                code="invalid_value", param=param)
        return fmt
    if isinstance(value, dict):
        kind = value.get("type", "audio/pcm")
        if not isinstance(kind, str) or kind not in _GA_TYPES:
            raise ProtocolError(f"unknown audio format type {str(kind)[:40]!r}; expected audio/pcm, "
                                "audio/pcmu or audio/pcma", code="invalid_value", param=f"{param}.type")
        fmt = _GA_TYPES[kind]
        rate = value.get("rate")
        if rate is None:
            return fmt
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or (
                isinstance(rate, float) and not rate.is_integer()):
            raise ProtocolError("audio format rate must be an integer", code="invalid_type",
                                param=f"{param}.rate")
        rate = int(rate)
        if fmt.encoding != "pcm16":
            if rate != 8000:
                raise ProtocolError(f"{kind} is always 8000 Hz", code="invalid_value", param=f"{param}.rate")
            return fmt
        if rate not in PCM16_RATES:
            raise ProtocolError(f"unsupported audio/pcm rate {rate}; use one of {list(PCM16_RATES)}",
                                code="invalid_value", param=f"{param}.rate")
        return AudioFormat("pcm16", rate)
    raise ProtocolError("audio format must be a string or an object", code="invalid_type", param=param)
