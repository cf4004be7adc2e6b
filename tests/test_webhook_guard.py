"""The carriers' webhooks all refuse the same way (`server/webhook_guard.py`): 503 when not
configured, 413 over 64 KiB (also enforced by `server/guard.py` for these paths), 403 for a body that cannot be what was signed or a bad signature
(counted), and only then the route's own answer.

The real app on 127.0.0.1 (uvicorn on a thread) with scripted fake models: what is under test
is the HTTP plumbing; the signatures are made with Twilio's own validator and our reference
implementations of Plivo's and Vonage's schemes (tests/test_telephony_signatures.py pins those).
"""

from __future__ import annotations

import hashlib
import time
import xml.etree.ElementTree as ET

import httpx
import jwt
import pytest

from moksori.server.app import create_app
from moksori.server.webhook_guard import MAX_WEBHOOK_BYTES, SeenOnce, body_fields, secret_text
from moksori.settings import load_settings
from moksori.telephony.signatures import plivo_signature_v3
from moksori.testing.fakes import fake_stack
from servers import ThreadedASGIServer, free_port

TWILIO_TOKEN = "twilio-token-for-guard-tests"
PLIVO_TOKEN = "plivo-token-for-guard-tests"
VONAGE_SECRET = "vonage-secret-for-guard-tests"
TRANSFER_TO = "+15551234567"


@pytest.fixture(scope="module")
def server():
    port = free_port()
    settings = load_settings(public_url=f"http://127.0.0.1:{port}", twilio={"auth_token": TWILIO_TOKEN},
                             plivo={"auth_token": PLIVO_TOKEN}, vonage={"signature_secret": VONAGE_SECRET},
                             telephony={"stream_secret": "s", "transfer_numbers": [TRANSFER_TO]})
    app = create_app(settings, fake_stack())
    srv = ThreadedASGIServer(app, port=port).start()
    srv.app = app
    try:
        yield srv
    finally:
        srv.stop()


def failures(server) -> int:
    return server.app.state.moksori.metrics.auth_failures


def plivo_headers(url: str, params: dict[str, str] | None, method: str) -> dict[str, str]:
    sig = plivo_signature_v3(PLIVO_TOKEN, url, "n1", params, method=method)
    return {"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": "n1"}


def test_body_fields() -> None:
    assert body_fields(b"", "application/x-www-form-urlencoded") == []
    assert body_fields(b"a=1&b=", "") == [("a", "1"), ("b", "")]
    assert body_fields(b'{"a": "x", "n": 2, "o": {}}', "application/json") == [("a", "x"), ("n", "2")]
    assert body_fields(b"[1, 2]", "application/json") == []
    assert body_fields(b"not json", "application/json") == []
    assert body_fields(b"[" * 3000 + b"]" * 3000, "application/json") == []  # nested past the recursion limit
    assert body_fields(b'{"CallSid": "\\ud800"}', "application/json") is None  # a lone surrogate: cannot be signed
    assert body_fields(b"a=\xff\xfe", "") is None  # not UTF-8: cannot be what a carrier signed
    assert body_fields("&".join(f"k{i}=v" for i in range(300)).encode(), "") is None  # too many fields
    assert secret_text(None) is None and secret_text("") is None and secret_text("x") == "x"


def test_plivo_transfer_signed_get_dials_only_allowed_numbers(server) -> None:
    url = f"{server.url}/telephony/plivo/transfer?to=%2B15551234567"
    r = httpx.get(url, headers=plivo_headers(url, None, "GET"))
    assert r.status_code == 200, r.text
    assert ET.fromstring(r.text).find("./Dial/Number").text == TRANSFER_TO
    other = f"{server.url}/telephony/plivo/transfer?to=%2B19005550000"  # signed, but not allowed
    assert httpx.get(other, headers=plivo_headers(other, None, "GET")).status_code == 403
    # signed for another URL, unsigned, signed with another key: forbidden and counted
    before = failures(server)
    for headers in (plivo_headers(other, None, "GET"), {},
                    {"X-Plivo-Signature-V3": "bm90", "X-Plivo-Signature-V3-Nonce": "n1"}):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 403 and "<Dial" not in r.text
    assert failures(server) == before + 3


def test_plivo_transfer_signed_post(server) -> None:
    url = f"{server.url}/telephony/plivo/transfer?to=%2B15551234567"
    params = {"CallUUID": "c1", "From": "+15550001111"}
    r = httpx.post(url, data=params, headers=plivo_headers(url, params, "POST"))
    assert r.status_code == 200, r.text
    tampered = dict(params, From="+15550009999")
    assert httpx.post(url, data=tampered, headers=plivo_headers(url, params, "POST")).status_code == 403


@pytest.mark.parametrize("path", ["/telephony/twilio/voice", "/telephony/plivo/transfer",
                                  "/telephony/plivo/answer", "/telephony/vonage/answer"])
def test_every_webhook_refuses_the_same_way(server, path: str) -> None:
    url = server.url + path
    before = failures(server)
    big = httpx.post(url, content=b"a=" + b"x" * MAX_WEBHOOK_BYTES,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413  # the middleware's limit for webhooks, or the guard's own
    assert failures(server) == before  # too large is not an auth failure
    for body in (b"CallSid=\xff\xfe", "&".join(f"k{i}=v" for i in range(300)).encode(), b"CallSid=CA1"):
        r = httpx.post(url, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 403 and r.text == "forbidden", (body[:20], r.text)
    assert failures(server) == before + 3


@pytest.mark.parametrize("path", ["/telephony/twilio/voice", "/telephony/plivo/transfer",
                                  "/telephony/plivo/answer", "/telephony/vonage/answer"])
def test_every_webhook_is_503_when_not_configured(path: str) -> None:
    srv = ThreadedASGIServer(create_app(load_settings(), fake_stack())).start()
    try:
        r = httpx.post(srv.url + path, data={"CallSid": "x"})
        assert r.status_code == 503 and r.text == "telephony is not configured"
    finally:
        srv.stop()


def test_vonage_json_answer_passes_the_guard(server) -> None:
    body = b'{"uuid": "u-1", "from": "15550001111", "to": "15550002222"}'
    token = jwt.encode({"iat": int(time.time()), "jti": "j", "iss": "Vonage",
                        "payload_hash": hashlib.sha256(body).hexdigest()}, VONAGE_SECRET, algorithm="HS256")
    r = httpx.post(f"{server.url}/telephony/vonage/answer", content=body,
                   headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()[0]["endpoint"][0]["headers"]["call_uuid"] == "u-1"


def test_seen_once_remembers_until_expiry_and_forgets_the_oldest_when_full() -> None:
    """The answer URLs' replay memory (pure logic, times passed in)."""
    seen = SeenOnce(limit=2)
    assert seen.first("a", until=10, now=0) and not seen.first("a", until=10, now=5)
    assert seen.first("b", until=100, now=5)
    assert seen.first("c", until=100, now=50)  # full: "a" has expired and goes
    assert seen.first("a", until=60, now=50)  # so it is new again (its request no longer verifies anyway)
    assert sorted(seen.expiry) == ["a", "c"]  # full of fresh ones: the oldest ("b") was forgotten
    assert not seen.first("c", until=100, now=55)
