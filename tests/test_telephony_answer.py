"""Plivo and Vonage answer URLs: signed requests get stream instructions whose token opens a
real media stream; unsigned or tampered ones get 403.

The server is the real app on 127.0.0.1 (uvicorn on a thread) with scripted fake models: what
is under test is the webhook and stream plumbing, not the models (tests/test_telephony_calls.py
runs whole calls with the real models).
"""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET

import httpx
import jwt
import pytest
import websockets

from moksori.server.app import create_app
from moksori.settings import load_settings
from moksori.telephony.signatures import check_stream_token, plivo_signature_v3
from moksori.testing.fakes import fake_stack
from servers import ThreadedASGIServer, free_port

PLIVO_TOKEN = "plivo-auth-token-for-tests"
VONAGE_SECRET = "vonage-signature-secret-for-tests"
STREAM_SECRET = "stream-secret-for-tests"


@pytest.fixture(scope="module")
def server():
    port = free_port()  # first: the public URL must name it
    settings = load_settings(public_url=f"http://127.0.0.1:{port}",
                             plivo={"auth_token": PLIVO_TOKEN}, vonage={"signature_secret": VONAGE_SECRET},
                             telephony={"stream_secret": STREAM_SECRET},
                             agent={"greeting": "Hello there."})
    app = create_app(settings, fake_stack())
    srv = ThreadedASGIServer(app, port=port).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_plivo_answer_signed_returns_a_stream_with_a_valid_token(server) -> None:
    url = f"{server.url}/telephony/plivo/answer"
    params = {"CallUUID": "call-123", "From": "+15550001111", "To": "+15550002222"}
    nonce = "nonce-1"
    sig = plivo_signature_v3(PLIVO_TOKEN, url, nonce, params, method="POST")
    r = httpx.post(url, data=params, headers={"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": nonce})
    assert r.status_code == 200, r.text
    stream = ET.fromstring(r.text).find("Stream")
    assert stream is not None and stream.text == f"ws://127.0.0.1:{server.port}/telephony/plivo/stream"
    assert stream.get("bidirectional") == "true"
    headers = dict(kv.split("=", 1) for kv in stream.get("extraHeaders").split(","))
    assert headers["from"] == "+15550001111"
    assert check_stream_token(STREAM_SECRET.encode(), headers["token"], "call-123", carrier="plivo",
                              now=int(time.time()))

    # the token opens the stream, and the agent greets the caller
    async def call() -> str:
        async with websockets.connect(stream.text) as ws:
            await ws.send(json.dumps({"event": "start", "start": {
                "streamId": "s-1", "callId": "call-123", "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
                "extra_headers": stream.get("extraHeaders")}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg.get("event") == "playAudio":
                    return msg["media"]["contentType"]

    assert asyncio.run(call()) == "audio/x-mulaw"


def test_plivo_answer_rejects_unsigned_and_tampered(server) -> None:
    url = f"{server.url}/telephony/plivo/answer"
    params = {"CallUUID": "call-9", "From": "+1", "To": "+2"}
    assert httpx.post(url, data=params).status_code == 403
    sig = plivo_signature_v3(PLIVO_TOKEN, url, "n", params, method="POST")
    tampered = {**params, "To": "+3"}
    r = httpx.post(url, data=tampered, headers={"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": "n"})
    assert r.status_code == 403 and "<Stream" not in r.text


def test_a_stream_with_a_token_for_another_call_is_closed(server) -> None:
    url = f"{server.url}/telephony/plivo/answer"
    params = {"CallUUID": "call-A"}
    sig = plivo_signature_v3(PLIVO_TOKEN, url, "n2", params, method="POST")
    r = httpx.post(url, data=params, headers={"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": "n2"})
    extra = ET.fromstring(r.text).find("Stream").get("extraHeaders")

    async def call() -> int | None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/telephony/plivo/stream") as ws:
            await ws.send(json.dumps({"event": "start", "start": {
                "streamId": "s-2", "callId": "call-B", "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
                "extra_headers": extra}))
            try:
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert msg.get("event") != "playAudio", "audio must not flow without a valid token"
            except websockets.ConnectionClosed as e:
                return e.rcvd.code if e.rcvd else None

    assert asyncio.run(call()) == 1008


def _vonage_jwt(body: bytes | None = None, secret: str = VONAGE_SECRET, jti: str = "j1") -> str:
    import hashlib

    claims = {"iat": int(time.time()), "jti": jti, "iss": "Vonage", "api_key": "k"}
    if body:
        claims["payload_hash"] = hashlib.sha256(body).hexdigest()
    return jwt.encode(claims, secret, algorithm="HS256")


def test_vonage_answer_signed_returns_an_ncco_websocket(server) -> None:
    r = httpx.get(f"{server.url}/telephony/vonage/answer",
                  params={"uuid": "uuid-77", "from": "15550001111", "to": "15550002222"},
                  headers={"Authorization": f"Bearer {_vonage_jwt()}"})
    assert r.status_code == 200, r.text
    ncco = r.json()
    endpoint = ncco[0]["endpoint"][0]
    assert ncco[0]["action"] == "connect" and endpoint["type"] == "websocket"
    assert endpoint["uri"].endswith("/telephony/vonage/stream")
    assert endpoint["content-type"] == "audio/l16;rate=16000"
    assert endpoint["headers"]["call_uuid"] == "uuid-77"
    assert check_stream_token(STREAM_SECRET.encode(), endpoint["headers"]["token"], "uuid-77", carrier="vonage",
                              now=int(time.time()))

    async def call() -> int:
        async with websockets.connect(endpoint["uri"]) as ws:
            await ws.send(json.dumps({"event": "websocket:connected", "content-type": endpoint["content-type"],
                                      **endpoint["headers"]}))
            while True:
                msg = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(msg, bytes):
                    return len(msg)

    assert asyncio.run(call()) == 640  # 20 ms of 16 kHz L16: the greeting


def test_vonage_answer_rejects_unsigned_and_wrong_secret(server) -> None:
    url = f"{server.url}/telephony/vonage/answer"
    assert httpx.get(url, params={"uuid": "u"}).status_code == 403
    bad = _vonage_jwt(secret="not-the-secret-but-long-enough-for-hs256")
    assert httpx.get(url, params={"uuid": "u"}, headers={"Authorization": f"Bearer {bad}"}).status_code == 403
    # a POST whose body was changed after signing fails the payload hash
    body = json.dumps({"uuid": "u", "to": "1"}).encode()
    token = _vonage_jwt(body)
    changed = json.dumps({"uuid": "u", "to": "2"}).encode()
    r = httpx.post(url, content=changed, headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
    assert r.status_code == 403


def test_answer_urls_are_503_when_not_configured() -> None:
    app = create_app(load_settings(), fake_stack())
    srv = ThreadedASGIServer(app).start()
    try:
        assert httpx.post(f"{srv.url}/telephony/plivo/answer", data={"CallUUID": "x"}).status_code == 503
        assert httpx.get(f"{srv.url}/telephony/vonage/answer", params={"uuid": "x"}).status_code == 503
    finally:
        srv.stop()


def replayed(r: httpx.Response) -> bool:
    """A refused replay: 403, a JSON error that says so, and no stream instructions."""
    return (r.status_code == 403 and r.headers["content-type"].startswith("application/json")
            and r.json()["error"]["code"] == "replayed_request" and "token" not in r.text)


def test_a_replayed_plivo_answer_is_refused(server) -> None:
    """Plivo V3 signs no time: without a memory of nonces, a copy of one signed request would mint
    stream tokens for ever."""
    url = f"{server.url}/telephony/plivo/answer"
    params = {"CallUUID": "call-replay", "From": "+15550001111", "To": "+15550002222"}
    sig = plivo_signature_v3(PLIVO_TOKEN, url, "nonce-replay", params, method="POST")
    headers = {"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": "nonce-replay"}
    assert httpx.post(url, data=params, headers=headers).status_code == 200
    r = httpx.post(url, data=params, headers=headers)
    assert replayed(r) and "nonce" in r.json()["error"]["message"], r.text
    # a GET answer URL the same way; a new nonce (a new request from Plivo) passes
    get_url = f"{url}?CallUUID=call-replay-get"
    for nonce in ("nonce-get-1", "nonce-get-2"):
        headers = {"X-Plivo-Signature-V3": plivo_signature_v3(PLIVO_TOKEN, get_url, nonce, method="GET"),
                   "X-Plivo-Signature-V3-Nonce": nonce}
        assert httpx.get(get_url, headers=headers).status_code == 200
        assert replayed(httpx.get(get_url, headers=headers))


def test_a_replayed_vonage_jwt_is_refused(server) -> None:
    """Vonage's JWT does not cover a GET's query: a fresh JWT could name any call. Its `jti` is
    taken once, so a copy gets nothing, whatever call it names."""
    url = f"{server.url}/telephony/vonage/answer"
    auth = {"Authorization": f"Bearer {_vonage_jwt(jti='jti-replay-1')}"}
    assert httpx.get(url, params={"uuid": "uuid-first"}, headers=auth).status_code == 200
    for uuid in ("uuid-first", "uuid-other"):
        r = httpx.get(url, params={"uuid": uuid}, headers=auth)
        assert replayed(r) and "jti" in r.json()["error"]["message"], r.text
    # a POST's JWT the same way
    body = json.dumps({"uuid": "uuid-post", "from": "1", "to": "2"}).encode()
    auth = {"Authorization": f"Bearer {_vonage_jwt(body, jti='jti-replay-2')}", "Content-Type": "application/json"}
    assert httpx.post(url, content=body, headers=auth).status_code == 200
    assert replayed(httpx.post(url, content=body, headers=auth))
    # a JWT without a jti cannot be checked for replay: refused
    no_jti = jwt.encode({"iat": int(time.time()), "iss": "Vonage"}, VONAGE_SECRET, algorithm="HS256")
    r = httpx.get(url, params={"uuid": "uuid-x"}, headers={"Authorization": f"Bearer {no_jti}"})
    assert r.status_code == 403 and "token" not in r.text
