"""Vonage Voice API WebSockets (NCCO `connect` to a `websocket` endpoint), as a pure codec.

Wire facts (Vonage "WebSockets in the Voice API" and the NCCO reference): the first message is
text JSON `{"event":"websocket:connected","content-type":"audio/l16;rate=16000", ...}` where
the `headers` object of the NCCO endpoint is merged in at the top level. After it, audio both
ways is binary: 16-bit signed little-endian linear PCM, mono, in 20 ms messages (640 bytes at
16 kHz, 320 at 8 kHz); Vonage buffers at most 3072 of them. Other text events:
`websocket:dtmf` (`digit`, `duration`), `websocket:cleared` (ack of our clear) and
`websocket:notify` (ack of our notify). We send binary audio, `{"action":"clear"}` to drop
queued audio, and `{"action":"notify","payload":{...}}`, which Vonage answers with
`websocket:notify` carrying the same payload once the audio queued before it has played.

Marks: Vonage has no `mark` message, but `notify` does the same job, so `SetMark(name)` becomes
`{"action":"notify","payload":{"name":name}}` and the matching `websocket:notify` becomes
`MarkAck(name)`. Pass `marks=False` to send nothing for marks instead; a server must then
estimate what was heard from its own clock (`samples_sent / rate` seconds were queued), since a
codec never reads a clock.

Vonage sends no call id or numbers on the socket unless the NCCO passes them: put them in the
endpoint `headers` as `call_uuid` (or `uuid`), `from` and `to` (see the *_PARAMS constants).
There is no stop message: the stream ends when the socket closes.
"""

from __future__ import annotations

import numpy as np

from moksori.audio.frames import Frame
from moksori.errors import ProtocolError
from moksori.protocols.telephony import (
    CallAudio,
    CallStarted,
    ClearAck,
    Dtmf,
    Ignored,
    InboundEvent,
    MarkAck,
    TelephonyCodec,
    WireMessage,
    dumps,
    event_name,
    get_rate,
    parse_digit,
    parse_encoding,
    parse_json_object,
    pcm_from_wire,
    string_params,
)

CALL_ID_PARAMS = ("call_uuid", "uuid", "call_id")
FROM_PARAMS = ("from", "from_number")
TO_PARAMS = ("to", "to_number")
FRAME_MS = 20


class VonageCodec(TelephonyCodec):
    carrier = "vonage"
    acks_clear = True

    def __init__(self, *, marks: bool = True) -> None:
        super().__init__()
        self.marks = marks

    def decode(self, message: str | bytes) -> list[InboundEvent]:
        if isinstance(message, (bytes, bytearray, memoryview)):
            return self._audio(bytes(message))
        data = parse_json_object(message, self.carrier)
        event = event_name(data, self.carrier)
        if event == "websocket:connected":
            return self._start(self._parse_connected, data)
        if event == "websocket:dtmf":
            dtmf = data.get("dtmf")
            digit = dtmf.get("digit") if isinstance(dtmf, dict) else data.get("digit")
            return [Dtmf(parse_digit(digit, self.carrier))]
        if event == "websocket:notify":
            payload = data.get("payload")
            name = payload.get("name") if isinstance(payload, dict) else None
            if isinstance(name, str) and name:
                return [MarkAck(name)]
            return [Ignored("websocket:notify without a mark name")]
        if event == "websocket:cleared":
            return [ClearAck()]
        return [Ignored(f"unknown event {event[:64]!r}")]

    def _parse_connected(self, data: dict[str, object]) -> CallStarted:
        content_type = data.get("content-type")
        if not isinstance(content_type, str):
            raise ProtocolError("vonage: 'content-type' must be a string like audio/l16;rate=16000", param="content-type")
        encoding = parse_encoding(content_type, self.carrier, "l16")
        if encoding != "l16":
            raise ProtocolError(f"vonage: expected audio/l16, got {content_type!r}", param="content-type")
        rate = get_rate(_content_type_rate(content_type), self.carrier, 16000)
        if rate % (1000 // FRAME_MS):
            raise ProtocolError(f"vonage: unsupported sample rate {rate}", param="content-type")
        headers = {k: v for k, v in data.items() if k not in ("event", "content-type")}
        params = string_params(headers, self.carrier, "headers")
        call_id = _first(params, CALL_ID_PARAMS)
        if call_id is None:
            raise ProtocolError("vonage: websocket:connected carries no call id: put call_uuid in the NCCO "
                                "endpoint headers", param="call_uuid")
        return CallStarted(
            stream_id=call_id,
            call_id=call_id,
            from_number=_first(params, FROM_PARAMS),
            to_number=_first(params, TO_PARAMS),
            params=params,
            encoding="l16",
            rate=rate,
        )

    def _audio(self, data: bytes) -> list[InboundEvent]:
        started = self._require_started("accept audio")
        if not data:
            return [Ignored("empty audio message")]
        return [CallAudio(pcm_from_wire(data, "l16", started.rate, self.carrier, "little"))]

    @property
    def frame_bytes(self) -> int | None:
        """Bytes in one 20 ms binary message at the stream's rate (640 at 16 kHz)."""
        return self.rate * FRAME_MS // 1000 * 2 if self.rate else None

    def _encode_audio(self, frame: Frame) -> list[WireMessage]:
        started = self._require_started("play audio")
        n = started.rate * FRAME_MS // 1000
        samples = frame.samples
        if len(samples) % n:
            samples = np.concatenate([samples, np.zeros(n - len(samples) % n, dtype=np.int16)])
        data = samples.astype("<i2").tobytes()
        step = n * 2
        return [data[i : i + step] for i in range(0, len(data), step)]

    def _encode_mark(self, name: str) -> list[WireMessage]:
        if not self.marks:
            return []
        return [dumps({"action": "notify", "payload": {"name": name}})]

    def _encode_clear(self) -> list[WireMessage]:
        return [dumps({"action": "clear"})]


def _content_type_rate(content_type: str) -> int | str | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "rate":
            value = value.strip()
            return int(value) if value.isascii() and value.isdigit() and len(value) < 7 else value
    return None


def _first(params: dict[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if params.get(key):
            return params[key]
    return None
