"""Telephony media-stream codecs: documented message shapes, round trips, and fuzzing.

Every inbound message below is shaped like the examples in the carrier's own documentation
(Twilio "Media Streams - WebSocket Messages", Telnyx "Stream call media over WebSocket", Plivo
"Stream Event Protocol", Vonage "WebSockets in the Voice API"). No live carrier was involved.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moksori.audio.frames import Frame
from moksori.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from moksori.errors import ProtocolError
from moksori.protocols.plivo import PlivoCodec
from moksori.protocols.telephony import (
    CallAudio,
    CallStarted,
    CallStopped,
    ClearAck,
    ClearAudio,
    Dtmf,
    Ignored,
    MarkAck,
    PlayAudio,
    SetMark,
    StreamError,
    TelephonyCodec,
    codec_for,
)
from moksori.protocols.telnyx import TelnyxCodec
from moksori.protocols.twilio import TwilioCodec
from moksori.protocols.vonage import VonageCodec

TWILIO_STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
TWILIO_CALL = "CA5a1ebd8dcc0ff4c2a2ea3fcbbdf3a1c4"
TELNYX_STREAM = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
TELNYX_CALL = "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
PLIVO_STREAM = "87654321-4321-4321-4321-cba987654321"
PLIVO_CALL = "12345678-1234-1234-1234-123456789abc"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tone(n: int, rate: int = 8000, amp: int = 8000) -> Frame:
    t = np.arange(n) / rate
    return Frame((amp * np.sin(2 * np.pi * 440 * t)).astype(np.int16), rate)


# --------------------------------------------------------------------------- documented messages


def twilio_start(params: dict[str, str] | None = None) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC00000000000000000000000000000000",
                "streamSid": TWILIO_STREAM,
                "callSid": TWILIO_CALL,
                "tracks": ["inbound"],
                "customParameters": params or {"from": "+15551230000", "to": "+15559870000", "token": "t"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": TWILIO_STREAM,
        }
    )


def telnyx_start(encoding: str = "PCMU", rate: int = 8000) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequence_number": "1",
            "stream_id": TELNYX_STREAM,
            "start": {
                "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
                "call_control_id": TELNYX_CALL,
                "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
                "from": "+13122010094",
                "to": "+13122123456",
                "tags": ["TAG1"],
                "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
                "custom_parameters": {"customer_id": "customer_123"},
                "media_format": {"encoding": encoding, "sample_rate": rate, "channels": 1},
            },
        }
    )


def plivo_start(encoding: str = "audio/x-mulaw", rate: int = 8000) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": 1,
            "start": {
                "callId": PLIVO_CALL,
                "streamId": PLIVO_STREAM,
                "accountId": "MAXXXXXXXXXXXXXXXXXX",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": encoding, "sampleRate": rate},
            },
            "extra_headers": "userId=12345;sessionId=abcxyz;from=15551230000",
        }
    )


def vonage_connected(rate: int = 16000) -> str:
    return json.dumps(
        {"event": "websocket:connected", "content-type": f"audio/l16;rate={rate}", "call_uuid": "aaaa-bbbb", "from": "447700900000", "to": "447700900001", "token": "t"}
    )


def started(codec: TelephonyCodec, message: str) -> TelephonyCodec:
    (event,) = codec.decode(message)
    assert isinstance(event, CallStarted)
    return codec


# --------------------------------------------------------------------------- Twilio


def test_twilio_documented_inbound_messages() -> None:
    c = TwilioCodec()
    assert c.decode(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})) == [Ignored("connected")]
    (start,) = c.decode(twilio_start())
    assert start == CallStarted(
        stream_id=TWILIO_STREAM,
        call_id=TWILIO_CALL,
        from_number="+15551230000",
        to_number="+15559870000",
        params={"from": "+15551230000", "to": "+15559870000", "token": "t"},
        encoding="pcmu",
        rate=8000,
    )
    pcm = tone(160).samples
    media = {"event": "media", "sequenceNumber": "3", "streamSid": TWILIO_STREAM,
             "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": b64(ulaw_encode(pcm))}}
    (audio,) = c.decode(json.dumps(media))
    assert isinstance(audio, CallAudio) and audio.frame.rate == 8000
    assert np.array_equal(audio.frame.samples, ulaw_decode(ulaw_encode(pcm)))
    dtmf = {"event": "dtmf", "streamSid": TWILIO_STREAM, "sequenceNumber": "5", "dtmf": {"track": "inbound_track", "digit": "1"}}
    assert c.decode(json.dumps(dtmf)) == [Dtmf("1")]
    mark = {"event": "mark", "sequenceNumber": "4", "streamSid": TWILIO_STREAM, "mark": {"name": "reply-1"}}
    assert c.decode(json.dumps(mark)) == [MarkAck("reply-1")]
    stop = {"event": "stop", "sequenceNumber": "5", "streamSid": TWILIO_STREAM,
            "stop": {"accountSid": "AC00000000000000000000000000000000", "callSid": TWILIO_CALL}}
    assert c.decode(json.dumps(stop)) == [CallStopped("stop")]
    assert c.decode(json.dumps({"event": "brand-new"})) == [Ignored("unknown event 'brand-new'")]
    # bytes carrying the same JSON are accepted (some WebSocket stacks hand text over as bytes)
    assert c.decode(json.dumps(mark).encode()) == [MarkAck("reply-1")]


def test_twilio_outbound_wire_shapes() -> None:
    c = started(TwilioCodec(), twilio_start())
    frame = tone(320)
    (media,) = c.encode(PlayAudio(frame))
    assert isinstance(media, str)
    assert json.loads(media) == {"event": "media", "streamSid": TWILIO_STREAM, "media": {"payload": b64(ulaw_encode(frame.samples))}}
    assert [json.loads(m) for m in c.encode(SetMark("m1"))] == [{"event": "mark", "streamSid": TWILIO_STREAM, "mark": {"name": "m1"}}]
    assert [json.loads(m) for m in c.encode(ClearAudio())] == [{"event": "clear", "streamSid": TWILIO_STREAM}]
    assert c.samples_sent == 320
    assert c.encode(PlayAudio(Frame(np.zeros(0, np.int16), 8000))) == []


def test_twilio_play_audio_must_be_8khz() -> None:
    c = started(TwilioCodec(), twilio_start())
    with pytest.raises(ValueError, match="8000 Hz"):
        c.encode(PlayAudio(tone(320, rate=16000)))


def test_twilio_ignores_outbound_track_and_empty_payload() -> None:
    c = started(TwilioCodec(), twilio_start())
    out = {"event": "media", "media": {"track": "outbound", "payload": b64(b"\xff" * 160)}}
    assert isinstance(c.decode(json.dumps(out))[0], Ignored)
    assert isinstance(c.decode(json.dumps({"event": "media", "media": {"payload": ""}}))[0], Ignored)


@pytest.mark.parametrize(
    "message, match",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"no_event": 1}', "'event'"),
        ('{"event": 5}', "'event'"),
        ('{"event": "media", "media": {"payload": "%%%"}}', "base64"),
        ('{"event": "media", "media": {"payload": 12}}', "base64"),
        ('{"event": "media", "media": []}', "'media'"),
        ('{"event": "dtmf", "dtmf": {"digit": "x"}}', "DTMF"),
        ('{"event": "mark", "mark": {"name": 3}}', "mark.name"),
        ('{"event": "start", "start": {"streamSid": "MZ1"}}', "callSid"),
        ('{"event": "start", "start": {"streamSid": "MZ1", "callSid": "CA1", "mediaFormat": {"encoding": "audio/opus"}}}', "encoding"),
        ('{"event": "start", "start": {"streamSid": "MZ1", "callSid": "CA1", "mediaFormat": {"sampleRate": 16000}}}', "8000 Hz"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_twilio_malformed_messages_raise_protocol_error(message: str | bytes, match: str) -> None:
    c = started(TwilioCodec(), twilio_start())
    with pytest.raises(ProtocolError, match=match):
        c.decode(message)


def test_media_before_start_and_duplicate_start_are_protocol_errors() -> None:
    c = TwilioCodec()
    with pytest.raises(ProtocolError, match="before the stream has started") as e:
        c.decode(json.dumps({"event": "media", "media": {"payload": b64(b"\xff")}}))
    assert e.value.code == "stream_not_started"
    with pytest.raises(ProtocolError):
        c.encode(SetMark("m"))
    c.decode(twilio_start())
    with pytest.raises(ProtocolError, match="already started"):
        c.decode(twilio_start())
    assert c.stream_id == TWILIO_STREAM  # a failed decode leaves the state alone


# --------------------------------------------------------------------------- Telnyx


def test_telnyx_documented_inbound_messages() -> None:
    c = TelnyxCodec()
    assert c.decode(json.dumps({"event": "connected", "version": "1.0.0"})) == [Ignored("connected")]
    (start,) = c.decode(telnyx_start())
    assert start == CallStarted(
        stream_id=TELNYX_STREAM,
        call_id=TELNYX_CALL,
        from_number="+13122010094",
        to_number="+13122123456",
        params={"customer_id": "customer_123", "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d"},
        encoding="pcmu",
        rate=8000,
    )
    pcm = tone(160).samples
    media = {"event": "media", "sequence_number": "4", "stream_id": TELNYX_STREAM,
             "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": b64(ulaw_encode(pcm))}}
    (audio,) = c.decode(json.dumps(media))
    assert isinstance(audio, CallAudio) and np.array_equal(audio.frame.samples, ulaw_decode(ulaw_encode(pcm)))
    media["media"]["track"] = "outbound"
    assert isinstance(c.decode(json.dumps(media))[0], Ignored)
    assert c.decode(json.dumps({"event": "dtmf", "stream_id": TELNYX_STREAM, "dtmf": {"digit": "#"}})) == [Dtmf("#")]
    assert c.decode(json.dumps({"event": "mark", "stream_id": TELNYX_STREAM, "mark": {"name": "m7"}})) == [MarkAck("m7")]
    error = {"stream_id": TELNYX_STREAM, "event": "error", "sequence_number": "6",
             "error": {"title": "rate_limit_reached", "code": "100005", "detail": "Too many requests"}}
    assert c.decode(json.dumps(error)) == [StreamError("100005", "rate_limit_reached: Too many requests")]
    error["payload"] = error.pop("error")
    assert c.decode(json.dumps(error)) == [StreamError("100005", "rate_limit_reached: Too many requests")]
    stop = {"event": "stop", "sequence_number": "5", "stream_id": TELNYX_STREAM,
            "stop": {"user_id": "3E6F995F-85F7-4705-9741-53B116D28237", "call_control_id": TELNYX_CALL}}
    assert c.decode(json.dumps(stop)) == [CallStopped("stop")]


def test_telnyx_outbound_wire_shapes_and_pcma() -> None:
    c = started(TelnyxCodec(), telnyx_start("PCMA"))
    assert c.encoding == "pcma"
    frame = tone(160)
    (media,) = c.encode(PlayAudio(frame))
    assert json.loads(media) == {"event": "media", "media": {"payload": b64(alaw_encode(frame.samples))}}
    assert [json.loads(m) for m in c.encode(SetMark("m1"))] == [{"event": "mark", "mark": {"name": "m1"}}]
    assert [json.loads(m) for m in c.encode(ClearAudio())] == [{"event": "clear"}]
    payload = b64(alaw_encode(frame.samples))
    (audio,) = c.decode(json.dumps({"event": "media", "media": {"track": "inbound", "payload": payload}}))
    assert np.array_equal(audio.frame.samples, alaw_decode(alaw_encode(frame.samples)))


def test_telnyx_legacy_encoding_name_and_l16_big_endian() -> None:
    legacy = started(TelnyxCodec(), telnyx_start("audio/x-mulaw"))
    assert legacy.encoding == "pcmu"
    c = started(TelnyxCodec(), telnyx_start("L16", 16000))
    frame = tone(320, rate=16000)
    (media,) = c.encode(PlayAudio(frame))
    raw = base64.b64decode(json.loads(media)["media"]["payload"])
    assert raw == frame.samples.astype(">i2").tobytes()
    (audio,) = c.decode(json.dumps({"event": "media", "media": {"payload": b64(raw)}}))
    assert audio.frame.rate == 16000 and np.array_equal(audio.frame.samples, frame.samples)
    with pytest.raises(ProtocolError, match="odd number"):
        c.decode(json.dumps({"event": "media", "media": {"payload": b64(b"\x00\x01\x02")}}))


def test_telnyx_unsupported_codec_is_a_clear_error() -> None:
    with pytest.raises(ProtocolError, match="PCMU, PCMA or L16"):
        TelnyxCodec().decode(telnyx_start("G722", 16000))


# --------------------------------------------------------------------------- Plivo


def test_plivo_documented_inbound_messages() -> None:
    c = PlivoCodec()
    (start,) = c.decode(plivo_start())
    assert start == CallStarted(
        stream_id=PLIVO_STREAM,
        call_id=PLIVO_CALL,
        from_number="15551230000",
        to_number=None,
        params={"userId": "12345", "sessionId": "abcxyz", "from": "15551230000"},
        encoding="pcmu",
        rate=8000,
    )
    pcm = tone(160).samples
    media = {"event": "media", "sequenceNumber": 42, "streamId": PLIVO_STREAM,
             "media": {"track": "inbound", "timestamp": "1705312200000", "chunk": 41, "payload": b64(ulaw_encode(pcm))},
             "extra_headers": "userId=12345;sessionId=abcxyz"}
    (audio,) = c.decode(json.dumps(media))
    assert isinstance(audio, CallAudio) and np.array_equal(audio.frame.samples, ulaw_decode(ulaw_encode(pcm)))
    assert c.decode(json.dumps({"event": "dtmf", "streamId": PLIVO_STREAM, "dtmf": {"digit": "5"}})) == [Dtmf("5")]
    played = {"event": "playedStream", "streamId": PLIVO_STREAM, "name": "customer greeting audio"}
    assert c.decode(json.dumps(played)) == [MarkAck("customer greeting audio")]
    played["event"] = "played"  # the name Plivo's support article uses
    assert c.decode(json.dumps(played)) == [MarkAck("customer greeting audio")]
    assert c.decode(json.dumps({"event": "clearedAudio", "streamId": PLIVO_STREAM})) == [ClearAck()]


def test_plivo_outbound_wire_shapes() -> None:
    c = started(PlivoCodec(), plivo_start())
    frame = tone(160)
    (play,) = c.encode(PlayAudio(frame))
    assert json.loads(play) == {
        "event": "playAudio",
        "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": b64(ulaw_encode(frame.samples))},
    }
    assert [json.loads(m) for m in c.encode(SetMark("greeting"))] == [
        {"event": "checkpoint", "streamId": PLIVO_STREAM, "name": "greeting"}
    ]
    assert [json.loads(m) for m in c.encode(ClearAudio())] == [{"event": "clearAudio", "streamId": PLIVO_STREAM}]


def test_plivo_l16_16khz_stream() -> None:
    c = started(PlivoCodec(), plivo_start("audio/x-l16", 16000))
    frame = tone(320, rate=16000)
    (play,) = c.encode(PlayAudio(frame))
    media = json.loads(play)["media"]
    assert media["contentType"] == "audio/x-l16" and media["sampleRate"] == 16000
    assert base64.b64decode(media["payload"]) == frame.samples.astype("<i2").tobytes()
    (audio,) = c.decode(json.dumps({"event": "media", "media": {"payload": media["payload"]}}))
    assert np.array_equal(audio.frame.samples, frame.samples)


def test_plivo_extra_headers_comma_form() -> None:
    start = json.loads(plivo_start())
    start["extra_headers"] = "test1=12,test2=123"
    (event,) = PlivoCodec().decode(json.dumps(start))
    assert event.params == {"test1": "12", "test2": "123"}


# --------------------------------------------------------------------------- Vonage


def test_vonage_documented_messages() -> None:
    c = VonageCodec()
    (start,) = c.decode(vonage_connected())
    assert start == CallStarted(
        stream_id="aaaa-bbbb",
        call_id="aaaa-bbbb",
        from_number="447700900000",
        to_number="447700900001",
        params={"call_uuid": "aaaa-bbbb", "from": "447700900000", "to": "447700900001", "token": "t"},
        encoding="l16",
        rate=16000,
    )
    frame = tone(320, rate=16000)
    (audio,) = c.decode(frame.samples.astype("<i2").tobytes())
    assert isinstance(audio, CallAudio) and audio.frame.rate == 16000
    assert np.array_equal(audio.frame.samples, frame.samples)
    assert c.decode(json.dumps({"event": "websocket:dtmf", "digit": "5", "duration": 260})) == [Dtmf("5")]
    assert c.decode(json.dumps({"event": "websocket:cleared"})) == [ClearAck()]
    assert c.decode(json.dumps({"event": "websocket:notify", "payload": {"name": "m7"}})) == [MarkAck("m7")]
    assert isinstance(c.decode(json.dumps({"event": "websocket:notify", "payload": {}}))[0], Ignored)
    with pytest.raises(ProtocolError, match="odd number"):
        c.decode(b"\x00\x01\x02")


def test_vonage_outbound_frames_are_20ms_and_zero_padded() -> None:
    c = started(VonageCodec(), vonage_connected(16000))
    frame = tone(700, rate=16000)  # 43.75 ms -> three 640-byte messages
    wire = c.encode(PlayAudio(frame))
    assert [len(w) for w in wire] == [640, 640, 640] and all(isinstance(w, bytes) for w in wire)
    joined = np.frombuffer(b"".join(wire), dtype="<i2")
    assert np.array_equal(joined[:700], frame.samples) and not joined[700:].any()
    assert [json.loads(m) for m in c.encode(ClearAudio())] == [{"action": "clear"}]
    assert [json.loads(m) for m in c.encode(SetMark("m1"))] == [{"action": "notify", "payload": {"name": "m1"}}]
    assert VonageCodec(marks=False).encode(SetMark("m1")) == []
    narrow = started(VonageCodec(), vonage_connected(8000))
    assert [len(w) for w in narrow.encode(PlayAudio(tone(160)))] == [320]
    assert narrow.frame_bytes == 320


def test_vonage_audio_before_connected_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="before the stream has started"):
        VonageCodec().decode(b"\x00\x00")
    with pytest.raises(ProtocolError, match="audio/l16"):
        VonageCodec().decode(json.dumps({"event": "websocket:connected", "content-type": "audio/pcmu;rate=8000"}))


def test_codec_for_knows_every_carrier() -> None:
    assert [type(codec_for(n)).__name__ for n in ("twilio", "Telnyx", "plivo", "vonage")] == [
        "TwilioCodec", "TelnyxCodec", "PlivoCodec", "VonageCodec"
    ]
    with pytest.raises(ValueError):
        codec_for("bandwidth")


# --------------------------------------------------------------------------- properties

pcm_arrays = st.lists(st.integers(-32768, 32767), min_size=1, max_size=400).map(lambda v: np.array(v, dtype=np.int16))


@given(pcm_arrays)
def test_twilio_round_trip_is_g711_exact(pcm: np.ndarray) -> None:
    sender = started(TwilioCodec(), twilio_start())
    receiver = started(TwilioCodec(), twilio_start())
    (wire,) = sender.encode(PlayAudio(Frame(pcm, 8000)))
    (audio,) = receiver.decode(wire)  # what we send is a valid inbound media message too
    assert np.array_equal(audio.frame.samples, ulaw_decode(ulaw_encode(pcm)))


@given(pcm_arrays, st.sampled_from(["PCMU", "PCMA", "L16"]))
def test_telnyx_round_trip(pcm: np.ndarray, encoding: str) -> None:
    rate = 16000 if encoding == "L16" else 8000
    sender = started(TelnyxCodec(), telnyx_start(encoding, rate))
    receiver = started(TelnyxCodec(), telnyx_start(encoding, rate))
    (audio,) = receiver.decode(sender.encode(PlayAudio(Frame(pcm, rate)))[0])
    expected = {"PCMU": ulaw_decode(ulaw_encode(pcm)), "PCMA": alaw_decode(alaw_encode(pcm)), "L16": pcm}[encoding]
    assert np.array_equal(audio.frame.samples, expected)


@given(pcm_arrays)
def test_vonage_round_trip_pads_to_whole_frames(pcm: np.ndarray) -> None:
    sender = started(VonageCodec(), vonage_connected(16000))
    receiver = started(VonageCodec(), vonage_connected(16000))
    got = np.concatenate([receiver.decode(w)[0].frame.samples for w in sender.encode(PlayAudio(Frame(pcm, 16000)))])
    assert len(got) % 320 == 0 and np.array_equal(got[: len(pcm)], pcm) and not got[len(pcm):].any()


# --------------------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
payloads = st.one_of(
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=24),
    json_values,
)
EVENTS = [
    "connected", "start", "media", "dtmf", "mark", "stop", "error", "playedStream", "played", "clearedAudio",
    "websocket:connected", "websocket:dtmf", "websocket:notify", "websocket:cleared",
]
KEYS = [
    "start", "media", "dtmf", "mark", "stop", "error", "streamSid", "stream_id", "streamId", "name", "digit",
    "payload", "content-type", "extra_headers", "call_uuid",
]
near_valid_inner = st.fixed_dictionaries(
    {},
    optional={
        "streamSid": json_values, "callSid": json_values, "stream_id": json_values, "call_control_id": json_values,
        "streamId": json_values, "callId": json_values, "customParameters": json_values,
        "custom_parameters": json_values, "client_state": json_values, "from": json_values, "to": json_values,
        "mediaFormat": st.fixed_dictionaries({}, optional={"encoding": st.sampled_from(["audio/x-mulaw", "PCMA", "L16", "x"]) | json_values, "sampleRate": st.integers() | json_values}),
        "media_format": st.fixed_dictionaries({}, optional={"encoding": st.sampled_from(["PCMU", "L16"]) | json_values, "sample_rate": st.sampled_from([8000, 16000]) | json_values}),
        "payload": payloads, "track": st.sampled_from(["inbound", "outbound"]) | json_values,
        "digit": json_values, "name": json_values, "code": json_values, "title": json_values,
    },
)
near_valid_messages = st.builds(
    lambda event, fields: {"event": event, **fields},
    st.sampled_from(EVENTS) | st.text(max_size=10),
    st.dictionaries(st.sampled_from(KEYS), near_valid_inner | json_values, max_size=4),
).map(json.dumps)
any_message = st.one_of(
    near_valid_messages,
    st.text(max_size=80),
    st.binary(max_size=80),
    json_values.map(json.dumps),
    st.sampled_from(['{"event":"start"', "[" * 5000 + "]" * 5000, '{"event": "media", "media": {"payload": "AAA"}}']),
)
STARTS = {"twilio": twilio_start(), "telnyx": telnyx_start(), "plivo": plivo_start(), "vonage": vonage_connected()}


@pytest.mark.parametrize("carrier", sorted(STARTS))
@pytest.mark.parametrize("after_start", [False, True])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(any_message, min_size=1, max_size=5))
def test_decode_raises_only_protocol_errors(carrier: str, after_start: bool, messages: list[Any]) -> None:
    codec = codec_for(carrier)
    if after_start:
        codec.decode(STARTS[carrier])
    for message in messages:
        before = codec.started
        try:
            events = codec.decode(message)
        except ProtocolError as e:
            assert str(e) and e.code
            assert codec.started is before  # a rejected message changes nothing
            continue
        assert isinstance(events, list)
        for event in events:
            assert isinstance(event, (CallStarted, CallAudio, Dtmf, MarkAck, ClearAck, CallStopped, StreamError, Ignored))
            if isinstance(event, CallAudio):
                assert event.frame.samples.dtype == np.int16 and event.frame.rate == codec.rate
            if isinstance(event, CallStarted):
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in event.params.items())
