"""The Telnyx TeXML voice URL (`POST /telephony/telnyx/answer`): a request signed with the
account's Ed25519 key gets TeXML `<Connect><Stream>` whose token opens the Telnyx media stream;
an unsigned, tampered, stale or replayed one gets 403 and no stream, and a server without
MOKSORI_TELNYX_PUBLIC_KEY (or MOKSORI_PUBLIC_URL) answers 503.

Requests are signed here the way Telnyx signs webhooks: Ed25519 over "{telnyx-timestamp}|{raw
body}", base64 in `telnyx-signature-ed25519`, with a key pair made for the test (the server gets
the public half, base64, as the portal shows it). The end-to-end call is a real `moksori serve`
with the embedded models and a simulated Telnyx (tests/carrier_sim.py) streaming real 8 kHz
speech; the signature cases use the app in-process with scripted fake models. None of this was
run against Telnyx itself.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from carrier_sim import CarrierSim
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir, requires_speech, utt, word_errors
from test_telephony_calls import call_summary, events, messages, speech8k, wait_replies, wait_warm

from moksori.server.app import create_app
from moksori.settings import load_settings
from moksori.telephony.signatures import check_stream_token
from moksori.testing.fakes import fake_stack

PUBLIC_URL = "https://voice.example.test"
STREAM_SECRET = "stream-secret-for-tests"
API_KEY = "sk-moksori-test-key-for-telnyx-answer"
PRIVATE = Ed25519PrivateKey.generate()
PUBLIC_B64 = base64.b64encode(PRIVATE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
PATH = "/telephony/telnyx/answer"


def texml_params(call_sid: str) -> dict[str, str]:
    """The fields Telnyx sends a TeXML voice URL (its "Instruction Fetching" page)."""
    return {"AccountSid": "6a9a7976-012e-45d2-9258-6f5dc68d861e", "CallSid": call_sid, "CallSidLegacy": call_sid,
            "From": "+13122010091", "To": "+13122010090", "ConnectionId": "1568109700606592442",
            "ApiVersion": "2010-04-01", "CallStatus": "ringing", "Direction": "inbound"}


def sign(body: bytes, *, ts: int | None = None, key: Ed25519PrivateKey = PRIVATE) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    signature = key.sign(f"{ts}|".encode() + body)
    return {"telnyx-timestamp": str(ts), "telnyx-signature-ed25519": base64.b64encode(signature).decode()}


def post(base: str, params: dict[str, str], headers: dict[str, str] | None, *, body: bytes | None = None,
         api_key: str | None = None) -> httpx.Response:
    """POST the form `params` (or `body` as it is) with `headers` (None: signed for this body)."""
    raw = urlencode(params).encode() if body is None else body
    h = {"Content-Type": "application/x-www-form-urlencoded", **(sign(raw) if headers is None else headers)}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return httpx.post(base + PATH, content=raw, headers=h, timeout=10)


def stream_of(texml: str) -> tuple[ET.Element, dict[str, str]]:
    root = ET.fromstring(texml)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None, texml
    return stream, {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


def refused(r: httpx.Response, status: int = 403) -> bool:
    return r.status_code == status and "<Stream" not in r.text and "token" not in r.text


# --------------------------------------------------------------------------- signatures (in-process)


@pytest.fixture(scope="module")
def app_server() -> Iterator[ThreadedASGIServer]:
    port = free_port()
    settings = load_settings(public_url=f"http://127.0.0.1:{port}", telnyx={"public_key": PUBLIC_B64},
                             telephony={"stream_secret": STREAM_SECRET}, api_keys=[API_KEY],
                             agent={"greeting": "Hello there."})
    app = create_app(settings, fake_stack())
    srv = ThreadedASGIServer(app, port=port).start()
    srv.app = app
    try:
        yield srv
    finally:
        srv.stop()


def test_signed_post_and_get_answer_with_texml_and_a_token_for_the_call(app_server: ThreadedASGIServer) -> None:
    # POST (form-encoded, fields signed in the body), with no API key though the server has keys:
    # the carrier has none
    params = texml_params("v3:post-call-0001")
    r = post(app_server.url, params, None)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/xml")
    stream, sp = stream_of(r.text)
    assert stream.get("url") == f"ws://127.0.0.1:{app_server.port}/telephony/telnyx/stream"
    assert (stream.get("bidirectionalMode"), stream.get("bidirectionalCodec"), stream.get("codec")) == \
        ("rtp", "PCMU", "PCMU")
    assert sp["from"] == "+13122010091" and sp["to"] == "+13122010090"
    now = int(time.time())
    assert check_stream_token(STREAM_SECRET.encode(), sp["token"], "v3:post-call-0001", carrier="telnyx", now=now)
    assert not check_stream_token(STREAM_SECRET.encode(), sp["token"], "v3:post-call-0001", carrier="twilio", now=now)

    # GET (the TeXML application's default method) is refused even when signed: Telnyx signs only
    # "{timestamp}|" for it, not the query that names the call
    params = texml_params("v3:get-call-0002")
    r = httpx.get(app_server.url + PATH, params=params, headers=sign(b""), timeout=10)
    assert r.status_code == 405 and "POST" in r.text and r.headers.get("allow") == "POST"
    assert "<Stream" not in r.text

    # numbers with characters a stream parameter should not carry are clipped, not echoed
    r = post(app_server.url, {**texml_params("v3:post-call-0003"), "From": "+1 555<script>"}, None)
    _, sp = stream_of(r.text)
    assert sp["from"] == "+1555script"


def test_bad_tampered_and_unsigned_requests_are_403(app_server: ThreadedASGIServer) -> None:
    params = texml_params("v3:bad-call-0001")
    body = urlencode(params).encode()
    good = sign(body)
    other_key = Ed25519PrivateKey.generate()
    tampered = urlencode({**params, "CallSid": "v3:someone-elses-call"}).encode()
    cases = {
        "unsigned": post(app_server.url, params, {}),
        "no timestamp": post(app_server.url, params, {"telnyx-signature-ed25519": good["telnyx-signature-ed25519"]}),
        "another key": post(app_server.url, params, sign(body, key=other_key)),
        "tampered body": post(app_server.url, params, good, body=tampered),
        "other timestamp": post(app_server.url, params, {**good, "telnyx-timestamp": str(int(time.time()) + 1)}),
        "not base64": post(app_server.url, params, {**good, "telnyx-signature-ed25519": "not base64!"}),
    }
    for name, r in cases.items():
        assert refused(r), f"{name}: {r.status_code} {r.text[:200]}"


def test_stale_and_replayed_signatures_are_403(app_server: ThreadedASGIServer) -> None:
    params = texml_params("v3:stale-call-0001")
    body = urlencode(params).encode()
    now = int(time.time())
    assert refused(post(app_server.url, params, sign(body, ts=now - 330)))  # older than 5 min: a replay
    assert refused(post(app_server.url, params, sign(body, ts=now + 330)))  # a clock far ahead
    assert post(app_server.url, params, sign(body, ts=now - 240)).status_code == 200  # late, but in time
    # a fresh signature is taken once for its call: a copy of it (its headers) gets nothing more
    headers = sign(body)
    assert post(app_server.url, params, headers).status_code == 200
    assert refused(post(app_server.url, params, headers))


def test_a_get_is_refused_whatever_its_signature(app_server: ThreadedASGIServer) -> None:
    """Ed25519 is deterministic and a GET's signed text is only "{timestamp}|": every call whose
    TeXML Telnyx fetched in one second would carry the same headers, so one copied header could
    fetch a token for any CallSid. A GET gets 405 and no stream, signed or not."""
    for headers in (sign(b"", ts=int(time.time()) - 5), sign(b""), {}):
        r = httpx.get(app_server.url + PATH, params=texml_params("v3:get-0001"), headers=headers, timeout=10)
        assert r.status_code == 405 and "<Stream" not in r.text, r.text


def test_it_refuses_like_the_other_webhooks(app_server: ThreadedASGIServer) -> None:
    """`webhook_guard.py`: 413 past 64 KiB (not an auth failure), 403 for a body that cannot be
    what was signed, even with a valid signature over it, and every 403 counted."""
    from moksori.server.webhook_guard import MAX_WEBHOOK_BYTES

    metrics = app_server.app.state.moksori.metrics
    before = metrics.auth_failures
    big = b"CallSid=v3%3Abig&From=" + b"1" * MAX_WEBHOOK_BYTES
    assert refused(post(app_server.url, {}, None, body=big), 413)
    assert metrics.auth_failures == before
    not_utf8 = b"CallSid=v3%3Ax&From=\xff\xfe"
    assert refused(post(app_server.url, {}, None, body=not_utf8))  # signed, but no carrier sent it
    assert refused(post(app_server.url, texml_params("v3:unsigned"), {}))
    assert metrics.auth_failures == before + 2
    # signed, but no CallSid: no call to make a token for
    r = post(app_server.url, {"From": "+13122010091"}, None)
    assert r.status_code == 400 and "<Stream" not in r.text


def test_not_configured_is_503() -> None:
    port = free_port()
    configs = {
        "no public key": load_settings(public_url=f"http://127.0.0.1:{port}"),
        "no public URL": load_settings(telnyx={"public_key": PUBLIC_B64}),
        "a key that is not one": load_settings(public_url=f"http://127.0.0.1:{port}",
                                               telnyx={"public_key": "bm90IGEga2V5"}),
    }
    params = texml_params("v3:unconfigured-0001")
    for name, settings in configs.items():
        with ThreadedASGIServer(create_app(settings, fake_stack()), port=port) as srv:
            r = post(srv.url, params, None)
            assert refused(r, 503), f"{name}: {r.status_code} {r.text[:200]}"


# --------------------------------------------------------------------------- a whole call (real models)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    env = {
        "MOKSORI_DATA_DIR": str(prepared_data_dir(tmp_path_factory)),
        "MOKSORI_LANGUAGE": "en",
        "MOKSORI_PUBLIC_URL": PUBLIC_URL,
        "MOKSORI_TELNYX_PUBLIC_KEY": PUBLIC_B64,
        "MOKSORI_TELEPHONY_DEBUG": "1",
        "MOKSORI_LLM_MAX_TOKENS": "40",
        "MOKSORI_CONFIG": "",
        "PYTHONUNBUFFERED": "1",
    }
    with ServerProcess([sys.executable, "-m", "moksori", "serve", "--port", str(port)], port=port,
                       ready_path="/health", ready_timeout_s=120, env=env) as srv:
        wait_warm(srv.url)
        yield srv


@pytest.mark.models
@pytest.mark.slow
@requires_speech
async def test_answer_then_stream_a_whole_call_with_real_speech(server: ServerProcess) -> None:
    call_sid = "v3:KBnLO0ZK3DhKM5s7bE9VluaSmKsOchKht_fUYvxcp8ysbmzCCtpkmA"
    r = await asyncio.to_thread(post, server.url, texml_params(call_sid), None)
    assert r.status_code == 200, r.text
    stream, stream_params = stream_of(r.text)
    url = urlsplit(stream.get("url", ""))
    assert (url.scheme, url.netloc, url.path) == ("wss", "voice.example.test", "/telephony/telnyx/stream")

    # Telnyx opens the URL the TeXML names (here: our port) and passes the <Parameter>s back in
    # `start.custom_parameters`, with the call control id (= the TeXML CallSid) in `start`
    async with CarrierSim.connect(f"ws://127.0.0.1:{server.port}{url.path}", dialect="telnyx", call_id=call_sid,
                                  stream_id="telnyx-stream-1", params=stream_params) as call:
        await call.start()
        greeting_at = await call.wait_audio(timeout=10)
        await wait_replies(server, call_sid, 1)
        await call.wait_quiet(quiet_s=0.3)
        audio = speech8k("tel_006")
        stamps = await call.speak(audio)
        reply_at = await call.wait_audio(after=stamps[-1], timeout=60)
        await wait_replies(server, call_sid, 2)
        await call.wait_quiet(quiet_s=0.3)
        reply_seconds = call.audio_between(reply_at)
        await call.hang_up()
    print(f"\ngreeting after {1000 * (greeting_at - call.started_at):.0f} ms; reply "
          f"{reply_at - stamps[-1]:.2f} s after the last frame, {reply_seconds:.1f} s of it")
    assert reply_seconds > 0.3

    s: dict[str, Any] = call_summary(server.url, call_sid)
    assert s["carrier"] == "telnyx" and s["end_reason"] == "carrier_stop"
    started = events(s, "call.started")[0]
    assert started["rate"] == 8000
    convo = messages(s)
    assert [role for role, _ in convo] == ["assistant", "user", "assistant"], convo
    errors, n = word_errors(utt("tel_006").transcript, convo[1][1])
    assert errors / n <= 0.3, convo
    assert convo[2][1].strip()

    # the token opened one stream: the same TeXML answer cannot open a second one
    async with CarrierSim.connect(f"ws://127.0.0.1:{server.port}{url.path}", dialect="telnyx", call_id=call_sid,
                                  stream_id="telnyx-stream-2", params=stream_params) as again:
        await again.start()
        assert await again.wait_closed(5) == 1008
        assert again.audio_between(0) == 0
