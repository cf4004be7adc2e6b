"""The pure parts of the WebRTC transport: SDP checks, the key store, the outbound track's
bookkeeping (what it plays, when it says started/stopped/cleared), the aiortc speed fix, and
the call's data-channel limits (with a fake channel) and its end when its session stops sending."""

from __future__ import annotations

import asyncio
import fractions
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("aiortc")

from moksori.audio.frames import Frame
from moksori.server.ephemeral_keys import (MemoryKeyStore, StoreFull, is_ephemeral, new_key,
                                           parse_expires_after)
from moksori.server.webrtc import ice
from moksori.server.webrtc.sdp import (DEFAULT_MAX_MESSAGE_SIZE, OfferError, check_offer,
                                       first_audio_codec, keep_candidates)
from moksori.server.webrtc.tracks import FRAME_SAMPLES, OutboundAudio, to_mono_pcm

OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0", "c=IN IP4 0.0.0.0", "a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000",
    "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
    "a=candidate:2 1 udp 2130706431 192.0.2.2 5001 typ host",
    "a=candidate:3 1 udp 2130706431 abcd.local 5002 typ host",
    "a=ice-ufrag:abcd", "a=ice-pwd:efghijklmnopqrstuvwxyz12", "a=fingerprint:sha-256 AA:BB",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=sctp-port:5000", ""])


# --------------------------------------------------------------------------- SDP


def test_offer_checks():
    offer = check_offer(OFFER.replace("\r\n", "\n"))  # LF-only offers are normalised
    assert offer.audio and offer.data_channel and offer.sdp.endswith("\r\n") and "\r\n" in offer.sdp
    data_only = OFFER[:OFFER.index("m=audio")] + OFFER[OFFER.index("a=ice-ufrag"):]
    for bad, why in [("", "empty"), ("hello", "v=0"), ("v=0\r\nnot a line\r\n", "malformed"),
                     ("v=0\r\ns=-\r\n", "no audio"), (data_only, "no audio"),
                     (OFFER.replace("m=audio", "m=video"), "no audio"),
                     (OFFER.replace("a=ice-pwd", "a=x-pwd"), "ICE"), (OFFER.replace("a=fingerprint", "a=x"), "DTLS")]:
        with pytest.raises(OfferError, match=why):
            check_offer(bad)


def test_max_message_size_of_the_peer():
    """The data channel's a=max-message-size: Chrome's and aiortc's 262144; absent, RFC 8841's
    64 KiB (as aiortc assumes); 0, no limit. Only the data-channel section counts."""
    assert check_offer(OFFER).max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 65536
    assert check_offer(OFFER + "a=max-message-size:262144\r\n").max_message_size == 262144
    assert check_offer(OFFER + "a=max-message-size:0\r\n").max_message_size is None
    audio_level = OFFER.replace("a=ice-ufrag", "a=max-message-size:5\r\na=ice-ufrag")
    assert check_offer(audio_level).max_message_size == DEFAULT_MAX_MESSAGE_SIZE


def test_candidates_are_filtered_for_loopback_calls():
    loop = ice.remote_filter(["127.0.0.1"])
    kept = keep_candidates(OFFER, loop)
    assert "127.0.0.1 5000" in kept and "192.0.2.2" not in kept and ".local" not in kept
    assert keep_candidates(OFFER, ice.remote_filter(None)) == OFFER  # default interfaces: keep all
    assert ice.addresses_for([], "127.0.0.1") == ["127.0.0.1"]
    assert ice.addresses_for([], "192.0.2.2") is None
    assert ice.addresses_for(["10.1.2.3"], "127.0.0.1") == ["10.1.2.3"]


def test_first_audio_codec():
    assert first_audio_codec(OFFER) == "opus"
    assert first_audio_codec(OFFER.replace("SAVPF 111 0", "SAVPF 0 111")) == "PCMU"
    assert first_audio_codec("v=0\r\nm=application 9 x\r\n") is None


async def test_ice_addresses_are_per_context():
    import aioice.ice

    with ice.offering(["127.0.0.1"]):
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]

        async def other() -> list[str]:
            with ice.offering(["127.0.0.2"]):
                await asyncio.sleep(0)
                return aioice.ice.get_host_addresses(True, False)

        assert await asyncio.create_task(other()) == ["127.0.0.2"]
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(True, False)  # aioice's default again


# --------------------------------------------------------------------------- ephemeral keys


async def test_key_store_expiry_and_capacity():
    now = [1000.0]
    store = MemoryKeyStore(max_keys=2, clock=lambda: now[0])
    a = new_key(10, {"instructions": "a"}, now=now[0])
    b = new_key(600, {}, now=now[0])
    await store.put(a)
    await store.put(b)
    assert is_ephemeral(a.value) and not is_ephemeral("sk-x") and not is_ephemeral(None)
    assert (await store.get(a.value)).session == {"instructions": "a"}
    assert await store.get("ek_unknown") is None
    with pytest.raises(StoreFull):
        await store.put(new_key(10, {}, now=now[0]))
    now[0] += 10  # a expires exactly now
    assert await store.get(a.value) is None
    assert await store.get(b.value) is not None
    await store.put(new_key(10, {}, now=now[0]))  # room again: the expired key was dropped
    assert len(store) == 2


def test_expires_after():
    assert parse_expires_after(None) == 600
    assert parse_expires_after({"anchor": "created_at", "seconds": 10}) == 10
    assert parse_expires_after({"seconds": 7200}) == 7200
    for bad in ({"seconds": 9}, {"seconds": 7201}, {"seconds": "60"}, {"seconds": True}, {"anchor": "x"}, []):
        with pytest.raises(ValueError):
            parse_expires_after(bad)


# --------------------------------------------------------------------------- the outbound track


def tone(ms: int, rate: int = 48000) -> Frame:
    n = rate * ms // 1000
    return Frame((8000 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.int16), rate)


async def test_outbound_track_plays_then_stops_and_reports():
    events: list[tuple[str, str]] = []
    played: list[tuple[str, int]] = []
    track = OutboundAudio(lambda e, r: events.append((e, r)), lambda r, ms: played.append((r, ms)))
    track.clock = lambda: 0.0  # never sleep: pacing is the clock's business, not this test's
    first = await track.recv()  # idle: silence, encoded (pts 0 anchors the timestamps)
    assert first.pts == 0 and not np.any(first.to_ndarray())
    track.play("resp_1", "item_1", tone(50))
    track.play("resp_1", "item_1", tone(50))
    track.end("resp_1")  # more queued: it stops once drained
    frames = [await track.recv() for _ in range(5)]  # 100 ms = 5 frames
    assert all(np.any(f.to_ndarray()) for f in frames)
    assert events == [("started", "resp_1"), ("stopped", "resp_1")]
    assert played[-1] == ("resp_1", 100)
    assert [f.pts for f in frames] == [FRAME_SAMPLES * i for i in range(1, 6)]


async def test_outbound_track_clear_and_next_response():
    events: list[tuple[str, str]] = []
    track = OutboundAudio(lambda e, r: events.append((e, r)))
    track.clock = lambda: 0.0
    track.play("resp_1", "item_1", tone(200))
    await track.recv()
    track.clear(["resp_1"])
    assert events == [("started", "resp_1"), ("cleared", "resp_1")] and track.buffered == 0
    assert not np.any((await track.recv()).to_ndarray())  # silence at once
    track.clear([])  # nothing to cut: no event
    assert events[-1] == ("cleared", "resp_1") and len(events) == 2
    # a response resampled from 24 kHz, then the next one right behind it
    track.play("resp_2", "item_2", tone(30, 24000))
    track.play("resp_3", "item_3", tone(20))
    track.end("resp_2")
    track.end("resp_3")
    for _ in range(3):
        await track.recv()
    assert events[2:] == [("started", "resp_2"), ("stopped", "resp_2"), ("started", "resp_3"), ("stopped", "resp_3")]


async def test_idle_track_sends_preencoded_silence():
    from av.packet import Packet

    track = OutboundAudio()
    track.clock = lambda: 0.0
    track.silence_packet = b"\xf8\xff\xfe"
    out = [await track.recv() for _ in range(5)]
    assert not isinstance(out[0], Packet)  # the first frame goes through the encoder
    assert isinstance(out[-1], Packet) and bytes(out[-1]) == b"\xf8\xff\xfe" and out[-1].pts == 4 * FRAME_SAMPLES
    track.play("r", "i", tone(20))
    speech = await track.recv()
    assert not isinstance(speech, Packet) and np.any(speech.to_ndarray())
    after = [await track.recv() for _ in range(3)]  # the encoder is flushed with real silence first
    assert [isinstance(x, Packet) for x in after] == [False, False, True]


def test_decoded_frames_become_mono_pcm():
    from av import AudioFrame

    stereo = np.zeros((1, 960 * 2), np.int16)
    stereo[0, 0::2], stereo[0, 1::2] = 1000, 3000
    f = AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    f.sample_rate = 48000
    pcm = to_mono_pcm(f)
    assert pcm.rate == 48000 and len(pcm) == 960 and np.all(pcm.samples == 2000)


def test_audio_level_matches_aiortc():
    from av import AudioFrame

    from moksori.server.webrtc import aiortc_fixes

    original = aiortc_fixes.original_audio_level
    rng = np.random.default_rng(1)
    for scale in (0, 1, 30, 3000, 32767):
        x = np.clip(rng.normal(0, scale, (1, 960)), -32768, 32767).astype(np.int16)
        f = AudioFrame.from_ndarray(x, format="s16", layout="mono")
        f.sample_rate, f.pts, f.time_base = 48000, 0, fractions.Fraction(1, 48000)
        assert aiortc_fixes.audio_level_dbov(f) == original(f), scale


async def test_server_receivers_keep_one_frame():
    from aiortc import RTCConfiguration, RTCPeerConnection

    from moksori.server.webrtc import aiortc_fixes

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        t = pc.addTransceiver("audio")
        assert aiortc_fixes.low_latency_receiver(t.receiver)
        assert t.receiver._RTCRtpReceiver__jitter_buffer._prefetch == aiortc_fixes.INBOUND_PREFETCH
    finally:
        await pc.close()


async def test_clearing_one_response_leaves_the_playing_one_alone():
    """A stale reply that never played is dropped without cutting the one being heard."""
    events: list[tuple[str, str]] = []
    track = OutboundAudio(lambda e, r: events.append((e, r)))
    track.clock = lambda: 0.0
    track.play("playing", "i1", tone(100))
    await track.recv()
    track.play("stale", "i2", tone(100))
    track.clear(["stale"])
    assert events == [("started", "playing"), ("cleared", "stale")]
    assert track.buffered == 48 * 80  # the 80 ms of "playing" not yet sent
    frames = [await track.recv() for _ in range(4)]
    assert all(np.any(f.to_ndarray()) for f in frames)
    track.clear(["nothing-like-this"])
    assert len(events) == 2
    track.play("playing", "i1", tone(40))
    track.clear(["playing"])  # barge-in on the one being heard
    assert events[-1] == ("cleared", "playing") and track.buffered == 0


# --------------------------------------------------------------------------- the call's data channel


class FakeDataChannel:
    """A fake of aiortc's RTCDataChannel: what `Call` uses of it. Like aiortc, `send` refuses a
    message over the peer's limit with ValueError and counts what it holds in `bufferedAmount`;
    like a peer that acknowledges nothing, it never drains."""

    label = "oai-events"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.readyState = "connecting"
        self.bufferedAmount = 0
        self.sent: list[str] = []
        self._handlers: dict[str, object] = {}

    def on(self, event: str, handler: object) -> None:
        self._handlers[event] = handler

    def open(self) -> None:
        self.readyState = "open"
        handler = self._handlers.get("open")
        if callable(handler):
            handler()

    def send(self, text: str) -> None:
        size = len(text.encode("utf-8"))
        if size > self.limit:
            raise ValueError(f"Cannot send message of {size} bytes")
        self.bufferedAmount += size
        self.sent.append(text)


def _call(send: Callable[[dict[str, Any]], Awaitable[None]] | None = None, *,
          max_message_size: int | None = None) -> tuple[Any, Any, list[object]]:
    """A real Call and RealtimeConnection (fake models); the connection's `send` is the call's
    unless given."""
    from moksori.protocols import realtime as rt
    from moksori.server.realtime_conn import RealtimeConnection
    from moksori.server.webrtc.call import Call
    from moksori.settings import Settings
    from moksori.testing.fakes import fake_stack

    closed: list[object] = []
    call = Call("rtc_test", owner="t", connect_timeout_s=60, idle_timeout_s=60, on_closed=closed.append,
                max_message_size=max_message_size)
    conn = RealtimeConnection(fake_stack(), Settings(turn={"provider": "none"}), rt.Flavor.GA, send or call.send,
                              audio_sink=call.track)
    call.attach_connection(conn)
    return call, conn, closed


async def test_an_event_too_large_before_the_channel_opens_becomes_an_error():
    """Queued before the channel opened, then sent from aiortc's "open" callback: the ValueError
    used to escape into aiortc's DTLS loop and end the call 40 ms after it started."""
    call, conn, _ = _call(max_message_size=2000)
    try:
        channel = FakeDataChannel(limit=2000)
        call._on_datachannel(channel)
        await call.send(conn.ev.session_updated({"instructions": "x" * 5000}))
        await call.send(conn.ev.session_updated({"instructions": "small"}))
        channel.open()  # flushes what waited; raises nothing
        sent = [json.loads(t) for t in channel.sent]
        assert [e["type"] for e in sent] == ["error", "session.updated"]
        assert sent[0]["error"]["code"] == "event_too_large" and "session.updated" in sent[0]["error"]["message"]
        await call.send(conn.ev.session_updated({"instructions": "y" * 5000}))  # after it opened, the same
        assert json.loads(channel.sent[-1])["error"]["code"] == "event_too_large" and not call.closed
    finally:
        await call.close()


async def test_a_data_channel_nobody_drains_ends_the_call_at_its_cap():
    from moksori.server.webrtc.call import MAX_CHANNEL_BUFFERED

    call, conn, closed = _call()
    try:
        channel = FakeDataChannel(limit=1 << 30)
        call._on_datachannel(channel)
        channel.open()
        event = conn.ev.session_updated({"instructions": "z" * 100_000})
        for _ in range(MAX_CHANNEL_BUFFERED // 100_000 - 1):
            await call.send(event)
        assert not call.closed and call._closing is None  # just under the cap: fine
        for _ in range(3):
            await call.send(event)
        sent = len(channel.sent)
        await call.send(event)
        assert len(channel.sent) == sent  # past the cap nothing more is put on the channel
        await asyncio.wait_for(call.ended.wait(), 10)
        assert call.close_reason == "the peer is not reading the data channel" and closed == [call]
    finally:
        await call.close()


async def test_the_call_ends_when_its_session_stops_sending():
    """The connection's outbox stops on a failed send (or a client not reading) and closes the
    session; the call used to stay up, connected, holding its slot with a dead session."""
    async def broken(event: dict) -> None:
        raise ConnectionError("gone")

    call, conn, closed = _call(broken)
    try:
        call.start()  # session.created: the send fails
        await asyncio.wait_for(call.ended.wait(), 10)
        assert call.close_reason == "the session stopped sending (send_failed)" and closed == [call]
        assert conn.closed and conn.session.closed
    finally:
        await call.close()
