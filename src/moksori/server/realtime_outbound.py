"""Engine events -> Realtime server events, for one connection.

One `match` over the event catalogue (`moksori.engine.events`): the user's turn becomes the
`input_audio_buffer.*` and user-item events, a reply becomes `response.created`, its output item
(message, function call, or an MCP item the runner adds), its deltas and `response.done`. The
records of the responses still streaming live here (`_Out`), and so do the answers that depend
on them: which responses are in flight, how much audio an item has produced, the response
objects (`out_of_band` replies have no conversation), what waits for a `response.done`.

Reply audio goes out as `response.output_audio.delta` events, or to the connection's
`AudioSink` (the WebRTC outbound track) when it has one.

A tool item shown inside a reply (an MCP call, a client's function call) ends the message item
before it; the words of that item whose audio is still being synthesised or paced out then go
out under it all the same, its ends after its last audio, and the tool item and what follows it
wait until then (`_Out`), while the tool runs (`when_sent` tells when they have gone out: a call
waiting for approval starts its clock then).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from moksori.audio.frames import Frame
from moksori.engine import events as E
from moksori.engine.memory import Item as MemItem, new_id
from moksori.protocols import realtime as rt
from moksori.protocols.realtime.items import ItemStatus, ResponseStatus
from moksori.server.realtime_items import item_wire, transcription_events

if TYPE_CHECKING:
    from moksori.engine.session import Session
    from moksori.server.realtime_mcp import RealtimeMCP

__all__ = ["AudioSink", "Outbound", "OutboundHost"]

log = logging.getLogger("moksori.realtime")


class AudioSink(Protocol):
    """Where reply audio goes when it does not travel as `response.output_audio.delta` events.

    Over WebRTC it is the outbound media track: it paces the audio itself, knows when playback
    starts, drains and is cleared (and sends the `output_audio_buffer.*` events), and input
    audio arrives on the inbound track through `RealtimeConnection.push_audio` instead of
    `input_audio_buffer.append`. Without a sink, audio is base64 in events (the WebSocket).
    """

    rate: int  # the engine produces reply audio at this rate

    def play(self, response_id: str, item_id: str, frame: Frame) -> None: ...

    def end(self, response_id: str) -> None:
        """No more audio will come for this response (it drains, then playback stops)."""
        ...

    def clear(self, response_ids: list[str]) -> None:
        """Barge-in or `output_audio_buffer.clear`: drop everything not yet played, now."""
        ...


class OutboundHost(Protocol):
    """What the translation reads of its connection (`RealtimeConnection` is one)."""

    ev: rt.ServerEvents
    flavor: rt.Flavor
    cfg: rt.SessionConfig
    transcription_only: bool
    timeline: bool
    session_id: str
    session: Session
    audio_sink: AudioSink | None
    mcp: RealtimeMCP

    def send(self, event: dict[str, Any] | None) -> None: ...

    def error(self, message: str, *, code: str = ..., param: str | None = ..., event_id: str | None = ...,
              kind: str = ...) -> None: ...

    def upstream_failed(self, detail: str) -> None: ...

    def input_ms_at(self, t: float) -> int: ...


class _Msg:
    """One assistant message item of a streaming response."""

    def __init__(self, item_id: str, index: int) -> None:
        self.item_id, self.index = item_id, index
        self.text = ""
        self.samples = 0  # its audio sent so far
        self.open = True  # its `output_item.done` has not been made yet
        self.said = False  # the engine said its words have all gone out (after a tool item came)
        self.waiting = False  # it is in `_Out.held`: its words wait for the items before it
        self.pending: list[dict[str, Any]] = []  # ... and those that came meanwhile


class _Out:
    """Bookkeeping for one response's output items while it streams.

    A tool item ends the message item open before it, but the words of that item may still be
    on their way (their audio synthesised or paced out after the tool call was parsed): it is
    then `closing`, its words still go straight out, and every other event of the response waits
    in `held` until its last audio has gone out (the engine says so: `Session.split_reply`), then
    goes in order. A message item ended so while another still closes waits in `held` too.
    """

    def __init__(self, response_id: str, item_id: str, audio: bool) -> None:
        self.response_id, self.item_id, self.audio = response_id, item_id, audio
        self.output: list[dict[str, Any]] = []  # by output index (items in progress, then done)
        self.rate = 0  # the reply audio's rate
        self.msgs: dict[str, _Msg] = {}  # its message items, in order
        self.cur: _Msg | None = None  # the message item the reply's next words go in
        self.next_id: str | None = None  # the id of the next message item (after a tool item)
        self.closing: _Msg | None = None
        # what waits for the item closing: events, message items, and calls to make once the
        # events before them have gone out (`Outbound.when_sent`)
        self.held: deque[dict[str, Any] | _Msg | Callable[[], None]] = deque()

    def audio_ms(self, item_id: str) -> int | None:
        """The audio of one of its message items sent so far (ms), None when not one of them."""
        msg = self.msgs.get(item_id)
        if msg is None:
            return None
        return msg.samples * 1000 // self.rate if self.rate else 0


class Outbound:
    def __init__(self, host: OutboundHost) -> None:
        self._host = host
        self._outs: dict[str, _Out] = {}
        self._metadata: dict[str, dict[str, str] | None] = {}
        self._oob: set[str] = set()
        self._after_done: dict[str, list[dict[str, Any]]] = {}
        # told each response id whose `response.done` is about to go out (the requests' records)
        self.on_done: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ what the other parts ask

    def streaming(self, *, in_conversation: bool) -> list[str]:
        """Responses that started and whose `response.done` has not gone out yet."""
        return [rid for rid in self._outs if (rid not in self._oob) == in_conversation]

    def set_metadata(self, response_id: str, metadata: dict[str, str] | None) -> None:
        self._metadata[response_id] = metadata

    def out_of_band(self, response_id: str) -> None:
        """This response is not part of the conversation (`conversation: "none"`)."""
        self._oob.add(response_id)

    def audio_sent_ms(self, item: MemItem) -> int | None:
        """How much audio an assistant item produced (sent so far, for a reply still playing),
        or None when it has none."""
        out = next((o for o in self._outs.values() if item.id in o.msgs), None)
        if out is not None and out.audio:
            return out.audio_ms(item.id)
        return item.audio_ms if item.audio else None

    def send_after_done(self, response_id: str, event: dict[str, Any]) -> None:
        """Send `event` once `response.done` for this response has gone out (now, if it has)."""
        if response_id in self._outs:
            self._after_done.setdefault(response_id, []).append(event)
        else:
            self._host.send(event)

    def output_item_added(self, response_id: str, item: dict[str, Any]) -> int | None:
        """A non-message item enters a response's output (`response.output_item.added` and, in
        the conversation, `conversation.item.added`): its output index, None when the response
        is not streaming (then only the conversation hears of it)."""
        host = self._host
        out = self._outs.get(response_id)
        if out is None:
            host.send(host.ev.conversation_item_added(item, None))
            return None
        self._split(out)
        idx = len(out.output)
        out.output.append(item)  # its place; replaced by the finished item
        self._send(out, host.ev.response_output_item_added(out.response_id, idx, item))
        if out.response_id not in self._oob:
            self._send(out, host.ev.conversation_item_added(item, None))
        return idx

    def output_item_done(self, response_id: str, index: int | None, item: dict[str, Any]) -> None:
        host = self._host
        out = self._outs.get(response_id)
        if out is not None and index is not None and index < len(out.output):
            out.output[index] = item
            self._send(out, host.ev.response_output_item_done(out.response_id, index, item))
            if out.response_id not in self._oob:
                self._send(out, host.ev.conversation_item_done(item, None))
            return
        host.send(host.ev.conversation_item_done(item, None))

    def when_sent(self, response_id: str, fn: Callable[[], None]) -> None:
        """Call `fn()` once the events of the response sent so far have gone out to the client:
        now, unless they wait for a message item still closing (then right after them; at the
        latest when the response ends). An approval request's wait starts then."""
        out = self._outs.get(response_id)
        if out is not None and out.closing is not None:
            out.held.append(fn)
        else:
            fn()

    def send_in(self, response_id: str, event: dict[str, Any] | None) -> None:
        """Send an event of one of a response's non-message items (an MCP call's): in its place
        among the response's events (after the words before the item), or now."""
        out = self._outs.get(response_id)
        if out is None:
            self._host.send(event)
        else:
            self._send(out, event)

    # ------------------------------------------------------------------ engine -> client

    def on_engine_event(self, e: E.Event) -> None:
        try:
            self._translate(e)
        except Exception:
            log.exception("realtime: cannot translate %s", e.type)
        if self._host.timeline and not isinstance(e, E.AgentAudio):
            self._host.send({"type": "moksori.event", "event_id": new_id("event"), "event": e.to_json()})

    def _user_words(self, item_id: str, text: str, audio_s: float) -> None:
        """A user item's transcription (each of its audio parts' own words), then the item done."""
        host = self._host
        memory = host.session.memory
        item = memory.get(item_id)
        if host.cfg.input_transcription is not None or host.transcription_only:
            for event in transcription_events(host.ev, item_id, item, text, audio_s,
                                              host.session.item_words.heard(item_id)):
                host.send(event)
        if item is not None:
            host.send(host.ev.conversation_item_done(item_wire(item, host.flavor), memory.previous_id(item.id)))

    def _translate(self, e: E.Event) -> None:
        host = self._host
        send, ev, sink, vad = host.send, host.ev, host.audio_sink, host.cfg.turn_detection is not None
        match e:
            case E.UserSpeechStarted(item_id=item_id) if vad:
                send(ev.input_audio_buffer_speech_started(host.input_ms_at(e.t), item_id))
            case E.UserSpeechStopped(item_id=item_id) if vad:
                send(ev.input_audio_buffer_speech_stopped(host.input_ms_at(e.t), item_id))
            case E.UserIdleTimeout(item_id=item_id, idle_since=since):
                send(ev.input_audio_buffer_timeout_triggered(host.input_ms_at(since), host.input_ms_at(e.t), item_id))
            case E.UserTurnEnded(item_id=item_id):
                prev = host.session.memory.last_id()
                send(ev.input_audio_buffer_committed(item_id, prev))
                wire = rt.message_item(item_id, "user", [rt.ContentPart("input_audio", transcript=None)],
                                       host.flavor, status="completed")
                send(ev.conversation_item_added(wire, prev))
            case E.UserTranscript(final=True, typed=False, item_id=item_id, text=text, audio_s=audio_s):
                self._user_words(item_id, text, float(audio_s or 0.0))
            case E.AgentBackchannel(response_id=rid):  # out of band: never in the conversation
                self._oob.add(rid)
                self._metadata[rid] = {"moksori": "backchannel"}
            case E.SessionWarning(message=message):
                send(ev.warning(message))
            case E.AgentResponseStarted(response_id=rid, item_id=item_id, modalities=modalities):
                self._outs[rid] = _Out(rid, item_id, "audio" in modalities)
                send(ev.response_created(self._response(rid, "in_progress", modalities)))
            case E.AgentTextDelta(response_id=rid, item_id=item_id, delta=delta):
                out = self._outs.get(rid)
                if out is not None:
                    msg = self._message(out, item_id)
                    msg.text += delta
                    if out.audio:
                        self._say(out, msg, ev.output_audio_transcript_delta(rid, msg.item_id, msg.index, 0, delta))
                    else:
                        self._say(out, msg, ev.output_text_delta(rid, msg.item_id, msg.index, 0, delta))
            case E.AgentAudio(response_id=rid, item_id=item_id, frame=frame):
                out = self._outs.get(rid)
                if out is not None:
                    msg = self._message(out, item_id)
                    msg.samples, out.rate = msg.samples + len(frame), frame.rate
                    if sink is not None:
                        sink.play(rid, msg.item_id, frame)
                    else:
                        self._say(out, msg, ev.output_audio_delta(rid, msg.item_id, msg.index, 0,
                                                                  host.cfg.output_format.encode(frame)))
            case E.AgentAudioDone(response_id=rid) if sink is not None:
                sink.end(rid)
            case E.AgentFunctionCall():
                self._function_call(e)
            case E.AgentToolCall(name=name) if host.mcp.owns(name):
                host.mcp.note_call(e)
            case E.AgentInterrupted(response_id=rid, item_id=item_id, heard_ms=heard_ms, reason=reason):
                if sink is not None:  # the speaker may have handed over its last chunk already
                    sink.clear([rid])
                # only an item the client was shown (a reply cut before its first word, or while
                # a tool ran, has none: nothing to truncate); a client's truncate of a message
                # item already done (the words before a tool item) is answered by its handler
                out = self._outs.get(rid)
                item = host.session.memory.get(item_id)
                cut = out.msgs.get(item_id) if out is not None else None
                if out is not None and cut is not None and item is not None and \
                        (reason != "client_truncated" or item.status == "in_progress"):
                    self._say(out, cut, ev.conversation_item_truncated(item_id, 0, heard_ms))
            case E.AgentAudioCleared(response_ids=rids):
                if sink is not None:
                    sink.clear(list(rids))
                else:
                    for rid in rids:
                        send(ev.output_audio_buffer_cleared(rid))
            case E.AgentResponseDone():
                self._response_done(e)
            case E.ErrorEvent(message=message, code=code):
                host.error(message, code=code or "server_error", kind="server_error")
            case E.BrainUpstreamFailed(detail=detail):
                host.upstream_failed(detail)

    def _function_call(self, e: E.AgentFunctionCall) -> None:
        host = self._host
        ev = host.ev
        out = self._outs.get(e.response_id)
        if out is None:
            return
        self._split(out)
        item = rt.function_call_item(e.call_item_id, e.call_id, e.name, e.arguments, host.flavor, status="in_progress")
        idx = len(out.output)
        done = rt.function_call_item(e.call_item_id, e.call_id, e.name, e.arguments, host.flavor)
        out.output.append(done)
        for event in (ev.response_output_item_added(out.response_id, idx, {**item, "arguments": ""}),
                      ev.conversation_item_added({**item, "arguments": ""}, None),
                      ev.function_call_arguments_delta(out.response_id, e.call_item_id, idx, e.call_id, e.arguments),
                      ev.function_call_arguments_done(out.response_id, e.call_item_id, idx, e.call_id, e.name,
                                                      e.arguments),
                      ev.response_output_item_done(out.response_id, idx, done),
                      ev.conversation_item_done(done, None)):
            self._send(out, event)

    def _response_done(self, e: E.AgentResponseDone) -> None:
        host = self._host
        if self.on_done is not None:
            self.on_done(e.response_id)
        out = self._outs.pop(e.response_id, None)
        if out is None:
            return
        ended: ItemStatus = "incomplete" if e.interrupted else "completed"
        # message items whose words were still going out (the reply was cut first): they end now,
        # as the conversation keeps them, and what waited for them goes
        while out.closing is not None:
            msg, out.closing = out.closing, None
            self._close_message(out, msg, text=self._heard(msg.item_id), status=ended)
            self._flush(out)
        if out.cur is not None:
            self._close_message(out, out.cur, text=e.text if len(out.msgs) <= 1 else self._heard(out.cur.item_id),
                                status=ended)
        statuses: dict[str, ResponseStatus] = {"completed": "completed", "cancelled": "cancelled", "failed": "failed",
                                               "incomplete": "incomplete"}  # a realtime brain's reply cut short
        status = statuses.get(e.status, "completed")
        reason = "max_output_tokens" if status == "incomplete" else \
            "turn_detected" if e.reason == "turn_detected" else "client_cancelled"
        error = {"type": "server_error", "code": e.reason, "message": f"the response failed: {e.reason}"} \
            if status == "failed" and e.reason else None
        details = rt.status_details(status, reason=reason, error=error) if status != "completed" else None
        u, up = e.usage, e.upstream_usage
        if up is not None:  # the realtime brain: the upstream's own count, audio tokens included
            usage = rt.Usage(input_text_tokens=up.input_tokens, input_audio_tokens=up.input_audio_tokens,
                             cached_text_tokens=up.cached_tokens, cached_audio_tokens=up.cached_audio_tokens,
                             output_text_tokens=up.output_tokens, output_audio_tokens=up.output_audio_tokens)
        else:
            usage = rt.Usage(input_text_tokens=u.input_tokens, output_text_tokens=u.output_tokens,
                             cached_text_tokens=u.cached_tokens)
        host.send(host.ev.response_done(self._response(out.response_id, status, e.modalities, details=details,
                                                       output=out.output, usage=usage)))
        self._metadata.pop(out.response_id, None)
        self._oob.discard(out.response_id)
        host.mcp.resumed.discard(out.response_id)
        for later in self._after_done.pop(out.response_id, []):
            host.send(later)

    def _split(self, out: _Out) -> None:
        """A tool item enters the response: the message item open so far ends, and the reply's
        next words are a message item of their own (the engine's memory follows). The words of
        the one that ends may still be on their way (their audio synthesised or paced out): it
        ends after them, and the tool item's events wait until then (`_Out`)."""
        msg = out.cur
        if msg is None:
            return
        out.cur = None
        out.next_id = new_id("item")
        owed = self._host.session.split_reply(out.response_id, out.next_id, lambda: self._said(out, msg))
        if not owed or msg.said:
            self._close_message(out, msg)
        elif out.closing is None:
            out.closing = msg  # its words go straight out; every other event of the response waits
        else:
            msg.waiting = True  # after the one closing: its words wait their turn too
            out.held.append(msg)

    def _said(self, out: _Out, msg: _Msg) -> None:
        """The engine: the words of message item `msg` (ended by a tool item) have all gone out."""
        msg.said = True
        if out.closing is not msg or self._outs.get(out.response_id) is not out:
            return  # (its turn comes in `_flush`; or the response is over)
        out.closing = None
        self._close_message(out, msg)
        self._flush(out)

    def _flush(self, out: _Out) -> None:
        """Send what waited for a closing message item, in order, up to the next one still closing."""
        send = self._host.send
        while out.held and out.closing is None:
            x = out.held.popleft()
            if isinstance(x, dict):
                send(x)
                continue
            if not isinstance(x, _Msg):
                x()  # (`when_sent`)
                continue
            x.waiting = False
            for event in x.pending:
                send(event)
            x.pending.clear()
            if x.said:
                self._close_message(out, x)
            else:
                out.closing = x

    def _send(self, out: _Out, event: dict[str, Any] | None) -> None:
        """One of the response's events: now, or after the message item still closing (None: one
        this dialect does not have)."""
        if event is None:
            return
        if out.closing is not None:
            out.held.append(event)
        else:
            self._host.send(event)

    def _say(self, out: _Out, msg: _Msg, event: dict[str, Any] | None) -> None:
        """A message item's words or audio: a closing item's go straight out (they come before
        everything that waits for it)."""
        if event is None:
            return
        if msg is out.closing:
            self._host.send(event)
        elif msg.waiting:
            msg.pending.append(event)
        else:
            self._send(out, event)

    def _heard(self, item_id: str) -> str | None:
        """What the conversation keeps of a message item (what was heard of it), None: not in it."""
        item = self._host.session.memory.get(item_id)
        return item.text if item is not None else None

    def _message(self, out: _Out, item_id: str) -> _Msg:
        """The message item that words or audio the engine put in `item_id` go in: that item while it
        is still open (the words before a tool item), else the one open now, or a new one."""
        msg = out.msgs.get(item_id)
        if msg is not None and msg.open:
            return msg
        if out.cur is not None:
            return out.cur
        host = self._host
        # (a realtime brain's words keep its one item id: words after a tool item are a new item too)
        new = out.item_id if not out.msgs else out.next_id or new_id("item")
        out.next_id = None
        msg = out.cur = out.msgs[new] = _Msg(new, len(out.output))
        item = rt.message_item(new, "assistant", [], host.flavor, status="in_progress")
        out.output.append(item)  # its place; replaced by the finished item
        self._send(out, host.ev.response_output_item_added(out.response_id, msg.index, item))
        if out.response_id not in self._oob:
            self._send(out, host.ev.conversation_item_added(item, host.session.memory.previous_id(new)))
        self._send(out, host.ev.response_content_part_added(out.response_id, new, msg.index, 0,
                                                           rt.event_part("audio" if out.audio else "text")))
        return msg

    def _close_message(self, out: _Out, msg: _Msg, *, text: str | None = None,
                       status: ItemStatus = "completed") -> None:
        if not msg.open:
            return
        host = self._host
        msg.open = False
        if out.cur is msg:
            out.cur = None
        ev, text = host.ev, msg.text if text is None else text
        rid, item_id, index = out.response_id, msg.item_id, msg.index
        events: list[dict[str, Any] | None] = []
        if out.audio:
            events += [ev.output_audio_done(rid, item_id, index, 0),
                       ev.output_audio_transcript_done(rid, item_id, index, 0, text)]
            part = rt.event_part("audio", transcript=text)
            content = [rt.ContentPart("output_audio", transcript=text)]
        else:
            events.append(ev.output_text_done(rid, item_id, index, 0, text))
            part = rt.event_part("text", text=text)
            content = [rt.ContentPart("output_text", text=text)]
        events.append(ev.response_content_part_done(rid, item_id, index, 0, part))
        item = rt.message_item(item_id, "assistant", content, host.flavor, status=status)
        events.append(ev.response_output_item_done(rid, index, item))
        if rid not in self._oob:
            events.append(ev.conversation_item_done(item, host.session.memory.previous_id(item_id)))
        out.output[index] = item
        for event in events:
            self._say(out, msg, event)

    def _response(self, response_id: str, status: ResponseStatus, modalities: Any, *, details: dict | None = None,
                  output: list | None = None, usage: rt.Usage | None = None) -> dict[str, Any]:
        cfg = self._host.cfg
        mods = ["audio"] if modalities and "audio" in modalities else ["text"]
        return rt.response_object(
            response_id, self._host.flavor, status=status, status_details=details, output=output or [], usage=usage,
            conversation_id=None if response_id in self._oob else self._host.session_id, output_modalities=mods,
            voice=cfg.voice_config or cfg.voice, output_format=cfg.output_format,
            max_output_tokens=cfg.max_output_tokens, temperature=cfg.temperature,
            metadata=self._metadata.get(response_id))
