"""Telnyx media streaming over WebSocket (Call Control `stream_url`), as a pure codec.

Wire facts (Telnyx "Stream call media over WebSocket"): Telnyx sends `connected`, then `start`
with a top-level `stream_id` and `start.call_control_id`, `start.from`, `start.to`,
`start.custom_parameters`, `start.client_state`, `start.media_format` {encoding PCMU|PCMA|L16
(older accounts: audio/x-mulaw), sample_rate, channels}; then `media` (`media.track`
inbound|outbound, `media.chunk`, `media.timestamp`, `media.payload` = base64 RTP payload without
RTP headers), `dtmf` (`dtmf.digit`), `mark` (echo of ours once the audio before it played, also
sent back for queued marks on `clear`), `error` (`error.code`, `error.title`, `error.detail`)
and `stop`. With `stream_bidirectional_mode=rtp` we send `{"event":"media","media":{"payload"}}`
in the stream's codec (set `stream_bidirectional_codec` to the same codec as the stream),
`{"event":"mark","mark":{"name"}}` and `{"event":"clear"}`; outbound frames carry no stream id.

L16 is an RTP payload, so network byte order (big-endian, RFC 3551) by default.
"""

from __future__ import annotations

from typing import Any

from moksori.audio.frames import Frame
from moksori.errors import ProtocolError
from moksori.protocols.telephony import (
    ByteOrder,
    CallStarted,
    CallStopped,
    Dtmf,
    Ignored,
    InboundEvent,
    MarkAck,
    StreamError,
    TelephonyCodec,
    WireMessage,
    b64encode,
    check_format,
    dumps,
    event_name,
    get_obj,
    get_rate,
    get_str,
    opt_str,
    parse_digit,
    parse_encoding,
    parse_json_object,
    pcm_to_wire,
    string_params,
)


class TelnyxCodec(TelephonyCodec):
    carrier = "telnyx"

    def __init__(self, *, l16_byteorder: ByteOrder = "big") -> None:
        super().__init__()
        self.l16_byteorder: ByteOrder = l16_byteorder

    def decode(self, message: str | bytes) -> list[InboundEvent]:
        data = parse_json_object(message, self.carrier)
        event = event_name(data, self.carrier)
        if event == "media":
            return self._json_media(data)
        if event == "start":
            return self._start(self._parse_start, data)
        if event == "connected":
            return [Ignored("connected")]
        if event == "dtmf":
            dtmf = data.get("dtmf")
            digit = dtmf.get("digit") if isinstance(dtmf, dict) else data.get("digit")
            return [Dtmf(parse_digit(digit, self.carrier))]
        if event == "mark":
            return [MarkAck(get_str(get_obj(data, "mark", self.carrier), "name", self.carrier, where="mark"))]
        if event == "error":
            return [self._error(data)]
        if event == "stop":
            return [CallStopped("stop")]
        return [Ignored(f"unknown event {event[:64]!r}")]

    def _parse_start(self, data: dict[str, Any]) -> CallStarted:
        start = get_obj(data, "start", self.carrier)
        stream_id = data.get("stream_id", start.get("stream_id"))
        if not isinstance(stream_id, str) or not stream_id:
            raise ProtocolError("telnyx: 'stream_id' must be a non-empty string", param="stream_id")
        call_id = get_str(start, "call_control_id", self.carrier, where="start")
        params = string_params(start.get("custom_parameters"), self.carrier, "start.custom_parameters")
        client_state = opt_str(start, "client_state", self.carrier, where="start")
        if client_state is not None:
            params.setdefault("client_state", client_state)
        fmt = get_obj(start, "media_format", self.carrier, required=False)
        encoding = parse_encoding(fmt.get("encoding"), self.carrier, "pcmu")
        rate = get_rate(fmt.get("sample_rate"), self.carrier, 8000)
        check_format(encoding, rate, self.carrier)
        return CallStarted(
            stream_id=stream_id,
            call_id=call_id,
            from_number=opt_str(start, "from", self.carrier, where="start"),
            to_number=opt_str(start, "to", self.carrier, where="start"),
            params=params,
            encoding=encoding,
            rate=rate,
        )

    def _error(self, data: dict[str, Any]) -> StreamError:
        # the error object, read under "payload" or "error" (the docs available offline do not settle which)
        err = get_obj(data, "payload" if isinstance(data.get("payload"), dict) else "error", self.carrier,
                      required=False)
        code = err.get("code", "")
        title, detail = err.get("title"), err.get("detail")
        text = ": ".join(str(x) for x in (title, detail) if isinstance(x, (str, int)) and x != "")
        return StreamError(code=str(code) if isinstance(code, (str, int)) else "", message=text or "error")

    def _encode_audio(self, frame: Frame) -> list[WireMessage]:
        started = self._require_started("play audio")
        payload = b64encode(pcm_to_wire(frame, started.encoding, self.l16_byteorder))
        return [dumps({"event": "media", "media": {"payload": payload}})]

    def _encode_mark(self, name: str) -> list[WireMessage]:
        return [dumps({"event": "mark", "mark": {"name": name}})]

    def _encode_clear(self) -> list[WireMessage]:
        return [dumps({"event": "clear"})]
