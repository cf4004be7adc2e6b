"""The upstream client's state machine, sans I/O: server messages in, typed events out; client
calls in, wire messages out. The I/O layer (`client.py`) owns sockets, timers and reconnects.

Per connection it knows what was sent and asked for (to clamp truncates, tie errors to their
cause and see a response that never comes); across connections it keeps the conversation
(`Conversation`) for re-seeding.

A misbehaving upstream is contained here: an event it sends that cannot be used (not JSON, a
field missing or of the wrong type, a number that is not finite or is absurd: `wire.wire_int`)
is skipped with a warning and never ends the session; only events that advance the pending
response count as progress for its idle timeout (not pings of unknown types); one response's
text is cut at `MAX_RESPONSE_TEXT_CHARS`; and a reply that the upstream keeps failing to give is
resumed after a drop at most `MAX_RESUMES` times.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moksori.audio.frames import Frame
from moksori.audio.resample import resample
from moksori.errors import ProtocolError

from . import events as ev
from .conversation import Conversation, InputRing, ItemRecord
from .options import UpstreamOptions
from .wire import ClientWire, parse_server_event, usage_from_wire, wire_int

log = logging.getLogger("moksori.brains.realtime")

__all__ = ["UpstreamProtocol", "TruncateResult", "ReseedPlan", "InputRef", "InputEntry"]

_PENDING_MAX = 512
_SESSION_EXPIRED = ("session_expired", "session_expired_error")
_ENDED_MAX = 64  # responses ended here (text limit) whose later events are ignored

# One response's text (audio transcript or text output) is cut here: the reply ends `incomplete`
# (`TEXT_LIMIT`) and the upstream is told to cancel. 4,096 output tokens, the most a response
# usually has, are ~16,000 characters of English; spoken at 14 characters a second this is ~38
# minutes. An upstream sending more is flooding, and must not take the server's memory or loop.
MAX_RESPONSE_TEXT_CHARS = 32_000
TEXT_LIMIT = "text_limit"

# How many times the same reply is asked for again after a drop (`resume`). One resume is how a
# reply survives an ordinary drop; if the resumed reply is cut or ignored as well, the same reply
# failed on two fresh connections: the upstream, not the network, cannot give it, and asking
# again would re-seed (and bill) the conversation every `response_s` for ever. The reply then
# fails (`ResponseAbandoned`) and the session goes on to the next turn.
MAX_RESUMES = 1


@dataclass(frozen=True, slots=True)
class TruncateResult:
    """What `truncate()` did. `audio_end_ms` is the clamped value (what counts as heard).
    `sent`: a truncate went upstream. `reason`: sent | clamped | already_truncated | no_audio
    (nothing of this item's audio is on the current connection, e.g. it was re-seeded as text) |
    unknown_item | not_assistant | disconnected."""

    item_id: str
    requested_ms: int
    audio_end_ms: int
    sent: bool
    reason: str


@dataclass(frozen=True, slots=True)
class InputRef:
    """An item of the upstream's conversation that a response's own `input` names: `ids` the
    upstream's ids of it, in order (an `mcp_call` here is a call and its output there); `role`
    and `words` what goes instead when it cannot be named (`UpstreamProtocol.input_items`)."""

    ids: tuple[str, ...]
    role: str
    words: str


# one message of a response's own `input`: (role, text); (role, parts) a user message whose audio
# the upstream hears; or an item it has, named
InputEntry = tuple[str, str | Sequence[str | Frame]] | InputRef


@dataclass(frozen=True, slots=True)
class ReseedPlan:
    messages: list[dict[str, Any]]
    items: int
    chars: int


@dataclass
class _Response:
    id: str
    t0: float
    item_ids: list[str]
    text_chars: int = 0  # transcript and text received, all its items


class UpstreamProtocol:
    def __init__(self, options: UpstreamOptions) -> None:
        self.opts = options
        self.session = options.session
        self.wire = ClientWire(options.endpoint.flavor)
        self.conv = Conversation()
        self.conn = 0
        self.model = options.endpoint.model
        self._begin(0.0)
        self.unanswered = False  # a committed user turn (upstream VAD) not answered yet
        self.reseeding: set[str] = set()
        self.own: set[str] = set()  # items this client created (their echo is not news)
        self.reseed_errors = 0
        self.resumes = 0  # times the pending reply was asked for again after a drop (reset when one ends)
        self.ended: OrderedDict[str, None] = OrderedDict()  # responses ended here (text limit)
        self.outbox: list[dict[str, Any]] = []  # messages the protocol itself must send (`take_outbox`)

    # ------------------------------------------------------------------ connection lifecycle
    def _begin(self, now: float) -> None:
        self.t_open = now
        self.last_rx = now  # any message: the connection is alive (set-up deadlines)
        self.last_progress = now  # the pending response advanced (its idle deadline)
        self.progressed = False  # a response advanced on this connection since the last wait for one began
        self.asked = False  # a response.create of ours is outstanding (sent, not started nor refused)
        self.session_created = False
        self.configured = False
        self.configure_id: str | None = None
        self.config_error: str | None = None
        self.ring = InputRing(self.session.input_format.rate, max(30.0, self.opts.reseed.keep_user_audio_s))
        self.last_commit_ms = 0.0
        self.open_speech: dict[str, float] = {}  # item_id -> audio_start_ms, speech not committed yet
        self.commit_ranges: list[tuple[float, float]] = []  # manual commits awaiting `committed`
        self.responses: dict[str, _Response] = {}
        self.awaiting_response_since: float | None = None
        self.pending: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self.drop_hint: tuple[str, str] | None = None

    def begin_connection(self, now: float) -> None:
        self.conn += 1
        self._begin(now)
        for rec in self.conv.items.values():
            rec.live_audio_ms = 0.0

    @property
    def in_response(self) -> bool:
        return bool(self.responses) or self.awaiting_response_since is not None

    @property
    def busy(self) -> bool:
        """A reply is pending or the user is speaking: not a moment for a planned reconnect."""
        return self.in_response or bool(self.open_speech) or self.unanswered

    def deadline(self, now: float) -> tuple[float, str] | None:
        """When the current connection must be given up if nothing changes, and why."""
        t = self.opts.timeouts
        cands: list[tuple[float, str]] = []
        if not self.session_created or not self.configured:
            cands.append((self.t_open + t.first_event_s if not self.session_created else self.last_rx + t.first_event_s,
                          "first_event_timeout"))
        if self.awaiting_response_since is not None:
            cands.append((self.awaiting_response_since + t.response_s, "response_timeout"))
        if self.responses:  # messages that do not advance it (pings, unknown events) do not count
            cands.append((self.last_progress + t.idle_s, "idle_timeout"))
        rotate = self.opts.reconnect.rotate_after_s
        if rotate is not None and self.configured:
            due = self.t_open + rotate
            cands.append((max(due, now + 0.5) if self.busy and due <= now + 1e-3 else due, "rotation"))
        return min(cands) if cands else None

    # ------------------------------------------------------------------ client -> upstream
    def _track(self, msg: dict[str, Any], info: dict[str, Any] | None = None) -> dict[str, Any]:
        self.pending[msg["event_id"]] = (msg["type"], info or {})
        while len(self.pending) > _PENDING_MAX:
            self.pending.popitem(last=False)
        return msg

    def configure(self) -> dict[str, Any]:
        msg = self.wire.session_update(self.session)
        self.configure_id = msg["event_id"]
        return self._track(msg)

    def append(self, frame: Frame) -> dict[str, Any]:
        """`frame` must be PCM16 at the input format's rate."""
        self.ring.add(frame)
        return self.wire.append(self.session.input_format.encode(frame))

    def commit(self, now: float) -> dict[str, Any]:
        self.commit_ranges.append((self.last_commit_ms, self.ring.sent_ms))
        self.last_commit_ms = self.ring.sent_ms
        return self._track(self.wire.commit())

    def clear(self) -> dict[str, Any]:
        self.last_commit_ms = self.ring.sent_ms
        self.open_speech.clear()
        return self._track(self.wire.clear())

    def response_create(self, now: float, *, input: Sequence[InputEntry] | None = None, **kw: Any) -> dict[str, Any]:
        """`input` (its own, out of band) is encoded now, as the conversation is when it goes."""
        if input is not None:
            kw["input"] = self.input_items(input)
        if self.awaiting_response_since is None and not self.responses:
            self.progressed = False  # a new wait: what earlier replies did on this connection does not count
        self.awaiting_response_since = now
        self.asked = True
        return self._track(self.wire.response_create(**kw))

    def response_cancel(self) -> dict[str, Any] | None:
        """`response.cancel` for the response in progress, or None when there is none."""
        if not self.responses:
            if self.awaiting_response_since is None:
                return None
            self.awaiting_response_since = None  # it may still start: cancel whatever comes
            self.asked = False
            return self._track(self.wire.response_cancel())
        rid = next(reversed(self.responses))
        return self._track(self.wire.response_cancel(rid), {"response_id": rid})

    def truncate(self, item_id: str, audio_end_ms: float, *, live: bool = True) -> tuple[dict[str, Any] | None,
                                                                                           TruncateResult]:
        """Clamp to the audio this item generated on this connection (and to an earlier cut),
        so the upstream has no reason to reject it. Records the cut as heard either way."""
        req = max(0, int(audio_end_ms))
        rec = self.conv.get(item_id)
        if rec is None:
            return None, TruncateResult(item_id, req, req, False, "unknown_item")
        if rec.role != "assistant" or rec.kind != "message":
            return None, TruncateResult(item_id, req, req, False, "not_assistant")
        ceiling = int(rec.audio_ms) if rec.audio_ms else req
        if rec.truncated_ms is not None:
            ceiling = min(ceiling, rec.truncated_ms)
        if rec.upstream_cut_ms is not None and live and rec.live_audio_ms > 0:
            ceiling = min(ceiling, rec.upstream_cut_ms)
        clamped = min(req, ceiling)
        if not live:
            rec.truncated_ms = clamped
            return None, TruncateResult(item_id, req, clamped, False, "disconnected")
        if rec.live_audio_ms <= 0:
            rec.truncated_ms = clamped
            return None, TruncateResult(item_id, req, clamped, False, "no_audio")
        if rec.truncated_ms is not None and clamped >= rec.truncated_ms:
            return None, TruncateResult(item_id, req, clamped, False, "already_truncated")
        clamped = min(clamped, int(rec.live_audio_ms))
        rec.truncated_ms = clamped
        msg = self._track(self.wire.truncate(item_id, clamped, rec.content_index),
                          {"item_id": item_id, "audio_end_ms": clamped})
        return msg, TruncateResult(item_id, req, clamped, True, "clamped" if clamped < req else "sent")

    def add_message(self, role: str, text: str, *, item_id: str, previous_item_id: str | None = None) -> dict[str, Any]:
        self.conv.ensure(item_id, kind="message", role=role, text=text, final=True)
        self.own.add(item_id)
        self.conv.place(item_id, previous_item_id)
        return self._track(self.wire.message(role, text=text, item_id=item_id, previous_item_id=previous_item_id),
                           {"item_id": item_id})

    def add_user_audio(self, content: list[str | Frame], *, item_id: str,
                       previous_item_id: str | None = None) -> dict[str, Any]:
        """A client's user message with audio, heard as audio: its parts in order, text as it is,
        each audio part (PCM16 at any rate) resampled and encoded to the session's input format
        now. Its words are not known yet (the caller sets them when they come); until then a
        re-seed sends its audio again, if it is short enough to be kept."""
        parts, frames = self._encode(content)
        rate = self.session.input_format.rate
        kept = Frame(np.concatenate([f.samples for f in frames]), rate) \
            if frames and sum(len(f) for f in frames) / rate <= self.opts.reseed.keep_user_audio_s else None
        rec = self.conv.ensure(item_id, kind="message", role="user", user_audio=kept)
        rec.text, rec.final = "", False
        self.own.add(item_id)
        self.conv.place(item_id, previous_item_id)
        return self._track(self.wire.user_message(parts, item_id=item_id, previous_item_id=previous_item_id),
                           {"item_id": item_id})

    def _encode(self, content: Sequence[str | Frame]) -> tuple[list[tuple[str, str]], list[Frame]]:
        """Message parts as the wire's ("text", words) / ("audio", base64): each audio part (PCM16
        at any rate) resampled and encoded to the session's input format; and those frames."""
        fmt = self.session.input_format
        frames = [resample(c, fmt.rate) for c in content if isinstance(c, Frame)]
        parts: list[tuple[str, str]] = []
        it = iter(frames)
        for c in content:
            parts.append(("audio", fmt.encode(next(it))) if isinstance(c, Frame) else ("text", c))
        return parts, frames

    def nameable(self, ids: Sequence[str]) -> list[str]:
        """Those of the upstream items `ids` a response's `input` can name now: the dialect has
        references and the conversation holds them (not deleted, refused or left out of a re-seed)."""
        return [i for i in ids if self.conv.holds(i)] if self.wire.item_references else []

    def input_items(self, messages: Sequence[InputEntry]) -> list[dict[str, Any]]:
        """A response's own `input`: (role, text) as a text message; (role, parts) a user message
        whose audio the upstream hears (`_encode`); an `InputRef` as an `item_reference` to each
        of its items the conversation holds now, so the model reads the item itself (its audio, a
        call), or, when it holds none of them (deleted, left out of a re-seed, never sent) or the
        dialect has no references (`ClientWire.item_references`), as its words (none: nothing)."""
        out: list[dict[str, Any]] = []
        for entry in messages:
            if isinstance(entry, InputRef):
                held = self.nameable(entry.ids)
                if held:
                    out += [self.wire.item_reference(i) for i in held]
                elif entry.words:
                    out += self.wire.input_items([(entry.role, entry.words)])
                continue
            role, content = entry
            if isinstance(content, str):
                out += self.wire.input_items([(role, content)])
            else:
                out.append(self.wire.user_item(self._encode(content)[0]))
        return out

    def add_function_call(self, call_id: str, name: str, arguments: str, *, item_id: str) -> dict[str, Any]:
        rec = self.conv.ensure(item_id, kind="function_call", call_id=call_id, name=name, final=True)
        rec.arguments, rec.call_reported = arguments, True
        self.own.add(item_id)
        return self._track(self.wire.function_call(call_id, name, arguments, item_id=item_id), {"item_id": item_id})

    def add_function_output(self, call_id: str, output: str, *, item_id: str) -> dict[str, Any]:
        self.conv.ensure(item_id, kind="function_call_output", output=output, call_id=call_id, final=True)
        self.own.add(item_id)
        return self._track(self.wire.function_output(call_id, output, item_id=item_id), {"item_id": item_id})

    def delete(self, item_id: str) -> dict[str, Any]:
        """Remove an item upstream and from the conversation kept for re-seeding."""
        self.conv.delete(item_id)
        return self._track(self.wire.delete(item_id), {"item_id": item_id})

    def retrieve(self, item_id: str) -> dict[str, Any]:
        return self._track(self.wire.retrieve(item_id), {"item_id": item_id})

    # ------------------------------------------------------------------ reconnect
    def reseed(self) -> ReseedPlan:
        """Items for a fresh connection (text; audio for a user turn never transcribed)."""
        w = self.wire
        msgs: list[dict[str, Any]] = []
        chars = 0
        self.reseeding = set()
        self.reseed_errors = 0
        plan = self.conv.reseed_plan(self.opts.reseed)
        self.conv.absent = set(self.conv.items).difference(r.id for r in plan)
        for r in plan:
            if r.kind == "function_call":
                m = w.function_call(r.call_id or "", r.name or "", r.arguments, item_id=r.id)
                chars += len(r.arguments)
            elif r.kind == "function_call_output":
                m = w.function_output(r.call_id or "", r.output or "", item_id=r.id)
                chars += len(r.output or "")
            elif r.role == "user" and not r.text and r.user_audio is not None:
                m = w.message("user", audio_b64=self.session.input_format.encode(r.user_audio), item_id=r.id)
            else:
                text = r.reseed_text()
                m = w.message(r.role or "user", text=text, item_id=r.id)
                chars += len(text)
            msgs.append(self._track(m, {"item_id": r.id, "reseed": True}))
            self.reseeding.add(r.id)
        return ReseedPlan(msgs, len(msgs), chars)

    def replay_start_ms(self) -> float | None:
        """Where the input audio that the drop left unfinished starts (on the old connection's
        axis): speech the upstream heard start but never committed, or (manual turns) everything
        since the last commit. None when nothing is pending."""
        if self.session.turn == "manual":
            return self.last_commit_ms if self.ring.sent_ms - self.last_commit_ms >= 100 else None
        if self.open_speech:
            return max(0.0, min(self.open_speech.values()) - self.session.prefix_padding_ms)
        return None

    def connection_lost(self, now: float) -> tuple[list[ev.UpstreamEvent], str | None]:
        """Synthetic `ResponseDone` for every response the drop cut, and whether a response
        should be asked for on the next connection: "cut" (a reply was being generated),
        "unanswered" (a turn was waiting for its reply) or None. None too, with a
        `ResponseAbandoned`, when that reply was already asked for again `MAX_RESUMES` times."""
        out: list[ev.UpstreamEvent] = []
        cut = bool(self.responses)
        for r in self.responses.values():
            for iid in r.item_ids:
                rec = self.conv.get(iid)
                if rec is not None and rec.kind == "message":
                    rec.final = True
            out.append(ev.ResponseDone(t=now, conn=self.conn, response_id=r.id, status="failed",
                                       reason="upstream_lost", item_ids=tuple(r.item_ids), usage=None, synthetic=True))
        awaiting = self.awaiting_response_since is not None
        asked = self.asked
        self.responses.clear()
        self.awaiting_response_since = None
        self.asked = False
        resume = "cut" if cut else "unanswered" if awaiting or self.unanswered else None
        self.unanswered = False
        if resume is not None and self.resumes >= MAX_RESUMES:
            what = "was cut again" if cut else "was never started"
            out.append(ev.ResponseAbandoned(
                t=now, conn=self.conn, cut=cut, asked=asked, resumes=self.resumes,
                detail=f"the reply {what} after it was asked for again on a new connection "
                       f"({self.resumes} time{'s' if self.resumes != 1 else ''}); not asking again"))
            resume = None
        if resume is None:
            self.resumes = 0
        return out, resume

    def take_outbox(self) -> list[dict[str, Any]]:
        """Messages the protocol decided to send itself (a `response.cancel` for a response cut at
        the text limit); the I/O layer sends them after each `receive`."""
        out, self.outbox = self.outbox, []
        return out

    def _progress(self, now: float) -> None:
        """The pending response advanced: its idle deadline starts again, and this connection
        did something for it (a drop after this is not a failed try)."""
        self.last_progress = now
        self.progressed = True

    def _live(self, o: dict[str, Any]) -> _Response | None:
        """The response in progress that a `response.*` event names, if any."""
        rid = o.get("response_id")
        return self.responses.get(rid) if isinstance(rid, str) else None

    # ------------------------------------------------------------------ upstream -> client
    def receive(self, raw: str | bytes, now: float) -> list[ev.UpstreamEvent]:
        self.last_rx = now
        try:
            kind, obj = parse_server_event(raw, max_bytes=self.opts.max_message_bytes)
        except ProtocolError as e:
            log.warning("upstream sent an unreadable message: %s", e)
            return []
        handler = _HANDLERS.get(kind)
        if handler is None:
            return []
        try:
            return handler(self, obj, now)
        except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError, ProtocolError) as e:
            # a malformed event is skipped: it must never end the session
            log.warning("upstream event %s could not be used: %s: %s", kind, type(e).__name__, str(e)[:200])
            return []

    def _h_session_created(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        self.session_created = True
        return []

    def _h_session_updated(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        if self.configured or self.configure_id is None:
            return []
        self.configured = True
        return [ev.SessionReady(t=now, conn=self.conn, session=o.get("session") or {}, reconnected=self.conn > 1)]

    def _h_error(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        err = _obj(o, "error")
        code, message = err.get("code"), str(err.get("message") or "error")
        param, eid = err.get("param"), err.get("event_id")
        cause = self.pending.get(eid) if isinstance(eid, str) else None
        kind, info = cause if cause is not None else (None, {})
        if code in _SESSION_EXPIRED or "maximum duration" in message.lower():
            self.drop_hint = ("time_limit", message)
        if kind == "conversation.item.truncate":
            log.warning("upstream rejected a truncate of %s at %s ms (%s: %s); going on", info.get("item_id"),
                        info.get("audio_end_ms"), code, message)
            return [ev.TruncateRejected(t=now, conn=self.conn, item_id=str(info.get("item_id")),
                                        audio_end_ms=int(info.get("audio_end_ms", 0)), code=code, message=message)]
        if info.get("reseed"):
            self.reseed_errors += 1
            self.reseeding.discard(str(info.get("item_id")))
            self.conv.absent.add(str(info.get("item_id")))
        if kind == "response.cancel" or code == "response_cancel_not_active":
            log.debug("upstream: nothing to cancel (%s)", message)
            return []
        if kind == "response.create":
            self.awaiting_response_since = None
            self.asked = False
        if kind == "session.update" and not self.configured:
            self.config_error = f"{code}: {message}"
        log.warning("upstream error %s (%s): %s", code, kind or "-", message)
        item = info.get("item_id") if kind == "conversation.item.create" else None
        if item is not None:  # refused: not there to be named (until it is added after all)
            self.conv.absent.add(str(item))
        return [ev.UpstreamError(t=now, conn=self.conn, code=code, message=message,
                                 param=param if isinstance(param, str) else None, client_event=kind,
                                 item_id=str(item) if item is not None else None)]

    def _h_speech_started(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        iid, ms = str(o.get("item_id") or ""), _number(o, "audio_start_ms")
        self.open_speech[iid] = ms
        return [ev.SpeechStarted(t=now, conn=self.conn, item_id=iid, audio_start_ms=ms)]

    def _h_speech_stopped(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        iid, ms = str(o.get("item_id") or ""), _number(o, "audio_end_ms")
        return [ev.SpeechStopped(t=now, conn=self.conn, item_id=iid, audio_end_ms=ms)]

    def _h_committed(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        iid = str(o["item_id"])
        prev = o.get("previous_item_id")
        rec = self.conv.ensure(iid, kind="message", role="user")
        self.conv.place(iid, prev)
        start = self.open_speech.pop(iid, None)
        if self.commit_ranges:
            a, b = self.commit_ranges.pop(0)
        elif start is not None:
            a, b = max(0.0, start - self.session.prefix_padding_ms), self.ring.sent_ms
        else:
            a, b = self.last_commit_ms, self.ring.sent_ms
        if self.session.turn != "manual":
            self.last_commit_ms = self.ring.sent_ms
            self.open_speech.clear()
            if self.session.create_response:
                if self.awaiting_response_since is None and not self.responses:
                    self.progressed = False  # a new wait (as in `response_create`)
                self.unanswered = True
                self.awaiting_response_since = self.awaiting_response_since or now
        if not rec.final and b - a <= 1000.0 * self.opts.reseed.keep_user_audio_s:
            rec.user_audio = self.ring.slice(a, b)
        return [ev.InputCommitted(t=now, conn=self.conn, item_id=iid, previous_item_id=self.conv.previous(iid))]

    def _h_item_added(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        item = o.get("item") or {}
        iid = str(item["id"])
        kind = str(item.get("type") or "message")
        self.conv.absent.discard(iid)  # (it is there now, whatever an earlier attempt met)
        rec = self.conv.ensure(iid, kind=kind, role=item.get("role"), call_id=item.get("call_id"),
                               name=item.get("name"))
        if kind == "function_call_output" and rec.output is None:
            rec.output = item.get("output")
        if kind == "message" and not rec.text:
            text = _content_text(item)
            if text:
                rec.text = text
        self.conv.place(iid, o.get("previous_item_id"))
        if iid in self.reseeding:
            self.reseeding.discard(iid)
            return []
        if iid in self.own:
            self.own.discard(iid)
            return []
        return [ev.ItemAdded(t=now, conn=self.conn, item_id=iid, role=rec.role, kind=kind,
                             previous_item_id=self.conv.previous(iid))]

    def _h_item_done(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        item = o.get("item") or {}
        rec = self.conv.get(item.get("id"))
        if rec is not None and rec.kind == "message" and not rec.text:
            rec.text = _content_text(item)
        return []

    def _h_item_deleted(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        self.conv.delete(str(o.get("item_id")))
        return []

    def _h_item_retrieved(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        return [ev.ItemRetrieved(t=now, conn=self.conn, item=o.get("item") or {})]

    def _h_item_truncated(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        iid, ms = str(o.get("item_id")), _number(o, "audio_end_ms")
        rec = self.conv.get(iid)
        if rec is not None:  # ours, or the upstream's own cut (e.g. after a server-VAD barge-in)
            rec.upstream_cut_ms = ms
        return [ev.ItemTruncated(t=now, conn=self.conn, item_id=iid, audio_end_ms=ms)]

    def _h_tr_delta(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        return [ev.UserTranscriptDelta(t=now, conn=self.conn, item_id=str(o["item_id"]), delta=str(o.get("delta") or ""))]

    def _h_tr_completed(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        iid = str(o["item_id"])
        rec = self.conv.ensure(iid, kind="message", role="user")
        rec.text, rec.final, rec.user_audio, rec.transcription_failed = str(o.get("transcript") or ""), True, None, False
        usage = o.get("usage") if isinstance(o.get("usage"), dict) else None
        return [ev.UserTranscript(t=now, conn=self.conn, item_id=iid, previous_item_id=self.conv.previous(iid),
                                  text=rec.text, usage=usage, content_index=wire_int(o.get("content_index"), 0))]

    def _h_tr_failed(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        iid = str(o["item_id"])
        rec = self.conv.ensure(iid, kind="message", role="user")
        rec.transcription_failed = True
        err = _obj(o, "error")
        return [ev.UserTranscript(t=now, conn=self.conn, item_id=iid, previous_item_id=self.conv.previous(iid),
                                  text="", failed=True, error=str(err.get("message") or "transcription failed"),
                                  code=str(err.get("code") or "")[:64] or None,
                                  content_index=wire_int(o.get("content_index"), 0))]

    def _h_response_created(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        rid = str((o.get("response") or {})["id"])
        self.responses[rid] = _Response(rid, now, [])
        self.awaiting_response_since = None
        self.asked = False
        self.unanswered = False
        self._progress(now)
        return [ev.ResponseStarted(t=now, conn=self.conn, response_id=rid)]

    def _h_output_item_added(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        item = o.get("item") or {}
        rid = str(o.get("response_id") or "")
        if rid in self.ended:
            return []
        iid = str(item["id"])
        kind = str(item.get("type") or "message")
        self.conv.ensure(iid, kind=kind, role=item.get("role") or ("assistant" if kind == "message" else None),
                         response_id=rid, call_id=item.get("call_id"), name=item.get("name"))
        r = self.responses.get(rid)
        if r is not None:
            self._progress(now)
            if iid not in r.item_ids:
                r.item_ids.append(iid)
        return []

    def _h_content_part_added(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        part = o.get("part") or {}
        index = _number(o, "content_index")
        rec = self.conv.get(o.get("item_id"))
        if rec is not None and part.get("type") in ("audio", "output_audio"):
            rec.content_index = index
        if self._live(o) is not None:
            self._progress(now)
        return []

    def _h_response_step(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        """A step of a response that carries nothing the client keeps (a part or an audio
        stream done, function-call argument deltas): progress all the same."""
        if self._live(o) is not None:
            self._progress(now)
        return []

    def _h_audio_delta(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        iid, rid = str(o["item_id"]), str(o.get("response_id") or "")
        if rid in self.ended:
            return []
        frame = self.session.output_format.decode(o.get("delta"), param="delta")
        rec = self.conv.ensure(iid, kind="message", role="assistant", response_id=rid or None)
        ms = 1000.0 * len(frame) / frame.rate
        rec.audio_ms += ms
        rec.live_audio_ms += ms
        r = self.responses.get(rid)
        if r is not None:
            if len(frame):
                self._progress(now)
            if iid not in r.item_ids:
                r.item_ids.append(iid)
        return [ev.AudioDelta(t=now, conn=self.conn, response_id=rid, item_id=iid, frame=frame,
                              item_audio_ms=rec.audio_ms)]

    def _h_text_delta(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        iid, rid = str(o["item_id"]), str(o.get("response_id") or "")
        if rid in self.ended:
            return []
        delta = str(o.get("delta") or "")
        rec = self.conv.ensure(iid, kind="message", role="assistant", response_id=rid or None)
        r = self.responses.get(rid)
        room = MAX_RESPONSE_TEXT_CHARS - (r.text_chars if r is not None else rec.text_chars)
        over = len(delta) > room
        if over:
            delta = delta[:max(0, room)]
            if r is None:  # not a response in progress: nothing to end, the item just stops growing
                log.warning("upstream item %s is over %d characters of text; the rest is dropped", iid,
                            MAX_RESPONSE_TEXT_CHARS)
                if not delta:
                    return []
        rec.add_text(delta)  # linear however many deltas come (`+=` on a long string copies it each time)
        out: list[ev.UpstreamEvent] = []
        if r is not None:
            r.text_chars += len(delta)
            if delta:
                self._progress(now)
        if delta:
            out.append(ev.AssistantTranscriptDelta(t=now, conn=self.conn, response_id=rid, item_id=iid, delta=delta))
        if over and r is not None:
            out += self._end_at_text_limit(r, now)
        return out

    def _end_at_text_limit(self, r: _Response, now: float) -> list[ev.UpstreamEvent]:
        """The response sent more text than `MAX_RESPONSE_TEXT_CHARS`: it ends here
        (`incomplete`, `TEXT_LIMIT`), the upstream is told to cancel it, and whatever it still
        sends for it is ignored."""
        log.warning("upstream response %s is over %d characters of text: ended here and cancelled upstream", r.id,
                    MAX_RESPONSE_TEXT_CHARS)
        self.responses.pop(r.id, None)
        self.ended[r.id] = None
        while len(self.ended) > _ENDED_MAX:
            self.ended.popitem(last=False)
        for iid in r.item_ids:
            rec = self.conv.get(iid)
            if rec is not None and rec.kind == "message":
                rec.final = True
        self.outbox.append(self._track(self.wire.response_cancel(r.id), {"response_id": r.id}))
        self.resumes = 0
        return [ev.ResponseDone(t=now, conn=self.conn, response_id=r.id, status="incomplete", reason=TEXT_LIMIT,
                                item_ids=tuple(r.item_ids), usage=None)]

    def _h_text_done(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        iid, rid = str(o["item_id"]), str(o.get("response_id") or "")
        if rid in self.ended:
            return []
        text = o.get("transcript") if "transcript" in o else o.get("text")
        rec = self.conv.ensure(iid, kind="message", role="assistant", response_id=rid or None)
        r = self.responses.get(rid)
        over = False
        if isinstance(text, str):
            others = max(0, r.text_chars - rec.text_chars) if r is not None else 0  # the response's other items
            room = max(0, MAX_RESPONSE_TEXT_CHARS - others)
            over = len(text) > room
            rec.text = text[:room] if over else text
            if r is not None:
                r.text_chars = others + rec.text_chars
        rec.final = True
        out: list[ev.UpstreamEvent] = [ev.AssistantTranscript(t=now, conn=self.conn, response_id=rid, item_id=iid,
                                                              previous_item_id=self.conv.previous(iid),
                                                              text=rec.text)]
        if r is not None:
            self._progress(now)
            if over:
                out += self._end_at_text_limit(r, now)
        return out

    def _h_args_done(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        iid, rid = str(o["item_id"]), str(o.get("response_id") or "")
        if rid in self.ended:
            return []
        if rid in self.responses:
            self._progress(now)
        rec = self.conv.ensure(iid, kind="function_call", response_id=rid or None, call_id=o.get("call_id"),
                               name=o.get("name"))
        rec.arguments = str(o.get("arguments") or "")
        return self._call(rec, now)

    def _h_output_item_done(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        if str(o.get("response_id") or "") in self.ended:
            return []
        if self._live(o) is not None:
            self._progress(now)
        item = o.get("item") or {}
        rec = self.conv.get(item.get("id"))
        if rec is None:
            return []
        if rec.kind == "function_call":
            rec.call_id = rec.call_id or item.get("call_id")
            rec.name = rec.name or item.get("name")
            if not rec.arguments and isinstance(item.get("arguments"), str):
                rec.arguments = item["arguments"]
            return self._call(rec, now)
        if rec.kind == "message" and not rec.text:
            rec.text = _content_text(item)
        return []

    def _call(self, rec: ItemRecord, now: float) -> list[ev.UpstreamEvent]:
        if rec.call_reported or not rec.call_id or not rec.name:
            return []
        rec.call_reported = True
        rec.final = True
        return [ev.FunctionCall(t=now, conn=self.conn, response_id=rec.response_id or "", item_id=rec.id,
                                previous_item_id=self.conv.previous(rec.id), call_id=rec.call_id, name=rec.name,
                                arguments=rec.arguments)]

    def _h_response_done(self, o: dict[str, Any], now: float) -> list[ev.UpstreamEvent]:
        resp = o.get("response") or {}
        rid = str(resp["id"])
        if rid in self.ended:  # ended here already (its usage is not counted)
            return []
        usage = usage_from_wire(resp.get("usage"), model=self.model)
        r = self.responses.pop(rid, None)
        if r is not None:
            self._progress(now)
            self.resumes = 0  # the upstream finished a reply: a later drop may resume again
        ids = list(r.item_ids) if r is not None else []
        for item in resp.get("output") or []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                if item["id"] not in ids:
                    ids.append(item["id"])
                rec = self.conv.get(item["id"])
                if rec is not None and rec.kind == "message":
                    if not rec.text:
                        rec.text = _content_text(item)
                    rec.final = True
        details = _obj(resp, "status_details")
        reason = details.get("reason") or ((details.get("error") or {}).get("code")
                                           if isinstance(details.get("error"), dict) else None)
        return [ev.ResponseDone(t=now, conn=self.conn, response_id=rid, status=str(resp.get("status") or "completed"),
                                reason=reason, item_ids=tuple(ids), usage=usage)]


def _number(o: dict[str, Any], key: str, default: int = 0) -> int:
    """`o[key]`, a number the upstream sent, as an int (`default` when absent or null).
    `ProtocolError` when it is there but not usable (not finite, negative, absurd, not a number):
    the event is skipped with a warning, as any malformed event."""
    v = o.get(key)
    if v is None:
        return default
    n = wire_int(v)
    if n is None:
        raise ProtocolError(f"{key} is not a usable number: {str(v)[:40]}")
    return n


def _obj(o: dict[str, Any], key: str) -> dict[str, Any]:
    """`o[key]` if it is an object, else an empty one."""
    v = o.get(key)
    return v if isinstance(v, dict) else {}


def _content_text(item: dict[str, Any]) -> str:
    texts = []
    for part in item.get("content") or []:
        if isinstance(part, dict):
            t = part.get("transcript") if part.get("transcript") is not None else part.get("text")
            if isinstance(t, str) and t:
                texts.append(t)
    return " ".join(texts)


_HANDLERS = {
    "session.created": UpstreamProtocol._h_session_created,
    "session.updated": UpstreamProtocol._h_session_updated,
    "error": UpstreamProtocol._h_error,
    "input_audio_buffer.speech_started": UpstreamProtocol._h_speech_started,
    "input_audio_buffer.speech_stopped": UpstreamProtocol._h_speech_stopped,
    "input_audio_buffer.committed": UpstreamProtocol._h_committed,
    "conversation.item.added": UpstreamProtocol._h_item_added,
    "conversation.item.done": UpstreamProtocol._h_item_done,
    "conversation.item.deleted": UpstreamProtocol._h_item_deleted,
    "conversation.item.retrieved": UpstreamProtocol._h_item_retrieved,
    "conversation.item.truncated": UpstreamProtocol._h_item_truncated,
    "conversation.item.input_audio_transcription.delta": UpstreamProtocol._h_tr_delta,
    "conversation.item.input_audio_transcription.completed": UpstreamProtocol._h_tr_completed,
    "conversation.item.input_audio_transcription.failed": UpstreamProtocol._h_tr_failed,
    "response.created": UpstreamProtocol._h_response_created,
    "response.output_item.added": UpstreamProtocol._h_output_item_added,
    "response.content_part.done": UpstreamProtocol._h_response_step,
    "response.output_audio.done": UpstreamProtocol._h_response_step,
    "response.function_call_arguments.delta": UpstreamProtocol._h_response_step,
    "response.output_item.done": UpstreamProtocol._h_output_item_done,
    "response.content_part.added": UpstreamProtocol._h_content_part_added,
    "response.output_audio.delta": UpstreamProtocol._h_audio_delta,
    "response.output_audio_transcript.delta": UpstreamProtocol._h_text_delta,
    "response.output_text.delta": UpstreamProtocol._h_text_delta,
    "response.output_audio_transcript.done": UpstreamProtocol._h_text_done,
    "response.output_text.done": UpstreamProtocol._h_text_done,
    "response.function_call_arguments.done": UpstreamProtocol._h_args_done,
    "response.done": UpstreamProtocol._h_response_done,
}
