"""Call-flow XML documents: Twilio TwiML, Telnyx TeXML, Plivo XML (and Vonage's NCCO, JSON).

Built with `xml.etree`, so every attribute and text is escaped correctly; characters XML 1.0
cannot carry (most control characters) raise `ValueError` rather than produce a broken document.

    connect_stream_twiml("wss://host/twilio/stream", {"token": tok, "from": "+1555..."})
    -> <?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://...">
       <Parameter name="token" value="..."/>...</Stream></Connect></Response>

`<Connect><Stream>` is Twilio's bidirectional stream; parameters arrive in the stream's `start`
message as `start.customParameters`. Telnyx TeXML takes the same document plus its own `<Stream>`
attributes (`telnyx_stream_texml`); its parameters arrive as `start.custom_parameters`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def connect_stream_twiml(stream_url: str, params: Mapping[str, str] | None = None, *, declaration: bool = True) -> str:
    """TwiML that connects the call to a bidirectional media stream at `stream_url` (wss://)."""
    return _render(_connect_stream(stream_url, params, {}), declaration)


TELNYX_CODECS = ("PCMU", "PCMA")


def telnyx_stream_texml(stream_url: str, params: Mapping[str, str] | None = None, *, codec: str = "PCMU",
                        declaration: bool = True) -> str:
    """Telnyx TeXML that connects the call to a bidirectional RTP media stream at `stream_url`.

    `<Connect>` holds the call while the stream lasts (`<Start>` would run on to the end of the
    document and hang up). `codec` is asked for both ways: Telnyx transcodes the caller's audio
    to it (it can between PCMU and PCMA; a call in another codec streams in that codec, which the
    stream route refuses) and takes our audio in it (`bidirectionalMode="rtp"`: raw payloads in
    the stream's codec, as `protocols/telnyx.py` sends them). The track is the default,
    `inbound_track`: the caller only."""
    if codec not in TELNYX_CODECS:
        raise ValueError(f"codec must be one of {', '.join(TELNYX_CODECS)}")
    attrs = {"bidirectionalMode": "rtp", "bidirectionalCodec": codec, "codec": codec}
    return _render(_connect_stream(stream_url, params, attrs), declaration)


def _connect_stream(stream_url: str, params: Mapping[str, str] | None, attrs: Mapping[str, str]) -> ET.Element:
    if not stream_url:
        raise ValueError("the stream URL is empty")
    response = ET.Element("Response")
    stream = ET.SubElement(ET.SubElement(response, "Connect"), "Stream", {"url": _check(stream_url), **attrs})
    for name, value in (params or {}).items():
        ET.SubElement(stream, "Parameter", {"name": _check(str(name)), "value": _check(str(value))})
    return response


def dial_twiml(number: str, *, caller_id: str | None = None, declaration: bool = True) -> str:
    """TwiML that dials `number` (a transfer: the current call is bridged to it)."""
    if not number or not number.strip():
        raise ValueError("the number to dial is empty")
    response = ET.Element("Response")
    dial = ET.SubElement(response, "Dial", {"callerId": _check(caller_id)} if caller_id else {})
    dial.text = _check(number.strip())
    return _render(response, declaration)


def hangup_twiml(*, declaration: bool = True) -> str:
    """TwiML that ends the call."""
    response = ET.Element("Response")
    ET.SubElement(response, "Hangup")
    return _render(response, declaration)


def plivo_dial_xml(number: str, *, caller_id: str | None = None, declaration: bool = True) -> str:
    """Plivo XML that dials `number`: serve it at the `aleg_url` a Plivo transfer points to."""
    if not number or not number.strip():
        raise ValueError("the number to dial is empty")
    response = ET.Element("Response")
    dial = ET.SubElement(response, "Dial", {"callerId": _check(caller_id)} if caller_id else {})
    ET.SubElement(dial, "Number").text = _check(number.strip())
    return _render(response, declaration)


def plivo_stream_xml(stream_url: str, extra_headers: Mapping[str, str] | None = None, *,
                     declaration: bool = True) -> str:
    """Plivo XML for an answer URL: a bidirectional μ-law 8 kHz audio stream to `stream_url`.

    `extra_headers` reach the stream's `start` event (Plivo's "k=v,k=v" attribute)."""
    if not stream_url:
        raise ValueError("the stream URL is empty")
    attrs = {"bidirectional": "true", "keepCallAlive": "true", "contentType": "audio/x-mulaw;rate=8000"}
    if extra_headers:
        for k, v in extra_headers.items():
            if any(ch in f"{k}{v}" for ch in ",;="):
                raise ValueError("extra header names and values cannot contain ',', ';' or '='")
        attrs["extraHeaders"] = _check(",".join(f"{k}={v}" for k, v in extra_headers.items()))
    response = ET.Element("Response")
    ET.SubElement(response, "Stream", attrs).text = _check(stream_url)
    return _render(response, declaration)


def vonage_stream_ncco(stream_url: str, headers: Mapping[str, str] | None = None, *,
                      rate: int = 16000) -> list[dict[str, Any]]:
    """A Vonage NCCO for an answer URL: connect the call to a WebSocket (L16 at `rate`).

    `headers` arrive in the stream's first `websocket:connected` message."""
    if not stream_url:
        raise ValueError("the stream URL is empty")
    endpoint = {"type": "websocket", "uri": stream_url, "content-type": f"audio/l16;rate={rate}",
                "headers": dict(headers or {})}
    return [{"action": "connect", "endpoint": [endpoint]}]


def _check(value: str) -> str:
    bad = _XML_INVALID.search(value)
    if bad:
        raise ValueError(f"character U+{ord(bad.group()):04X} cannot appear in XML")
    return value


def _render(root: ET.Element, declaration: bool) -> str:
    body = ET.tostring(root, encoding="unicode", short_empty_elements=True)
    return XML_DECLARATION + body if declaration else body
