"""One phone call: a carrier's media-stream codec on one side, an engine `Session` on the other.

The codec (`moksori.protocols.*`) is pure; this module is the I/O around it, minus the socket:
the route hands in every WebSocket message (`feed`) and one coroutine, `send(wire)`, and
closes the socket once `ended` is set. What happens here:

* `start` -> check the per-call stream token, then open a `Session` at the carrier's own rate
  (8 kHz G.711, or Vonage's 16 kHz L16) and greet at once (the greeting's audio is cached by
  `phrases`, so the caller hears it within milliseconds); live partial transcripts are off
  (nobody on a phone line reads them, and they would take CPU from the reply);
* caller audio -> `session.push_audio` (the engine resamples to 16 kHz itself);
* reply audio -> `PlayAudio` per 20 ms chunk, and a `SetMark` every `MARK_EVERY_MS` and at the
  end of each reply. When the carrier echoes a mark, that audio has been heard:
  `session.ack_playback` pins what the engine keeps of an interrupted reply to it;
* barge-in (`agent.audio_cleared`) -> drop what is still queued here, then `ClearAudio`;
* DTMF -> a `call.dtmf` event on the session bus;
* `end_call` / `transfer_call` tools -> say something first, wait until the caller has heard it,
  then the carrier's REST API (`moksori.telephony.control`), or close the stream when there is
  no REST configured.

Nothing a carrier sends can raise out of `feed`: bad messages are logged (briefly) and skipped,
and a stream that keeps sending garbage, never starts, or goes silent is ended.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moksori.brains import open_session
from moksori.engine import events as E
from moksori.engine.config import config_from_settings
from moksori.engine.session import Session
from moksori.engine.tools import Tool, ToolBox
from moksori.errors import MoksoriError, ProtocolError
from moksori.protocols.telephony import (
    CallAudio,
    CallStarted,
    CallStopped,
    ClearAudio,
    Dtmf,
    Ignored,
    MarkAck,
    PlayAudio,
    SetMark,
    StreamError,
    TelephonyCodec,
    WireMessage,
)
from moksori.providers.base import ToolSpec
from moksori.providers.registry import Stack
from moksori.settings import Settings
from moksori.transport import Outbox, StopReason
from moksori.telephony.control import call_control_for
from moksori.telephony.phrases import DEFAULT_GREETING, TRANSFER_NOTICE

if TYPE_CHECKING:
    from moksori.agent_kit import AgentKit
from moksori.telephony.signatures import check_stream_token

log = logging.getLogger("moksori.telephony")

TOKEN_PARAM = "token"

MARK_EVERY_MS = 100  # a mark per 5 chunks of 20 ms: what was heard is known to within 100 ms
OUTPUT_CHUNK_MS = 20  # one carrier media message per speaker chunk
OUTPUT_LEAD_MS = 200  # audio sent ahead of playback: all a barge-in can leave queued at the carrier
MAX_MESSAGE_BYTES = 64 * 1024  # a 20 ms media message is ~300 bytes; anything huge is garbage
MAX_BAD_MESSAGES = 50  # consecutive undecodable messages before the stream is dropped
START_TIMEOUT_S = 10.0  # a socket that never sends `start` is closed
IDLE_TIMEOUT_S = 30.0  # carriers stream audio continuously: 30 s of nothing means it is gone
MAX_PENDING_MARKS = 4096

Send = Callable[[WireMessage], Awaitable[None]]
Outgoing = tuple[str, str | None, WireMessage]  # (kind: audio, mark or clear; response id; wire message)

# WebSocket close codes
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL = 1002
CLOSE_POLICY = 1008


# --------------------------------------------------------------------------- the call


@dataclass
class CallInfo:
    carrier: str
    call_id: str
    stream_id: str
    from_number: str | None
    to_number: str | None


_NUMBER_PUNCTUATION = re.compile(r"[\s().-]")


def normalize_number(number: Any) -> str:
    return _NUMBER_PUNCTUATION.sub("", number) if isinstance(number, str) else ""


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
        on_session: Callable[[PhoneCall], None] | None = None,
        claim_token: Callable[[str, str], bool] | None = None,
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
        self._on_session = on_session
        self._claim_token = claim_token  # (token, call id) -> False if it was used already
        self.session: Session | None = None
        self.info: CallInfo | None = None
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.close_code = CLOSE_NORMAL
        self.digits = ""
        self.bad_messages = 0
        self._bad_in_a_row = 0
        self._outbox: Outbox[Outgoing] | None = None  # from `start` on
        self._watchdog: asyncio.Task[None] | None = None
        self._last_message = self._opened_at = asyncio.get_running_loop().time()
        self._start_timeout_s = start_timeout_s
        self._idle_timeout_s = idle_timeout_s
        # marks: name -> (response id, samples played once the carrier reaches it)
        self._marks: dict[str, tuple[str, int]] = {}
        self._mark_seq = 0
        self._last_mark: dict[str, int] = {}  # response id -> samples covered by its latest mark
        self._sent: dict[str, int] = {}  # response id -> samples sent to the carrier
        self.acked: dict[str, int] = {}  # response id -> samples confirmed heard
        self._progress = asyncio.Event()  # set on every mark ack / tool-call event
        self._published_calls: list[tuple[str, str]] = []  # (tool name, response id), public only
        self._closed = False
        self.started_at: float | None = None  # loop time of `start`
        self.first_audio_at: float | None = None  # loop time of the first media sent
        self._rate = 8000
        self._watchdog = asyncio.create_task(self._watch(), name=f"{carrier}-call-watchdog")

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
        if self.bad_messages <= 5 or self.bad_messages % 100 == 0:
            log.warning("%s stream: ignored a bad message (%d so far): %s", self.carrier, self.bad_messages, why[:200])
        if self.session is not None and self.bad_messages <= 20:  # the timeline is not a flood log
            self.session.publish(E.CallBadMessage(t=self.session.clock.now(), reason=why[:200],
                                                  count=self.bad_messages))
        if self._bad_in_a_row >= MAX_BAD_MESSAGES:
            self.end("too_many_bad_messages", CLOSE_PROTOCOL)

    async def _on_event(self, ev: Any) -> None:
        if isinstance(ev, CallAudio):
            if self.session is not None:
                self.session.push_audio(ev.frame)
        elif isinstance(ev, MarkAck):
            self._on_mark(ev.name)
        elif isinstance(ev, CallStarted):
            await self._on_start(ev)
        elif isinstance(ev, Dtmf):
            self.digits = (self.digits + ev.digit)[-64:]
            if self.session is not None:
                self.session.publish(E.CallDtmf(t=self.session.clock.now(), digit=ev.digit, digits=self.digits))
        elif isinstance(ev, CallStopped):
            self.end(f"carrier_{ev.reason}")
        elif isinstance(ev, StreamError):
            log.warning("%s reported a stream error %s: %s", self.carrier, ev.code, ev.message[:200])
            if self.session is not None:
                self.session.publish(E.CallCarrierError(t=self.session.clock.now(), code=ev.code,
                                                        message=ev.message[:300]))
        elif isinstance(ev, Ignored):
            pass

    async def _on_start(self, ev: CallStarted) -> None:
        token = ev.params.get(TOKEN_PARAM) or self._url_token
        if not token or not check_stream_token(self._secret, token, ev.call_id, carrier=self.carrier,
                                                now=int(self._clock())):
            log.warning("%s stream for call %r refused: %s stream token", self.carrier, ev.call_id[:64],
                        "missing" if not token else "invalid or expired")
            self.end("bad_token", CLOSE_POLICY)
            return
        if self._claim_token is not None and not self._claim_token(token, ev.call_id):
            log.warning("%s stream for call %r refused: its stream token was already used", self.carrier,
                        ev.call_id[:64])
            self.end("token_reused", CLOSE_POLICY)
            return
        self.info = CallInfo(self.carrier, ev.call_id, ev.stream_id, ev.from_number, ev.to_number)
        self._rate = ev.rate
        self.started_at = asyncio.get_running_loop().time()
        cfg = config_from_settings(self.settings, output_rate=ev.rate, output_chunk_ms=OUTPUT_CHUNK_MS,
                                   output_lead_ms=OUTPUT_LEAD_MS, partial_interval_ms=0)
        # the realtime brain gets G.711 at the carrier's 8 kHz and sends it upstream as it came
        self.session = open_session(self.stack, cfg, settings=self.settings, toolbox=self._toolbox(), input_rate=ev.rate,
                                    kit=self.kit)
        self.session.bus.listen(self._on_engine_event)
        self._outbox = Outbox(self._deliver, name=f"{self.carrier}-call-send", on_stop=self._stopped_sending)
        self.session.publish(E.CallStarted(t=self.session.clock.now(), carrier=self.carrier, call_id=ev.call_id,
                                           stream_id=ev.stream_id, from_number=ev.from_number,
                                           to_number=ev.to_number, encoding=ev.encoding, rate=ev.rate))
        if self._on_session is not None:
            self._on_session(self)
        greeting = self.settings.agent.greeting
        if greeting is None:
            greeting = DEFAULT_GREETING
        if greeting.strip():
            self.session.say(greeting)

    # ------------------------------------------------------------------ engine -> carrier

    def _on_engine_event(self, e: E.Event) -> None:
        try:
            self._translate(e)
        except Exception:
            log.exception("%s call: cannot translate %s", self.carrier, e.type)

    def _translate(self, e: E.Event) -> None:
        match e:
            case E.AgentAudio(response_id=rid, frame=frame, offset=offset):
                end = offset + len(frame)
                self._queue("audio", rid, PlayAudio(frame))
                self._sent[rid] = end
                every = self._rate * MARK_EVERY_MS // 1000
                if end - self._last_mark.get(rid, 0) >= every:
                    self._mark(rid, end)
            case E.AgentAudioDone(response_id=rid):
                if self._sent.get(rid, 0) > self._last_mark.get(rid, 0):
                    self._mark(rid, self._sent[rid])
            case E.AgentAudioCleared(response_ids=rids):
                self._clear(set(rids))
            case E.AgentToolCall(name=name, response_id=rid):
                self._published_calls.append((name, rid))
                self._progress.set()
            case E.AgentResponseDone(response_id=rid):
                for table in (self._last_mark, self._sent, self.acked):
                    table.pop(rid, None)
            case E.BrainUpstreamFailed():  # the realtime brain's upstream is gone: nobody would answer
                self.end("upstream_failed")

    def _mark(self, rid: str, samples: int) -> None:
        self._mark_seq += 1
        name = f"m{self._mark_seq}"
        self._marks[name] = (rid, samples)
        self._last_mark[rid] = samples
        if len(self._marks) > MAX_PENDING_MARKS:  # a carrier that never echoes: forget the oldest
            self._marks.pop(next(iter(self._marks)))
        self._queue("mark", rid, SetMark(name))

    def _on_mark(self, name: str) -> None:
        entry = self._marks.pop(name, None)
        if entry is None or self.session is None:
            return  # not ours, a repeat, or audio that a clear already dropped
        rid, samples = entry
        if rid in self._sent:  # still playing (a late echo of a finished reply changes nothing)
            self.acked[rid] = max(self.acked.get(rid, 0), samples)
            self.session.ack_playback(rid, round(1000 * samples / self._rate))
            self._progress.set()

    def _clear(self, response_ids: set[str]) -> None:
        # urgent: whatever is still queued here never reaches the carrier, and the clear goes first
        if self._outbox is not None:
            self._outbox.drop(lambda item: item[0] in ("audio", "mark"))
        self._marks = {k: v for k, v in self._marks.items() if v[0] not in response_ids}
        self._queue("clear", None, ClearAudio(), front=True)

    def _queue(self, kind: str, rid: str | None, command: Any, *, front: bool = False) -> None:
        if self.ended.is_set() or self.codec.started is None or self._outbox is None:
            return
        try:
            wires = self.codec.encode(command)
        except (ProtocolError, ValueError) as e:
            log.warning("%s call: cannot encode %s: %s", self.carrier, type(command).__name__, e)
            return
        items = [(kind, rid, w) for w in wires]
        for item in reversed(items) if front else items:
            self._outbox.put(item, urgent=front)

    async def _deliver(self, item: Outgoing) -> None:
        """The outbox's send: one wire message to the carrier (the first audio is timed)."""
        kind, _, wire = item
        if kind == "audio" and self.first_audio_at is None:
            self.first_audio_at = asyncio.get_running_loop().time()
            if self.session is not None and self.started_at is not None:
                self.session.publish(E.CallFirstAudio(t=self.session.clock.now(), after_start_ms=round(
                    1000 * (self.first_audio_at - self.started_at))))
        await self._send(wire)

    def _stopped_sending(self, reason: StopReason) -> None:
        if reason == "send_failed":  # the socket is gone: the call is over
            log.info("%s call: send failed: ending the call", self.carrier)
            self.end("send_failed")

    # ------------------------------------------------------------------ call control tools

    def _toolbox(self) -> ToolBox:
        box = ToolBox()
        if not tools_enabled(self.settings):
            return box
        box.add(Tool(
            ToolSpec("end_call", "Hang up the phone call. Use it when the caller says goodbye or asks to end the call.",
                     {"type": "object", "properties": {}, "additionalProperties": False}),
            self._tool_end_call, say_first=self.settings.telephony.goodbye or None, final=True))
        numbers = [normalize_number(n) for n in self.settings.telephony.transfer_numbers if normalize_number(n)]
        if numbers:
            box.add(Tool(
                ToolSpec("transfer_call", "Transfer the caller to a person at one of these numbers: "
                         + ", ".join(numbers) + ".",
                         {"type": "object", "properties": {"number": {"type": "string", "enum": numbers,
                                                                       "description": "E.164 number"}},
                          "required": ["number"], "additionalProperties": False}),
                self._tool_transfer, say_first=TRANSFER_NOTICE, final=False))
        return box

    async def _tool_end_call(self, args: dict[str, Any]) -> dict[str, Any]:
        rid = await self._released("end_call")
        await self._wait_heard(rid, self.settings.telephony.goodbye)
        result: dict[str, Any] = {"ok": True}
        control = self._control()
        if control is not None and self.info is not None:
            try:
                await control.hangup(self.info.call_id)
                result["hung_up_via"] = "rest"
            except MoksoriError as e:
                log.warning("%s hang-up via REST failed (%s): closing the stream instead", self.carrier, e)
                result["hung_up_via"] = "stream"
            finally:
                await control.aclose()
        else:
            result["hung_up_via"] = "stream"
        if self.session is not None:
            self.session.publish(E.CallHangup(t=self.session.clock.now(), by="agent", via=result["hung_up_via"]))
        self.end("agent_hung_up")
        return result

    async def _tool_transfer(self, args: dict[str, Any]) -> dict[str, Any]:
        number = normalize_number(args.get("number"))
        allowed = {normalize_number(n) for n in self.settings.telephony.transfer_numbers}
        if number not in allowed:
            return {"error": f"cannot transfer to {number or 'that number'}: allowed are {', '.join(sorted(allowed))}"}
        rid = await self._released("transfer_call")
        control = self._control()
        if control is None or self.info is None:
            return {"error": "transfers are not configured on this line"}
        await self._wait_heard(rid, TRANSFER_NOTICE)
        try:
            await control.transfer(self.info.call_id, number)
        except MoksoriError as e:
            log.warning("%s transfer failed: %s", self.carrier, e)
            return {"error": f"the transfer failed: {e}"[:300]}
        finally:
            await control.aclose()
        if self.session is not None:
            self.session.publish(E.CallTransferred(t=self.session.clock.now(), to=number))
        self.end("transferred")
        return {"ok": True, "transferred_to": number}

    async def hang_up(self) -> str:
        """End the call now, asked from outside the conversation (`POST /v1/telephony/calls/{id}/hangup`,
        maybe forwarded from another worker): through the carrier's REST API when it is configured,
        else by closing the media stream. Returns "rest" or "stream"."""
        via = "stream"
        control = self._control()
        if control is not None and self.info is not None:
            try:
                await control.hangup(self.info.call_id)
                via = "rest"
            except MoksoriError as e:
                log.warning("%s hang-up via REST failed (%s): closing the stream instead", self.carrier, e)
            finally:
                await control.aclose()
        self.end("hung_up_by_api")
        return via

    async def transfer(self, number: str) -> str:
        """Transfer the caller now to one of `telephony.transfer_numbers`. Raises PermissionError
        for another number, `MoksoriError` when the carrier's API fails or is not configured."""
        number = normalize_number(number)
        allowed = {normalize_number(n) for n in self.settings.telephony.transfer_numbers}
        if number not in allowed:
            raise PermissionError(f"{number or 'that number'} is not one of MOKSORI_TELEPHONY_TRANSFER_NUMBERS")
        control = self._control()
        if control is None or self.info is None:
            raise MoksoriError(f"transfers are not configured for {self.carrier} (no REST credentials)")
        try:
            await control.transfer(self.info.call_id, number)
        finally:
            await control.aclose()
        self.end("transferred")
        return number

    def _control(self) -> Any:
        transfer_url = None
        if self.settings.public_url:
            transfer_url = self.settings.public_url.rstrip("/") + "/telephony/plivo/transfer"
        try:
            return call_control_for(self.carrier, self.settings, plivo_transfer_url=transfer_url)
        except MoksoriError as e:
            log.warning("%s call control is misconfigured: %s", self.carrier, e)
            return None

    async def _released(self, name: str) -> str:
        """Wait until the response that called `name` is public (not a speculation that may
        still be cancelled: then this task is cancelled with it). Returns its response id."""
        while True:
            for i, (n, rid) in enumerate(self._published_calls):
                if n == name:
                    del self._published_calls[i]
                    return rid
            self._progress.clear()
            await self._progress.wait()

    async def _wait_heard(self, rid: str, said: str | None, timeout_s: float = 10.0) -> None:
        """Wait until the caller has heard everything response `rid` said so far, including
        `said` (the words a tool says first): confirmed by marks, else by the speaker's clock."""
        session = self.session
        if session is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        said = (said or "").strip()
        # 1. every sample of it has left the speaker (the clause reaches TTS just after the call)
        while loop.time() < deadline:
            pb = session.speaker.current
            if pb is not None and pb.response_id != rid:
                break  # another reply has the speaker: ours was cut off
            if pb is not None:
                has_said = not said or any(said in text for text, _ in pb.segments)
                if has_said and pb.sent >= pb.generated:
                    break
            await asyncio.sleep(0.02)
        # 2. the caller has heard it: the mark after its last sample came back
        target = self._sent.get(rid, 0)
        if not target:
            return
        backlog = max(0, target - self.acked.get(rid, 0)) / self._rate
        deadline = min(deadline, loop.time() + backlog + 2.0)
        while self.acked.get(rid, 0) < target and loop.time() < deadline:
            if not self._marks_in_flight(rid):  # no marks on this stream: trust the speaker's clock
                pb = session.speaker.current
                rest = pb.play_end - session.clock.now() if pb is not None and pb.response_id == rid else 0.0
                await asyncio.sleep(max(0.0, min(rest, deadline - loop.time())))
                return
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), max(0.01, deadline - loop.time()))
            except asyncio.TimeoutError:
                return

    def _marks_in_flight(self, rid: str) -> bool:
        return any(r == rid for r, _ in self._marks.values())

    # ------------------------------------------------------------------ lifecycle

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.ended.is_set():
            await asyncio.sleep(1.0)
            now = loop.time()
            # from the socket's opening, not its last message: keep-alives do not buy time
            if self.codec.started is None and self.session is None and now - self._opened_at > self._start_timeout_s:
                log.info("%s stream sent no start within %.0f s: closing", self.carrier, self._start_timeout_s)
                self.end("no_start", CLOSE_POLICY)
            elif now - self._last_message > self._idle_timeout_s:
                log.info("%s stream silent for %.0f s: ending the call", self.carrier, self._idle_timeout_s)
                self.end("carrier_silent")

    def end(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """Ask for the call to end (the route closes the socket and calls `close`)."""
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.close_code = code
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
        if self._outbox is not None:
            await self._outbox.close()  # what is still queued is dropped
        if self.session is not None:
            await self.session.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._marks.clear()

    def summary(self) -> dict[str, Any]:
        """What a debug endpoint shows about this call."""
        mem = []
        if self.session is not None:
            for item in self.session.memory.items:
                mem.append({"id": item.id, "type": item.type, "role": item.role, "text": item.text,
                            "status": item.status, "truncated_at_ms": getattr(item, "truncated_at_ms", None),
                            "name": item.name, "arguments": item.arguments})
        first = None
        if self.first_audio_at is not None and self.started_at is not None:
            first = round(1000 * (self.first_audio_at - self.started_at))
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


def tools_enabled(settings: Settings) -> bool:
    """Call-control tools: on, off, or (auto) on unless the LLM is the packaged SmolLM2-135M,
    which is too weak to be trusted with a hang-up button (it picks tools at random)."""
    mode = settings.telephony.tools
    if mode == "auto":
        return not (settings.llm.provider == "llamacpp" and not settings.llm.model)
    return mode == "on"
