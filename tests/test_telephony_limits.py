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
import contextlib
import base64
import json
import time

import httpx
import numpy as np
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


# --------------------------------------------------------------------------- bad starts, one stream per call
# Found by a fake carrier against a real server: a start at a rate no carrier uses (Vonage
# audio/l16;rate=1000, Telnyx L16 at 1001 Hz) was admitted and greeted but the agent stayed
# silent; an unsupported codec (Telnyx OPUS, Plivo audio/opus) or a Vonage stream with no call id
# left the socket open until the start timeout (or made a call whose id was ""); the same call id
# could be live on two sockets, and the hang-up API ended only one of them.


def start_message(carrier: str, call_id: str, *, encoding: str | None = None, rate: int = 8000,
                  token: str | None = None) -> str:
    """A carrier's start as its docs show it, with the stream token in its custom parameters."""
    tok = token if token is not None else make_stream_token(STREAM_SECRET.encode(), call_id, carrier=carrier,
                                                            now=int(time.time()))
    if carrier == "telnyx":
        return json.dumps({"event": "start", "stream_id": f"s-{call_id}", "start": {
            "call_control_id": call_id, "from": "+15550001111", "to": "+15550002222",
            "custom_parameters": {"token": tok},
            "media_format": {"encoding": encoding or "PCMU", "sample_rate": rate, "channels": 1}}})
    if carrier == "plivo":
        return json.dumps({"event": "start", "start": {
            "streamId": f"s-{call_id}", "callId": call_id,
            "mediaFormat": {"encoding": encoding or "audio/x-mulaw", "sampleRate": rate}},
            "extra_headers": f"token={tok}"})
    if carrier == "vonage":
        connected = {"event": "websocket:connected", "content-type": f"{encoding or 'audio/l16'};rate={rate}",
                     "token": tok}
        if call_id:
            connected["call_uuid"] = call_id
        return json.dumps(connected)
    raise ValueError(carrier)


async def refused_start(server, carrier: str, start: str) -> tuple[int | None, str, float, int]:
    """Open a stream, send `start` and media after it until the server closes the socket:
    (close code, close reason, seconds from the start to the close, agent media messages)."""
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/telephony/{carrier}/stream") as ws:
        await ws.send(start)
        t0 = time.monotonic()
        media = 0

        async def keep_streaming() -> None:  # a carrier streams audio whatever it is told
            silence = b"\0\0" * 160
            while True:
                with contextlib.suppress(websockets.ConnectionClosed):
                    if carrier == "vonage":
                        await ws.send(silence)
                    else:
                        await ws.send(json.dumps({"event": "media", "media": {
                            "track": "inbound", "payload": base64.b64encode(silence).decode()}}))
                await asyncio.sleep(0.02)

        streaming = asyncio.create_task(keep_streaming())
        try:
            while time.monotonic() - t0 < 4:  # the start timeout (10 s) would close it after this
                try:
                    message = await asyncio.wait_for(ws.recv(), 4.5 - (time.monotonic() - t0))
                except (websockets.ConnectionClosed, asyncio.TimeoutError):
                    break
                media += isinstance(message, bytes) or '"playAudio"' in message or '"media"' in message
        finally:
            streaming.cancel()
            await asyncio.gather(streaming, return_exceptions=True)
        return ws.close_code, ws.close_reason or "", time.monotonic() - t0, media


@pytest.mark.parametrize("carrier, encoding, rate", [
    ("vonage", None, 1000), ("vonage", None, 1050), ("vonage", None, 2000), ("vonage", None, 96000),
    ("telnyx", "L16", 1001), ("telnyx", "L16", 2000), ("plivo", "audio/x-l16", 1000),
], ids=lambda v: str(v))
def test_a_start_at_a_rate_no_carrier_uses_is_refused_at_once(server, carrier: str, encoding: str | None,
                                                             rate: int) -> None:
    """Accepted before, then greeted with silence (0 samples at 1000 Hz) or a clipped greeting:
    now closed 1008 at the start, with a reason naming the rate, and no call is made."""
    code, reason, took, media = asyncio.run(refused_start(
        server, carrier, start_message(carrier, f"rate-{carrier}-{rate}", encoding=encoding, rate=rate)))
    assert code == 1008 and str(rate) in reason and took < 2 and media == 0, (code, reason, took, media)
    assert active_calls(server) == 0


@pytest.mark.parametrize("carrier, encoding, named", [
    ("telnyx", "OPUS", "OPUS"), ("telnyx", "G722", "G722"), ("plivo", "audio/opus", "audio/opus"),
    ("plivo", "audio/x-alaw", "x-alaw"), ("vonage", "audio/opus", "audio/opus"),
], ids=lambda v: str(v))
def test_a_start_with_a_codec_moksori_cannot_take_is_refused_at_once(server, carrier: str, encoding: str,
                                                                    named: str) -> None:
    """Logged as a bad message before, with the socket left open until the 10 s start timeout."""
    code, reason, took, _ = asyncio.run(refused_start(
        server, carrier, start_message(carrier, f"codec-{carrier}", encoding=encoding, rate=16000)))
    assert code == 1008 and named in reason and took < 2, (code, reason, took)
    assert active_calls(server) == 0


def test_a_vonage_stream_without_a_call_id_is_refused(server) -> None:
    """`websocket:connected` without call_uuid (and a token minted for "") made a call whose id was ""."""
    code, reason, took, media = asyncio.run(refused_start(server, "vonage", start_message("vonage", "", rate=16000)))
    assert code == 1008 and "call id" in reason and took < 2 and media == 0, (code, reason, took, media)
    assert active_calls(server) == 0


@pytest.mark.parametrize("rate", [8000, 12000, 16000, 22050, 24000, 32000, 44100, 48000])
def test_every_rate_a_start_may_name_plays_the_whole_greeting(rate: int) -> None:
    """The rates a start may name are the ones the engine plays whole (at 1-2 kHz the resampler
    held back a whole short clause, and the greeting lost it)."""
    async def run() -> float:
        secret = b"secret-0123456789"
        sent: list[str | bytes] = []

        async def send(wire: str | bytes) -> None:
            sent.append(wire)

        settings = load_settings(agent={"greeting": "Hi there. How are you?"})  # 0.54 s + 0.72 s of tone
        call = PhoneCall("vonage", codec_for("vonage"), stack=fake_stack(), settings=settings, send=send,
                         secret=secret, url_token=make_stream_token(secret, "call-r", carrier="vonage",
                                                                    now=int(time.time())))
        try:
            await call.feed(start_message("vonage", "call-r", rate=rate, token=""))
            assert call.session is not None, call.end_reason
            for _ in range(150):  # 3 s of caller silence, in real time
                await call.feed(b"\0\0" * (rate // 50))
                await asyncio.sleep(0.02)
        finally:
            await call.close()
        return sum(len(m) // 2 for m in sent if isinstance(m, bytes)) / rate

    played = asyncio.run(run())
    assert 1.26 <= played <= 1.26 + 0.041, played  # each clause padded to whole 20 ms frames at most


@pytest.fixture(scope="module")
def roomy_server():
    """As `server`, without the one-session limit (a second stream must get past admission)."""
    port = free_port()
    settings = load_settings(public_url=f"http://127.0.0.1:{port}", telephony={"stream_secret": STREAM_SECRET, "debug": True},
                             agent={"greeting": "Hello there."})
    srv = ThreadedASGIServer(create_app(settings, fake_stack()), port=port).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_second_stream_for_a_live_call_is_refused(roomy_server) -> None:
    """Two Telnyx streams for call v3:dup, each with a valid token of its own, were both taken;
    the hang-up API then ended one and the other stayed up. The second is refused (1008) while
    the first is live, before its token is spent; the hang-up ends the call."""
    async def run() -> tuple[tuple[int | None, str, float, int], list[str | None], int, list[str | None]]:
        async with websockets.connect(f"ws://127.0.0.1:{roomy_server.port}/telephony/telnyx/stream") as first:
            await first.send(start_message("telnyx", "v3:dup"))
            while json.loads(await asyncio.wait_for(first.recv(), 10)).get("event") != "media":
                pass  # greeted
            second_token = make_stream_token(STREAM_SECRET.encode(), "v3:dup", carrier="telnyx",
                                             now=int(time.time()) + 1)
            second = await refused_start(roomy_server, "telnyx", start_message("telnyx", "v3:dup", token=second_token))
            live = [c["call_id"] for c in httpx.get(f"{roomy_server.url}/telephony/debug/calls").json()["active"]]
            hangup = httpx.post(f"{roomy_server.url}/v1/telephony/calls/v3:dup/hangup", json={})
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(first.recv(), 10)
        for _ in range(50):
            if active_calls(roomy_server) == 0:
                break
            await asyncio.sleep(0.1)
        after = [c["call_id"] for c in httpx.get(f"{roomy_server.url}/telephony/debug/calls").json()["active"]]
        # the first call is over: the second stream's token was not spent, and now opens the call
        async with websockets.connect(f"ws://127.0.0.1:{roomy_server.port}/telephony/telnyx/stream") as again:
            await again.send(start_message("telnyx", "v3:dup", token=second_token))
            try:
                while json.loads(await asyncio.wait_for(again.recv(), 10)).get("event") != "media":
                    pass
                greeted = True
            except websockets.ConnectionClosed:
                greeted = False
        return second, live, hangup.status_code, after, greeted

    (code, reason, took, media), live, status, after, greeted = asyncio.run(run())
    assert code == 1008 and "already" in reason and took < 2 and media == 0, (code, reason, took, media)
    assert live == ["v3:dup"] and status == 200 and after == [] and greeted, (live, status, after, greeted)


# --------------------------------------------------------------------------- carriers that stop reading
# A carrier that stopped reading was dropped by the keepalive ping timeout (right) but the call's
# end reason said the carrier hung up. The server here is set up as `moksori serve` sets it up
# (its socket guards, keepalive pings), with a 1.5 s ping interval and a 2.5 s ping timeout.


@pytest.fixture(scope="module")
def pinging_server():
    import uvicorn

    from moksori.server.sockets import guarded_protocols

    port = free_port()
    settings = load_settings(public_url=f"http://127.0.0.1:{port}", telephony={"stream_secret": STREAM_SECRET, "debug": True},
                             agent={"greeting": "Hello there. " * 12})  # 8.6 s of tone: audio is going out throughout
    app = create_app(settings, fake_stack())
    http, ws = guarded_protocols(app.state.moksori.sockets)
    srv = ThreadedASGIServer(app, port=port)
    srv.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                               http=http, ws=ws, ws_ping_interval=1.5, ws_ping_timeout=2.5,
                                               timeout_graceful_shutdown=1, access_log=False))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def ended_call(server, call_id: str, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in httpx.get(f"{server.url}/telephony/debug/calls").json()["recent"]:
            if c["call_id"] == call_id:
                return c
        time.sleep(0.1)
    return None


async def vonage_caller(server, call_id: str, *, reads: bool, sends_for: float, then: str,
                        speaks: bool = False) -> None:
    """A Vonage leg at 16 kHz that streams silence (or, if `speaks`, one long sound that talks
    over the greeting) for `sends_for` seconds (reading what it is sent if `reads`, never
    echoing a notify), then stops sending ("stop"), closes with a close frame ("close"), or goes
    on sending ("send") until the server drops it (at most 15 s)."""
    voice = tone(16, rate=16000).samples if speaks else np.zeros(16 * 16000, np.int16)
    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/telephony/vonage/stream", ping_interval=None)
    try:
        await ws.send(start_message("vonage", call_id, rate=16000))
        if not reads:
            ws.transport.pause_reading()  # what it is sent piles up: it never reads, so never pongs either
        reader = asyncio.create_task(ws.wait_closed() if not reads else _drain(ws))
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < (sends_for if then != "send" else 15):
            try:
                await asyncio.wait_for(ws.send(voice[k * 320:(k + 1) * 320].astype("<i2").tobytes()), 2)
                k += 1
            except (websockets.ConnectionClosed, asyncio.TimeoutError, OSError):
                break
            await asyncio.sleep(0.02)
            if then == "send" and ended_call_nowait(server, call_id):
                break
        if then == "close":
            await ws.close()
        elif then == "stop":
            await asyncio.sleep(8)  # silent, and not answering pings: the server gives up on it
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    finally:
        ws.transport.abort()


def ended_call_nowait(server, call_id: str) -> bool:
    return any(c["call_id"] == call_id for c in httpx.get(f"{server.url}/telephony/debug/calls").json()["recent"])


async def _drain(ws) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in ws:
            pass


def test_a_carrier_that_stops_reading_ends_the_call_as_not_reading(pinging_server) -> None:
    asyncio.run(vonage_caller(pinging_server, "noread-1", reads=False, sends_for=15, then="send"))
    call = ended_call(pinging_server, "noread-1", 5)
    assert call is not None and call["end_reason"] == "carrier_not_reading", call and call["end_reason"]
    assert any(e["type"] == "call.ended" and e["reason"] == "carrier_not_reading" for e in call["timeline"])


def test_a_carrier_that_stops_reading_after_a_barge_in_ends_the_call_as_not_reading(pinging_server) -> None:
    """The tester's case: the caller talks over the greeting (cleared at once) and goes on
    talking, so no audio goes out when the ping times out; the carrier never acknowledged the clear."""
    asyncio.run(vonage_caller(pinging_server, "noread-2", reads=False, sends_for=15, then="send", speaks=True))
    call = ended_call(pinging_server, "noread-2", 5)
    assert call is not None and call["end_reason"] == "carrier_not_reading", call and call["end_reason"]
    assert [e for e in call["timeline"] if e["type"] == "agent.audio_cleared"]


def test_a_carrier_that_vanishes_ends_the_call_as_lost(pinging_server) -> None:
    """No more audio, no pongs, no close frame: the network went away under the call."""
    asyncio.run(vonage_caller(pinging_server, "lost-1", reads=False, sends_for=0.5, then="stop"))
    call = ended_call(pinging_server, "lost-1", 5)
    assert call is not None and call["end_reason"] == "carrier_lost", call and call["end_reason"]


def test_a_carrier_that_hangs_up_mid_reply_without_echoing_marks_still_hung_up(pinging_server) -> None:
    """A close frame is a hang-up, whatever the marks say (the carrier read everything until then)."""
    asyncio.run(vonage_caller(pinging_server, "hangup-1", reads=True, sends_for=4, then="close"))
    call = ended_call(pinging_server, "hangup-1", 5)
    assert call is not None and call["end_reason"] == "carrier_hung_up", call and call["end_reason"]


def test_what_makes_a_start_unusable_is_a_bad_start_and_a_second_start_is_not() -> None:
    """The codecs mark the errors of a start with `BAD_START` (the call refuses the stream at once);
    a broken second start of a live stream is an ordinary bad message."""
    from moksori.errors import ProtocolError
    from moksori.protocols.telephony import BAD_START, ClearAck

    bad = [("vonage", start_message("vonage", "", rate=16000), "call id"),
           ("twilio", json.dumps({"event": "start", "start": {"streamSid": "MZ1", "callSid": ""}}), "call id"),
           ("telnyx", start_message("telnyx", "v3:x", encoding="L16", rate=1000), "1000"),
           ("plivo", start_message("plivo", "p1", encoding="audio/opus"), "audio/opus")]
    for carrier, message, named in bad:
        with pytest.raises(ProtocolError, match=named) as e:
            codec_for(carrier).decode(message)
        assert e.value.code == BAD_START, carrier
    codec = codec_for("telnyx")
    codec.decode(start_message("telnyx", "v3:x", encoding="L16", rate=16000))
    with pytest.raises(ProtocolError) as e:
        codec.decode(start_message("telnyx", "v3:x"))
    assert e.value.code == "duplicate_start"

    async def second_start() -> tuple[bool, int]:
        secret = b"secret-0123456789"
        call = PhoneCall("telnyx", codec_for("telnyx"), stack=fake_stack(), settings=load_settings(), send=_discard,
                         secret=secret, url_token=make_stream_token(secret, "v3:x", carrier="telnyx",
                                                                    now=int(time.time())))
        try:
            await call.feed(start_message("telnyx", "v3:x", token=""))
            await call.feed(start_message("telnyx", "v3:y", encoding="OPUS"))  # broken, and a second one
            return call.ended.is_set(), call.bad_messages
        finally:
            await call.close()

    assert asyncio.run(second_start()) == (False, 1)
    # the acknowledgement of a clear (a carrier that stops reading never sends it)
    vonage = codec_for("vonage")
    vonage.decode(start_message("vonage", "v1", rate=16000))
    assert vonage.decode(json.dumps({"event": "websocket:cleared"})) == [ClearAck()]
    plivo = codec_for("plivo")
    plivo.decode(start_message("plivo", "p1"))
    assert plivo.decode(json.dumps({"event": "clearedAudio", "streamId": "s-p1"})) == [ClearAck()]
