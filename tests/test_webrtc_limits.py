"""What a WebRTC peer cannot make the server do, against the real app (fast fake models) on
127.0.0.1 with real aiortc clients (`moksori.testing.webrtc_client.RtcClient`).

Each test is a finding of a hostile client (2026-12-06) and failed before its fix:

* video (or a second audio line) is answered inactive: the server never receives or decodes it
  (aiortc queued every decoded frame of a 640x480 video, ~13 MB/s, for ever); an offer without
  audio is a 400;
* a server event larger than the peer's data-channel limit (a=max-message-size) becomes a small
  `event_too_large` error on the channel, the sideband still gets it, and the call goes on (it
  silenced the session for good); a session config whose `session.created` cannot fit is refused
  at the offer (the call ended 40 ms after it started, with a traceback);
* a peer that stops acknowledging the data channel's messages is hung up once
  MAX_CHANNEL_BUFFERED bytes wait for it (the server held 120 MB in a minute).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from servers import ServerProcess, free_port

aiortc = pytest.importorskip("aiortc")
from moksori.server.ephemeral_keys import MAX_SESSION_BYTES  # noqa: E402 - after the aiortc check
from moksori.server.webrtc.call import MAX_CHANNEL_BUFFERED  # noqa: E402
from moksori.testing.webrtc_client import LOOPBACK, MicTrack, RtcClient  # noqa: E402

HERE = Path(__file__).parent
KEY = "sk-webrtc-limits"
H = {"Authorization": f"Bearer {KEY}"}
CHROME_MAX_MESSAGE = 262144  # what aiortc's client advertises too


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = {"MOKSORI_API_KEYS": KEY, "MOKSORI_DATA_DIR": str(tmp_path_factory.mktemp("webrtc-limits")),
           "MOKSORI_STORE_URL": "none", "MOKSORI_WEBRTC_DEBUG": "1", "MOKSORI_WEBRTC_CONNECT_TIMEOUT_S": "5",
           "PYTHONUNBUFFERED": "1"}
    with ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port, ready_path="/health",
                       env=env, ready_timeout_s=60) as srv:
        yield srv


# --------------------------------------------------------------------------- helpers


async def post_offer(server, sdp: str, *, key: str = KEY, session: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        if session is None:
            return await http.post(server.url + "/v1/realtime/calls", content=sdp.encode(),
                                   headers={**H, "Authorization": f"Bearer {key}", "Content-Type": "application/sdp"})
        return await http.post(server.url + "/v1/realtime/calls", headers={"Authorization": f"Bearer {key}"},
                               files={"sdp": (None, sdp), "session": (None, json.dumps(session))})


async def stats(server) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(server.url + "/webrtc/debug/stats", headers=H)).json()


async def wait_no_calls(server, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        s = await stats(server)
        async with httpx.AsyncClient(timeout=10) as http:
            sessions = (await http.get(server.url + "/ready", headers=H)).json()["sessions"]
        if s["calls"] == 0 and s["peers"] == 0 and sessions == 0:
            return
        assert time.monotonic() < deadline, (s, sessions)
        await asyncio.sleep(0.1)


async def open_call(server) -> RtcClient:
    client = RtcClient()
    await client.connect_sdk(server.url, KEY)
    await asyncio.wait_for(client.opened.wait(), 15)
    await client.wait_event("session.created")
    return client


def directions(sdp: str) -> list[tuple[str, str]]:
    """(kind, direction) of each media line of an SDP."""
    out: list[tuple[str, str]] = []
    for section in sdp.split("\r\nm=")[1:]:
        kind = section.split(" ", 1)[0]
        found = [d for d in ("sendrecv", "sendonly", "recvonly", "inactive") if f"\r\na={d}" in section]
        out.append((kind, found[0] if found else ""))
    return out


async def offer_of(*tracks: Any, channel: bool = True) -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    from moksori.server.webrtc.ice import offering

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for track in tracks:
            pc.addTrack(track)
        if channel:
            pc.createDataChannel("oai-events")
        with offering(LOOPBACK):
            await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


# --------------------------------------------------------------------------- media the server does not want


async def test_video_and_a_second_audio_line_are_answered_inactive(server):
    """aiortc answered an offered video line recvonly, then decoded every frame into a queue
    nobody read. Now only the first audio line is received; the rest is inactive both ways."""
    from aiortc import VideoStreamTrack

    client = RtcClient()
    client.pc.addTrack(VideoStreamTrack())
    client.pc.addTrack(MicTrack())  # a second microphone: it would be mixed into the first
    try:
        r = await post_offer(server, await client.offer())
        assert r.status_code == 201, r.text
        assert directions(r.text) == [("audio", "sendrecv"), ("video", "inactive"), ("audio", "inactive"),
                                      ("application", "")], r.text
        await client.accept(r.text)
        await asyncio.wait_for(client.opened.wait(), 15)
        await client.wait_event("session.created")
        detail = (await stats(server))["detail"]
        assert [d["receiving"] for d in detail] == [["audio"]]
        deadline = time.monotonic() + 10
        while not (await stats(server))["detail"][0]["has_media"]:  # the first microphone is heard
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        video = next(t for t in client.pc.getTransceivers() if t.kind == "video")
        assert video.currentDirection == "inactive"  # so the client does not even encode it
    finally:
        await client.close()
    await wait_no_calls(server)


async def test_an_offer_without_audio_is_refused(server):
    """A Realtime call needs an audio line: video only, or a data channel only, is a 400."""
    from aiortc import VideoStreamTrack

    for name, sdp in (("video only", await offer_of(VideoStreamTrack())), ("data channel only", await offer_of())):
        r = await post_offer(server, sdp)
        assert r.status_code == 400, (name, r.status_code, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_offer" and "audio" in err["message"], (name, err)
    await wait_no_calls(server)


# --------------------------------------------------------------------------- events the data channel cannot carry


async def test_an_event_too_large_for_the_data_channel_is_an_error_and_the_call_goes_on(server):
    """Two legitimate session.updates, each under the peer's 256 KiB message limit; the second
    session.updated (200 KB of instructions + 100 KB of tools) is over it. The data channel gets
    `event_too_large` instead, the sideband gets the whole event, and the session goes on (aiortc's
    ValueError used to stop the connection's outbox: nothing more was ever sent)."""
    from websockets.asyncio.client import connect

    client = await open_call(server)
    sideband: list[dict[str, Any]] = []
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime?call_id={client.call_id}",
                           additional_headers=H, max_size=None) as ws:
            async def read() -> None:
                async for message in ws:
                    sideband.append(json.loads(message))

            reader = asyncio.create_task(read())
            n = len(client.events)
            client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "i" * 200_000}})
            await client.wait_event("session.updated", after=n)
            tools = [{"type": "function", "name": f"tool_{k}", "description": "d" * 10_000,
                      "parameters": {"type": "object", "properties": {}}} for k in range(10)]
            n = len(client.events)
            client.send({"type": "session.update", "session": {"type": "realtime", "tools": tools}})
            err = await client.wait_event("error", after=n)
            assert err["error"]["code"] == "event_too_large", err
            assert "session.updated" in err["error"]["message"] and str(CHROME_MAX_MESSAGE) in err["error"]["message"]
            assert "session.updated" not in client.types()[n:]
            deadline = time.monotonic() + 10
            while not any(e["type"] == "session.updated" and len(e["session"]["tools"]) == 10 for e in sideband):
                assert time.monotonic() < deadline, [e["type"] for e in sideband]
                await asyncio.sleep(0.05)
            # the session goes on, on the data channel too
            n = len(client.events)
            client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "short now"}})
            upd = await client.wait_event("session.updated", after=n)
            assert upd["session"]["instructions"] == "short now" and len(upd["session"]["tools"]) == 10
            reader.cancel()
        assert (await stats(server))["calls"] == 1
        assert "Traceback" not in server.log_text()
    finally:
        await client.close()
    await wait_no_calls(server)


async def test_an_echoed_lone_surrogate_does_not_silence_the_data_channel(server):
    """A typed item with a `\\ud800` escape comes back in `conversation.item.added`: text with no
    UTF-8 form, on which aiortc's send raised (the session stopped sending for good). It is sent
    with JSON's ASCII escapes instead."""
    client = await open_call(server)
    try:
        n = len(client.events)
        client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "a\ud800b"}]}})
        added = await client.wait_event("conversation.item.added", after=n)
        assert added["item"]["content"][0]["text"] in ("a\ud800b", "a\ufffdb"), added
        n = len(client.events)
        client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "still here"}})
        await client.wait_event("session.updated", after=n)
    finally:
        await client.close()
    await wait_no_calls(server)


async def test_a_session_whose_first_event_cannot_fit_is_refused_at_the_offer(server):
    """An ephemeral key (within its 256 KiB) or a multipart `session` part whose `session.created`
    is larger than the peer's message limit: 400 at the offer, nothing left behind (the call
    used to start and die 40 ms later with a traceback, the client never knowing why)."""
    big = "i" * (MAX_SESSION_BYTES - 64)  # fits a key; with the rest of session.created, not the channel
    async with httpx.AsyncClient(timeout=30) as http:
        minted = await http.post(server.url + "/v1/realtime/client_secrets", headers=H,
                                 json={"session": {"type": "realtime", "instructions": big}})
    assert minted.status_code == 200, minted.text
    client = RtcClient()
    try:
        sdp = await client.offer()
        for name, r in (("ephemeral key", await post_offer(server, sdp, key=minted.json()["value"])),
                        ("multipart", await post_offer(server, sdp, session={"type": "realtime", "instructions": big}))):
            assert r.status_code == 400, (name, r.status_code, r.text[:300])
            err = r.json()["error"]
            assert err["code"] == "session_too_large" and err["param"] == "session", (name, err)
            assert str(CHROME_MAX_MESSAGE) in err["message"], err
    finally:
        await client.close()
    await wait_no_calls(server)
    # a large config that fits still starts its call
    client = RtcClient()
    try:
        r = await post_offer(server, await client.offer(), session={"type": "realtime", "instructions": "j" * 200_000})
        assert r.status_code == 201, r.text[:300]
        await client.accept(r.text)
        await asyncio.wait_for(client.opened.wait(), 15)
        created = await client.wait_event("session.created")
        assert created["session"]["instructions"] == "j" * 200_000
    finally:
        await client.close()
    await wait_no_calls(server)


# --------------------------------------------------------------------------- a peer that stops reading


async def test_a_peer_that_stops_acknowledging_the_data_channel_is_hung_up(server):
    """The client's SCTP drops the server's DATA chunks (never acknowledged) while it sends 20 KB
    session.updates; every session.updated waits in aiortc's unbounded queue. Past
    MAX_CHANNEL_BUFFERED the call ends with a warning, as the WebSocket ends a client that stops
    reading; without the cap the server held 120 MB in a minute."""
    from aiortc.rtcsctptransport import DataChunk

    client = await open_call(server)
    try:
        call_id = client.call_id
        sctp = client.pc.sctp
        receive = sctp._receive_chunk

        async def deaf(chunk: Any) -> None:  # a peer whose SCTP stops taking data (private aiortc hook)
            if not isinstance(chunk, DataChunk):
                await receive(chunk)

        sctp._receive_chunk = deaf
        update = json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "z" * 20_000}})
        sent = 0
        deadline = time.monotonic() + 60
        while (await stats(server))["calls"] == 1:
            assert time.monotonic() < deadline, f"still up after {sent} updates ({sent * 20 // 1000} MB echoed)"
            if client.channel.readyState == "open" and sent * 20_000 < 3 * MAX_CHANNEL_BUFFERED:
                for _ in range(10):
                    client.channel.send(update)
                    sent += 1
            await asyncio.sleep(0.1)
        assert sent * 20_000 > MAX_CHANNEL_BUFFERED  # it took the cap's worth, not less
    finally:
        await client.close()
    await wait_no_calls(server)
    log = server.log_text()
    assert f"call {call_id}: " in log and "the peer is not reading: ending the call" in log, log[-2000:]
