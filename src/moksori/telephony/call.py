"""One phone call: a carrier's media-stream codec on one side, an engine `Session` on the other.

The codec (`moksori.protocols.*`) is pure; this module is the I/O around it, minus the socket:
the route hands in every WebSocket message (`feed`) and one coroutine, `send(wire)`, and
closes the socket once `ended` is set. What happens here:

* `start` -> check the per-call stream token, then open a `Session` at the carrier's own rate
  (8 kHz G.711, or Vonage's 16 kHz L16) and greet at once (the greeting's audio is cached by
  `phrases`, so the caller hears it within milliseconds); live partial transcripts run only
  while a follower of the call's live events reads them (`stt.partials=auto`; nobody on the
  phone line reads them, and they would take CPU from the reply);
* caller audio -> `session.push_audio` (the engine resamples to 16 kHz itself);
* DTMF -> a `call.dtmf` event on the session bus;
* engine events -> the parts: reply audio, marks and barge-in clears to the carrier
  (`playout.py`), tool calls to the call-control tools (`call_tools.py`: `end_call` /
  `transfer_call` say something first, wait until the caller has heard it, then use the
  carrier's REST API or close the stream).

Nothing a carrier sends can raise out of `feed`: bad messages are logged (briefly) and skipped,
and a stream that keeps sending garbage, never starts, or goes silent is ended. A `start` that
cannot open the stream (a codec or sample rate Moksori does not take, no call id), or one for a
call that already has a live stream (here, or on another worker of a cluster: the route's
`claim_call`), is refused at once (1008, the reason in the close frame).

Why a call ended (`end_reason`, the `call.ended` event): `carrier_stop` (the carrier's stop),
`carrier_hung_up` (the socket closed), `carrier_not_reading` / `carrier_lost` (the socket was lost
without a close frame, or a send to it failed, after the carrier had stopped confirming the audio
it was sent / stopped sending anything for `UNRESPONSIVE_S`: what a keepalive ping timeout looks
like), `send_failed` (a send failed, and the reader had no stop, close or disconnect to tell
within `SEND_FAILED_GRACE_S`), `socket_error`, `carrier_silent`, `too_many_bad_messages`,
`upstream_failed`, `server_error`, `agent_hung_up`, `hung_up_by_api`, `transferred`, `closed`; and
for a stream that never became a call `no_start`, `bad_start`, `bad_token`, `duplicate_stream`,
`server_full`, `token_reused`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moksori.brains import open_session
from moksori.engine import events as E
from moksori.engine.config import config_from_settings
from moksori.engine.session import Session
from moksori.errors import ProtocolError
from moksori.protocols.telephony import (
    BAD_START,
    CallAudio,
    CallStarted,
    CallStopped,
    ClearAck,
    Dtmf,
    Ignored,
    MarkAck,
    StreamError,
    TelephonyCodec,
    WireMessage,
)
from moksori.providers.registry import Stack
from moksori.settings import Settings
from moksori.telephony.call_tools import CallTools
from moksori.telephony.phrases import DEFAULT_GREETING
from moksori.telephony.playout import CarrierPlayout
from moksori.telephony.signatures import check_stream_token

if TYPE_CHECKING:
    from moksori.agent_kit import AgentKit

__all__ = ["CallInfo", "PhoneCall"]

log = logging.getLogger("moksori.telephony")

TOKEN_PARAM = "token"

OUTPUT_CHUNK_MS = 20  # one carrier media message per speaker chunk
OUTPUT_LEAD_MS = 200  # audio sent ahead of playback: all a barge-in can leave queued at the carrier
MAX_MESSAGE_BYTES = 64 * 1024  # a 20 ms media message is ~300 bytes; anything huge is garbage
MAX_BAD_MESSAGES = 50  # consecutive undecodable messages before the stream is dropped
START_TIMEOUT_S = 10.0  # a socket that never sends `start` is closed
LAST_WORDS_TIMEOUT_S = 10.0  # the final decode of a turn the hang-up cut short, before the call's session closes
IDLE_TIMEOUT_S = 30.0  # carriers stream audio continuously: 30 s without it means the call is gone
# a socket lost without a close frame after this long with no mark echoed (audio going out) or no
# message at all from the carrier: it had stopped reading, or was gone (the keepalive ping's timeout)
UNRESPONSIVE_S = 2.0
NO_CLOSE_FRAME = (1005, 1006)  # the close codes a server reports for a connection lost without one
# a send failed (the socket is closing): what the carrier sent before, still queued for the reader
# (its stop, a close frame, the disconnect), says why the call ends; this long at most
SEND_FAILED_GRACE_S = 1.0

Send = Callable[[WireMessage], Awaitable[None]]

# WebSocket close codes
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL = 1002
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


def _logged(n: int) -> bool:
    """Whether the n-th bad thing of a kind a call has seen gets a log line: the first 5, then
    every 100th (a broken carrier must not turn the log into a flood)."""
    return n <= 5 or n % 100 == 0


# --------------------------------------------------------------------------- the call


@dataclass
class CallInfo:
    carrier: str
    call_id: str
    stream_id: str
    from_number: str | None
    to_number: str | None


class PhoneCall:
    """One media stream, from the first message to the end of its session."""

    def __init__(
        self,
        carrier: str,
        codec: TelephonyCodec,
        *,
        stack: Stack,
        settings: Settings,
        send: Send,
        secret: bytes,
        url_token: str | None = None,
        clock: Callable[[], float] = time.time,
        admit: Callable[[], str | None] | None = None,
        on_session: Callable[[PhoneCall], None] | None = None,
        claim_token: Callable[[str, str], bool] | None = None,
        claim_call: Callable[[str], Awaitable[bool]] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        kit: AgentKit | None = None,
    ) -> None:
        self.carrier = carrier
        self.kit = kit  # the server's tools, guardrails, denoiser, backchannels (moksori.agent_kit)
        self.codec = codec
        self.stack = stack
        self.settings = settings
        self._send = send
        self._secret = secret
        self._url_token = url_token
        self._clock = clock
        self._admit = admit  # the server's admission at `start`: why the call cannot start, or None
        self._on_session = on_session
        self._claim_token = claim_token  # (token, call id) -> False if it was used already
        # call id -> False if another stream of that call is live (on this worker, or on another
        # worker of a cluster); True: this stream holds the call id until the route releases it
        self._claim_call = claim_call
        self.session: Session | None = None
        self.info: CallInfo | None = None
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.close_code = CLOSE_NORMAL
        self.close_text = ""  # the close frame's reason: why, for a stream refused at its start
        self.digits = ""
        self.bad_messages = 0
        self.carrier_errors = 0  # `error` events the carrier sent
        self._bad_in_a_row = 0
        self.playout: CarrierPlayout | None = None  # from `start` on
        self._tools = CallTools(self)
        self._watchdog: asyncio.Task[None] | None = None
        # only audio counts: a half-dead leg that sends keep-alives alone must not hold its slot
        self._last_audio = self._last_message = self._opened_at = asyncio.get_running_loop().time()
        self._start_timeout_s = start_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._closed = False
        self._send_failure: asyncio.TimerHandle | None = None  # a send failed: ends the call unless the reader does
        self.started_at: float | None = None  # loop time of `start`
        self._watchdog = asyncio.create_task(self._watch(), name=f"{carrier}-call-watchdog")

    @property
    def call_id(self) -> str | None:
        return self.info.call_id if self.info is not None else None

    @property
    def first_audio_at(self) -> float | None:
        """Loop time of the first media sent to the carrier."""
        return self.playout.first_audio_at if self.playout is not None else None

    @property
    def acked(self) -> dict[str, int]:
        """Response id -> samples the carrier confirmed played."""
        return self.playout.acked if self.playout is not None else {}

    # ------------------------------------------------------------------ inbound

    async def feed(self, message: str | bytes) -> None:
        """One WebSocket message from the carrier. Never raises."""
        if self.ended.is_set():
            return
        self._last_message = asyncio.get_running_loop().time()
        if len(message) > MAX_MESSAGE_BYTES:
            self._bad(f"message of {len(message)} bytes is too large")
            return
        try:
            events = self.codec.decode(message)
        except ProtocolError as e:
            if e.code == BAD_START and self.codec.started is None:  # this stream can never work
                self._refuse("bad_start", str(e))
                return
            self._bad(str(e))
            return
        self._bad_in_a_row = 0
        for ev in events:
            try:
                await self._on_event(ev)
            except Exception:
                log.exception("%s call: handling %s failed", self.carrier, type(ev).__name__)
                self.end("server_error", CLOSE_PROTOCOL)
            if self.ended.is_set():
                return

    def _bad(self, why: str) -> None:
        self.bad_messages += 1
        self._bad_in_a_row += 1
        if _logged(self.bad_messages):
            log.warning("%s stream: ignored a bad message (%d so far): %s", self.carrier, self.bad_messages, why[:200])
        if self.session is not None and self.bad_messages <= 20:  # the timeline is not a flood log
            self.session.publish(E.CallBadMessage(t=self.session.clock.now(), reason=why[:200],
                                                  count=self.bad_messages))
        if self._bad_in_a_row >= MAX_BAD_MESSAGES:
            self.end("too_many_bad_messages", CLOSE_PROTOCOL)

    async def _on_event(self, ev: Any) -> None:
        if isinstance(ev, CallAudio):
            self._last_audio = asyncio.get_running_loop().time()
            if self.session is not None:
                self.session.push_audio(ev.frame)
        elif isinstance(ev, MarkAck):
            if self.playout is not None:
                self.playout.on_mark(ev.name)
        elif isinstance(ev, ClearAck):
            if self.playout is not None:
                self.playout.on_clear_ack()
        elif isinstance(ev, CallStarted):
            await self._on_start(ev)
        elif isinstance(ev, Dtmf):
            self.digits = (self.digits + ev.digit)[-64:]
            if self.session is not None:
                self.session.publish(E.CallDtmf(t=self.session.clock.now(), digit=ev.digit, digits=self.digits))
        elif isinstance(ev, CallStopped):
            self.end(f"carrier_{ev.reason}")
        elif isinstance(ev, StreamError):
            self.carrier_errors += 1
            if _logged(self.carrier_errors):
                log.warning("%s reported a stream error %s (%d so far): %s", self.carrier, ev.code,
                            self.carrier_errors, ev.message[:200])
            if self.session is not None and self.carrier_errors <= 20:
                self.session.publish(E.CallCarrierError(t=self.session.clock.now(), code=ev.code,
                                                        message=ev.message[:300]))
        elif isinstance(ev, Ignored):
            pass

    def _refuse(self, reason: str, why: str, code: int = CLOSE_POLICY) -> None:
        """A stream refused at its start: one log line, and `why` in the close frame."""
        log.warning("%s stream refused: %s", self.carrier, why[:300])
        self.end(reason, code, text=why)

    async def _on_start(self, ev: CallStarted) -> None:
        token = ev.params.get(TOKEN_PARAM) or self._url_token
        if not token or not check_stream_token(self._secret, token, ev.call_id, carrier=self.carrier,
                                                now=int(self._clock())):
            self._refuse("bad_token", f"call {ev.call_id[:64]!r}: {'missing' if not token else 'invalid or expired'} "
                                      "stream token")
            return
        # one stream per call (the hang-up API and the cluster's registry find a call by its id),
        # checked before the token is claimed: once the first has ended, this stream may retry
        if self._claim_call is not None:
            claimed = await self._claim_call(ev.call_id)
            if self.ended.is_set():  # the socket went away meanwhile (the route gives the claim back)
                return
            if not claimed:
                self._refuse("duplicate_stream", f"call {ev.call_id[:64]!r} already has a live stream")
                return
        # admission (e.g. MOKSORI_SERVER_MAX_SESSIONS) before the token is claimed: the carrier may retry
        refused = self._admit() if self._admit is not None else None
        if refused is not None:
            self._refuse("server_full", f"call {ev.call_id[:64]!r}: {refused[:200]}", CLOSE_TRY_AGAIN)
            return
        if self._claim_token is not None and not self._claim_token(token, ev.call_id):
            self._refuse("token_reused", f"call {ev.call_id[:64]!r}: its stream token was already used")
            return
        self.info = CallInfo(self.carrier, ev.call_id, ev.stream_id, ev.from_number, ev.to_number)
        self.started_at = asyncio.get_running_loop().time()
        cfg = config_from_settings(self.settings, output_rate=ev.rate, output_chunk_ms=OUTPUT_CHUNK_MS,
                                   output_lead_ms=OUTPUT_LEAD_MS)
        # the realtime brain gets G.711 at the carrier's 8 kHz and sends it upstream as it came
        session = self.session = open_session(self.stack, cfg, settings=self.settings, toolbox=self._tools.toolbox(),
                                              input_rate=ev.rate, kit=self.kit)
        self.playout = CarrierPlayout(self.codec, self._send, carrier=self.carrier, rate=ev.rate, session=session,
                                      started_at=self.started_at, ended=self.ended,
                                      on_heard=self._tools.progress.set, on_send_failed=self._send_failed)
        session.bus.listen(self._on_engine_event)
        session.publish(E.CallStarted(t=session.clock.now(), carrier=self.carrier, call_id=ev.call_id,
                                      stream_id=ev.stream_id, from_number=ev.from_number,
                                      to_number=ev.to_number, encoding=ev.encoding, rate=ev.rate))
        if self._on_session is not None:
            self._on_session(self)
        greeting = self.settings.agent.greeting
        if greeting is None:
            greeting = DEFAULT_GREETING
        if greeting.strip():
            session.say(greeting)

    # ------------------------------------------------------------------ engine -> carrier (the bridge)

    def _on_engine_event(self, e: E.Event) -> None:
        try:
            self._translate(e)
        except Exception:
            log.exception("%s call: cannot translate %s", self.carrier, e.type)

    def _translate(self, e: E.Event) -> None:
        playout = self.playout
        if playout is None:
            return
        match e:
            case E.AgentAudio(response_id=rid, frame=frame, offset=offset):
                playout.audio(rid, frame, offset)
            case E.AgentAudioDone(response_id=rid):
                playout.audio_done(rid)
            case E.AgentAudioCleared(response_ids=rids):
                playout.clear(set(rids))
            case E.AgentToolCall(name=name, response_id=rid):
                self._tools.published(name, rid)
            case E.AgentResponseDone(response_id=rid):
                playout.forget(rid)
            case E.BrainUpstreamFailed():  # the realtime brain's upstream is gone: nobody would answer
                self.end("upstream_failed")

    def _send_failed(self) -> None:
        """A send found the socket failed or closing. The reader still holds what the carrier
        sent before (one message a loop turn): a stop, a close frame, or the disconnect itself,
        so the call ends as that says; as `send_failed` (or why the carrier was unresponsive when
        the send failed) only if the reader has said nothing within SEND_FAILED_GRACE_S. Ended at
        once, a carrier's stop or close frame queued behind the failed send was recorded as
        `send_failed` (or `carrier_not_reading`)."""
        if self.ended.is_set() or self._send_failure is not None:
            return
        loop = asyncio.get_running_loop()
        self._send_failure = loop.call_later(SEND_FAILED_GRACE_S, self._end_send_failed, loop.time())

    def _end_send_failed(self, failed_at: float) -> None:
        self.end(self._unresponsive(failed_at) or "send_failed")

    def carrier_disconnected(self, code: int | None) -> None:
        """The carrier's socket closed; `code` is the close code the server reported (1005/1006:
        no close frame came, e.g. the server gave up on the socket after a keepalive ping went
        unanswered)."""
        reason = self._unresponsive() if code in NO_CLOSE_FRAME else None
        self.end(reason or "carrier_hung_up")

    def _unresponsive(self, now: float | None = None) -> str | None:
        """Why the carrier's socket was lost (at loop time `now`, by default now), when the call
        can tell: `carrier_lost` (nothing came from the carrier for UNRESPONSIVE_S) or
        `carrier_not_reading` (it kept sending, but confirmed none of the audio it was sent for
        UNRESPONSIVE_S). Logged once."""
        if self.ended.is_set() or self.session is None:
            return None
        if now is None:
            now = asyncio.get_running_loop().time()
        quiet = now - self._last_message
        unconfirmed = self.playout.unconfirmed_s(now) if self.playout is not None else 0.0
        call_id = self.call_id[:64] if self.call_id is not None else "?"
        if quiet >= UNRESPONSIVE_S:
            log.warning("%s call %s: its socket was lost after %.1f s with nothing from the carrier",
                        self.carrier, call_id, quiet)
            return "carrier_lost"
        if unconfirmed >= UNRESPONSIVE_S:
            log.warning("%s call %s: its socket was lost after the carrier had answered none of the marks or "
                        "clears it was sent for %.1f s: it was not reading", self.carrier, call_id, unconfirmed)
            return "carrier_not_reading"
        return None

    # ------------------------------------------------------------------ call control (call_tools.py)

    async def hang_up(self) -> str:
        """End the call now, asked from outside the conversation (`POST /v1/telephony/calls/{id}/hangup`,
        maybe forwarded from another worker): through the carrier's REST API when it is configured,
        else by closing the media stream. Returns "rest" or "stream"."""
        return await self._tools.hang_up()

    async def transfer(self, number: str) -> str:
        """Transfer the caller now to one of `telephony.transfer_numbers`. Raises PermissionError
        for another number, `MoksoriError` when the carrier's API fails or is not configured."""
        return await self._tools.transfer(number)

    # ------------------------------------------------------------------ lifecycle

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.ended.is_set():
            await asyncio.sleep(1.0)
            now = loop.time()
            # from the socket's opening, not its last message: keep-alives do not buy time
            if self.codec.started is None and self.session is None and now - self._opened_at > self._start_timeout_s:
                log.info("%s stream sent no start within %.0f s: closing", self.carrier, self._start_timeout_s)
                self.end("no_start", CLOSE_POLICY, text=f"no start within {self._start_timeout_s:g} s")
            elif now - self._last_audio > self._idle_timeout_s:
                log.info("%s stream sent no audio for %.0f s: ending the call", self.carrier, self._idle_timeout_s)
                self.end("carrier_silent")

    def end(self, reason: str, code: int = CLOSE_NORMAL, *, text: str = "") -> None:
        """Ask for the call to end (the route closes the socket, with `code` and `text` in the
        close frame, and calls `close`)."""
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.close_code = code
        self.close_text = text
        if self.session is not None:
            self.session.publish(E.CallEnded(t=self.session.clock.now(), reason=reason))
        self.ended.set()

    async def close(self) -> None:
        """Release everything: session, tasks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self.ended.is_set():
            self.end("closed")
        tasks = [t for t in (self._watchdog,) if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        if self._send_failure is not None:
            self._send_failure.cancel()
        if self.playout is not None:
            await self.playout.close()  # what is still queued is dropped
        if self.session is not None:
            try:  # a caller who hangs up right after speaking: their last words are transcribed and kept
                if not await self.session.keep_last_words(LAST_WORDS_TIMEOUT_S):
                    log.warning("%s call: the caller's last words were not transcribed within %.0f s: not kept",
                                self.carrier, LAST_WORDS_TIMEOUT_S)
            finally:  # even if that wait is cancelled (a shutdown)
                await self.session.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    def summary(self) -> dict[str, Any]:
        """What a debug endpoint shows about this call."""
        mem = []
        if self.session is not None:
            for item in self.session.memory.items:
                mem.append({"id": item.id, "type": item.type, "role": item.role, "text": item.text,
                            "status": item.status, "truncated_at_ms": getattr(item, "truncated_at_ms", None),
                            "name": item.name, "arguments": item.arguments})
        first = None
        first_audio_at = self.first_audio_at
        if first_audio_at is not None and self.started_at is not None:
            first = round(1000 * (first_audio_at - self.started_at))
        return {
            "carrier": self.carrier,
            "call_id": self.info.call_id if self.info else None,
            "stream_id": self.info.stream_id if self.info else None,
            "from": self.info.from_number if self.info else None,
            "to": self.info.to_number if self.info else None,
            "ended": self.ended.is_set(), "end_reason": self.end_reason,
            "digits": self.digits, "bad_messages": self.bad_messages,
            "first_audio_ms": first,
            "memory": mem,
            "timeline": [e.to_json() for e in self.session.bus.history] if self.session is not None else [],
        }
