"""Phone streams against the server's limits, and carriers' junk that used to get past them.

Found by driving a real server as a buggy carrier: calls whose stream opened before the server
was full each became a session (the limit was checked only at the handshake); a started call
that sent keep-alives but no audio held its slot forever; a `\\ud800` escape in a webhook's JSON
or in a stream's call id, or JSON nested deeper than Python's recursion limit, was a 500 and a
traceback. The server is the real app on 127.0.0.1 (uvicorn on a thread) with scripted fake
models: what is under test is admission and the stream plumbing, not the models.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest
import websockets

from moksori.server.app import create_app
from moksori.settings import load_settings
from moksori.telephony.call import PhoneCall
from moksori.telephony.signatures import make_stream_token
from moksori.audio.g711 import ulaw_encode
from moksori.testing.fakes import ScriptedSTT, fake_stack, tone
from moksori.protocols import codec_for
from servers import ThreadedASGIServer, free_port

PLIVO_TOKEN = "plivo-auth-token-for-tests"
STREAM_SECRET = "stream-secret-for-tests"


@pytest.fixture(scope="module")
def server():
    port = free_port()
    settings = load_settings(public_url=f"http://127.0.0.1:{port}", plivo={"auth_token": PLIVO_TOKEN},
                             telephony={"stream_secret": STREAM_SECRET, "debug": True},
                             server={"max_sessions": 1}, agent={"greeting": "Hello there."})
    srv = ThreadedASGIServer(create_app(settings, fake_stack()), port=port).start()
    try:
        yield srv
    finally:
        srv.stop()


def plivo_start(call_id: str) -> str:
    return json.dumps({"event": "start", "start": {
        "streamId": f"s-{call_id}", "callId": call_id,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}})


def stream_url(server, call_id: str) -> str:
    token = make_stream_token(STREAM_SECRET.encode(), call_id, carrier="plivo", now=int(time.time()))
    return f"ws://127.0.0.1:{server.port}/telephony/plivo/stream?token={token}"


def refused(server, reason: str) -> int:
    text = httpx.get(f"{server.url}/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith(f'moksori_sessions_refused_total{{reason="{reason}"}}'))
    return int(float(line.split()[-1]))


def active_calls(server) -> int:
    return len(httpx.get(f"{server.url}/telephony/debug/calls").json()["active"])


async def greeted(ws) -> None:
    while True:
        if json.loads(await asyncio.wait_for(ws.recv(), 10)).get("event") == "playAudio":
            return


def test_streams_opened_before_the_server_was_full_are_refused_at_their_start(server) -> None:
    """max_sessions 1: both streams open (neither is a session yet); the first `start` gets the
    call, the second is closed with 1013 (try again later) and counted as refused."""
    async def run() -> tuple[int | None, int]:
        before = refused(server, "too_many_sessions")
        async with websockets.connect(stream_url(server, "call-a")) as a, \
                websockets.connect(stream_url(server, "call-b")) as b:
            await a.send(plivo_start("call-a"))
            await greeted(a)
            await b.send(plivo_start("call-b"))
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(b.recv(), 10)
            assert active_calls(server) == 1
            return b.close_code, refused(server, "too_many_sessions") - before

    code, counted = asyncio.run(run())
    assert code == 1013 and counted == 1

    async def retry() -> None:  # once the first call has ended, the same stream may start
        for _ in range(50):
            if active_calls(server) == 0:
                break
            await asyncio.sleep(0.1)
        async with websockets.connect(stream_url(server, "call-b")) as b:
            await b.send(plivo_start("call-b"))
            await greeted(b)

    asyncio.run(retry())


def test_streams_waiting_for_their_start_past_the_cap_are_counted_as_refused() -> None:
    port = free_port()
    settings = load_settings(public_url=f"http://127.0.0.1:{port}", telephony={"stream_secret": STREAM_SECRET},
                             server={"max_pending_streams": 2})
    with ThreadedASGIServer(create_app(settings, fake_stack()), port=port) as srv:
        async def run() -> int:
            url = f"ws://127.0.0.1:{port}/telephony/plivo/stream"
            async with websockets.connect(url), websockets.connect(url):
                with pytest.raises(websockets.InvalidStatus) as e:
                    async with websockets.connect(url):
                        pass
                return e.value.response.status_code

        assert asyncio.run(run()) == 503
        assert refused(srv, "server_busy") == 1


def test_a_call_id_no_encoder_takes_is_refused_like_a_bad_token(server) -> None:
    """A lone surrogate ("\\ud800" in the JSON) in the call id: close 1008, as for any token that
    was not made for the call, and no session."""
    async def run() -> int | None:
        url = stream_url(server, "CA1")  # a valid token, for another id
        async with websockets.connect(url) as ws:
            await ws.send(plivo_start("CA\ud800"))
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code

    assert asyncio.run(run()) == 1008
    assert active_calls(server) == 0


@pytest.mark.parametrize("body", ['{"CallUUID": "\\ud800", "From": "+1"}', "[" * 3000 + "]" * 3000],
                         ids=["lone-surrogate", "nested-too-deep"])
def test_webhook_json_that_no_signature_can_cover_is_forbidden(server, body: str) -> None:
    r = httpx.post(f"{server.url}/telephony/plivo/answer", content=body.encode(),
                   headers={"Content-Type": "application/json", "X-Plivo-Signature-V3": "junk",
                            "X-Plivo-Signature-V3-Nonce": "n"})
    assert r.status_code == 403
    r = httpx.post(f"{server.url}/v1/telephony/calls/call-x/transfer", content=body.encode(),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"


def test_a_started_call_that_sends_keepalives_but_no_audio_ends() -> None:
    """Carriers stream audio all the time: a leg that sends only other messages is gone, and must
    not hold its slot (the idle time here is 1.5 s instead of 30)."""
    async def run() -> tuple[str | None, float]:
        secret = b"secret-0123456789"
        call = PhoneCall("plivo", codec_for("plivo"), stack=fake_stack(), settings=load_settings(),
                         send=_discard, secret=secret, idle_timeout_s=1.5,
                         url_token=make_stream_token(secret, "call-k", carrier="plivo", now=int(time.time())))
        try:
            await call.feed(plivo_start("call-k"))
            assert call.session is not None
            t0 = time.monotonic()
            while not call.ended.is_set() and time.monotonic() - t0 < 10:
                await call.feed(json.dumps({"event": "ping"}))  # not audio: ignored
                await asyncio.sleep(0.2)
            return call.end_reason, time.monotonic() - t0
        finally:
            await call.close()

    reason, took = asyncio.run(run())
    assert reason == "carrier_silent" and took < 5


def test_a_caller_who_hangs_up_right_after_speaking_has_their_words_kept() -> None:
    """The carrier's stop came before the turn's silence was heard: the turn was dropped with the
    session, and the record held only the greeting. Its words are now transcribed and kept."""
    async def run() -> list[tuple[str, str]]:
        secret = b"secret-0123456789"
        stack = fake_stack(stt=ScriptedSTT(["a gold ring will please most any girl."]))
        call = PhoneCall("plivo", codec_for("plivo"), stack=stack, settings=load_settings(agent={"greeting": ""}),
                         send=_discard, secret=secret,
                         url_token=make_stream_token(secret, "call-w", carrier="plivo", now=int(time.time())))
        try:
            await call.feed(plivo_start("call-w"))
            speech = tone(1.2, rate=8000)
            for i in range(0, len(speech.samples), 160):  # 20 ms media frames, in real time
                payload = base64.b64encode(ulaw_encode(speech.samples[i:i + 160])).decode()
                await call.feed(json.dumps({"event": "media", "media": {"payload": payload}}))
                await asyncio.sleep(0.02)
            await call.feed(json.dumps({"event": "stop"}))
            assert call.ended.is_set() and call.session is not None
            session = call.session
        finally:
            await call.close()
        return [(i.role, i.text) for i in session.memory.items]

    assert asyncio.run(run()) == [("user", "a gold ring will please most any girl.")]


async def _discard(wire: str | bytes) -> None:
    pass
