"""One WebRTC call: a peer connection feeding one `RealtimeConnection`.

    offer ─▶ RTCPeerConnection ─▶ answer
    inbound audio track ──(mono PCM at the codec's rate)──▶ conn.push_audio
    data channel `oai-events` ◀──▶ conn (client events in, server events out)
    sideband WebSockets (`/v1/realtime?call_id=`) ◀──▶ the same conn, the same events
    engine speaker ──▶ OutboundAudio (AudioSink) ──▶ outbound track (paced, flushable)

The call ends on hang-up, when the peer closes, when it never connects (`connect_timeout_s`),
or when a connected peer goes silent: no media for `idle_timeout_s` after media has flowed means
it vanished without closing (a browser's mic track always sends frames, silence included). A
call that never sent media (a mic not started yet) is ended by ICE consent freshness if the peer
vanishes (aioice: about 30 s), and if it stays but sends neither media nor a data-channel message
for `session_idle_timeout_s` (the WebSocket's MOKSORI_SERVER_SESSION_IDLE_TIMEOUT_S). It also
ends when its connection can send no more, and when the peer stops taking the data channel's
messages (MAX_CHANNEL_BUFFERED).

Only the offer's first audio line is received; any other media (video, a second audio line) is
answered inactive. A server event larger than the peer's data-channel message limit
(`a=max-message-size`) is not sent there: the client gets a small `event_too_large` error
instead, and the sidebands still get the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple

from aiortc import (RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection, RTCRtpTransceiver,
                    RTCSessionDescription)
from aiortc.exceptions import InvalidStateError

from moksori.audio.frames import Frame
from moksori.errors import ProtocolError
from moksori.server.realtime_conn import RealtimeConnection
from moksori.server.webrtc import aiortc_fixes, ice
from moksori.server.webrtc.ice_servers import PeerIce
from moksori.server.webrtc.sdp import candidate_types, first_audio_codec
from moksori.server.webrtc.tracks import OutboundAudio, pump_inbound
from moksori.transport import Inbox, Outbox

aiortc_fixes.install()

log = logging.getLogger("moksori.webrtc")

EVENTS_CHANNEL = "oai-events"
MAX_PENDING_EVENTS = 2000  # server events kept until the data channel opens
MAX_INBOX = 512  # client events waiting to be handled
SIDEBAND_QUEUE = 10_000
# Bytes of server events aiortc holds for the data channel (its `bufferedAmount`, unbounded in
# aiortc) before the peer counts as not reading. A spoken conversation sends a few KB a second
# there (the audio is on the RTP track), so this is minutes of normal traffic, or 16 events of
# the largest size Chrome takes (256 KiB); a peer that stopped acknowledging SCTP data made the
# server hold 120 MB in a minute. The WebSocket's counterpart is MAX_OUTBOUND_EVENTS.
MAX_CHANNEL_BUFFERED = 4 * 1024 * 1024


class Wire(NamedTuple):
    """A server event as the text that goes on the wire, with what a size limit counts."""

    text: str
    size: int  # UTF-8 bytes, what the peer's a=max-message-size and `bufferedAmount` count
    type: str  # the event's type, to name it in an error


def wire(event: dict[str, Any]) -> Wire:
    """Encode one server event. Text with a lone surrogate (a client's `\\ud800` escape echoed
    back) has no UTF-8 form, and aiortc's send would raise on it: such an event is sent with
    JSON's ASCII escapes instead."""
    text = json.dumps(event, ensure_ascii=False)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        text = json.dumps(event)
        size = len(text)
    return Wire(text, size, str(event.get("type", "")))


class Sideband:
    """A server-side WebSocket attached to a call: it gets every server event."""

    def __init__(self, send_text: Callable[[str], Awaitable[None]]) -> None:
        # a reader more than SIDEBAND_QUEUE events behind loses the stream; the route closes it
        self.outbox: Outbox[str] = Outbox(send_text, name="webrtc-sideband", limit=SIDEBAND_QUEUE)

    @property
    def task(self) -> asyncio.Task[None]:
        """Ends when the sideband can send no more (detached, the socket failed, or too slow)."""
        return self.outbox.task

    @property
    def overflowed(self) -> bool:
        return self.outbox.reason == "not_reading"

    def push(self, text: str | None) -> None:
        """An event to send; None: send what is queued, then stop."""
        if text is None:
            self.outbox.finish()
        else:
            self.outbox.put(text)


def peer_configuration(peer: PeerIce) -> RTCConfiguration:
    """aiortc's configuration for a call's peer (no servers: host candidates only)."""
    servers = [RTCIceServer(urls=peer.stun)] if peer.stun else []
    if peer.turn:
        servers.append(RTCIceServer(urls=peer.turn, username=peer.username, credential=peer.credential))
    policy = RTCIceTransportPolicy.RELAY if peer.relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


class Call:
    def __init__(self, call_id: str, *, owner: str, connect_timeout_s: float, idle_timeout_s: float,
                 on_closed: Callable[["Call"], None], max_message_size: int | None = None,
                 peer: PeerIce | None = None, session_idle_timeout_s: float | None = None) -> None:
        """`max_message_size`: the largest data-channel message the peer takes (its offer's
        a=max-message-size, `sdp.Offer`); None: no limit. `peer`: STUN/TURN servers (none: host
        candidates only). `session_idle_timeout_s`: a connected peer that sends neither media nor
        a data-channel message for this long is hung up (the WebSocket's
        MOKSORI_SERVER_SESSION_IDLE_TIMEOUT_S); None: no such limit."""
        self.id = call_id
        self.owner = owner
        self.max_message_size = max_message_size
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.session_idle_timeout_s = session_idle_timeout_s
        self._on_closed = on_closed
        self.peer = peer or PeerIce()
        self.pc = RTCPeerConnection(peer_configuration(self.peer))
        # why this call has no TURN relay candidate although a TURN server is set (None: it has one)
        self.relay_failure: str | None = None
        self.offered: list[str] = []  # the types of the peer's candidates we kept (debug stats)
        self.track = OutboundAudio(notify=self._notify, played=self._played)
        self.conn: RealtimeConnection | None = None
        self.channel: Any = None
        self._pending: deque[Wire] = deque(maxlen=MAX_PENDING_EVENTS)
        self.channel_peak = 0  # the most bytes the data channel has held unsent (debug stats)
        self._channel_stuck = False  # past MAX_CHANNEL_BUFFERED: nothing more goes on the channel
        # client events from the data channel and the sidebands, handled in arrival order from `start`
        self._inbox: Inbox[str | bytes] = Inbox(self._handle, name=f"webrtc-inbox-{call_id}", limit=MAX_INBOX,
                                                on_overflow=self._inbox_full, start=False)
        self.sidebands: set[Sideband] = set()
        self._tasks: set[asyncio.Task] = set()
        self.created = time.monotonic()
        self.last_media = self.created
        self.last_heard = self.created  # the last media frame or data-channel message from the peer
        self.has_media = False
        self.connected = False
        self.closed = False
        self.close_reason: str | None = None
        self.codec: str | None = None  # the audio codec negotiated (opus, PCMU, PCMA)
        self.ended = asyncio.Event()
        self._closing: asyncio.Task | None = None
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # ------------------------------------------------------------------ setup

    def attach_connection(self, conn: RealtimeConnection) -> None:
        self.conn = conn

    async def answer(self, offer_sdp: str, addresses: list[str] | None) -> str:
        """Apply the offer, add our outbound track, gather our candidates, return the answer."""
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        self.offered = candidate_types(offer_sdp)
        audio = self._receive_first_audio_only()
        if audio is not None:
            if not aiortc_fixes.low_latency_receiver(audio.receiver):
                log.warning("call %s: aiortc's jitter buffer could not be shortened (+60 ms on input)", self.id)
            self.pc.addTrack(self.track)  # takes the first audio transceiver's sender (the others are inactive)
        with ice.offering(addresses) as gathering:
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = self.pc.localDescription.sdp
        if self.peer.turn and " typ relay" not in answer and (gathering.turn_error or "a=candidate:" in answer):
            self.relay_failure = f"{self.peer.turn}: {gathering.turn_error or 'no relay candidate'}"
        self.codec = first_audio_codec(answer)
        if self.codec == "opus":
            self.track.silence_packet = aiortc_fixes.opus_silence()
        return answer

    def _first_audio(self) -> RTCRtpTransceiver | None:
        """The transceiver of the offer's first audio line: the call's one inbound and outbound audio."""
        return next((t for t in self.pc.getTransceivers() if t.kind == "audio"), None)

    def _receive_first_audio_only(self) -> RTCRtpTransceiver | None:
        """Answer every transceiver but the first audio one inactive, and return that one. For an
        offered line aiortc answers recvonly by default, then runs a receiver and decoder for it
        and queues every decoded frame in a track nobody reads: a client's 640x480 video grew the
        server by ~13 MB/s. Inactive, nothing is received or decoded."""
        kept = self._first_audio()
        for t in self.pc.getTransceivers():
            if t is not kept:
                t.direction = "inactive"
        return kept

    def start(self) -> None:
        assert self.conn is not None
        self._spawn(self.conn.start(), "webrtc-start")
        self._track(self._inbox.start())
        self._spawn(self._watch(), "webrtc-watch")
        self._spawn(self._watch_sender(self.conn), "webrtc-sender")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        return self._track(asyncio.create_task(coro, name=f"{name}-{self.id}"))

    def _track(self, task: asyncio.Task) -> asyncio.Task:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ server events out

    async def send(self, event: dict[str, Any]) -> None:
        """The connection's `send`: the data channel and every sideband get the event. Never
        raises: the connection's outbox would take an exception for a dead socket."""
        out = wire(event)
        for sb in list(self.sidebands):
            sb.push(out.text)  # a WebSocket has no message size limit: sidebands get every event whole
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            self._to_channel(ch, out)
        elif not self.closed:
            self._pending.append(out)

    def too_large(self, size: int) -> bool:
        """Whether a message of `size` bytes is more than the peer's data channel takes."""
        return self.max_message_size is not None and size > self.max_message_size

    def _to_channel(self, channel: Any, out: Wire) -> None:
        """Put one event on the open data channel. Never raises: this also runs inside aiortc's
        callbacks (the channel opening), where an exception ends the whole DTLS session."""
        if self._channel_stuck:
            return
        if self.too_large(out.size):
            out = self._too_large_error(out)
        try:
            channel.send(out.text)
        except (InvalidStateError, ValueError) as e:  # closed under us; aiortc refused the message
            log.info("call %s: the data channel refused a %s: %s", self.id, out.type, e)
            self.end(f"the data channel failed: {type(e).__name__}")
            return
        buffered = channel.bufferedAmount
        self.channel_peak = max(self.channel_peak, buffered)
        if buffered > MAX_CHANNEL_BUFFERED:
            self._channel_stuck = True
            log.warning("call %s: %d bytes unsent on the data channel, the peer is not reading: ending the call",
                        self.id, buffered)
            self.end("the peer is not reading the data channel")

    def _too_large_error(self, out: Wire) -> Wire:
        """What the peer gets instead of an event its data channel cannot take."""
        log.info("call %s: a %s of %d bytes is more than the peer's data channel takes (%s bytes)",
                 self.id, out.type, out.size, self.max_message_size)
        message = (f"the server event {out.type} is {out.size} bytes, more than the {self.max_message_size} bytes "
                   f"this data channel takes (the peer's a=max-message-size): it was not sent here; a sideband "
                   f"connection (/v1/realtime?call_id=) gets it whole")
        assert self.conn is not None  # server events come from the connection
        return wire(self.conn.ev.error(message, code="event_too_large", type="invalid_request_error"))

    def _notify(self, kind: str, response_id: str) -> None:
        conn = self.conn
        if conn is None:
            return
        if kind == "stopped":  # OpenAI's order: stopped comes after response.done
            conn.send_after_done(response_id, conn.ev.output_audio_buffer_stopped(response_id))
            return
        make = {"started": conn.ev.output_audio_buffer_started, "cleared": conn.ev.output_audio_buffer_cleared}[kind]
        conn.send(make(response_id))

    def _played(self, response_id: str, ms: int) -> None:
        if self.conn is not None:
            self.conn.session.ack_playback(response_id, ms)

    # ------------------------------------------------------------------ peer events

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != EVENTS_CHANNEL or self.channel is not None:
            log.info("call %s: ignoring data channel %r", self.id, channel.label)
            return
        self.channel = channel
        channel.on("message", self._from_peer)
        channel.on("close", lambda: self.end("the data channel closed"))

        def flush() -> None:
            while self._pending and channel.readyState == "open":
                self._to_channel(channel, self._pending.popleft())

        if channel.readyState == "open":
            flush()
        else:
            channel.on("open", flush)

    def _on_track(self, track: Any) -> None:
        first = self._first_audio()  # aiortc announces every offered line's track, before `answer` can say no
        if first is None or track is not first.receiver.track:
            return  # video, or a second audio line: answered inactive, it never receives

        def on_frame(frame: Frame) -> None:
            self.has_media = True  # a sender with no track yet (text first, mic later) sends nothing
            self.last_media = self.last_heard = time.monotonic()
            conn = self.conn
            if conn is None or conn.closed:
                return
            try:
                conn.push_audio(frame)
            except ProtocolError as e:  # e.g. the manual-mode buffer is full
                conn.send(conn.ev.error_from(e))

        self._spawn(pump_inbound(track, on_frame), "webrtc-inbound")

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            if not self.connected:  # the quiet clock starts once connected (connecting has its own timeout)
                self.last_heard = max(self.last_heard, time.monotonic())
            self.connected = True
        elif state in ("failed", "closed"):
            self.end(f"the peer connection {state}")

    # ------------------------------------------------------------------ client events in

    def _from_peer(self, message: str | bytes) -> None:
        self.last_heard = time.monotonic()
        self.deliver(message)

    def deliver(self, message: str | bytes) -> None:
        """A client event from the data channel or a sideband, handled in arrival order. Past
        MAX_INBOX waiting, events are refused and the client is told (once until one is handled)."""
        self._inbox.offer(message)

    def _inbox_full(self) -> None:
        if self.conn is not None:
            self.conn.error("too many client events waiting: slow down", code="rate_limit_exceeded")

    async def _handle(self, message: str | bytes) -> None:
        if self.conn is not None:
            await self.conn.on_message(message)

    # ------------------------------------------------------------------ lifetime

    async def _watch_sender(self, conn: RealtimeConnection) -> None:
        """End the call when its connection can send no more (its outbox failed or found the peer
        not reading): the session is closed then, and a call left up would hold its slot with a
        dead session behind it. The WebSocket route watches the same task."""
        await asyncio.wait({conn.sender})
        self.end(f"the session stopped sending ({conn.send_stopped or 'closed'})")

    async def _watch(self) -> None:
        while not self.closed:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if not self.connected:
                if now - self.created > self.connect_timeout_s:
                    relay = f" (this server got no TURN relay: {self.relay_failure})" if self.relay_failure else ""
                    self.end(f"the peer did not connect within {self.connect_timeout_s:g} s{relay}")
                    return
                continue
            if self.has_media and now - self.last_media > self.idle_timeout_s:
                self.end(f"no media from the peer for {self.idle_timeout_s:g} s")
                return
            # connected, but silent both ways: no microphone (or a recvonly line) and no events. ICE
            # consent keeps such a peer up for ever, holding its session slot; the WebSocket ends a
            # client that sends nothing after the same time
            quiet = self.session_idle_timeout_s
            if quiet is not None and now - self.last_heard > quiet:
                self.end(f"no media and no message from the peer for {quiet:g} s")
                return

    def end(self, reason: str) -> None:
        """Close soon (from a callback or from inside one of the call's own tasks)."""
        if self._closing is None and not self.closed:
            self._closing = asyncio.ensure_future(self.close(reason))

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        log.info("call %s ended: %s", self.id, reason)
        me = asyncio.current_task()
        for task in list(self._tasks):
            if task is not me:
                task.cancel()
        await asyncio.gather(*[t for t in self._tasks if t is not me], return_exceptions=True)
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        self.track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        for sb in list(self.sidebands):
            sb.push(None)
        self._pending.clear()
        self.ended.set()
        self._on_closed(self)

    # ------------------------------------------------------------------ sidebands

    def attach(self, send_text: Callable[[str], Awaitable[None]]) -> Sideband:
        sb = Sideband(send_text)
        self.sidebands.add(sb)
        return sb

    def detach(self, sb: Sideband) -> None:
        self.sidebands.discard(sb)
        sb.push(None)

    def summary(self) -> dict[str, Any]:
        receiving = [t.kind for t in self.pc.getTransceivers() if t.currentDirection in ("recvonly", "sendrecv")]
        return {"call_id": self.id, "connected": self.connected, "state": self.pc.connectionState, "codec": self.codec,
                "has_media": self.has_media, "sidebands": len(self.sidebands), "receiving": receiving,
                "ice_pair": ice.nominated_types(self.pc), "relay_failure": self.relay_failure,
                "offered_candidates": self.offered,
                "channel_peak_bytes": self.channel_peak,
                "buffered_ms": 1000 * self.track.buffered // self.track.rate,
                "frames_sent": self.track.frames_sent, "speech_frames_sent": self.track.speech_frames_sent}
