"""Phone calls (published by `moksori.telephony`): start, DTMF, carrier errors, hang-up, transfer, end."""

from __future__ import annotations

from .base import Event, _event, _wire


@_event
class CallStarted(Event):
    type = "call.started"
    carrier: str
    call_id: str
    stream_id: str
    from_number: str | None = _wire("from")
    to_number: str | None = _wire("to")
    encoding: str
    rate: int


@_event
class CallBadMessage(Event):
    type = "call.bad_message"
    reason: str
    count: int


@_event
class CallDtmf(Event):
    type = "call.dtmf"
    digit: str
    digits: str  # the last 64 keys pressed


@_event
class CallCarrierError(Event):
    type = "call.carrier_error"
    code: str
    message: str


@_event
class CallFirstAudio(Event):
    type = "call.first_audio"
    after_start_ms: int


@_event
class CallHangup(Event):
    type = "call.hangup"
    by: str
    via: str  # rest | stream


@_event
class CallTransferred(Event):
    type = "call.transferred"
    to: str


@_event
class CallEnded(Event):
    type = "call.ended"
    reason: str
