"""Twilio Media Streams (bidirectional, `<Connect><Stream>`), as a pure codec.

Wire facts (Twilio "Media Streams - WebSocket Messages"): Twilio sends JSON text frames
`connected`, `start` (`start.streamSid`, `start.callSid`, `start.customParameters`,
`start.mediaFormat` = audio/x-mulaw 8000 Hz mono, `start.tracks`), `media` (`media.track`,
`media.chunk`, `media.timestamp`, `media.payload` = base64 μ-law), `dtmf` (`dtmf.digit`),
`mark` (`mark.name`, echoed when the audio before it has played) and `stop`. We send text
frames only: `media` (base64 μ-law 8 kHz, no header), `mark` and `clear`, each with `streamSid`.

The `start` message carries no phone numbers: the TwiML that opens the stream should pass them
as `<Parameter name="from">` / `<Parameter name="to">` (see `FROM_PARAM`, `TO_PARAM`).
"""

from __future__ import annotations

from typing import Any

from moksori.audio.frames import Frame
from moksori.errors import ProtocolError
from moksori.protocols.telephony import (
    CallStarted,
    CallStopped,
    Dtmf,
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


class TwilioCodec(TelephonyCodec):
    carrier = "twilio"

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
            return [Dtmf(parse_digit(get_obj(data, "dtmf", self.carrier).get("digit"), self.carrier))]
        if event == "mark":
            return [MarkAck(get_str(get_obj(data, "mark", self.carrier), "name", self.carrier, where="mark"))]
        if event == "stop":
            return [CallStopped("stop")]
        return [Ignored(f"unknown event {event[:64]!r}")]

    def _parse_start(self, data: dict[str, Any]) -> CallStarted:
        start = get_obj(data, "start", self.carrier)
        stream_id = start.get("streamSid", data.get("streamSid"))
        if not isinstance(stream_id, str) or not stream_id:
            raise ProtocolError("twilio: 'start.streamSid' must be a non-empty string", param="start.streamSid")
        call_id = get_str(start, "callSid", self.carrier, where="start")
        params = string_params(start.get("customParameters"), self.carrier, "start.customParameters")
        fmt = get_obj(start, "mediaFormat", self.carrier, required=False)
        encoding = parse_encoding(fmt.get("encoding"), self.carrier, "pcmu")
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
        payload = b64encode(pcm_to_wire(frame, started.encoding))
        return [dumps({"event": "media", "streamSid": started.stream_id, "media": {"payload": payload}})]

    def _encode_mark(self, name: str) -> list[WireMessage]:
        started = self._require_started("set a mark")
        return [dumps({"event": "mark", "streamSid": started.stream_id, "mark": {"name": name}})]

    def _encode_clear(self) -> list[WireMessage]:
        started = self._require_started("clear audio")
        return [dumps({"event": "clear", "streamSid": started.stream_id})]
