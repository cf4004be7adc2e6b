"""The Realtime API over WebRTC, against a real `moksori serve` on 127.0.0.1.

The client is aiortc (`moksori.testing.webrtc_client`), following the browser flow: mint an ephemeral
key with the official `openai` SDK (`client.realtime.client_secrets.create`), post the SDP offer
with `client.realtime.calls.create`, stream real recorded speech on the audio track in 20 ms
Opus frames at real time, read the events on `oai-events`, record the reply from the track.
The reply audio is checked by the server's own Whisper (`/v1/audio/transcriptions`).

The server: the embedded stack (Silero, smart-turn, Whisper base, Piper) with the deterministic
LLM of `tests/scripted_llm_server.py`, API keys on, and short WebRTC timeouts so that a peer
that vanishes is noticed within seconds.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from typing import Any

import numpy as np
import pytest
from scripted_llm_server import ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir, requires_speech, utt

aiortc = pytest.importorskip("aiortc")
from moksori.server.webrtc.call import MAX_CHANNEL_BUFFERED  # noqa: E402 - needs aiortc
from moksori.testing.webrtc_client import RtcClient, one_offer  # noqa: E402 - needs aiortc

pytestmark = [pytest.mark.models, requires_speech]

KEY = "sk-moksori-webrtc-1"
OTHER_KEY = "sk-moksori-webrtc-2"
IDLE_TIMEOUT_S = 3
PER_KEY = 3


@pytest.fixture(scope="module")
def scripted_llm():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module")
def server(tmp_path_factory, scripted_llm):
    data_dir = prepared_data_dir(tmp_path_factory)
    port = free_port()
    argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {"MOKSORI_DATA_DIR": str(data_dir), "MOKSORI_API_KEYS": f"{KEY},{OTHER_KEY}",
           "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": scripted_llm.url, "MOKSORI_LLM_MODEL": "scripted",
           "MOKSORI_WEBRTC_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S), "MOKSORI_WEBRTC_CONNECT_TIMEOUT_S": "5",
           "MOKSORI_WEBRTC_DEBUG": "1", "MOKSORI_WEBRTC_MAX_OFFER_BYTES": "16384",
           "MOKSORI_SERVER_MAX_SESSIONS_PER_KEY": str(PER_KEY), "PYTHONUNBUFFERED": "1"}
    with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=180, env=env,
                       cwd=tmp_path_factory.mktemp("serve")) as srv:
        yield srv


@pytest.fixture(scope="module")
def early_key(server) -> dict[str, Any]:
    """A 10 s ephemeral key minted when the module starts; the expiry test (last) outlives it."""
    return http(server, "POST", "/v1/realtime/client_secrets", {"expires_after": {"seconds": 10}})[1]


# --------------------------------------------------------------------------- helpers


def http(server, method: str, path: str, body: Any = None, *, key: str | None = KEY,
         content_type: str = "application/json", raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(server.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            status, hdrs = resp.status, dict(resp.headers)
    except urllib.error.HTTPError as e:
        text, status, hdrs = e.read().decode(), e.code, dict(e.headers)
    try:
        parsed: Any = json.loads(text) if text else None
    except json.JSONDecodeError:
        parsed = text
    return status, parsed, {k.lower(): v for k, v in hdrs.items()}


def stats(server) -> dict[str, Any]:
    return http(server, "GET", "/webrtc/debug/stats")[1]


async def wait_calls(server, n: int, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = await asyncio.to_thread(stats, server)
        health = (await asyncio.to_thread(http, server, "GET", "/ready"))[1]  # /health names nothing
        if s["calls"] == n and s["peers"] == n and health["sessions"] == n:
            return s
        assert time.monotonic() < deadline, f"expected {n} calls, have {s} / sessions {health['sessions']}"
        await asyncio.sleep(0.1)


def speech48(name: str, *, tail_s: float = 0.0) -> np.ndarray:
    from moksori.audio.wav import load_audio

    pcm = load_audio(utt(name).path, rate=48000).samples
    return np.concatenate([pcm, np.zeros(int(tail_s * 48000), dtype=np.int16)])


def transcribe(server, pcm48: np.ndarray) -> str:
    """The server's own Whisper on what the client heard."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm48.astype("<i2").tobytes())
    boundary = "moksoriboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"reply.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + buf.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    status, parsed, _ = http(server, "POST", "/v1/audio/transcriptions", raw=body,
                             content_type=f"multipart/form-data; boundary={boundary}")
    assert status == 200, parsed
    return parsed["text"]


async def mint(server, key: str = KEY, **kwargs) -> Any:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=key, base_url=server.url + "/v1", max_retries=0)
    try:
        return await client.realtime.client_secrets.create(**kwargs)
    finally:
        await client.close()


async def open_call(server, session: dict | None = None, *, key: str | None = None) -> RtcClient:
    if key is None:
        key = (await mint(server, session=session or {"type": "realtime"})).value
        session = None
    client = RtcClient()
    await client.connect_sdk(server.url, key, session)
    await asyncio.wait_for(client.opened.wait(), 15)
    await client.wait_event("session.created")
    return client


# --------------------------------------------------------------------------- the browser flow


async def test_browser_flow_real_speech_in_reply_audio_out(server):
    """Ephemeral key -> offer -> en_028 spoken on the track -> events on oai-events -> reply heard."""
    secret = await mint(server, expires_after={"anchor": "created_at", "seconds": 120},
                        session={"type": "realtime", "instructions": "Answer briefly.",
                                 "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}}})
    assert secret.value.startswith("ek_")
    assert secret.expires_at - time.time() > 100
    assert secret.session.type == "realtime" and secret.session.instructions == "Answer briefly."

    client = RtcClient()
    await client.connect_sdk(server.url, secret.value)
    assert client.call_id and client.call_id.startswith("rtc_")
    try:
        await asyncio.wait_for(client.opened.wait(), 15)
        created = await client.wait_event("session.created")
        assert created["session"]["instructions"] == "Answer briefly."  # the key's session config applies
        n0 = len(client.events)
        client.mic.say(speech48("en_028"))
        done = await client.wait_event("conversation.item.input_audio_transcription.completed", after=n0, timeout=30)
        assert "thousand" in done["transcript"].lower(), done
        started = await client.wait_event("output_audio_buffer.started", after=n0, timeout=30)
        t_started = client.time_of(started)
        done = await client.wait_event("response.done", after=n0, timeout=30)
        stopped = await client.wait_event("output_audio_buffer.stopped", after=n0, timeout=30)
        assert stopped["response_id"] == started["response_id"] == done["response"]["id"]
        assert client.events.index(done) < client.events.index(stopped)  # OpenAI's order
        # no base64 audio on the data channel: it travels on the track
        assert "response.output_audio.delta" not in client.types()
        order = client.types()[n0:]
        for a, b in [("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"),
                     ("input_audio_buffer.committed", "response.created"),
                     ("response.created", "output_audio_buffer.started")]:
            assert order.index(a) < order.index(b), order

        await asyncio.sleep(0.3)  # the jitter buffer's last frames
        heard = client.received(since=t_started - 0.2)
        assert client.codec_rate == 48000  # Opus
        loud = [pcm for t, pcm in client.frames if t >= t_started - 0.2 and np.abs(pcm).max() > 1000]
        assert len(loud) * 0.02 > 0.8, "less than 0.8 s of audible reply arrived"
        text = await asyncio.to_thread(transcribe, server, heard)
        assert "sounds good" in text.lower(), text  # scripted reply: "Sure, that sounds good."
    finally:
        await client.close()
    await wait_calls(server, 0)


@pytest.mark.parametrize("codec,rate", [("PCMU", 8000), ("PCMA", 8000)])
async def test_g711_peers_get_g711(server, codec, rate):
    """A peer that offers only G.711 gets it both ways: speech in, the reply heard at 8 kHz."""
    client = RtcClient(codecs=[codec])
    await client.connect_sdk(server.url, KEY, {"type": "realtime", "instructions": "g711"})
    try:
        await asyncio.wait_for(client.opened.wait(), 15)
        n0 = len(client.events)
        client.mic.say(speech48("en_028"))
        started = await client.wait_event("output_audio_buffer.started", after=n0, timeout=30)
        await client.wait_event("output_audio_buffer.stopped", after=n0, timeout=30)
        await asyncio.sleep(0.3)
        assert client.codec_rate == rate
        s = await asyncio.to_thread(stats, server)
        assert s["detail"][0]["codec"] == codec
        heard = client.received(since=client.time_of(started) - 0.2)
        from moksori.audio.frames import Frame
        from moksori.audio.resample import resample

        text = await asyncio.to_thread(transcribe, server, resample(Frame(heard, rate), 48000).samples)
        assert "sounds good" in text.lower(), text
    finally:
        await client.close()
    await wait_calls(server, 0)


async def test_multipart_session_with_real_key_and_timeline(server):
    """`calls.create(sdp=..., session=...)` sends multipart; a real key may start a call too."""
    client = RtcClient()
    await client.connect_sdk(server.url, KEY, {"type": "realtime", "instructions": "multipart says hi",
                                               "output_modalities": ["audio"]})
    try:
        await asyncio.wait_for(client.opened.wait(), 15)
        created = await client.wait_event("session.created")
        assert created["session"]["instructions"] == "multipart says hi"
        client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "updated"}})
        upd = await client.wait_event("session.updated")
        assert upd["session"]["instructions"] == "updated"
    finally:
        await client.close()
    await wait_calls(server, 0)


async def test_barge_in_clears_the_track_at_once(server):
    """A long reply; the user talks over it: `output_audio_buffer.cleared`, and the track goes quiet."""
    client = await open_call(server, {"type": "realtime", "instructions": "scripted:long"})
    try:
        n0 = len(client.events)
        client.mic.say(speech48("en_028"))
        started = await client.wait_event("output_audio_buffer.started", after=n0, timeout=30)
        await asyncio.sleep(1.5)  # the reply is playing (it is ~15 s long)
        n1 = len(client.events)
        client.mic.say(speech48("en_011")[: 48000 * 2])  # "And so my fellow Americans" over the agent
        cleared = await client.wait_event("output_audio_buffer.cleared", after=n1, timeout=15)
        assert cleared["response_id"] == started["response_id"]
        t_cleared = client.time_of(cleared)
        said = client.mic.speech_started_at[-1]
        await asyncio.sleep(1.0)
        last = client.last_loud_frame(rms=500)
        assert last is not None and last < t_cleared + 0.25, (last - t_cleared) if last else None
        assert t_cleared - said < 1.5, f"the reply was cleared {t_cleared - said:.2f} s after the user spoke"
        trunc = await client.wait_event("conversation.item.truncated", after=n1, timeout=10)
        assert trunc["audio_end_ms"] > 1000  # at least what played before the user spoke
        # the interrupted response ends as cancelled; no stopped event for it
        done = await client.wait_event("response.done", after=n1, timeout=10,
                                       pred=lambda e: e["response"]["id"] == started["response_id"])
        assert done["response"]["status"] == "cancelled"
        # the data channel carried a spoken conversation's events (transcript deltas among them)
        # and never held more than a sliver of the cap at which a peer counts as not reading
        peak = (await asyncio.to_thread(stats, server))["detail"][0]["channel_peak_bytes"]
        assert 0 < peak < MAX_CHANNEL_BUFFERED // 64, peak
    finally:
        await client.close()
    await wait_calls(server, 0)


async def test_client_output_audio_buffer_clear(server):
    client = await open_call(server, {"type": "realtime", "instructions": "scripted:long",
                                      "audio": {"input": {"turn_detection": None}}})
    try:
        client.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                   "content": [{"type": "input_text", "text": "hi"}]}})
        client.send({"type": "response.create"})
        started = await client.wait_event("output_audio_buffer.started", timeout=30)
        await asyncio.sleep(0.8)
        n1 = len(client.events)
        client.send({"type": "output_audio_buffer.clear"})
        cleared = await client.wait_event("output_audio_buffer.cleared", after=n1, timeout=10)
        assert cleared["response_id"] == started["response_id"]
        await asyncio.sleep(0.8)
        last = client.last_loud_frame(rms=500)
        assert last is not None and last < client.time_of(cleared) + 0.25
        # appending audio as events is refused: it travels on the track
        n2 = len(client.events)
        client.send({"type": "input_audio_buffer.append", "audio": "AAAA"})
        err = await client.wait_event("error", after=n2)
        assert "media track" in err["error"]["message"]
    finally:
        await client.close()
    await wait_calls(server, 0)


# --------------------------------------------------------------------------- sideband and hang-up


async def test_sideband_sees_and_sends_events_then_hangup(server):
    from openai import AsyncOpenAI

    client = await open_call(server, {"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    api = AsyncOpenAI(api_key=KEY, base_url=server.url + "/v1", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1",
                      max_retries=0)
    try:
        async with api.realtime.connect(call_id=client.call_id) as side:
            first = await asyncio.wait_for(side.recv(), 10)
            assert first.type == "session.created"
            # the server side changes the session; the browser sees it on its data channel
            await side.session.update(session={"type": "realtime", "instructions": "set by the sideband"})
            upd = await client.wait_event("session.updated", pred=lambda e: e["session"]["instructions"] == "set by the sideband")
            assert upd
            # the browser types; the sideband sees the same events
            client.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                       "content": [{"type": "input_text", "text": "hello"}]}})
            seen = []
            while True:
                ev = await asyncio.wait_for(side.recv(), 10)
                seen.append(ev.type)
                if ev.type == "conversation.item.added":
                    break
            # the sideband asks for a response; audio goes to the browser's track
            await side.response.create()
            await client.wait_event("output_audio_buffer.started", timeout=30)
            types = []
            while "response.done" not in types:
                types.append((await asyncio.wait_for(side.recv(), 30)).type)
            assert "response.created" in types and "output_audio_buffer.started" in types
            # hang up with the REST call: the call ends, the sideband is closed
            await api.realtime.calls.hangup(client.call_id)
            with pytest.raises(Exception):  # noqa: B017 - the SDK raises its ConnectionClosed
                for _ in range(1000):
                    await asyncio.wait_for(side.recv(), 10)
        await wait_calls(server, 0)
        # the browser's peer connection learns it too
        deadline = time.monotonic() + 10
        while client.pc.connectionState not in ("closed", "failed") and client.channel.readyState == "open":
            assert time.monotonic() < deadline, client.pc.connectionState
            await asyncio.sleep(0.1)
        # hanging up again, or an unknown call: 404 in the OpenAI error shape
        status, body, _ = await asyncio.to_thread(http, server, "POST", f"/v1/realtime/calls/{client.call_id}/hangup")
        assert status == 404 and body["error"]["code"] == "call_not_found"
    finally:
        await api.close()
        await client.close()


async def test_sideband_and_hangup_refuse_other_keys(server):
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    client = await open_call(server)
    try:
        ek = (await mint(server)).value
        url = f"ws://127.0.0.1:{server.port}/v1/realtime?call_id={client.call_id}"
        for key, status in ((ek, 403), ("sk-wrong", 401), (OTHER_KEY, 404)):
            with pytest.raises(InvalidStatus) as exc:
                async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}):
                    pass
            assert exc.value.response.status_code == status, key
        with pytest.raises(InvalidStatus) as exc:
            async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime?call_id=rtc_nope",
                               additional_headers={"Authorization": f"Bearer {KEY}"}):
                pass
        assert exc.value.response.status_code == 404
        for key, status in ((ek, 403), (OTHER_KEY, 404), (None, 401)):
            got, body, _ = await asyncio.to_thread(http, server, "POST", f"/v1/realtime/calls/{client.call_id}/hangup",
                                                   key=key)
            assert got == status and "error" in body, (key, got, body)
        assert (await asyncio.to_thread(stats, server))["calls"] == 1  # still up
    finally:
        await client.close()
    await wait_calls(server, 0)


async def test_session_limits_count_calls_and_the_keys_they_came_from(server):
    """Calls share the per-key session limit with WebSocket sessions; an ephemeral key's calls count
    against the key that minted it."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    clients = [await open_call(server) for _ in range(PER_KEY - 1)]  # minted by KEY
    try:
        clients.append(await open_call(server, key=KEY))
        sdp = await one_offer()
        got, body, _ = await asyncio.to_thread(http, server, "POST", "/v1/realtime/calls", raw=sdp.encode(),
                                               content_type="application/sdp")
        assert got == 503 and body["error"]["code"] == "too_many_sessions"  # a limit, as for WebSockets
        ek = (await mint(server)).value
        got, _, _ = await asyncio.to_thread(http, server, "POST", "/v1/realtime/calls", raw=sdp.encode(),
                                            content_type="application/sdp", key=ek)
        assert got == 503
        with pytest.raises(InvalidStatus):  # the WebSocket counts the same sessions
            async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime?model=x",
                               additional_headers={"Authorization": f"Bearer {KEY}"}):
                pass
        other = await open_call(server, key=OTHER_KEY)  # another key still gets in
        clients.append(other)
    finally:
        for c in clients:
            await c.close()
    await wait_calls(server, 0)


# --------------------------------------------------------------------------- peers that misbehave


async def test_vanished_peer_is_cleaned_up(server):
    """A client killed with SIGKILL (no DTLS alert, no SCTP abort): the call, its session, its peer
    connection and its tasks are gone within the idle timeout."""
    before = await asyncio.to_thread(stats, server)
    proc = subprocess.Popen([sys.executable, "-m", "moksori.testing.webrtc_client", server.url, KEY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        call_id = json.loads(line)["call_id"]
        s = await wait_calls(server, 1)
        assert s["detail"][0]["call_id"] == call_id and s["detail"][0]["connected"] and s["detail"][0]["has_media"]
    finally:
        proc.kill()
        proc.wait(10)
    t0 = time.monotonic()
    after = await wait_calls(server, 0, timeout=IDLE_TIMEOUT_S + 10)
    assert time.monotonic() - t0 < IDLE_TIMEOUT_S + 5
    assert after["tasks"] <= before["tasks"] + 2, (before["tasks"], after["tasks"])


async def test_offer_without_connecting_times_out(server):
    """An answer is given but the peer never connects: the call ends after the connect timeout."""
    client = RtcClient()
    sdp = await client.offer()
    status, _, headers = await asyncio.to_thread(http, server, "POST", "/v1/realtime/calls", raw=sdp.encode(),
                                                 content_type="application/sdp")
    assert status == 201 and headers["location"].startswith("/v1/realtime/calls/rtc_")
    await client.close()  # never applies the answer
    await wait_calls(server, 0, timeout=15)


async def test_non_json_on_the_data_channel_is_an_error_event(server):
    client = await open_call(server)
    try:
        for bad in ("not json", "{\"type\": 5}", "[]", json.dumps({"type": "no.such.event"})):
            n = len(client.events)
            client.channel.send(bad)
            err = await client.wait_event("error", after=n)
            assert err["error"]["message"]
        # still alive and answering
        n = len(client.events)
        client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "still here"}})
        await client.wait_event("session.updated", after=n)
    finally:
        await client.close()
    await wait_calls(server, 0)


# --------------------------------------------------------------------------- bad HTTP input and keys


def test_calls_refuse_bad_input(server):
    client_sdp = asyncio.run(one_offer())
    cases = [
        ("wrong content type", dict(raw=client_sdp.encode(), content_type="text/plain"), 415, "unsupported_content_type"),
        ("not SDP", dict(raw=b"hello", content_type="application/sdp"), 400, "invalid_offer"),
        ("empty", dict(raw=b"", content_type="application/sdp"), 400, "invalid_offer"),
        ("binary", dict(raw=b"\xff\xfe\x00", content_type="application/sdp"), 400, "invalid_offer"),
        ("no media", dict(raw=b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", content_type="application/sdp"),
         400, "invalid_offer"),
        ("huge", dict(raw=b"v=0\r\n" + b"a=x\r\n" * 10_000, content_type="application/sdp"), 413, "request_too_large"),
        ("mangled", dict(raw=client_sdp.replace("m=audio", "m=audio x").encode(), content_type="application/sdp"),
         400, "invalid_offer"),
        ("multipart without sdp", dict(raw=b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
                                       content_type="multipart/form-data; boundary=b"), 400, "missing_required_parameter"),
        ("session not JSON", dict(raw=_multipart(client_sdp, "{nope"), content_type="multipart/form-data; boundary=b"),
         400, "invalid_json"),
        ("invalid session", dict(raw=_multipart(client_sdp, json.dumps({"type": "realtime", "temperature": "hot"})),
                                 content_type="multipart/form-data; boundary=b"), 400, None),
    ]
    for name, kw, status, code in cases:
        got, body, _ = http(server, "POST", "/v1/realtime/calls", **kw)
        assert got == status, (name, got, body)
        assert set(body["error"]) >= {"message", "type", "code"}, (name, body)
        if code:
            assert body["error"]["code"] == code, (name, body)
    got, body, _ = http(server, "POST", "/v1/realtime/calls", raw=client_sdp.encode(), content_type="application/sdp",
                        key="sk-wrong")
    assert got == 401 and body["error"]["code"] == "invalid_api_key"
    assert stats(server)["calls"] == 0 and http(server, "GET", "/ready")[1]["sessions"] == 0


def test_client_secrets_validation_and_scope(server):
    ok, body, _ = http(server, "POST", "/v1/realtime/client_secrets",
                       {"expires_after": {"anchor": "created_at", "seconds": 7200},
                        "session": {"type": "transcription",
                                    "audio": {"input": {"transcription": {"model": "whisper-1", "language": "ko"}}}}})
    assert ok == 200 and body["value"].startswith("ek_") and body["session"]["type"] == "transcription"
    assert 7100 < body["expires_at"] - time.time() <= 7200
    ek = body["value"]
    for bad, param in ((
            {"expires_after": {"seconds": 5}}, "expires_after"), ({"expires_after": {"seconds": 7201}}, "expires_after"),
            ({"expires_after": {"anchor": "now", "seconds": 60}}, "expires_after"),
            ({"session": {"type": "realtime", "temperature": "hot"}}, "session.temperature"),
            ({"session": {"type": "video"}}, "session.type"), ({"session": "x"}, "session")):
        got, err, _ = http(server, "POST", "/v1/realtime/client_secrets", bad)
        assert got == 400 and err["error"]["param"] == param, (bad, got, err)
    assert http(server, "POST", "/v1/realtime/client_secrets", raw=b"{oops")[0] == 400
    assert http(server, "POST", "/v1/realtime/client_secrets", {}, key="sk-wrong")[0] == 401
    assert http(server, "POST", "/v1/realtime/client_secrets", {}, key=None)[0] == 401
    # an ephemeral key opens nothing but sessions
    assert http(server, "POST", "/v1/realtime/client_secrets", {}, key=ek)[0] == 403
    assert http(server, "POST", "/session", {}, key=ek)[0] == 403
    status, _, _ = http(server, "POST", "/v1/audio/speech", {"model": "tts-1", "input": "hi", "voice": "alloy"}, key=ek)
    assert status == 401
    # the page's minting endpoint needs the real key on a server that has keys
    assert http(server, "POST", "/session", {}, key=None)[0] == 401
    got, page, _ = http(server, "POST", "/session", {"session": {"type": "realtime", "instructions": "page"}})
    assert got == 200 and page["value"].startswith("ek_") and 50 <= page["expires_at"] - time.time() <= 60


async def test_ephemeral_key_starts_a_websocket_session_too(server):
    from openai import AsyncOpenAI

    secret = await mint(server, session={"type": "realtime", "instructions": "from the key"})
    api = AsyncOpenAI(api_key=secret.value, base_url=server.url + "/v1",
                      websocket_base_url=f"ws://127.0.0.1:{server.port}/v1", max_retries=0)
    try:
        async with api.realtime.connect(model="gpt-realtime") as conn:
            first = await asyncio.wait_for(conn.recv(), 10)
            assert first.type == "session.created" and first.session.instructions == "from the key"
    finally:
        await api.close()
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus):
        async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime?model=x",
                           additional_headers={"Authorization": "Bearer ek_not_a_real_one"}):
            pass


async def test_wrong_and_expired_ephemeral_keys_are_refused(server, early_key):
    """Placed last: the module's 10 s key has expired by now (waits for the rest if not)."""
    sdp = await one_offer()
    got, body, _ = await asyncio.to_thread(http, server, "POST", "/v1/realtime/calls", raw=sdp.encode(),
                                           content_type="application/sdp", key="ek_" + "x" * 32)
    assert got == 401 and "expired" in body["error"]["message"]
    await asyncio.sleep(max(0.0, early_key["expires_at"] + 1.1 - time.time()))
    got, body, _ = await asyncio.to_thread(http, server, "POST", "/v1/realtime/calls", raw=sdp.encode(),
                                           content_type="application/sdp", key=early_key["value"])
    assert got == 401 and body["error"]["code"] == "invalid_api_key"
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus):
        async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime?model=x",
                           additional_headers={"Authorization": f"Bearer {early_key['value']}"}):
            pass
    assert (await asyncio.to_thread(stats, server))["calls"] == 0


def _multipart(sdp: str, session: str) -> bytes:
    return (f"--b\r\nContent-Disposition: form-data; name=\"sdp\"\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n"
            f"--b\r\nContent-Disposition: form-data; name=\"session\"\r\nContent-Type: application/json\r\n\r\n"
            f"{session}\r\n--b--\r\n").encode()
