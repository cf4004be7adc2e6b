"""Carrier-neutral telephony media-stream types and the codec contract.

Every carrier (Twilio, Telnyx, Plivo, Vonage) streams call audio over a WebSocket with its own
message shapes. A codec turns one carrier's wire messages into the small vocabulary below and
back, and does nothing else: no sockets, no HTTP, no asyncio, no clock (sans-I/O). The server
owns the socket; hang-up and transfer go through `moksori.telephony.control`, never a codec.

    codec = codec_for("twilio")
    for event in codec.decode(text_or_bytes):      # inbound: wire -> typed events
        ...
    for wire in codec.encode(PlayAudio(frame)):    # outbound: typed command -> wire messages
        await ws.send(wire)                        # str = text frame, bytes = binary frame

Errors: anything the carrier protocol does not allow (bad JSON, wrong types, bad base64, audio
before `start`, a second `start`) raises `ProtocolError` and never another exception type. A
failed `decode` leaves the codec's state untouched, so a server may log it and keep reading.
A `start` that cannot open the stream (an encoding or sample rate Moksori does not take, no call
id, a missing field) raises it with `code == BAD_START`: no later message can make that stream
work, so a server refuses it at once instead of waiting for another start.
Harmless unknown or keep-alive messages become `Ignored`. The strings in events are text any
encoder takes: a lone surrogate (JSON's `\\ud800` escape) arrives as U+FFFD. Commands the
caller got wrong (audio at the wrong sample rate) raise `ValueError`: they are bugs on our
side, not the carrier's.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

import numpy as np

from moksori.audio.frames import Frame
from moksori.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from moksori.errors import ProtocolError
from moksori.text.unencodable import surrogates_replaced

Encoding: TypeAlias = Literal["pcmu", "pcma", "l16"]
ByteOrder: TypeAlias = Literal["little", "big"]

DTMF_DIGITS = frozenset("0123456789*#ABCD")

# The rates a stream may name. The carriers use 8 kHz (G.711 everywhere), 16 kHz (Telnyx, Plivo
# and Vonage L16) and 24 kHz (Vonage, Telnyx bidirectional); the rest are the common rates up to
# 48 kHz, each a whole number of samples per 20 ms and played whole by the engine (its resampler
# holds back ~0.5-1.4 s of a clause at 1-2 kHz, which cut or silenced the greeting there).
SAMPLE_RATES = (8000, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

BAD_START = "bad_start"  # `ProtocolError.code` of a start that cannot open the stream

# --------------------------------------------------------------------------- inbound events


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The carrier opened the media stream. Audio that follows is `encoding` at `rate` Hz.

    `params` are the custom values the call was set up with (Twilio `<Parameter>`s, Telnyx
    `custom_parameters`, Plivo `extraHeaders`, Vonage connect `headers`), always as strings.
    Numbers are `None` when the carrier does not send them on the stream.
    """

    stream_id: str
    call_id: str
    from_number: str | None
    to_number: str | None
    params: dict[str, str] = field(default_factory=dict)
    encoding: Encoding = "pcmu"
    rate: int = 8000


@dataclass(frozen=True, slots=True)
class CallAudio:
    """Caller audio, already decoded to int16 PCM at the carrier's rate."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class Dtmf:
    """The caller pressed a key: one of 0-9, *, #, A-D."""

    digit: str


@dataclass(frozen=True, slots=True)
class MarkAck:
    """Playback reached the mark `name` (everything queued before it has been heard)."""

    name: str


@dataclass(frozen=True, slots=True)
class ClearAck:
    """The carrier dropped the audio queued for it, as `ClearAudio` asked (Vonage, Plivo; Twilio
    and Telnyx answer a clear by echoing the marks it dropped instead)."""


@dataclass(frozen=True, slots=True)
class CallStopped:
    """The carrier ended the stream. Servers should treat a closed socket the same way."""

    reason: str


@dataclass(frozen=True, slots=True)
class StreamError:
    """The carrier reported a problem with something we sent; the stream goes on."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A harmless message with nothing to act on (keep-alives, acks, unknown event types)."""

    reason: str


InboundEvent: TypeAlias = CallStarted | CallAudio | Dtmf | MarkAck | ClearAck | CallStopped | StreamError | Ignored

# --------------------------------------------------------------------------- outbound commands


@dataclass(frozen=True, slots=True)
class PlayAudio:
    """Queue audio for the caller. The frame's rate must equal the stream's rate."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class SetMark:
    """Ask the carrier to answer `MarkAck(name)` once everything queued so far has played."""

    name: str


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """Drop audio queued at the carrier (barge-in)."""


OutboundCommand: TypeAlias = PlayAudio | SetMark | ClearAudio
WireMessage: TypeAlias = str | bytes

# --------------------------------------------------------------------------- the codec contract


class TelephonyCodec(abc.ABC):
    """One media stream's translator. Holds per-stream state only; make one per WebSocket."""

    carrier: ClassVar[str]
    l16_byteorder: ByteOrder = "little"  # only used for L16 audio; codecs override per carrier
    acks_clear: ClassVar[bool] = False  # the carrier answers `ClearAudio` with a `ClearAck`

    def __init__(self) -> None:
        self.started: CallStarted | None = None
        self.samples_sent = 0  # PCM samples encoded for playback so far (for clock estimates)

    @property
    def stream_id(self) -> str | None:
        return self.started.stream_id if self.started else None

    @property
    def encoding(self) -> Encoding | None:
        return self.started.encoding if self.started else None

    @property
    def rate(self) -> int | None:
        return self.started.rate if self.started else None

    @abc.abstractmethod
    def decode(self, message: str | bytes) -> list[InboundEvent]:
        """One WebSocket message in (text as str, binary as bytes) -> zero or more events."""

    def encode(self, command: OutboundCommand) -> list[WireMessage]:
        """One command -> the WebSocket messages to send, in order (str text, bytes binary)."""
        if isinstance(command, PlayAudio):
            started = self._require_started("play audio")
            if command.frame.rate != started.rate:
                raise ValueError(
                    f"{self.carrier} stream plays {started.rate} Hz audio, got {command.frame.rate} Hz: resample first"
                )
            if len(command.frame) == 0:
                return []
            self.samples_sent += len(command.frame)
            return self._encode_audio(command.frame)
        if isinstance(command, SetMark):
            if not isinstance(command.name, str) or not command.name:
                raise ValueError("a mark needs a non-empty name")
            return self._encode_mark(command.name)
        if isinstance(command, ClearAudio):
            return self._encode_clear()
        raise TypeError(f"not a telephony command: {type(command).__name__}")

    @abc.abstractmethod
    def _encode_audio(self, frame: Frame) -> list[WireMessage]: ...

    @abc.abstractmethod
    def _encode_mark(self, name: str) -> list[WireMessage]: ...

    @abc.abstractmethod
    def _encode_clear(self) -> list[WireMessage]: ...

    # ----------------------------------------------------------------- helpers for subclasses

    def _require_started(self, what: str) -> CallStarted:
        if self.started is None:
            raise ProtocolError(f"{self.carrier}: cannot {what} before the stream has started", code="stream_not_started")
        return self.started

    def _json_media(self, data: dict[str, Any]) -> list[InboundEvent]:
        """The JSON `media` event shared by Twilio, Telnyx and Plivo: base64 audio on a track."""
        started = self._require_started("accept media")
        media = get_obj(data, "media", self.carrier)
        track = media.get("track", "inbound")
        if track not in ("inbound", "inbound_track"):
            return [Ignored(f"media on track {str(track)[:32]!r}")]
        audio = b64decode_payload(media.get("payload"), self.carrier)
        if not audio:
            return [Ignored("empty media payload")]
        return [CallAudio(pcm_from_wire(audio, started.encoding, started.rate, self.carrier, self.l16_byteorder))]

    def _start(self, parse: Callable[[dict[str, Any]], CallStarted], data: dict[str, Any]) -> list[InboundEvent]:
        """A start message: `parse(data)`, whose errors (and a start without a call id) become
        `BAD_START` errors, then the stream's state."""
        try:
            event = parse(data)
            if not event.call_id.strip():
                raise ProtocolError(f"{self.carrier}: the start carries no call id", param="call_id")
        except ProtocolError as e:
            raise ProtocolError(str(e), code=BAD_START, param=e.param) from None
        if self.started is not None:
            raise ProtocolError(f"{self.carrier}: the stream has already started", code="duplicate_start")
        self.started = event
        return [event]


def codec_for(carrier: str, **options: Any) -> TelephonyCodec:
    """A fresh codec for `carrier` (twilio, telnyx, plivo, vonage)."""
    name = carrier.strip().lower()
    if name == "twilio":
        from moksori.protocols.twilio import TwilioCodec

        return TwilioCodec(**options)
    if name == "telnyx":
        from moksori.protocols.telnyx import TelnyxCodec

        return TelnyxCodec(**options)
    if name == "plivo":
        from moksori.protocols.plivo import PlivoCodec

        return PlivoCodec(**options)
    if name == "vonage":
        from moksori.protocols.vonage import VonageCodec

        return VonageCodec(**options)
    raise ValueError(f"unknown carrier {carrier!r} (expected twilio, telnyx, plivo or vonage)")


# --------------------------------------------------------------------------- wire helpers
# Shared by the carrier modules. Every failure becomes a ProtocolError with a readable message.


def parse_json_object(message: str | bytes, carrier: str) -> dict[str, Any]:
    """A text frame's JSON object. Binary frames are accepted if they hold UTF-8 JSON."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        try:
            message = bytes(message).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{carrier}: binary message is not UTF-8 JSON") from None
    if not isinstance(message, str):
        raise ProtocolError(f"{carrier}: expected a text or binary message, got {type(message).__name__}")
    try:
        # a "\ud800" escape decodes to a lone surrogate, which no UTF-8 encoder takes (a token's
        # check, the caller's number hashed, the call's record): U+FFFD instead, as for a client's JSON
        data = surrogates_replaced(json.loads(message), message)
    except (ValueError, RecursionError):
        raise ProtocolError(f"{carrier}: message is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{carrier}: message must be a JSON object, got {_json_type(data)}")
    return data


def event_name(data: Mapping[str, Any], carrier: str, key: str = "event") -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{carrier}: message needs a string {key!r}", param=key)
    return value


def get_obj(data: Mapping[str, Any], key: str, carrier: str, *, required: bool = True) -> dict[str, Any]:
    value = data.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{carrier}: {key!r} must be a JSON object, got {_json_type(value)}", param=key)
    return value


def get_str(data: Mapping[str, Any], key: str, carrier: str, *, where: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str):
        path = f"{where}.{key}" if where else key
        raise ProtocolError(f"{carrier}: {path!r} must be a string, got {_json_type(value)}", param=path)
    return value


def opt_str(data: Mapping[str, Any], key: str, carrier: str, *, where: str = "") -> str | None:
    if data.get(key) is None:
        return None
    return get_str(data, key, carrier, where=where)


def get_rate(value: Any, carrier: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 7:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in SAMPLE_RATES:
        raise ProtocolError(f"{carrier}: unsupported sample rate {str(value)[:16]!r} Hz "
                            f"(supported: {', '.join(map(str, SAMPLE_RATES))})", param="sample_rate")
    return value


_ENCODING_NAMES: dict[str, Encoding] = {
    "pcmu": "pcmu",
    "audio/x-mulaw": "pcmu",
    "audio/pcmu": "pcmu",
    "mulaw": "pcmu",
    "ulaw": "pcmu",
    "g711_ulaw": "pcmu",
    "pcma": "pcma",
    "audio/x-alaw": "pcma",
    "audio/pcma": "pcma",
    "alaw": "pcma",
    "g711_alaw": "pcma",
    "l16": "l16",
    "audio/l16": "l16",
    "audio/x-l16": "l16",
    "linear16": "l16",
}


def parse_encoding(value: Any, carrier: str, default: Encoding) -> Encoding:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ProtocolError(f"{carrier}: audio encoding must be a string, got {_json_type(value)}", param="encoding")
    name = value.split(";", 1)[0].strip().lower()
    if name not in _ENCODING_NAMES:
        raise ProtocolError(
            f"{carrier}: unsupported audio encoding {value[:40]!r}; configure the stream for PCMU, PCMA or L16",
            param="encoding",
        )
    return _ENCODING_NAMES[name]


def check_format(encoding: Encoding, rate: int, carrier: str) -> None:
    if encoding in ("pcmu", "pcma") and rate != 8000:
        raise ProtocolError(f"{carrier}: G.711 audio must be 8000 Hz, got {rate} Hz", param="sample_rate")


def b64decode_payload(value: Any, carrier: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"{carrier}: media payload must be a base64 string, got {_json_type(value)}", param="payload")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{carrier}: media payload is not valid base64", param="payload") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pcm_from_wire(data: bytes, encoding: Encoding, rate: int, carrier: str, byteorder: ByteOrder = "little") -> Frame:
    """Carrier audio bytes -> int16 PCM frame."""
    if encoding == "pcmu":
        return Frame(ulaw_decode(data), rate)
    if encoding == "pcma":
        return Frame(alaw_decode(data), rate)
    if len(data) % 2:
        raise ProtocolError(f"{carrier}: 16-bit PCM payload has an odd number of bytes ({len(data)})", param="payload")
    dtype = "<i2" if byteorder == "little" else ">i2"
    return Frame(np.frombuffer(data, dtype=dtype).astype(np.int16), rate)


def pcm_to_wire(frame: Frame, encoding: Encoding, byteorder: ByteOrder = "little") -> bytes:
    """int16 PCM frame -> carrier audio bytes."""
    if encoding == "pcmu":
        return ulaw_encode(frame.samples)
    if encoding == "pcma":
        return alaw_encode(frame.samples)
    dtype = "<i2" if byteorder == "little" else ">i2"
    return frame.samples.astype(dtype).tobytes()


def parse_digit(value: Any, carrier: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
        value = str(value)
    if not isinstance(value, str) or value.upper() not in DTMF_DIGITS:
        raise ProtocolError(f"{carrier}: DTMF digit must be one of 0-9 * # A-D, got {value!r}", param="digit")
    return value.upper()


def string_params(value: Any, carrier: str, key: str) -> dict[str, str]:
    """A JSON object of custom parameters -> str -> str (non-string values as compact JSON)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{carrier}: {key!r} must be a JSON object, got {_json_type(value)}", param=key)
    try:
        return {str(k): v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in value.items()}
    except (ValueError, RecursionError):
        raise ProtocolError(f"{carrier}: {key!r} values are too deeply nested", param=key) from None


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
