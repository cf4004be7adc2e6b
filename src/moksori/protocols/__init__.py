"""Wire formats, pure: bytes in, events out, no sockets.

The carriers' media streams are re-exported here: `codec_for(carrier)` (or a codec class), the
inbound events it parses and the outbound commands it encodes. The Realtime protocol is
`moksori.protocols.realtime`. Call control, webhook signatures and TwiML are in `moksori.telephony`.
"""

from moksori.protocols.plivo import PlivoCodec
from moksori.protocols.telephony import (
    ByteOrder,
    CallAudio,
    CallStarted,
    CallStopped,
    ClearAudio,
    Dtmf,
    Encoding,
    Ignored,
    InboundEvent,
    MarkAck,
    OutboundCommand,
    PlayAudio,
    SetMark,
    StreamError,
    TelephonyCodec,
    WireMessage,
    codec_for,
)
from moksori.protocols.telnyx import TelnyxCodec
from moksori.protocols.twilio import TwilioCodec
from moksori.protocols.vonage import VonageCodec

__all__ = [
    "TelephonyCodec", "codec_for", "TwilioCodec", "TelnyxCodec", "PlivoCodec", "VonageCodec",
    "Encoding", "ByteOrder", "WireMessage",
    "InboundEvent", "CallStarted", "CallAudio", "Dtmf", "MarkAck", "CallStopped", "StreamError", "Ignored",
    "OutboundCommand", "PlayAudio", "SetMark", "ClearAudio",
]
