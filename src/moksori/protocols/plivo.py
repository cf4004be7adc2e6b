"""Plivo Audio Streams (`<Stream bidirectional="true">`), as a pure codec.

Wire facts (Plivo "Stream Event Protocol" and the checkpoint/clearAudio/playAudio event pages):
Plivo sends `start` (`start.streamId`, `start.callId`, `start.accountId`, `start.tracks`,
`start.mediaFormat` {encoding audio/x-mulaw|audio/x-l16, sampleRate}, and a top-level
`extra_headers` string built from the XML `extraHeaders`), `media` (`media.track`,
`media.timestamp`, `media.chunk`, `media.payload`), `dtmf` (`dtmf.digit`), `playedStream` (the
ack of our `checkpoint`: top-level `name` and `streamId`; a support article calls it `played`)
and `clearedAudio`. The documented list has no `stop`: the stream ends when the socket closes
(a `stop`, if one arrives, is still understood). We send `playAudio`
{media: {contentType audio/x-mulaw|audio/x-l16, sampleRate 8000|16000, payload}} in the stream's
own format (Plivo does not support switching codecs mid-stream), `checkpoint` {streamId, name}
and `clearAudio` {streamId}.

Plivo does not document the byte order of audio/x-l16; little-endian is assumed (override with
`l16_byteorder` if a live test shows otherwise). Phone numbers are not on the stream: pass them
as `extraHeaders` `from`/`to` (Plivo allows only [A-Za-z0-9] there, so without the `+`).
"""

from __future__ import annotations

from typing import Any

from moksori.audio.frames import Frame
from moksori.errors import ProtocolError
from moksori.protocols.telephony import (
    ByteOrder,
    CallStarted,
    CallStopped,
    ClearAck,
    Dtmf,
    Encoding,
    Ignored,
    InboundEvent,
    MarkAck,
    TelephonyCodec,
    WireMessage,
    b64encode,
    check_format,
    dumps,
    event_name,
    get_obj,
    get_rate,
    get_str,
    parse_digit,
    parse_encoding,
    parse_json_object,
    pcm_to_wire,
    string_params,
)

FROM_PARAM = "from"
TO_PARAM = "to"
CONTENT_TYPES: dict[Encoding, str] = {"pcmu": "audio/x-mulaw", "l16": "audio/x-l16"}


class PlivoCodec(TelephonyCodec):
    carrier = "plivo"
    acks_clear = True

    def __init__(self, *, l16_byteorder: ByteOrder = "little") -> None:
        super().__init__()
        self.l16_byteorder: ByteOrder = l16_byteorder

    def decode(self, message: str | bytes) -> list[InboundEvent]:
        data = parse_json_object(message, self.carrier)
        event = event_name(data, self.carrier)
        if event == "media":
            return self._json_media(data)
        if event == "start":
            return self._start(self._parse_start, data)
        if event == "dtmf":
            dtmf = data.get("dtmf")
            digit = dtmf.get("digit") if isinstance(dtmf, dict) else data.get("digit")
            return [Dtmf(parse_digit(digit, self.carrier))]
        if event in ("playedStream", "played"):
            return [MarkAck(get_str(data, "name", self.carrier))]
        if event == "clearedAudio":
            return [ClearAck()]
        if event == "stop":
            return [CallStopped("stop")]
        return [Ignored(f"unknown event {event[:64]!r}")]

    def _parse_start(self, data: dict[str, Any]) -> CallStarted:
        start = get_obj(data, "start", self.carrier)
        stream_id = get_str(start, "streamId", self.carrier, where="start")
        call_id = get_str(start, "callId", self.carrier, where="start")
        headers = data.get("extra_headers", start.get("extra_headers"))
        params = _parse_extra_headers(headers)
        fmt = get_obj(start, "mediaFormat", self.carrier, required=False)
        encoding = parse_encoding(fmt.get("encoding"), self.carrier, "pcmu")
        if encoding not in CONTENT_TYPES:
            raise ProtocolError(f"plivo: unsupported audio encoding {str(fmt.get('encoding'))[:40]!r}; streams are "
                                "audio/x-mulaw or audio/x-l16", param="start.mediaFormat.encoding")
        rate = get_rate(fmt.get("sampleRate"), self.carrier, 8000)
        check_format(encoding, rate, self.carrier)
        return CallStarted(
            stream_id=stream_id,
            call_id=call_id,
            from_number=params.get(FROM_PARAM),
            to_number=params.get(TO_PARAM),
            params=params,
            encoding=encoding,
            rate=rate,
        )

    def _encode_audio(self, frame: Frame) -> list[WireMessage]:
        started = self._require_started("play audio")
        payload = b64encode(pcm_to_wire(frame, started.encoding, self.l16_byteorder))
        media = {"contentType": CONTENT_TYPES[started.encoding], "sampleRate": started.rate, "payload": payload}
        return [dumps({"event": "playAudio", "media": media})]

    def _encode_mark(self, name: str) -> list[WireMessage]:
        started = self._require_started("set a checkpoint")
        return [dumps({"event": "checkpoint", "streamId": started.stream_id, "name": name})]

    def _encode_clear(self) -> list[WireMessage]:
        started = self._require_started("clear audio")
        return [dumps({"event": "clearAudio", "streamId": started.stream_id})]


def _parse_extra_headers(value: Any) -> dict[str, str]:
    """`extra_headers` is documented as "k=v;k=v" (stream events) and "k=v,k=v" (the XML attribute)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return string_params(value, "plivo", "extra_headers")
    if not isinstance(value, str):
        raise ProtocolError("plivo: 'extra_headers' must be a string", param="extra_headers")
    params: dict[str, str] = {}
    for item in value.replace(",", ";").split(";"):
        key, sep, val = item.partition("=")
        if sep and key.strip():
            params[key.strip()] = val.strip()
    return params
