"""Webhook signatures, stream tokens and TwiML, checked against independent implementations:
Twilio's own `RequestValidator` and `VoiceResponse`, Ed25519 keys made here with `cryptography`,
vectors computed with Plivo's official SDK (plivo 4.63.0, `plivo.utils.signature_v3`), and
JWTs made with pyjwt."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import xml.etree.ElementTree as ET
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from moksori.errors import ConfigError
from moksori.telephony.signatures import (
    check_stream_token,
    make_stream_token,
    stream_token_expiry,
    plivo_signature_v3,
    twilio_signature,
    verify_plivo_v3,
    verify_telnyx,
    verify_telnyx_request,
    verify_twilio,
    verify_vonage,
)
from moksori.telephony.twiml import connect_stream_twiml, dial_twiml, hangup_twiml, plivo_dial_xml

TOKEN = "12345abcdef0123456789abcdef01234"

# --------------------------------------------------------------------------- Twilio


class MultiDict(dict):
    """Repeated form keys, in the shape Twilio's RequestValidator reads (Flask's `getall`)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__()
        self.pairs = pairs
        for k, v in pairs:
            self[k] = v

    def getall(self, key: str) -> list[str]:
        return [v for k, v in self.pairs if k == key]


@pytest.mark.parametrize(
    "url",
    [
        "https://mycompany.com/myapp.php?foo=1&bar=2",
        "https://example.com/twilio/voice",
        "https://example.com:8443/twilio/voice?a=b&c=%20d",
        "http://127.0.0.1:8000/twilio/voice",
        "https://user:pass@example.com/twilio/voice",
    ],
)
def test_twilio_signature_matches_request_validator(url: str) -> None:
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234", "From": "+12349013030", "To": "+18005551212"}
    expected = RequestValidator(TOKEN).compute_signature(url, params)
    assert twilio_signature(TOKEN, url, params) == expected
    assert verify_twilio(TOKEN, url, params, expected)
    assert RequestValidator(TOKEN).validate(url, params, twilio_signature(TOKEN, url, params))


def test_twilio_repeated_keys_match_request_validator() -> None:
    pairs = [("To", "+1555"), ("Media", "b"), ("Media", "a"), ("Media", "b"), ("From", "+1666")]
    url = "https://example.com/sms"
    expected = RequestValidator(TOKEN).compute_signature(url, MultiDict(pairs))
    assert twilio_signature(TOKEN, url, pairs) == expected
    assert twilio_signature(TOKEN, url, {"To": "+1555", "Media": ["a", "b"], "From": "+1666"}) == expected
    assert verify_twilio(TOKEN, url, pairs, expected)


def test_twilio_accepts_the_url_with_or_without_the_default_port() -> None:
    params = {"CallSid": "CA1"}
    signed_with_port = RequestValidator(TOKEN).compute_signature("https://example.com:443/voice", params)
    signed_without = RequestValidator(TOKEN).compute_signature("https://example.com/voice", params)
    for signature in (signed_with_port, signed_without):
        assert verify_twilio(TOKEN, "https://example.com/voice", params, signature)
        assert verify_twilio(TOKEN, "https://example.com:443/voice", params, signature)


def test_twilio_rejects_tampering() -> None:
    url, params = "https://example.com/voice", {"CallSid": "CA1", "From": "+1555"}
    good = twilio_signature(TOKEN, url, params)
    assert not verify_twilio(TOKEN, url, {**params, "From": "+1666"}, good)
    assert not verify_twilio(TOKEN, url + "?x=1", params, good)
    assert not verify_twilio("other-token", url, params, good)
    assert not verify_twilio(TOKEN, url, params, "")
    assert not verify_twilio(TOKEN, url, params, None)
    assert not verify_twilio(TOKEN, url, params, "ünïcode")


def test_twilio_json_body_hash() -> None:
    body = json.dumps({"CallSid": "CA1", "Status": "completed"})
    url = f"https://example.com/events?bodySHA256={hashlib.sha256(body.encode()).hexdigest()}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    assert RequestValidator(TOKEN).validate(url, body, signature)
    assert verify_twilio(TOKEN, url, None, signature, body=body)
    assert not verify_twilio(TOKEN, url, None, signature, body=body + " ")


urls = st.builds(
    lambda scheme, host, port, path, query: f"{scheme}://{host}{port}/{path}{query}",
    st.sampled_from(["http", "https"]),
    st.sampled_from(["example.com", "127.0.0.1", "voice.example.org"]),
    st.sampled_from(["", ":443", ":80", ":8080"]),
    st.text("abc/-_.~", max_size=12),
    st.sampled_from(["", "?a=1", "?a=1&b=x%20y", "?z=%2B1&a="]),
)
form = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), max_size=6)


@settings(max_examples=200, deadline=None)
@given(url=urls, params=form)
def test_twilio_matches_request_validator_on_generated_requests(url: str, params: dict[str, str]) -> None:
    validator = RequestValidator(TOKEN)
    ours = twilio_signature(TOKEN, url, params)
    assert ours == validator.compute_signature(url, params)
    assert validator.validate(url, params, ours) == verify_twilio(TOKEN, url, params, ours) is True


# --------------------------------------------------------------------------- stream tokens

SECRET = b"stream-secret-0123456789abcdef"


def test_stream_token_round_trip_and_expiry() -> None:
    token = make_stream_token(SECRET, "CA123", carrier="twilio", now=1_000_000, ttl_s=600)
    assert check_stream_token(SECRET, token, "CA123", carrier="twilio", now=1_000_000)
    assert check_stream_token(SECRET, token, "CA123", carrier="twilio", now=1_000_600)  # the last valid second
    assert not check_stream_token(SECRET, token, "CA123", carrier="twilio", now=1_000_601)
    assert not check_stream_token(SECRET, token, "CA124", carrier="twilio", now=1_000_000)
    assert not check_stream_token(b"other-secret", token, "CA123", carrier="twilio", now=1_000_000)
    version, expires, mac = token.split(".")
    assert not check_stream_token(SECRET, f"{version}.{int(expires) + 3600}.{mac}", "CA123", carrier="twilio",
                                  now=1_000_000)
    flipped = mac[:-1] + ("B" if mac[-1] == "A" else "A")
    assert not check_stream_token(SECRET, f"{version}.{expires}.{flipped}", "CA123", carrier="twilio", now=1_000_000)
    assert not check_stream_token(SECRET, None, "CA123", carrier="twilio", now=1_000_000)
    assert stream_token_expiry(token) == 1_000_600


def test_stream_token_is_made_for_one_carrier() -> None:
    token = make_stream_token(SECRET, "CA123", carrier="twilio", now=1_000_000)
    assert check_stream_token(SECRET, token, "CA123", carrier="twilio", now=1_000_000)
    for other in ("telnyx", "plivo", "vonage", ""):
        assert not check_stream_token(SECRET, token, "CA123", carrier=other, now=1_000_000)
    # the old v1 format (no carrier) is no longer accepted
    version, expires, mac = token.split(".")
    assert not check_stream_token(SECRET, f"v1.{expires}.{mac}", "CA123", carrier="twilio", now=1_000_000)


def test_stream_token_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_stream_token(b"", "CA1", carrier="twilio", now=0)
    with pytest.raises(ValueError):
        make_stream_token(SECRET, "CA1", carrier="twilio", now=0, ttl_s=0)
    with pytest.raises(ValueError):
        make_stream_token(SECRET, "CA1", carrier="", now=0)


@given(st.text(max_size=120))
def test_stream_token_never_raises_on_junk(token: str) -> None:
    assert check_stream_token(SECRET, token, "CA123", carrier="twilio", now=int(time.time())) is False


# --------------------------------------------------------------------------- Telnyx


@pytest.fixture(scope="module")
def telnyx_keys() -> tuple[Any, str]:
    pytest.importorskip("cryptography", reason="Telnyx signatures need the cryptography package")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, base64.b64encode(raw).decode()  # the portal shows the key as base64


def telnyx_sign(private: Any, timestamp: int, body: bytes) -> str:
    return base64.b64encode(private.sign(f"{timestamp}|".encode() + body)).decode()


def test_telnyx_signature(telnyx_keys: tuple[Any, str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public_b64 = telnyx_keys
    body = json.dumps({"data": {"event_type": "call.initiated", "payload": {"call_control_id": "v3:abc"}}}).encode()
    ts = 1_700_000_000
    signature = telnyx_sign(private, ts, body)
    assert verify_telnyx(public_b64, body, signature, str(ts), now=ts + 10)
    assert verify_telnyx(public_b64, body.decode(), signature, ts, now=ts)
    assert not verify_telnyx(public_b64, body + b" ", signature, str(ts), now=ts)
    assert not verify_telnyx(public_b64, body, signature, str(ts + 1), now=ts)
    assert not verify_telnyx(public_b64, body, signature, str(ts), now=ts + 301)  # a replay
    assert not verify_telnyx(public_b64, body, "not base64!", str(ts), now=ts)
    assert not verify_telnyx(public_b64, body, signature, "12abc", now=ts)
    assert not verify_telnyx(public_b64, body, None, str(ts), now=ts)
    other = Ed25519PrivateKey.generate()
    assert not verify_telnyx(public_b64, body, telnyx_sign(other, ts, body), str(ts), now=ts)
    headers = {"Telnyx-Signature-Ed25519": signature, "Telnyx-Timestamp": str(ts)}
    assert verify_telnyx_request(public_b64, body, headers, now=ts)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert verify_telnyx(pem.decode(), body, signature, str(ts), now=ts)


def test_telnyx_bad_public_key_is_a_config_error() -> None:
    pytest.importorskip("cryptography")
    with pytest.raises(ConfigError):
        verify_telnyx("not-a-key", b"{}", "AAAA", "1", now=1)


# --------------------------------------------------------------------------- Plivo

PLIVO_TOKEN = "plivo-test-token-0123456789"
# (method, url, params, nonce, signature computed by Plivo's official Python SDK 4.63.0)
PLIVO_VECTORS = [
    ("POST", "https://example.com/plivo/answer", {"CallUUID": "a1b2", "From": "+15551230000", "To": "+15559870000"},
     "n0nce-1", "CVl2o5Ma8X5etz1O681pV5Yc946mbD/NRtNYhMEJ0l8="),
    ("POST", "https://example.com/plivo/answer?b=2&a=1&a=0", {"CallUUID": "a1b2", "Digits": "12#"},
     "n0nce-2", "ksoMXT25qSSmUJLmAjPSh1RYZzHtA69jPM90b41zvsc="),
    ("GET", "https://example.com:8443/plivo/answer?x=y", {"CallUUID": "a1b2", "From": "+1 555"},
     "n0nce-3", "g6E4UxqpazNfWEn7EHUjxtUm87+XR3YL2dJiVpUzuEY="),
    ("POST", "https://example.com/plivo/answer", {}, "n0nce-4", "2BalP9gcOyVBKu5XLXLGJ0SdjEG8VcuTGCHn5ULGcH8="),
]


@pytest.mark.parametrize("method, url, params, nonce, expected", PLIVO_VECTORS)
def test_plivo_v3_matches_the_official_sdk(method: str, url: str, params: dict[str, str], nonce: str, expected: str) -> None:
    assert plivo_signature_v3(PLIVO_TOKEN, url, nonce, params, method=method) == expected
    assert verify_plivo_v3(PLIVO_TOKEN, url, nonce, expected, params, method=method)
    assert verify_plivo_v3(PLIVO_TOKEN, url, nonce, f"c29tZXRoaW5nIGVsc2U=,{expected}", params, method=method)
    assert not verify_plivo_v3(PLIVO_TOKEN, url, nonce + "x", expected, params, method=method)
    assert not verify_plivo_v3("other-token", url, nonce, expected, params, method=method)
    assert not verify_plivo_v3(PLIVO_TOKEN, url, nonce, expected, {**params, "Extra": "1"}, method=method)
    assert not verify_plivo_v3(PLIVO_TOKEN, url, None, expected, params, method=method)


# --------------------------------------------------------------------------- Vonage

VONAGE_SECRET = "vonage-signature-secret-0123456789abcdef"


def vonage_token(body: bytes, *, secret: str = VONAGE_SECRET, iat: int = 1_700_000_000) -> str:
    claims = {"iat": iat, "jti": "c5ba8f24-1a14-4c10-bfdf-3fbe8ce511b5", "iss": "Vonage", "payload_hash": hashlib.sha256(body).hexdigest(),
              "api_key": "a1b2c3d4", "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"}
    return jwt.encode(claims, secret, algorithm="HS256")


def test_vonage_signed_webhook() -> None:
    body = json.dumps({"status": "answered", "uuid": "abc"}).encode()
    token = vonage_token(body)
    assert verify_vonage(VONAGE_SECRET, f"Bearer {token}", body=body)
    assert verify_vonage(VONAGE_SECRET, token)  # the JWT alone, payload not checked
    assert not verify_vonage(VONAGE_SECRET, f"Bearer {token}", body=body + b" ")
    assert not verify_vonage("another-secret-0123456789abcdefghij", f"Bearer {token}", body=body)
    assert not verify_vonage(VONAGE_SECRET, "Bearer not.a.jwt", body=body)
    assert not verify_vonage(VONAGE_SECRET, None)
    assert verify_vonage(VONAGE_SECRET, f"Bearer {token}", body=body, now=1_700_000_100, max_age_s=300)
    assert not verify_vonage(VONAGE_SECRET, f"Bearer {token}", body=body, now=1_700_001_000, max_age_s=300)


# --------------------------------------------------------------------------- TwiML (the webhook's answer)

xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)


def tree(xml: str) -> tuple[object, ...]:
    def walk(el: ET.Element) -> tuple[object, ...]:
        return (el.tag, dict(el.attrib), (el.text or "").strip(), tuple(walk(c) for c in el))

    return walk(ET.fromstring(xml.encode("utf-8")))


def twilio_connect(url: str, params: dict[str, str]) -> str:
    response = VoiceResponse()
    stream = response.connect().stream(url=url)
    for name, value in params.items():
        stream.parameter(name=name, value=value)
    return str(response)


def test_connect_stream_twiml_matches_the_twilio_library() -> None:
    url = "wss://voice.example.com/twilio/stream?x=1&y=\"2\""
    params = {"token": "v1.1700000600.abc_-", "from": "+15551230000", "odd<name>": "a & b \"c\" 'd'"}
    ours = connect_stream_twiml(url, params)
    assert ours.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream ')
    assert tree(ours) == tree(twilio_connect(url, params))
    stream = ET.fromstring(ours.encode()).find("Connect/Stream")
    assert stream is not None and stream.get("url") == url
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == params


@settings(max_examples=150, deadline=None)
@given(url=xml_text.filter(bool), params=st.dictionaries(xml_text, xml_text, max_size=4))
def test_connect_stream_twiml_matches_on_generated_input(url: str, params: dict[str, str]) -> None:
    assert tree(connect_stream_twiml(url, params)) == tree(twilio_connect(url, params))


def test_twiml_keeps_whitespace_and_rejects_characters_xml_cannot_carry() -> None:
    xml = connect_stream_twiml("wss://x/s", {"note": "line one\nline\ttwo\r"})
    (param,) = ET.fromstring(xml.encode()).iter("Parameter")
    assert param.get("value") == "line one\nline\ttwo\r"
    with pytest.raises(ValueError):
        connect_stream_twiml("wss://x/s", {"bad": "nul\x00"})
    with pytest.raises(ValueError):
        connect_stream_twiml("", {})


def test_dial_and_hangup_twiml_match_the_twilio_library() -> None:
    dial = VoiceResponse()
    dial.dial("+15551234567")
    assert tree(dial_twiml("+15551234567")) == tree(str(dial))
    with_caller = VoiceResponse()
    with_caller.dial("+15551234567", caller_id="+15550001111")
    assert tree(dial_twiml("+15551234567", caller_id="+15550001111")) == tree(str(with_caller))
    hangup = VoiceResponse()
    hangup.hangup()
    assert tree(hangup_twiml()) == tree(str(hangup))
    assert dial_twiml("+15551234567", declaration=False) == "<Response><Dial>+15551234567</Dial></Response>"


def test_plivo_dial_xml() -> None:
    assert tree(plivo_dial_xml("+15551234567")) == (
        "Response", {}, "", (("Dial", {}, "", (("Number", {}, "+15551234567", ()),)),)
    )
