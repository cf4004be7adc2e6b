"""Call control against a real HTTP server on 127.0.0.1 that records every request.

Each test asserts the method, path, auth header, content type and body that the carrier's REST
reference specifies. These were not run against the live carriers.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from pydantic import SecretStr

from moksori.errors import ConfigError, ProviderError, ProviderTimeout
from moksori.settings import PlivoSettings, Settings, TelnyxSettings, TwilioSettings, VonageSettings
from moksori.telephony.control import (
    PlivoCallControl,
    TelnyxCallControl,
    TwilioCallControl,
    VonageCallControl,
    call_control_for,
)

# --------------------------------------------------------------------------- the recording server


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    delay_s: float = 0.0


@dataclass
class Carrier:
    base: str
    requests: list[Recorded] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)  # consumed in order; then 200 {}

    def reply(self, status: int, body: object = None, delay_s: float = 0.0) -> None:
        raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.replies.append(Reply(status, raw, delay_s=delay_s))


@pytest.fixture
def carrier() -> Iterator[Carrier]:
    state = Carrier(base="")

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply = state.replies.pop(0) if state.replies else Reply()
            if reply.delay_s:
                time.sleep(reply.delay_s)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def rsa_key() -> tuple[str, Any]:
    """A Vonage application key pair (Vonage call control needs cryptography + pyjwt)."""
    pytest.importorskip("cryptography", reason="Vonage call control needs the cryptography package")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode(), key.public_key()


# --------------------------------------------------------------------------- Twilio


async def test_twilio_hangup_and_transfer(carrier: Carrier) -> None:
    async with TwilioCallControl("AC123", "secret-token", api_base=carrier.base) as control:
        await control.hangup("CA456")
        await control.transfer("CA456", "+1 (555) 123-4567")
    hangup, transfer = carrier.requests
    assert (hangup.method, hangup.path) == ("POST", "/2010-04-01/Accounts/AC123/Calls/CA456.json")
    assert hangup.headers["authorization"] == basic("AC123", "secret-token")
    assert hangup.headers["content-type"] == "application/x-www-form-urlencoded"
    assert hangup.form() == {"Status": ["completed"]}
    assert (transfer.method, transfer.path) == ("POST", "/2010-04-01/Accounts/AC123/Calls/CA456.json")
    assert transfer.form() == {"Twiml": ["<Response><Dial>+15551234567</Dial></Response>"]}


# --------------------------------------------------------------------------- Telnyx


async def test_telnyx_hangup_and_transfer(carrier: Carrier) -> None:
    async with TelnyxCallControl("KEY0123", api_base=carrier.base) as control:
        await control.hangup("v3:abc-_123")
        await control.transfer("v3:abc-_123", "+15551234567")
    hangup, transfer = carrier.requests
    assert (hangup.method, hangup.path) == ("POST", "/v2/calls/v3:abc-_123/actions/hangup")
    assert hangup.headers["authorization"] == "Bearer KEY0123"
    assert hangup.headers["content-type"] == "application/json"
    assert hangup.json() == {}
    assert (transfer.method, transfer.path) == ("POST", "/v2/calls/v3:abc-_123/actions/transfer")
    assert transfer.headers["authorization"] == "Bearer KEY0123"
    assert transfer.json() == {"to": "+15551234567"}


async def test_telnyx_hangup_of_an_ended_call_is_quiet(carrier: Carrier) -> None:
    carrier.reply(422, {"errors": [{"code": "90018", "title": "Call has already ended", "detail": "This call is no longer active"}]})
    carrier.reply(422, {"errors": [{"code": "90015", "title": "Invalid destination", "detail": "bad number"}]})
    async with TelnyxCallControl("KEY0123", api_base=carrier.base) as control:
        await control.hangup("v3:gone")
        with pytest.raises(ProviderError) as e:
            await control.transfer("v3:live", "+15551234567")
    assert e.value.status == 422 and not e.value.retryable
    assert "bad number" in str(e.value) and "90015" in str(e.value)


# --------------------------------------------------------------------------- Plivo


async def test_plivo_hangup_and_transfer(carrier: Carrier) -> None:
    carrier.reply(204)
    carrier.reply(202, {"message": "call transferred", "api_id": "08c94608-58bd-11e1-86da-adf28403fe48"})
    control = PlivoCallControl("MA123", "plivo-token", transfer_url="https://me.example/plivo/transfer", api_base=carrier.base)
    async with control:
        await control.hangup("1ed7fd89-df77-4ebf-8196-d5cf7222c918")
        await control.transfer("1ed7fd89-df77-4ebf-8196-d5cf7222c918", "+15551234567")
    hangup, transfer = carrier.requests
    assert (hangup.method, hangup.path) == ("DELETE", "/v1/Account/MA123/Call/1ed7fd89-df77-4ebf-8196-d5cf7222c918/")
    assert hangup.headers["authorization"] == basic("MA123", "plivo-token")
    assert (transfer.method, transfer.path) == ("POST", "/v1/Account/MA123/Call/1ed7fd89-df77-4ebf-8196-d5cf7222c918/")
    assert transfer.headers["authorization"] == basic("MA123", "plivo-token")
    assert transfer.headers["content-type"] == "application/json"
    assert transfer.json() == {
        "legs": "aleg",
        "aleg_url": "https://me.example/plivo/transfer?to=%2B15551234567",
        "aleg_method": "POST",
    }


async def test_plivo_hangup_of_an_ended_call_and_missing_transfer_url(carrier: Carrier) -> None:
    carrier.reply(404, {"api_id": "x", "error": "not found"})
    async with PlivoCallControl("MA123", "plivo-token", api_base=carrier.base) as control:
        await control.hangup("gone")
        with pytest.raises(ProviderError, match="transfer_url") as e:
            await control.transfer("live", "+15551234567")
    assert not e.value.retryable
    assert len(carrier.requests) == 1


# --------------------------------------------------------------------------- Vonage


async def test_vonage_hangup_and_transfer(carrier: Carrier, rsa_key: tuple[str, Any]) -> None:
    pem, public = rsa_key
    carrier.reply(204)
    carrier.reply(204)
    control = VonageCallControl("aaaaaaaa-bbbb-cccc-dddd-0123456789ab", pem, api_base=carrier.base, clock=lambda: 1_700_000_000)
    async with control:
        await control.hangup("63f61863-4a51-4f6b-86e1-46edebcf9356")
        await control.transfer("63f61863-4a51-4f6b-86e1-46edebcf9356", "+447700900000")
    hangup, transfer = carrier.requests
    assert (hangup.method, hangup.path) == ("PUT", "/v1/calls/63f61863-4a51-4f6b-86e1-46edebcf9356")
    assert hangup.headers["content-type"] == "application/json"
    assert hangup.json() == {"action": "hangup"}
    assert transfer.json() == {
        "action": "transfer",
        "destination": {"type": "ncco", "ncco": [{"action": "connect", "endpoint": [{"type": "phone", "number": "447700900000"}]}]},
    }
    tokens = []
    for request in (hangup, transfer):
        scheme, token = request.headers["authorization"].split(" ", 1)
        assert scheme == "Bearer"
        assert jwt.get_unverified_header(token)["alg"] == "RS256"
        claims = jwt.decode(token, public, algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False})
        assert claims["application_id"] == "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
        assert claims["iat"] == 1_700_000_000 and claims["exp"] > claims["iat"]
        tokens.append(claims["jti"])
    assert tokens[0] != tokens[1]  # a fresh jti per request


def test_vonage_private_key_from_a_file_and_bad_keys(tmp_path, rsa_key: tuple[str, Any]) -> None:
    pem, _ = rsa_key
    path = tmp_path / "private.key"
    path.write_text(pem)
    assert VonageCallControl("app", str(path)).token()
    with pytest.raises(ConfigError):
        VonageCallControl("app", "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----")
    with pytest.raises(ConfigError):
        VonageCallControl("app", str(tmp_path / "missing.key"))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "status, body, retryable, message",
    [
        (500, {"code": 20500, "message": "Internal Server Error", "status": 500}, True, "Internal Server Error"),
        (503, b"upstream unavailable", True, "upstream unavailable"),
        (429, {"code": 20429, "message": "Too Many Requests"}, True, "Too Many Requests"),
        (401, {"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}, False, "Authenticate"),
        (404, {"code": 20404, "message": "The requested resource was not found"}, False, "not found"),
    ],
)
async def test_twilio_errors_become_provider_errors(carrier: Carrier, status: int, body: object, retryable: bool, message: str) -> None:
    carrier.reply(status, body)
    async with TwilioCallControl("AC123", "tok", api_base=carrier.base) as control:
        with pytest.raises(ProviderError) as e:
            await control.hangup("CA456")
    assert e.value.status == status and e.value.retryable is retryable and e.value.provider == "twilio"
    assert message in str(e.value)


async def test_carrier_error_messages_are_kept(carrier: Carrier, rsa_key: tuple[str, Any]) -> None:
    carrier.reply(401, {"errors": [{"code": "10009", "title": "Authentication failed", "detail": "The API key is invalid"}]})
    carrier.reply(500, {"api_id": "x", "error": "internal error"})
    carrier.reply(401, {"type": "https://developer.nexmo.com/api-errors#unauthorized", "title": "Unauthorized", "detail": "Invalid token"})
    async with TelnyxCallControl("bad", api_base=carrier.base) as telnyx:
        with pytest.raises(ProviderError, match="API key is invalid") as e1:
            await telnyx.hangup("v3:x")
    async with PlivoCallControl("MA1", "t", api_base=carrier.base) as plivo:
        with pytest.raises(ProviderError, match="internal error") as e2:
            await plivo.hangup("u")
    async with VonageCallControl("app", rsa_key[0], api_base=carrier.base) as vonage:
        with pytest.raises(ProviderError, match="Invalid token") as e3:
            await vonage.hangup("u")
    assert (e1.value.retryable, e2.value.retryable, e3.value.retryable) == (False, True, False)
    assert (e1.value.provider, e2.value.provider, e3.value.provider) == ("telnyx", "plivo", "vonage")


async def test_unreachable_carrier_is_retryable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with TelnyxCallControl("KEY", api_base=f"http://127.0.0.1:{port}") as control:
        with pytest.raises(ProviderError) as e:
            await control.hangup("v3:x")
    assert e.value.retryable and e.value.status is None and "cannot reach" in str(e.value)


async def test_timeout_is_a_retryable_provider_timeout(carrier: Carrier) -> None:
    carrier.reply(200, {}, delay_s=1.0)
    async with TwilioCallControl("AC1", "tok", api_base=carrier.base, timeout=0.2) as control:
        with pytest.raises(ProviderTimeout) as e:
            await control.hangup("CA1")
    assert e.value.retryable


async def test_bad_api_base_is_not_retryable() -> None:
    async with TwilioCallControl("AC1", "tok", api_base="ftp://127.0.0.1") as control:
        with pytest.raises(ProviderError) as e:
            await control.hangup("CA1")
    assert not e.value.retryable


@pytest.mark.parametrize("number", ["5551234567", "+0123", "+1555abc", "", "+1234567890123456"])
async def test_transfer_needs_an_e164_number(carrier: Carrier, number: str) -> None:
    async with TwilioCallControl("AC1", "tok", api_base=carrier.base) as control:
        with pytest.raises(ProviderError, match="E.164") as e:
            await control.transfer("CA1", number)
    assert not e.value.retryable and carrier.requests == []


async def test_call_ids_are_escaped_into_one_path_segment(carrier: Carrier) -> None:
    async with TelnyxCallControl("KEY", api_base=carrier.base + "/") as control:
        await control.hangup("v3:a/../b?c#d")
        await control.hangup("..")
    assert [r.path for r in carrier.requests] == [
        "/v2/calls/v3:a%2F..%2Fb%3Fc%23d/actions/hangup",
        "/v2/calls/%2E%2E/actions/hangup",
    ]


async def test_an_injected_client_is_used_and_left_open(carrier: Carrier) -> None:
    async with httpx.AsyncClient() as client:
        control = TwilioCallControl("AC1", "tok", api_base=carrier.base, client=client)
        await control.hangup("CA1")
        await control.aclose()
        assert not client.is_closed
    assert len(carrier.requests) == 1


# --------------------------------------------------------------------------- factory


def test_factory_returns_none_without_credentials() -> None:
    empty = Settings()
    assert all(call_control_for(c, empty) is None for c in ("twilio", "telnyx", "plivo", "vonage"))
    assert call_control_for("twilio", TwilioSettings(account_sid="AC1")) is None
    with pytest.raises(ValueError):
        call_control_for("bandwidth", empty)


async def test_factory_builds_each_carrier(rsa_key: tuple[str, Any], carrier: Carrier) -> None:
    settings = Settings(
        twilio=TwilioSettings(account_sid="AC1", auth_token=SecretStr("t"), api_base=carrier.base),
        telnyx=TelnyxSettings(api_key=SecretStr("k"), api_base=carrier.base),
        plivo=PlivoSettings(auth_id="MA1", auth_token=SecretStr("t"), api_base=carrier.base),
        vonage=VonageSettings(application_id="app", private_key=SecretStr(rsa_key[0]), api_base=carrier.base),
    )
    built = {c: call_control_for(c, settings, plivo_transfer_url="https://me.example/t") for c in ("twilio", "telnyx", "plivo", "vonage")}
    assert {c: type(v).__name__ for c, v in built.items()} == {
        "twilio": "TwilioCallControl", "telnyx": "TelnyxCallControl", "plivo": "PlivoCallControl", "vonage": "VonageCallControl"
    }
    assert isinstance(call_control_for("telnyx", settings.telnyx), TelnyxCallControl)
    for control in built.values():
        assert control is not None
        await control.hangup("call-1")
        await control.aclose()
    assert [r.method for r in carrier.requests] == ["POST", "POST", "DELETE", "PUT"]
    with pytest.raises(ConfigError):
        call_control_for("vonage", VonageSettings(application_id="app", private_key=SecretStr("/nonexistent/key.pem")))
