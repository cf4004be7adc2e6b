"""Telephony around the media-stream codecs: call control (REST), webhook signatures, TwiML.

The codecs themselves live in `moksori.protocols` (`telephony`, `twilio`, `telnyx`, `plivo`,
`vonage`); they are pure. Everything here that talks to a network is in `control`.
"""

from moksori.telephony.control import (
    CallControl,
    PlivoCallControl,
    TelnyxCallControl,
    TwilioCallControl,
    VonageCallControl,
    call_control_for,
)
from moksori.telephony.signatures import (
    check_stream_token,
    make_stream_token,
    plivo_signature_v3,
    twilio_signature,
    verify_plivo_v3,
    verify_telnyx,
    verify_telnyx_request,
    verify_twilio,
    verify_vonage,
)
from moksori.telephony.twiml import connect_stream_twiml, dial_twiml, hangup_twiml, plivo_dial_xml

__all__ = [
    "CallControl",
    "PlivoCallControl",
    "TelnyxCallControl",
    "TwilioCallControl",
    "VonageCallControl",
    "call_control_for",
    "check_stream_token",
    "connect_stream_twiml",
    "dial_twiml",
    "hangup_twiml",
    "make_stream_token",
    "plivo_dial_xml",
    "plivo_signature_v3",
    "twilio_signature",
    "verify_plivo_v3",
    "verify_telnyx",
    "verify_telnyx_request",
    "verify_twilio",
    "verify_vonage",
]
