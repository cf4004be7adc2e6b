"""Engine events -> Realtime server events, for one connection.

One `match` over the event catalogue (`moksori.engine.events`): the user's turn becomes the
`input_audio_buffer.*` and user-item events, a reply becomes `response.created`, its output item
(message, function call, or an MCP item the runner adds), its deltas and `response.done`. The
records of the responses still streaming live here (`_Out`), and so do the answers that depend
on them: which responses are in flight, how much audio an item has produced, the response
objects (`out_of_band` replies have no conversation), what waits for a `response.done`.

Reply audio goes out as `response.output_audio.delta` events, or to the connection's
`AudioSink` (the WebRTC outbound track) when it has one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from moksori.audio.frames import Frame
from moksori.engine import events as E
from moksori.engine.memory import Item as MemItem, new_id
from moksori.protocols import realtime as rt
from moksori.protocols.realtime.items import ItemStatus, ResponseStatus
from moksori.server.realtime_items import audio_transcripts, item_wire

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


class _Out:
    """Bookkeeping for one response's output item while it streams."""

    def __init__(self, response_id: str, item_id: str, audio: bool) -> None:
        self.response_id, self.item_id, self.audio = response_id, item_id, audio
        self.started = False
        self.text = ""
        self.output: list[dict[str, Any]] = []
        self.index = 0
        self.samples, self.rate = 0, 0  # reply audio sent so far, and its rate
        self.parts = 0  # message items opened so far (more than one when tool items came between)
        # the message items announced to the client (output_item.added), in order: the reply
        # audio sent before each (samples)
        self.shown: dict[str, int] = {}
        self.next_id: str | None = None  # the message item the reply's next words go in

    def audio_ms(self, item_id: str) -> int | None:
        """The audio of one of its message items (ms), None when not one of them."""
        if item_id not in self.shown:
            return None
        ids = list(self.shown)
        i = ids.index(item_id)
        end = self.shown[ids[i + 1]] if i + 1 < len(ids) else self.samples
        return (end - self.shown[item_id]) * 1000 // self.rate if self.rate else 0


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
        out = next((o for o in self._outs.values() if item.id in o.shown), None)
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
        host.send(host.ev.response_output_item_added(out.response_id, idx, item))
        if out.response_id not in self._oob:
            host.send(host.ev.conversation_item_added(item, None))
        return idx

    def output_item_done(self, response_id: str, index: int | None, item: dict[str, Any]) -> None:
        host = self._host
        out = self._outs.get(response_id)
        if out is not None and index is not None and index < len(out.output):
            out.output[index] = item
            host.send(host.ev.response_output_item_done(out.response_id, index, item))
            if out.response_id in self._oob:
                return
        host.send(host.ev.conversation_item_done(item, None))

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
            for index, words in audio_transcripts(item, text):
                if words:
                    host.send(host.ev.input_audio_transcription_delta(item_id, index, words))
                host.send(host.ev.input_audio_transcription_completed(item_id, index, words, audio_seconds=audio_s))
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
            case E.AgentTextDelta(response_id=rid, delta=delta):
                out = self._outs.get(rid)
                if out is not None:
                    self._open_message(out)
                    out.text += delta
                    if out.audio:
                        send(ev.output_audio_transcript_delta(out.response_id, out.item_id, out.index, 0, delta))
                    else:
                        send(ev.output_text_delta(out.response_id, out.item_id, out.index, 0, delta))
            case E.AgentAudio(response_id=rid, frame=frame):
                out = self._outs.get(rid)
                if out is not None:
                    self._open_message(out)
                    out.samples, out.rate = out.samples + len(frame), frame.rate
                    if sink is not None:
                        sink.play(out.response_id, out.item_id, frame)
                    else:
                        send(ev.output_audio_delta(out.response_id, out.item_id, out.index, 0,
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
                if out is not None and item_id in out.shown and item is not None and \
                        (reason != "client_truncated" or item.status == "in_progress"):
                    send(ev.conversation_item_truncated(item_id, 0, heard_ms))
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
        send, ev = host.send, host.ev
        out = self._outs.get(e.response_id)
        if out is None:
            return
        self._split(out)
        item = rt.function_call_item(e.call_item_id, e.call_id, e.name, e.arguments, host.flavor, status="in_progress")
        idx = len(out.output)
        send(ev.response_output_item_added(out.response_id, idx, {**item, "arguments": ""}))
        send(ev.conversation_item_added({**item, "arguments": ""}, None))
        send(ev.function_call_arguments_delta(out.response_id, e.call_item_id, idx, e.call_id, e.arguments))
        send(ev.function_call_arguments_done(out.response_id, e.call_item_id, idx, e.call_id, e.name, e.arguments))
        done = rt.function_call_item(e.call_item_id, e.call_id, e.name, e.arguments, host.flavor)
        send(ev.response_output_item_done(out.response_id, idx, done))
        send(ev.conversation_item_done(done, None))
        out.output.append(done)
        out.index = len(out.output)

    def _response_done(self, e: E.AgentResponseDone) -> None:
        host = self._host
        if self.on_done is not None:
            self.on_done(e.response_id)
        out = self._outs.pop(e.response_id, None)
        if out is None:
            return
        self._close_message(out, text=e.text if out.parts <= 1 else self._heard(out.item_id),
                            status="incomplete" if e.interrupted else "completed")
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
        next words are a message item of their own (the engine's memory follows)."""
        if not out.started:
            return
        self._close_message(out)
        out.next_id = new_id("item")
        self._host.session.split_reply(out.response_id, out.next_id)

    def _heard(self, item_id: str) -> str | None:
        """What the conversation keeps of a message item (what was heard of it), None: not in it."""
        item = self._host.session.memory.get(item_id)
        return item.text if item is not None else None

    def _open_message(self, out: _Out) -> None:
        if out.started:
            return
        host = self._host
        out.started = True
        out.parts += 1
        if out.parts > 1:  # words after a tool item: a message item of their own
            out.item_id, out.text, out.next_id = out.next_id or new_id("item"), "", None
        out.index = len(out.output)
        out.shown[out.item_id] = out.samples
        part = "output_audio" if out.audio else "output_text"
        item = rt.message_item(out.item_id, "assistant", [], host.flavor, status="in_progress")
        host.send(host.ev.response_output_item_added(out.response_id, out.index, item))
        if out.response_id not in self._oob:
            host.send(host.ev.conversation_item_added(item, host.session.memory.previous_id(out.item_id)))
        host.send(host.ev.response_content_part_added(out.response_id, out.item_id, out.index, 0,
                                                      rt.event_part("audio" if part == "output_audio" else "text")))

    def _close_message(self, out: _Out, *, text: str | None = None, status: ItemStatus = "completed") -> None:
        if not out.started:
            return
        host = self._host
        out.started = False
        send, ev, text = host.send, host.ev, out.text if text is None else text
        if out.audio:
            send(ev.output_audio_done(out.response_id, out.item_id, out.index, 0))
            send(ev.output_audio_transcript_done(out.response_id, out.item_id, out.index, 0, text))
            part = rt.event_part("audio", transcript=text)
            content = [rt.ContentPart("output_audio", transcript=text)]
        else:
            send(ev.output_text_done(out.response_id, out.item_id, out.index, 0, text))
            part = rt.event_part("text", text=text)
            content = [rt.ContentPart("output_text", text=text)]
        send(ev.response_content_part_done(out.response_id, out.item_id, out.index, 0, part))
        item = rt.message_item(out.item_id, "assistant", content, host.flavor, status=status)
        send(ev.response_output_item_done(out.response_id, out.index, item))
        if out.response_id not in self._oob:
            send(ev.conversation_item_done(item, host.session.memory.previous_id(out.item_id)))
        out.output.append(item)

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
