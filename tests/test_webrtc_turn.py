"""WebRTC through a real TURN server: coturn (`turnserver`) on 127.0.0.1, `tests/turn_server.py`.

The client is `moksori.testing.webrtc_client.RtcClient` made relay-only (iceTransportPolicy
"relay", the ICE servers `POST /session` hands the page): every packet it sends goes through
coturn, as for a browser behind a NAT that nothing but a TURN server gets through.

* `webrtc.ice_servers` (MOKSORI_WEBRTC_ICE_SERVERS) is checked at start-up, with errors naming
  the entry; `webrtc.turn_secret` mints coturn's time-limited credentials, which coturn takes
  (and refuses under another secret);
* a real speech call (the embedded models, en_028 spoken on the track) gets its transcript and
  its reply audio through TURN, with time-limited credentials from `/session`;
* static credentials, and a server that relays every call (`ice_transport_policy=relay`): the
  call connects relay to relay;
* a wrong TURN secret: a relay-only server refuses the call at once (502 naming the TURN server
  and its 401), never a call that hangs until the connect timeout; a server that may go on
  without a relay answers, and logs why it has none.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from scripted_llm_server import ScriptedLLM
from servers import ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir, requires_speech
from turn_server import TurnServer, relay_client, turnserver_available

aiortc = pytest.importorskip("aiortc")
from moksori.server.webrtc import ice  # noqa: E402 - needs aiortc
from moksori.server.webrtc.ice_servers import rest_credentials  # noqa: E402
from moksori.server.webrtc.sdp import candidate_types  # noqa: E402
from moksori.testing.webrtc_client import RtcClient  # noqa: E402

pytestmark = pytest.mark.skipif(not turnserver_available(), reason="needs coturn's turnserver (scripts/install-system.sh)")

HERE = Path(__file__).parent
KEY = "sk-moksori-turn"
H = {"Authorization": f"Bearer {KEY}"}
SECRET = "moksori-turn-secret"
STATIC_USER = ("alice", "wonderland")


@pytest.fixture(scope="module")
def coturn_secret():
    with TurnServer(secret=SECRET, relay_ports=(49160, 49179)) as turn:
        yield turn


@pytest.fixture(scope="module")
def coturn_static():
    with TurnServer(user=STATIC_USER, relay_ports=(49180, 49200)) as turn:
        yield turn


def fake_stack_server(tmp_path_factory, env: dict[str, str]) -> ServerProcess:
    """The real app with fast fake models (`tests/store_server.py`), API key KEY."""
    port = free_port()
    base = {"MOKSORI_API_KEYS": KEY, "MOKSORI_DATA_DIR": str(tmp_path_factory.mktemp("webrtc-turn")),
            "MOKSORI_STORE_URL": "none", "MOKSORI_WEBRTC_DEBUG": "1", "MOKSORI_WEBRTC_CONNECT_TIMEOUT_S": "3",
            "PYTHONUNBUFFERED": "1"}
    return ServerProcess([sys.executable, str(HERE / "store_server.py"), str(port)], port=port, ready_path="/health",
                         env={**base, **env}, ready_timeout_s=60)


def servers_env(servers: list[dict[str, Any]], **more: str) -> dict[str, str]:
    return {"MOKSORI_WEBRTC_ICE_SERVERS": json.dumps(servers), **more}


async def page_session(server: ServerProcess, session: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the browser app gets from `POST /session`: its key and its ICE servers."""
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(server.url + "/session", headers=H, json={"session": session or {"type": "realtime"}})
    assert r.status_code == 200, r.text
    return r.json()


def stats_now(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(server.url + "/webrtc/debug/stats", headers=H, timeout=10).json()


def stats_when(server: ServerProcess, pred: Any, timeout: float = 15.0) -> dict[str, Any]:
    """The debug stats once `pred` holds for them (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats_now(server)
        if pred(s):
            return s
        assert time.monotonic() < deadline, s
        time.sleep(0.1)


async def stats(server: ServerProcess) -> dict[str, Any]:
    return await asyncio.to_thread(stats_now, server)


async def wait_stats(server: ServerProcess, pred: Any, timeout: float = 15.0) -> dict[str, Any]:
    return await asyncio.to_thread(stats_when, server, pred, timeout)


async def post_offer(server: ServerProcess, sdp: str, key: str = KEY) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(server.url + "/v1/realtime/calls", content=sdp.encode(),
                               headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"})


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("env,said", [
    ({"MOKSORI_WEBRTC_ICE_SERVERS": "{nope"}, "MOKSORI_WEBRTC_ICE_SERVERS is not JSON"),
    ({"MOKSORI_WEBRTC_ICE_SERVERS": '{"urls": "stun:x"}'}, "must be a list of servers"),
    ({"MOKSORI_WEBRTC_ICE_SERVERS": '[{"url": "stun:x"}]'}, "server 1 has an unknown field 'url' (the field is 'urls')"),
    ({"MOKSORI_WEBRTC_ICE_SERVERS": '[{"urls": "stun:a"}, {"urls": "http://b"}]'},
     "server 2: 'http://b' is not a STUN/TURN URL"),
    ({"MOKSORI_WEBRTC_ICE_SERVERS": '[{"urls": []}]'}, "server 1 needs 'urls'"),
    ({"MOKSORI_WEBRTC_ICE_SERVERS": '[{"urls": "turn:[::1]:3478", "username": "u", "credential": "p"}]'},
     "IPv6 literal"),
    ({"MOKSORI_WEBRTC_ICE_SERVERS": '[{"urls": "turns:x?transport=udp", "username": "u", "credential": "p"}]'},
     "is not a STUN/TURN URL"),
    ({"MOKSORI_WEBRTC_ICE_SERVERS": '[{"urls": "turn:x", "username": "u"}]'}, "a username without a credential"),
    ({"MOKSORI_WEBRTC_ICE_SERVERS": '[{"urls": "turn:x"}]'},
     "server 1 (turn:x) is a TURN server without username and credential"),
    ({"MOKSORI_WEBRTC_ICE_SERVERS": '[{"urls": "stun:x"}]', "MOKSORI_WEBRTC_TURN_SECRET": "s"},
     "MOKSORI_WEBRTC_TURN_SECRET is set but no TURN server"),
    ({"MOKSORI_WEBRTC_ICE_TRANSPORT_POLICY": "relay"}, "relay needs a TURN server"),
])
def test_bad_ice_settings_are_start_up_errors_naming_the_setting(monkeypatch, env, said):
    from moksori.errors import ConfigError
    from moksori.settings import load_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert said in str(e.value) and "invalid setting webrtc" in str(e.value), str(e.value)


def test_good_ice_settings_in_the_browsers_form(monkeypatch):
    from moksori.server.webrtc.ice_servers import for_page, for_peer
    from moksori.settings import load_settings

    monkeypatch.setenv("MOKSORI_WEBRTC_ICE_SERVERS", json.dumps([
        {"urls": "stun:stun.example.org"}, {"urls": ["stun:127.0.0.1:3478"]},
        {"urls": "turn:turn.example.org:3478?transport=tcp", "username": "u", "credential": "p"},
        {"urls": ["turn:127.0.0.1:3478"]}]))
    monkeypatch.setenv("MOKSORI_WEBRTC_TURN_SECRET", "s3cret")
    cfg = load_settings().webrtc
    assert "s3cret" not in repr(cfg) and "'p'" not in repr(cfg)  # secrets stay out of logs
    page = for_page(cfg, user="key:1", now=1000.0)
    assert [s["urls"] for s in page] == [["stun:stun.example.org"], ["stun:127.0.0.1:3478"],
                                         ["turn:turn.example.org:3478?transport=tcp"], ["turn:127.0.0.1:3478"]]
    assert "username" not in page[0] and (page[2]["username"], page[2]["credential"]) == ("u", "p")
    assert page[3]["username"] == "4600:key_1"  # expiry (now + 1 h):user, made safe for coturn
    assert page[3]["credential"] == rest_credentials("s3cret", "key:1", ttl_s=3600, now=1000.0)[1]
    # the server's own peer: aiortc takes the first STUN and the first TURN URL ...
    peer = for_peer(cfg, user="k", now=1000.0, loopback_only=False)
    assert (peer.stun, peer.turn, peer.username, peer.relay_only) == (
        "stun:stun.example.org", "turn:turn.example.org:3478?transport=tcp", "u", False)
    # ... and a call that stays on loopback only the servers on this machine
    local = for_peer(cfg, user="k", now=1000.0, loopback_only=True)
    assert (local.stun, local.turn, local.username) == ("stun:127.0.0.1:3478", "turn:127.0.0.1:3478", "4600:k")


def test_offers_that_can_never_connect():
    from moksori.server.webrtc.sdp import keep_candidates, is_loopback_address, no_way_in

    head = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
    host = "a=candidate:1 1 udp 2130706431 192.0.2.7 5000 typ host\r\n"
    done = "a=end-of-candidates\r\n"
    assert no_way_in(head + host + done, head + host + done) is None
    assert no_way_in(head, head) is None  # posted before gathering: its checks may still come in
    assert "says none will follow" in (no_way_in(head + done, head + done) or "")
    kept = keep_candidates(head + host + done, is_loopback_address)
    assert kept.count("a=candidate") == 0
    # its checks to our loopback address may still come in (learned as peer-reflexive): not refused
    assert no_way_in(head + host + done, kept) is None


async def test_time_limited_credentials_are_what_coturn_takes(coturn_secret):
    """An allocation with credentials minted from coturn's secret succeeds; from another secret
    it is refused (401), and `ice.offering` says so (aioice itself drops the error)."""
    from aioice import Connection, TransportPolicy

    async def allocate(secret: str, ttl_s: int = 600) -> tuple[list[str], str | None]:
        username, credential = rest_credentials(secret, "tester", ttl_s=ttl_s, now=time.time())
        conn = Connection(ice_controlling=True, turn_server=("127.0.0.1", coturn_secret.port), turn_username=username,
                          turn_password=credential, transport_policy=TransportPolicy.RELAY)
        try:
            with ice.offering(["127.0.0.1"]) as gathering:
                await conn.gather_candidates()
            return [c.type for c in conn.local_candidates], gathering.turn_error
        finally:
            await conn.close()

    assert await allocate(SECRET) == (["relay"], None)
    types, error = await allocate("not-the-secret")
    assert types == [] and error is not None and "401" in error, error
    types, error = await allocate(SECRET, ttl_s=-10)  # expired
    assert types == [] and "401" in (error or ""), error


async def test_an_unreachable_turn_server_is_named():
    """Nothing answers at the TURN address: aioice gives up after its 5 s, and says why."""
    from aioice import Connection, TransportPolicy

    conn = Connection(ice_controlling=True, turn_server=("127.0.0.1", free_port()), turn_username="u",
                      turn_password="p", transport_policy=TransportPolicy.RELAY)
    t0 = time.monotonic()
    try:
        with ice.offering(["127.0.0.1"]) as gathering:
            await conn.gather_candidates()
    finally:
        await conn.close()
    assert conn.local_candidates == [] and time.monotonic() - t0 < 8
    assert gathering.turn_error == "no answer from the TURN server within aioice's 5 s", gathering.turn_error


# --------------------------------------------------------------------------- a real speech call through TURN


@pytest.fixture(scope="module")
def scripted_llm():
    llm = ScriptedLLM()
    with ThreadedASGIServer(llm.app) as srv:
        llm.url = srv.url + "/v1"
        yield llm


@pytest.fixture(scope="module")
def speech_server(tmp_path_factory, scripted_llm, coturn_secret):
    """`moksori serve` with the embedded models, the TURN server with time-limited credentials."""
    data_dir = prepared_data_dir(tmp_path_factory)
    port = free_port()
    argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
    from test_webrtc import KEY as WEBRTC_KEY  # its `transcribe` helper sends that key

    env = {"MOKSORI_DATA_DIR": str(data_dir), "MOKSORI_API_KEYS": f"{KEY},{WEBRTC_KEY}", "MOKSORI_STORE_URL": "none",
           "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": scripted_llm.url, "MOKSORI_LLM_MODEL": "scripted",
           "MOKSORI_WEBRTC_DEBUG": "1", "MOKSORI_WEBRTC_CONNECT_TIMEOUT_S": "10", "PYTHONUNBUFFERED": "1",
           **servers_env([{"urls": coturn_secret.url}], MOKSORI_WEBRTC_TURN_SECRET=SECRET)}
    with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=180, env=env,
                       cwd=tmp_path_factory.mktemp("serve-turn")) as srv:
        yield srv


@pytest.mark.models
@requires_speech
async def test_real_speech_call_through_turn(speech_server, coturn_secret):
    """The page's flow with a relay-only peer: `/session` -> its key and time-limited TURN
    credentials -> offer with relay candidates only -> en_028 spoken -> transcript and reply
    audio, every packet through coturn."""
    from test_webrtc import speech48, transcribe

    grant = await page_session(speech_server, {"type": "realtime", "audio": {"input": {
        "transcription": {"model": "whisper-1", "language": "en"}}}})
    [turn] = grant["ice_servers"]
    expiry, user = turn["username"].split(":", 1)
    assert turn["urls"] == [coturn_secret.url] and 3590 <= int(expiry) - time.time() <= 3600 and user, turn
    client = relay_client(grant["ice_servers"])
    try:
        await client.connect_sdk(speech_server.url, grant["value"])
        offered = candidate_types(client.pc.localDescription.sdp)
        assert offered and set(offered) == {"relay"}, offered  # nothing but coturn's address
        await asyncio.wait_for(client.opened.wait(), 15)
        await client.wait_event("session.created")
        assert ice.nominated_types(client.pc)[0] == "relay"
        s = await stats(speech_server)
        [call] = s["detail"]
        assert call["ice_pair"][1] == "relay" and call["relay_failure"] is None, call  # its own TURN worked too

        n0 = len(client.events)
        client.mic.say(speech48("en_028"))
        done = await client.wait_event("conversation.item.input_audio_transcription.completed", after=n0, timeout=30)
        assert "thousand" in done["transcript"].lower(), done
        started = await client.wait_event("output_audio_buffer.started", after=n0, timeout=30)
        await client.wait_event("output_audio_buffer.stopped", after=n0, timeout=30)
        await asyncio.sleep(0.3)
        t_started = client.time_of(started)
        loud = [pcm for t, pcm in client.frames if t >= t_started - 0.2 and np.abs(pcm).max() > 1000]
        assert len(loud) * 0.02 > 0.8, "less than 0.8 s of audible reply arrived"
        text = await asyncio.to_thread(transcribe, speech_server, client.received(since=t_started - 0.2))
        assert "sounds good" in text.lower(), text
    finally:
        await client.close()
    await wait_stats(speech_server, lambda s: s["calls"] == 0)


# --------------------------------------------------------------------------- static credentials, relay only


@pytest.fixture(scope="module")
def relay_server(tmp_path_factory, coturn_static):
    user, password = STATIC_USER
    env = servers_env([{"urls": coturn_static.url, "username": user, "credential": password}],
                      MOKSORI_WEBRTC_ICE_TRANSPORT_POLICY="relay")
    with fake_stack_server(tmp_path_factory, env) as srv:
        yield srv


async def test_static_credentials_and_a_relay_only_server(relay_server, coturn_static):
    """Both ends relay only: the page gets the listed credentials as they are, the server's
    answer has only its relay candidate, and the call connects relay to relay."""
    grant = await page_session(relay_server)
    assert grant["ice_servers"] == [{"urls": [coturn_static.url], "username": STATIC_USER[0],
                                     "credential": STATIC_USER[1]}]
    client = relay_client(grant["ice_servers"])
    try:
        offer = await client.offer()
        r = await post_offer(relay_server, offer, grant["value"])
        assert r.status_code == 201, r.text
        assert set(candidate_types(r.text)) == {"relay"}, r.text  # the server's own addresses stay hidden
        await client.accept(r.text)
        await asyncio.wait_for(client.opened.wait(), 15)
        await client.wait_event("session.created")
        s = await wait_stats(relay_server, lambda s: s["detail"] and s["detail"][0]["ice_pair"])
        assert s["detail"][0]["ice_pair"] == ["relay", "relay"], s
        assert ice.nominated_types(client.pc) == ("relay", "relay")
    finally:
        await client.close()
    await wait_stats(relay_server, lambda s: s["calls"] == 0)


# --------------------------------------------------------------------------- a wrong TURN credential


@pytest.fixture(scope="module")
def wrong_secret_relay_server(tmp_path_factory, coturn_secret):
    env = servers_env([{"urls": coturn_secret.url}], MOKSORI_WEBRTC_TURN_SECRET="not-coturns-secret",
                      MOKSORI_WEBRTC_ICE_TRANSPORT_POLICY="relay")
    with fake_stack_server(tmp_path_factory, env) as srv:
        yield srv


@pytest.fixture(scope="module")
def wrong_secret_server(tmp_path_factory, coturn_secret):
    env = servers_env([{"urls": coturn_secret.url}], MOKSORI_WEBRTC_TURN_SECRET="not-coturns-secret")
    with fake_stack_server(tmp_path_factory, env) as srv:
        yield srv


async def test_wrong_turn_secret_refuses_a_relay_only_call_at_once(wrong_secret_relay_server, coturn_secret):
    """The server could never connect without its relay: the offer gets a 502 that names the TURN
    server and coturn's 401 in well under a second, and nothing is left behind."""
    client = RtcClient()  # any offer: the server's end is what fails
    try:
        offer = await client.offer()
    finally:
        await client.close()
    t0 = time.monotonic()
    r = await post_offer(wrong_secret_relay_server, offer)
    took = time.monotonic() - t0
    assert r.status_code == 502 and r.json()["error"]["code"] == "turn_failed", r.text
    message = r.json()["error"]["message"]
    assert coturn_secret.url in message and "401" in message, message
    assert took < 2.0, took
    s = await stats(wrong_secret_relay_server)
    assert s["calls"] == 0 and s["peers"] == 0, s
    log = wrong_secret_relay_server.log_text()
    assert "no TURN relay from" in log and "MOKSORI_WEBRTC_TURN_SECRET" in log and "Traceback" not in log, log[-2000:]


async def test_wrong_turn_credentials_at_the_peer_are_a_clear_400(wrong_secret_server):
    """A relay-only peer whose TURN server refuses its credentials gathers no candidate at all:
    its offer (a=end-of-candidates, nothing else) is refused at once with a 400 that says so,
    rather than answered and left to the connect timeout (aioice would not even gather the
    server's own candidates for it)."""
    grant = await page_session(wrong_secret_server)
    client = relay_client(grant["ice_servers"])  # the page's credentials: minted from the wrong secret
    try:
        offer = await client.offer()
    finally:
        await client.close()
    assert candidate_types(offer) == [] and "a=end-of-candidates" in offer
    t0 = time.monotonic()
    r = await post_offer(wrong_secret_server, offer, grant["value"])
    assert time.monotonic() - t0 < 2.0
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_offer", r.text
    message = r.json()["error"]["message"]
    assert "no ICE candidates" in message and "TURN server refuses its credentials" in message, message
    s = await stats(wrong_secret_server)
    assert s["calls"] == 0 and s["peers"] == 0, s


async def test_wrong_turn_secret_without_relay_policy_goes_on_and_says_why(wrong_secret_server, coturn_secret):
    """A server that may go on without its relay answers with its host candidates, a peer that
    can reach them connects, and the log and debug stats say why the server has no relay."""
    client = RtcClient()
    try:
        r = await post_offer(wrong_secret_server, await client.offer())
        assert r.status_code == 201, r.text
        assert candidate_types(r.text) and "relay" not in candidate_types(r.text)
        await client.accept(r.text)
        await asyncio.wait_for(client.opened.wait(), 15)
        await client.wait_event("session.created")
        s = await stats(wrong_secret_server)
        assert "401" in s["detail"][0]["relay_failure"], s
    finally:
        await client.close()
    await wait_stats(wrong_secret_server, lambda s: s["calls"] == 0)
    log = wrong_secret_server.log_text()
    assert f"no TURN relay from {coturn_secret.url}: refused (401 - Unauthorized) (going on without it)" in log, \
        log[-2000:]


# --------------------------------------------------------------------------- the browser app


@pytest.mark.browser
def test_the_browser_app_uses_the_servers_it_is_given(relay_server):
    """Headless Chromium on the app's page, against the relay-only server: the page builds its
    RTCPeerConnection with `/session`'s ICE servers (its offer carries coturn relay candidates)
    and the call connects through the server's relay."""
    from browser_tools import chromium, chromium_available

    if not chromium_available():
        pytest.skip("needs /usr/bin/chromium and the playwright package")
    with chromium(None) as ctx:
        page = ctx.new_page()
        page.goto(relay_server.url + "/?raw=1")
        page.evaluate("(key) => { const el = document.querySelector('#api-key'); el.value = key;"
                      " el.dispatchEvent(new Event('change')); }", KEY)
        page.get_by_test_id("start").click()
        page.wait_for_function("() => !!window.moksori.transport", timeout=30_000)
        assert page.evaluate("() => [window.moksori.transport, window.moksori.webrtcError]") == ["webrtc", None]
        s = stats_when(relay_server, lambda s: s["detail"] and s["detail"][0]["ice_pair"])
        [call] = s["detail"]
        assert "relay" in call["offered_candidates"] and call["ice_pair"][0] == "relay", call
        page.get_by_test_id("stop").click()
    stats_when(relay_server, lambda s: s["calls"] == 0)
