"""Bad input and vanishing peers on the WebRTC path, against the real app (fast fake models) on
127.0.0.1 with real aiortc peers (2026-12-07 pass). Each test failed before its fix:

* a peer that connects and then sends nothing (no microphone, a recvonly audio line, no events)
  was kept for ever by ICE consent, holding its session slot; it is now hung up after
  MOKSORI_SERVER_SESSION_IDLE_TIMEOUT_S, as the WebSocket ends a client that sends nothing;
* an offer whose media sections lack a usable `a=mid` was answered 400 but left a peer
  connection aiortc could not close (kept in memory for good) and a traceback in the log; it is
  refused before aiortc sees it;
* a remote candidate with a port no packet can go to (99999, -1) made aioice's socket raise:
  a "Fatal write error" and retry tracebacks in the log; such candidates are dropped;
* a multipart `session` part of an unknown `type` started a call (a minted key's is refused).

Probed and found clean (no fix needed): binary, empty, non-UTF-8, non-JSON, `null`, `1e999` and
unknown events on the data channel (an `error` event each, the call goes on); malformed
candidates, ssrc, fingerprints, `a=setup` (400); 30 malformed `session` parts (400, same as
minting); bodies over the limit (413); a wrong DTLS fingerprint (the call ends at once).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from servers import ServerProcess, free_port

aiortc = pytest.importorskip("aiortc")
from moksori.testing.webrtc_client import LOOPBACK, RtcClient, one_offer  # noqa: E402 - after the aiortc check

HERE = Path(__file__).parent
KEY = "sk-bad-webrtc"
H = {"Authorization": f"Bearer {KEY}"}
QUIET_S = 2.0  # MOKSORI_SERVER_SESSION_IDLE_TIMEOUT_S of the test server
CONNECT_S = 3.0  # MOKSORI_WEBRTC_CONNECT_TIMEOUT_S
PER_KEY = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = {"MOKSORI_API_KEYS": KEY, "MOKSORI_DATA_DIR": str(tmp_path_factory.mktemp("bad-webrtc")),
           "MOKSORI_STORE_URL": "none", "MOKSORI_WEBRTC_DEBUG": "1",
           "MOKSORI_WEBRTC_CONNECT_TIMEOUT_S": str(CONNECT_S), "MOKSORI_SERVER_SESSION_IDLE_TIMEOUT_S": str(QUIET_S),
           "MOKSORI_SERVER_MAX_SESSIONS_PER_KEY": str(PER_KEY), "PYTHONUNBUFFERED": "1"}
    with ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port, ready_path="/health",
                       env=env, ready_timeout_s=60) as srv:
        yield srv


# --------------------------------------------------------------------------- helpers


async def post_offer(server, sdp: str, *, session: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        if session is None:
            return await http.post(server.url + "/v1/realtime/calls", content=sdp.encode(),
                                   headers={**H, "Content-Type": "application/sdp"})
        return await http.post(server.url + "/v1/realtime/calls", headers=H,
                               files={"sdp": (None, sdp), "session": (None, json.dumps(session))})


async def hang_up(server, r: httpx.Response) -> None:
    call_id = r.headers["location"].rsplit("/", 1)[-1]
    async with httpx.AsyncClient(timeout=10) as http:
        await http.post(server.url + f"/v1/realtime/calls/{call_id}/hangup", headers=H)


async def counts(server) -> tuple[int, int, int]:
    """(calls, peer connections not closed, sessions) as the server sees them."""
    async with httpx.AsyncClient(timeout=10) as http:
        s = (await http.get(server.url + "/webrtc/debug/stats", headers=H)).json()
        ready = (await http.get(server.url + "/ready", headers=H)).json()
    return s["calls"], s["peers"], ready["sessions"]


async def wait_clean(server, timeout: float) -> float:
    """Seconds until no call, no open peer connection and no session is left."""
    t0 = time.monotonic()
    while (now := await counts(server)) != (0, 0, 0):
        assert time.monotonic() - t0 < timeout, now
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


def assert_clean_log(server, since: int) -> None:
    log = server.log_text()[since:]
    for bad in ("Traceback", "Task exception was never retrieved", "Fatal write error", "Exception in callback"):
        assert bad not in log, log[-3000:]


# --------------------------------------------------------------------------- a peer that connects and then says nothing


async def test_a_connected_peer_that_sends_nothing_is_hung_up_and_gives_its_slot_back(server):
    """No microphone (a recvonly audio line) and no events: ICE consent freshness keeps such a
    peer up for ever, and before the fix its call held a session slot for ever (still there after
    30 s with a 4 s session idle timeout). Data-channel messages keep a call up; once they stop,
    the call ends after the session idle timeout and both of the key's slots are free again."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from moksori.server.webrtc.ice import offering

    await wait_clean(server, 20)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="recvonly")
        channel = pc.createDataChannel("oai-events")
        opened = asyncio.Event()
        channel.on("open", opened.set)
        with offering(LOOPBACK):
            await pc.setLocalDescription(await pc.createOffer())
        r = await post_offer(server, pc.localDescription.sdp)
        assert r.status_code == 201, r.text
        await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
        await asyncio.wait_for(opened.wait(), 15)
        # a peer that types (no microphone) stays: each message counts
        for _ in range(int(2 * QUIET_S / 0.5)):
            channel.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            await asyncio.sleep(0.5)
        assert (await counts(server))[0] == 1, "a peer sending events was hung up"
        assert pc.connectionState == "connected"
        # then silence both ways: hung up after the idle timeout, the slot free again
        quiet_for = await wait_clean(server, QUIET_S + 10)
        assert quiet_for < QUIET_S + 3, quiet_for
    finally:
        await pc.close()
    clients = []
    try:  # the key's PER_KEY slots are both free again
        for _ in range(PER_KEY):
            client = RtcClient()
            r = await post_offer(server, await client.offer())
            assert r.status_code == 201, r.text
            clients.append(client)
    finally:
        for client in clients:
            await client.close()
    await wait_clean(server, CONNECT_S + 10)


# --------------------------------------------------------------------------- offers aiortc mishandles


@pytest.mark.parametrize("change", ["no mid", "empty mid", "mid with a space", "shared mid"])
async def test_an_offer_without_a_usable_mid_is_refused_and_leaves_nothing(server, change):
    """Before: 400 from aiortc's AttributeError, but the peer connection could not be closed (it
    stayed in memory, one per request) and a task's traceback went into the log; two sections
    with one mid (the audio's and the data channel's) were answered 201."""
    await wait_clean(server, 20)
    since = len(server.log_text())
    sdp = await one_offer()
    assert "a=mid:0\r\n" in sdp
    bad = {"no mid": sdp.replace("a=mid:0\r\n", "", 1), "empty mid": sdp.replace("a=mid:0\r\n", "a=mid:\r\n", 1),
           "mid with a space": sdp.replace("a=mid:0\r\n", "a=mid:0 x\r\n", 1),
           "shared mid": sdp.replace("a=mid:1\r\n", "a=mid:0\r\n", 1)}[change]
    r = await post_offer(server, bad)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_offer" and "a=mid" in err["message"], err
    await asyncio.sleep(0.5)  # aiortc's own task failed a moment after the answer
    assert await counts(server) == (0, 0, 0)
    assert_clean_log(server, since)


@pytest.mark.parametrize("port", ["99999", "-1"])
async def test_a_candidate_whose_port_no_packet_can_reach_is_dropped(server, port):
    """aioice took the candidate and its socket's sendto raised: asyncio's "Fatal write error on
    datagram transport" and then tracebacks from aioice's retries on the closed transport."""
    await wait_clean(server, 20)
    since = len(server.log_text())
    sdp = await one_offer()
    bad = re.sub(r"(a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 )\d+", rf"\g<1>{port}", sdp, count=1)
    assert bad != sdp
    r = await post_offer(server, bad)
    assert r.status_code == 201, r.text
    await asyncio.sleep(1.5)  # the server's ICE checks run meanwhile
    await hang_up(server, r)
    await wait_clean(server, 10)
    assert_clean_log(server, since)


async def test_a_multipart_session_of_unknown_type_is_refused(server):
    """Minting a key with such a session is a 400; the same session sent with the offer started
    a call (as a realtime session)."""
    await wait_clean(server, 20)
    sdp = await one_offer()
    for kind in ("video", 5, None):
        r = await post_offer(server, sdp, session={"type": kind, "instructions": "x"})
        assert r.status_code == 400, (kind, r.status_code, r.text[:200])
        err = r.json()["error"]
        assert err["code"] == "invalid_value" and err["param"] == "session.type", err
    r = await post_offer(server, sdp, session={"type": "transcription"})
    assert r.status_code == 201, r.text[:200]
    await hang_up(server, r)
    await wait_clean(server, 10)


@pytest.mark.parametrize("filename", [None, "session.json"])
async def test_a_session_part_that_is_not_utf8_is_named(server, filename):
    """Sent as a file part it was told as "the SDP offer is not UTF-8 text"; it is the session's
    fault, named as such (a plain field reaches us with U+FFFD, here in its type), and nothing is
    left behind."""
    await wait_clean(server, 20)
    sdp = await one_offer()
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(server.url + "/v1/realtime/calls", headers=H,
                            files={"sdp": (None, sdp), "session": (filename, b'{"type": "realtime\xff"}')})
    assert r.status_code == 400, r.text[:200]
    err = r.json()["error"]
    assert err["param"].startswith("session") and "sdp" not in err["message"].lower(), err
    assert await counts(server) == (0, 0, 0)
