"""One Realtime connection: client events -> engine calls, engine events -> server events.

No sockets here: the route hands in raw messages and a `send` coroutine. Every client mistake
becomes an `error` event and the session stays up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from moksori.audio.frames import Frame
from moksori.audio.resample import resample
from moksori.engine import events as E
from moksori.engine.config import SessionConfig as EngineConfig, config_from_settings
from moksori.brains import open_session
from moksori.engine.memory import Item as MemItem, new_id
from moksori.errors import MoksoriError, ProtocolError
from moksori.protocols import realtime as rt
from moksori.protocols.realtime.items import ItemStatus, ResponseStatus
from moksori.providers.base import Message
from moksori.providers.registry import Stack
from moksori.engine.tools import ToolBox
from moksori.server.realtime_config import engine_config, initial_session, response_overrides
from moksori.server.realtime_mcp import RealtimeMCP
from moksori.settings import Settings
from moksori.transport import Outbox, StopReason

if TYPE_CHECKING:
    from moksori.agent_kit import AgentKit

log = logging.getLogger("moksori.realtime")

Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_OOB_RESPONSES = 2  # out-of-band responses (conversation "none") running at once, per session
MAX_OUTBOUND_EVENTS = 1000  # unsent server events (~20-40 s of audio) before a non-reading client is dropped


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


class _Out:
    """Bookkeeping for one response's output item while it streams."""

    def __init__(self, response_id: str, item_id: str, audio: bool) -> None:
        self.response_id, self.item_id, self.audio = response_id, item_id, audio
        self.started = False
        self.text = ""
        self.output: list[dict[str, Any]] = []
        self.index = 0
        self.audio_ms = 0.0  # reply audio sent so far
        self.parts = 0  # message items opened so far (more than one when tool items came between)


class RealtimeConnection:
    def __init__(self, stack: Stack, settings: Settings, flavor: rt.Flavor, send: Send, *, model: str = "moksori",
                 timeline: bool = False, transcription_only: bool = False, session_id: str | None = None,
                 audio_sink: AudioSink | None = None, output_lead_ms: int = 200, kit: AgentKit | None = None) -> None:
        self.stack, self.settings, self.flavor, self._send = stack, settings, flavor, send
        self.audio_sink = audio_sink
        self.model = model
        self.timeline = timeline
        self.transcription_only = transcription_only
        self.ev = rt.ServerEvents(flavor)
        self.cfg = initial_session(settings)
        if transcription_only and self.cfg.turn_detection is not None:
            self.cfg = replace(self.cfg, turn_detection=replace(self.cfg.turn_detection, create_response=False))
        self.session_id = session_id or new_id("sess")
        self._base = config_from_settings(settings, output_lead_ms=output_lead_ms)
        self.session = open_session(stack, self._engine_cfg(), settings=settings, session_id=self.session_id,
                                    input_rate=self.cfg.input_format.rate, turns_from_settings=False, kit=kit)
        # warnings the session gave while it opened, before we listened (sent by `start`)
        self._early_warnings = [e.message for e in self.session.bus.history if isinstance(e, E.SessionWarning)]
        self.session.bus.listen(self._on_engine_event)
        # the route's way to end the connection when the session cannot go on (the realtime
        # brain's upstream is gone for good): close the socket, hang up the call
        self.on_fatal: Callable[[str], Awaitable[Any]] | None = None
        self._outbox: Outbox[dict[str, Any]] = Outbox(send, name=f"rt-send-{self.session_id}",
                                                      limit=MAX_OUTBOUND_EVENTS, on_stop=self._stopped_sending)
        self._outs: dict[str, _Out] = {}
        self._audio_ms = 0.0  # audio received so far (ms)
        self._audio_marks: deque[tuple[float, float]] = deque(maxlen=512)  # (session t, audio ms)
        self._manual_ms = 0.0
        self._buffer_full_reported = False
        self._metadata: dict[str, dict[str, str] | None] = {}
        self._oob: set[str] = set()
        self._preset_warnings: list[str] = []
        self._after_done: dict[str, list[dict[str, Any]]] = {}
        self._created: dict[str, Any] = {}  # response.create responses until their response.done
        self._closing = False
        self.closed = False
        # the store's recorder of this session (server/recording_hooks.py), told what the client
        # adds and truncates itself; None when nothing is recorded
        self.recorder: Any = None
        # MCP servers the client names (`{"type": "mcp"}` tools): the pipeline brain runs them
        self.mcp = RealtimeMCP(self, settings.tools)
        self._mcp_warned = False

    # ------------------------------------------------------------------ plumbing

    def _engine_cfg(self) -> EngineConfig:
        cfg = engine_config(self.cfg, self._base, self.settings, voices=self.stack.tts.caps.voices,
                            transcription_only=self.transcription_only)
        return replace(cfg, output_rate=self.audio_sink.rate) if self.audio_sink is not None else cfg

    def send(self, event: dict[str, Any] | None) -> None:
        if event is not None and not self.closed:
            self._outbox.put(event)  # past MAX_OUTBOUND_EVENTS unsent, the outbox stops (_stopped_sending)

    def _stopped_sending(self, reason: StopReason) -> None:
        if reason == "not_reading":
            log.warning("realtime session %s: %d events unsent, the client is not reading: closing",
                        self.session_id, len(self._outbox))
        self.closed = True

    @property
    def sender(self) -> asyncio.Task:
        """Ends when the connection can send no more (closed, the socket failed, or the client
        stopped reading): the route then closes the session."""
        return self._outbox.task

    def preset(self, session: dict[str, Any], *, transcription_only: bool = False) -> None:
        """Start from a session config given out of band (an ephemeral key's, a WebRTC call's
        `session` part) instead of the defaults. Call before `start()`; raises ProtocolError."""
        cfg, warnings = rt.apply_session_update(self.cfg, session, self.flavor)
        if transcription_only:
            self.transcription_only = True
        self.cfg = cfg
        self.session.update(self._engine_cfg())
        self._preset_warnings += warnings

    def send_after_done(self, response_id: str, event: dict[str, Any]) -> None:
        """Send `event` once `response.done` for this response has gone out (now, if it has)."""
        if response_id in self._outs:
            self._after_done.setdefault(response_id, []).append(event)
        else:
            self.send(event)

    def wire_session(self) -> dict[str, Any]:
        return self._wire_session()

    # ------------------------------------------------------------------ what RealtimeMCP uses

    @property
    def toolbox(self) -> ToolBox:
        return self.session.toolbox

    def client_tool_names(self) -> set[str]:
        return {str(t.get("name")) for t in self.cfg.tools if t.get("name")}

    def output_item_added(self, response_id: str, item: dict[str, Any]) -> int | None:
        """A non-message item enters a response's output (`response.output_item.added` and, in
        the conversation, `conversation.item.added`): its output index, None when the response
        is not streaming (then only the conversation hears of it)."""
        out = self._outs.get(response_id)
        if out is None:
            self.send(self.ev.conversation_item_added(item, None))
            return None
        self._close_message(out)
        idx = len(out.output)
        out.output.append(item)  # its place; replaced by the finished item
        self.send(self.ev.response_output_item_added(out.response_id, idx, item))
        if out.response_id not in self._oob:
            self.send(self.ev.conversation_item_added(item, None))
        return idx

    def output_item_done(self, response_id: str, index: int | None, item: dict[str, Any]) -> None:
        out = self._outs.get(response_id)
        if out is not None and index is not None and index < len(out.output):
            out.output[index] = item
            self.send(self.ev.response_output_item_done(out.response_id, index, item))
            if out.response_id in self._oob:
                return
        self.send(self.ev.conversation_item_done(item, None))

    def _sync_mcp(self) -> None:
        if self.cfg.mcp_tools and self.settings.brain == "realtime":
            if not self._mcp_warned:
                self._mcp_warned = True
                self.send(self.ev.warning("MCP tools from clients run with the pipeline brain only "
                                          "(MOKSORI_BRAIN=pipeline); they have no effect here"))
            return
        self.mcp.sync(self.cfg.mcp_tools)

    async def start(self) -> None:
        self.send(self.ev.session_created(self._wire_session()))
        for message in self._early_warnings:
            self.send(self.ev.warning(message))
        self._early_warnings = []
        for w in self._preset_warnings:
            self.send(self.ev.warning(w))
        self._preset_warnings = []
        self._sync_mcp()  # MCP tools of a preset session (an ephemeral key's, a WebRTC call's)

    def _wire_session(self) -> dict[str, Any]:
        return rt.session_to_wire(self.cfg, self.flavor, session_id=self.session_id, model=self.model)

    async def close(self) -> None:
        """Close the session and stop sending. Idempotent, and complete on every path: the
        sender may already have stopped because the socket went away, and the session must
        still be closed (returning early here left replies generating for nobody)."""
        if self._closing:
            return
        self._closing = True
        try:
            await self.mcp.close()  # a call waiting for approval is denied: the reply can end
            await self.session.close()
        finally:
            self.closed = True
            await self._outbox.close(drain_s=2.0)  # what is queued still goes out

    def error(self, message: str, *, code: str = "invalid_request_error", param: str | None = None,
              event_id: str | None = None, kind: str = "invalid_request_error") -> None:
        self.send(self.ev.error(message, code=code, param=param, event_id=event_id, type=kind))

    # ------------------------------------------------------------------ client -> engine

    async def on_message(self, raw: str | bytes) -> None:
        try:
            event = rt.parse_client_event(raw, max_bytes=self.settings.server.max_message_bytes)
        except ProtocolError as e:
            self.send(self.ev.error_from(e))
            return
        handler = getattr(self, "_on_" + type(event).__name__, None)
        try:
            if handler is None:
                raise ProtocolError(f"{event.TYPE} is not supported by this server", code="unsupported_event",
                                    event_id=event.event_id)
            result = handler(event)
            if asyncio.iscoroutine(result):
                await result
        except ProtocolError as e:
            if e.event_id is None:
                e.event_id = event.event_id
            self.send(self.ev.error_from(e))
        except MoksoriError as e:
            self.error(str(e), code=e.code, event_id=event.event_id)
        except Exception as e:
            log.exception("realtime handler failed")
            self.error(f"internal error handling {event.TYPE}: {type(e).__name__}", code="server_error",
                       event_id=event.event_id, kind="server_error")

    def _on_SessionUpdate(self, ev: rt.SessionUpdate) -> None:
        cfg, warnings = rt.apply_session_update(self.cfg, ev.session, self.flavor)
        self._apply(cfg, warnings, ev.event_id)

    def _on_TranscriptionSessionUpdate(self, ev: rt.TranscriptionSessionUpdate) -> None:
        cfg, warnings = rt.apply_session_update(self.cfg, ev.session, self.flavor)
        self.transcription_only = True
        self._apply(cfg, warnings, ev.event_id)

    def _apply(self, cfg: rt.SessionConfig, warnings: list[str], event_id: str | None) -> None:
        self.cfg = cfg
        self.session.update(self._engine_cfg())
        self.send(self.ev.session_updated(self._wire_session()))
        for w in warnings:
            self.send(self.ev.warning(w, event_id=event_id))
        self._sync_mcp()

    def _on_InputAudioBufferAppend(self, ev: rt.InputAudioBufferAppend) -> None:
        if self.audio_sink is not None:
            raise ProtocolError("on this connection input audio travels on the media track, not in events",
                                code="invalid_request_error")
        self.push_audio(self.cfg.input_format.decode(ev.audio, param="audio"))

    def push_audio(self, frame: Frame) -> None:
        """Client audio at any rate (from an append event, or from a WebRTC inbound track)."""
        ms = 1000 * len(frame) / frame.rate
        if self.cfg.turn_detection is None:
            if self._manual_ms + ms > 1000 * self.settings.server.max_input_buffer_s:
                if not self._buffer_full_reported:
                    self._buffer_full_reported = True
                    raise ProtocolError(f"input audio buffer is full ({self.settings.server.max_input_buffer_s:.0f} s): "
                                        "commit or clear it", code="input_audio_buffer_full")
                return
            self._manual_ms += ms
        self._audio_ms += ms
        self._audio_marks.append((self.session.clock.now(), self._audio_ms))
        self.session.push_audio(frame)

    async def _on_InputAudioBufferCommit(self, ev: rt.InputAudioBufferCommit) -> None:
        if self.cfg.turn_detection is None and self._manual_ms < 100:
            raise ProtocolError(f"buffer too small: expected at least 100 ms of audio, have {self._manual_ms:.0f} ms",
                                code="input_audio_buffer_commit_empty")
        await self.session.drain_input()  # audio still in the denoiser belongs to this commit
        item_id = self.session.commit()
        if item_id is None:
            raise ProtocolError("nothing to commit: no speech in the input audio buffer",
                                code="input_audio_buffer_commit_empty")
        self._manual_ms, self._buffer_full_reported = 0.0, False

    def _on_InputAudioBufferClear(self, ev: rt.InputAudioBufferClear) -> None:
        self.session.clear_input()
        self._manual_ms, self._buffer_full_reported = 0.0, False
        self.send(self.ev.input_audio_buffer_cleared())

    def _on_OutputAudioBufferClear(self, ev: rt.OutputAudioBufferClear) -> None:
        self.session.interrupt("client_cancelled")
        if self.audio_sink is not None:
            self.audio_sink.clear([])  # also the tail the speaker already handed over

    async def _on_ConversationItemCreate(self, ev: rt.ConversationItemCreate) -> None:
        if isinstance(ev.item, rt.MCPApprovalResponseItem):
            self._approval_response(ev.item)
            return
        mem = self.session.memory
        after = ev.previous_item_id
        if after not in (None, "root") and mem.get(after) is None:
            raise ProtocolError(f"previous_item_id {after} does not exist", code="item_not_found",
                                param="previous_item_id")
        item = await self._to_memory_item(ev.item)
        self.session.add_item(item, after=after)
        if self.recorder is not None:
            self.recorder.item_added(item)
        wire = self._item_wire(item)
        prev = mem.previous_id(item.id)
        self.send(self.ev.conversation_item_added(wire, prev))
        self.send(self.ev.conversation_item_done(wire, prev))

    def _approval_response(self, item: rt.MCPApprovalResponseItem) -> None:
        """The client's answer to an `mcp_approval_request`: the waiting call goes on (or not).
        It is echoed as an item, not kept in the conversation the LLM reads."""
        if not self.mcp.answer(item):
            raise ProtocolError(f"no MCP call is waiting for approval request {item.approval_request_id} "
                                "(answered already, timed out, or unknown)", code="item_not_found",
                                param="item.approval_request_id")
        wire = self.mcp.keep(rt.mcp_approval_response_item(item, item.id or new_id("item")))
        self.send(self.ev.conversation_item_added(wire, None))
        self.send(self.ev.conversation_item_done(wire, None))

    async def _to_memory_item(self, item: rt.Item) -> MemItem:
        if isinstance(item, rt.MCPApprovalResponseItem):
            raise ProtocolError("an mcp_approval_response item goes in conversation.item.create, not in "
                                "response.input", code="invalid_value", param="item.type")
        item_id = getattr(item, "id", None) or new_id("item")
        if self.session.memory.get(item_id) is not None:
            raise ProtocolError(f"an item with id {item_id} already exists", code="item_exists", param="item.id")
        if isinstance(item, rt.FunctionCallItem):
            return MemItem(id=item_id, type="function_call", role="assistant", call_id=item.call_id, name=item.name,
                           arguments=item.arguments)
        if isinstance(item, rt.FunctionCallOutputItem):
            return MemItem(id=item_id, type="function_call_output", role="user", call_id=item.call_id,
                           output=item.output)
        texts: list[str] = []
        audio = False
        for part in item.content:
            if part.type in ("input_text", "output_text") and part.text:
                texts.append(part.text)
            elif part.type in ("input_audio", "output_audio"):
                audio = True
                if part.transcript:
                    texts.append(part.transcript)
                elif part.audio:
                    frame = self.cfg.input_format.decode(part.audio, param="item.content.audio")
                    tr = await self.session.transcribe_item_audio(resample(frame, 16000).to_float())
                    texts.append(tr.text)
            elif part.type == "input_image":
                raise ProtocolError("image input is not supported", code="unsupported_content_type",
                                    param="item.content.type")
        return MemItem(id=item_id, role=item.role, text=" ".join(t for t in texts if t), audio=audio)

    def _item_wire(self, item: MemItem, *, status: ItemStatus | None = None) -> dict[str, Any]:
        f = self.flavor
        if item.type == "function_call":
            return rt.function_call_item(item.id, item.call_id or "", item.name or "", item.arguments or "{}", f)
        if item.type == "function_call_output":
            return rt.function_call_output_item(item.id, item.call_id or "", item.output or "", f)
        if item.role == "user":
            part = rt.ContentPart("input_audio", transcript=item.text) if item.audio else \
                rt.ContentPart("input_text", text=item.text)
        elif item.role == "assistant":
            part = rt.ContentPart("output_audio", transcript=item.text) if item.audio else \
                rt.ContentPart("output_text", text=item.text)
        else:
            part = rt.ContentPart("input_text", text=item.text)
        return rt.message_item(item.id, item.role, [part], f, status=status or item.status)

    def _on_ConversationItemRetrieve(self, ev: rt.ConversationItemRetrieve) -> None:
        item = self.session.memory.get(ev.item_id)
        if item is None and ev.item_id in self.mcp.items:  # an MCP item (kept by the runner, not in memory)
            self.send(self.ev.conversation_item_retrieved(self.mcp.items[ev.item_id]))
            return
        if item is None:
            raise ProtocolError(f"item {ev.item_id} does not exist", code="item_not_found", param="item_id")
        self.send(self.ev.conversation_item_retrieved(self._item_wire(item)))

    def _on_ConversationItemTruncate(self, ev: rt.ConversationItemTruncate) -> None:
        item = self.session.memory.get(ev.item_id)
        if item is None:
            raise ProtocolError(f"item {ev.item_id} does not exist", code="item_not_found", param="item_id")
        if item.role != "assistant" or item.type != "message":
            raise ProtocolError("only assistant messages can be truncated", code="invalid_item", param="item_id")
        if ev.content_index != 0:
            raise ProtocolError("content_index must be 0", code="invalid_value", param="content_index")
        sent = self._audio_sent_ms(item)
        if sent is None:
            raise ProtocolError(f"item {ev.item_id} has no audio to truncate", code="invalid_value", param="item_id")
        if ev.audio_end_ms > sent:  # as OpenAI: never past the audio the item produced
            raise ProtocolError(f"Audio content of {sent}ms is already shorter than {ev.audio_end_ms}ms",
                                code="invalid_value", param="audio_end_ms")
        cut = self.session.truncate(ev.item_id, ev.audio_end_ms)
        if cut is not None and self.recorder is not None:
            self.recorder.truncated(ev.item_id, cut.text)
        self.send(self.ev.conversation_item_truncated(ev.item_id, 0, ev.audio_end_ms))

    def _audio_sent_ms(self, item: MemItem) -> int | None:
        """How much audio an assistant item produced (sent so far, for a reply still playing),
        or None when it has none."""
        out = next((o for o in self._outs.values() if o.item_id == item.id), None)
        if out is not None and out.audio:
            return int(out.audio_ms)
        return item.audio_ms if item.audio else None

    def _on_ConversationItemDelete(self, ev: rt.ConversationItemDelete) -> None:
        if not self.session.delete_item(ev.item_id):
            raise ProtocolError(f"item {ev.item_id} does not exist", code="item_not_found", param="item_id")
        self.send(self.ev.conversation_item_deleted(ev.item_id))

    def _active_responses(self, *, in_conversation: bool) -> list[str]:
        """Responses that have not finished (`response.done` not sent yet), VAD-made ones included."""
        for rid in [rid for rid, r in self._created.items() if r.done.is_set()]:
            del self._created[rid]
        ids = [rid for rid in self._outs if (rid not in self._oob) == in_conversation]
        ids += [rid for rid, r in self._created.items()
                if r.opts.in_conversation == in_conversation and rid not in ids]
        return ids

    async def _on_ResponseCreate(self, ev: rt.ResponseCreate) -> None:
        o = ev.response
        # One response at a time in the conversation, as OpenAI's server does; out-of-band
        # responses (conversation "none") may run beside it, MAX_OOB_RESPONSES at a time.
        in_conversation = o is None or o.conversation != "none"
        active = self._active_responses(in_conversation=in_conversation)
        if in_conversation and active and active[0] in self.mcp.resumed:
            # OpenAI's flow: approve, then response.create. Here the reply that asked goes on by
            # itself, so the request is already served: a clean no-op, not an error
            log.debug("response.create ignored: %s goes on after an MCP approval", active[0])
            return
        if in_conversation and active:
            raise ProtocolError(f"Conversation already has an active response in progress: {active[0]}. "
                                "Wait until the response is finished before creating a new one.",
                                code="conversation_already_has_active_response")
        if not in_conversation and len(active) >= MAX_OOB_RESPONSES:
            raise ProtocolError(f"{len(active)} out-of-band responses are already in progress "
                                f"(at most {MAX_OOB_RESPONSES} at a time): wait for one to finish",
                                code="too_many_active_responses")
        kw: dict[str, Any] = {}
        if o is not None:
            for w in o.warnings:
                self.send(self.ev.warning(w, event_id=ev.event_id))
            if o.mcp_tools:
                self.send(self.ev.warning("response.tools: MCP tools are served from session.update only; "
                                          "the ones given for this response have no effect", event_id=ev.event_id))
            kw = response_overrides(o, self.settings, voices=self.stack.tts.caps.voices)
            if o.input is not None:
                kw["replace_input"] = tuple(await self._messages_for(o.input))
        if self.transcription_only:
            raise ProtocolError("this is a transcription session: it does not create responses",
                                code="invalid_request_error")
        resp = self.session.create_response(**kw)
        self._created[resp.id] = resp
        if o is not None:
            self._metadata[resp.id] = o.metadata
        if not resp.opts.in_conversation:
            self._oob.add(resp.id)

    async def _messages_for(self, items: tuple[rt.Item | rt.ItemReference, ...]) -> list[Message]:
        out: list[Message] = []
        for it in items:
            if isinstance(it, rt.ItemReference):
                found = self.session.memory.get(it.id)
                if found is None:
                    raise ProtocolError(f"item {it.id} does not exist", code="item_not_found", param="response.input")
                mem = found
            else:
                mem = await self._to_memory_item(it)
            if mem.type == "message" and mem.text:
                out.append(Message(mem.role, mem.text))
        return out

    def _on_ResponseCancel(self, ev: rt.ResponseCancel) -> None:
        if not self.session.cancel_response(ev.response_id):
            raise ProtocolError("there is no active response to cancel", code="response_cancel_not_active")

    # ------------------------------------------------------------------ engine -> client

    def _audio_ms_at(self, t: float) -> int:
        """Session time -> position in the client's input audio (ms)."""
        marks = self._audio_marks
        if not marks:
            return 0
        for (t0, a0), (t1, a1) in zip(marks, list(marks)[1:]):
            if t0 <= t <= t1:
                return int(a0 + (a1 - a0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0))
        t_last, a_last = marks[-1]
        if t >= t_last:
            return int(a_last)
        return int(max(0.0, marks[0][1] - 1000 * (marks[0][0] - t)))

    def _on_engine_event(self, e: E.Event) -> None:
        try:
            self._translate(e)
        except Exception:
            log.exception("realtime: cannot translate %s", e.type)
        if self.timeline and not isinstance(e, E.AgentAudio):
            self.send({"type": "moksori.event", "event_id": new_id("event"), "event": e.to_json()})

    def _translate(self, e: E.Event) -> None:
        ev, vad = self.ev, self.cfg.turn_detection is not None
        match e:
            case E.UserSpeechStarted(item_id=item_id) if vad:
                self.send(ev.input_audio_buffer_speech_started(self._audio_ms_at(e.t), item_id))
            case E.UserSpeechStopped(item_id=item_id) if vad:
                self.send(ev.input_audio_buffer_speech_stopped(self._audio_ms_at(e.t), item_id))
            case E.UserIdleTimeout(item_id=item_id, idle_since=since):
                self.send(ev.input_audio_buffer_timeout_triggered(self._audio_ms_at(since), self._audio_ms_at(e.t),
                                                                  item_id))
            case E.UserTurnEnded(item_id=item_id):
                prev = self.session.memory.last_id()
                self.send(ev.input_audio_buffer_committed(item_id, prev))
                wire = rt.message_item(item_id, "user", [rt.ContentPart("input_audio", transcript=None)],
                                       self.flavor, status="completed")
                self.send(ev.conversation_item_added(wire, prev))
            case E.UserTranscript(final=True, typed=False, item_id=item_id, text=text, audio_s=audio_s):
                if self.cfg.input_transcription is not None or self.transcription_only:
                    if text:
                        self.send(ev.input_audio_transcription_delta(item_id, 0, text))
                    self.send(ev.input_audio_transcription_completed(item_id, 0, text,
                                                                     audio_seconds=float(audio_s or 0.0)))
                item = self.session.memory.get(item_id)
                if item is not None:
                    self.send(ev.conversation_item_done(self._item_wire(item), self.session.memory.previous_id(item.id)))
            case E.AgentBackchannel(response_id=rid):  # out of band: never in the conversation
                self._oob.add(rid)
                self._metadata[rid] = {"moksori": "backchannel"}
            case E.SessionWarning(message=message):
                self.send(ev.warning(message))
            case E.AgentResponseStarted(response_id=rid, item_id=item_id, modalities=modalities):
                self._outs[rid] = _Out(rid, item_id, "audio" in modalities)
                self.send(ev.response_created(self._response(rid, "in_progress", modalities)))
            case E.AgentTextDelta(response_id=rid, delta=delta):
                out = self._outs.get(rid)
                if out is not None:
                    self._open_message(out)
                    out.text += delta
                    if out.audio:
                        self.send(ev.output_audio_transcript_delta(out.response_id, out.item_id, out.index, 0, delta))
                    else:
                        self.send(ev.output_text_delta(out.response_id, out.item_id, out.index, 0, delta))
            case E.AgentAudio(response_id=rid, frame=frame):
                out = self._outs.get(rid)
                if out is not None:
                    self._open_message(out)
                    out.audio_ms += 1000 * len(frame) / frame.rate
                    if self.audio_sink is not None:
                        self.audio_sink.play(out.response_id, out.item_id, frame)
                    else:
                        self.send(ev.output_audio_delta(out.response_id, out.item_id, out.index, 0,
                                                        self.cfg.output_format.encode(frame)))
            case E.AgentAudioDone(response_id=rid) if self.audio_sink is not None:
                self.audio_sink.end(rid)
            case E.AgentFunctionCall():
                self._function_call(e)
            case E.AgentToolCall(name=name) if self.mcp.owns(name):
                self.mcp.note_call(e)
            case E.AgentInterrupted(response_id=rid, item_id=item_id, heard_ms=heard_ms):
                if self.audio_sink is not None:  # the speaker may have handed over its last chunk already
                    self.audio_sink.clear([rid])
                if self.session.memory.get(item_id) is not None:
                    self.send(ev.conversation_item_truncated(item_id, 0, heard_ms))
            case E.AgentAudioCleared(response_ids=rids):
                if self.audio_sink is not None:
                    self.audio_sink.clear(list(rids))
                else:
                    for rid in rids:
                        self.send(ev.output_audio_buffer_cleared(rid))
            case E.AgentResponseDone():
                self._response_done(e)
            case E.ErrorEvent(message=message, code=code):
                self.error(message, code=code or "server_error", kind="server_error")
            case E.BrainUpstreamFailed(detail=detail) if self.on_fatal is not None:
                asyncio.get_running_loop().create_task(self._fatal(f"upstream unavailable: {detail}"))

    async def _fatal(self, reason: str) -> None:
        """Let the error events go out first, then end the connection."""
        for _ in range(50):
            if not self._outbox:
                break
            await asyncio.sleep(0.01)
        if self.on_fatal is not None:
            await self.on_fatal(reason[:120])

    def _function_call(self, e: E.AgentFunctionCall) -> None:
        ev = self.ev
        out = self._outs.get(e.response_id)
        if out is None:
            return
        self._close_message(out)
        item = rt.function_call_item(e.call_item_id, e.call_id, e.name, e.arguments, self.flavor, status="in_progress")
        idx = len(out.output)
        self.send(ev.response_output_item_added(out.response_id, idx, {**item, "arguments": ""}))
        self.send(ev.conversation_item_added({**item, "arguments": ""}, None))
        self.send(ev.function_call_arguments_delta(out.response_id, e.call_item_id, idx, e.call_id, e.arguments))
        self.send(ev.function_call_arguments_done(out.response_id, e.call_item_id, idx, e.call_id, e.name, e.arguments))
        done = rt.function_call_item(e.call_item_id, e.call_id, e.name, e.arguments, self.flavor)
        self.send(ev.response_output_item_done(out.response_id, idx, done))
        self.send(ev.conversation_item_done(done, None))
        out.output.append(done)
        out.index = len(out.output)

    def _response_done(self, e: E.AgentResponseDone) -> None:
        self._created.pop(e.response_id, None)
        out = self._outs.pop(e.response_id, None)
        if out is None:
            return
        self._close_message(out, text=e.text if out.parts <= 1 else None,
                            status="incomplete" if e.interrupted else "completed")
        statuses: dict[str, ResponseStatus] = {"completed": "completed", "cancelled": "cancelled", "failed": "failed"}
        status = statuses.get(e.status, "completed")
        reason = "turn_detected" if e.reason == "turn_detected" else "client_cancelled"
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
        self.send(self.ev.response_done(self._response(out.response_id, status, e.modalities, details=details,
                                                       output=out.output, usage=usage)))
        self._metadata.pop(out.response_id, None)
        self._oob.discard(out.response_id)
        self.mcp.resumed.discard(out.response_id)
        for later in self._after_done.pop(out.response_id, []):
            self.send(later)

    def _open_message(self, out: _Out) -> None:
        if out.started:
            return
        out.started = True
        out.parts += 1
        if out.parts > 1:  # words after a tool item: a message item of their own
            out.item_id, out.text = new_id("item"), ""
        out.index = len(out.output)
        part = "output_audio" if out.audio else "output_text"
        item = rt.message_item(out.item_id, "assistant", [], self.flavor, status="in_progress")
        self.send(self.ev.response_output_item_added(out.response_id, out.index, item))
        if out.response_id not in self._oob:
            self.send(self.ev.conversation_item_added(item, self.session.memory.previous_id(out.item_id)))
        self.send(self.ev.response_content_part_added(out.response_id, out.item_id, out.index, 0,
                                                      rt.event_part("audio" if part == "output_audio" else "text")))

    def _close_message(self, out: _Out, *, text: str | None = None, status: ItemStatus = "completed") -> None:
        if not out.started:
            return
        out.started = False
        ev, text = self.ev, out.text if text is None else text
        if out.audio:
            self.send(ev.output_audio_done(out.response_id, out.item_id, out.index, 0))
            self.send(ev.output_audio_transcript_done(out.response_id, out.item_id, out.index, 0, text))
            part = rt.event_part("audio", transcript=text)
            content = [rt.ContentPart("output_audio", transcript=text)]
        else:
            self.send(ev.output_text_done(out.response_id, out.item_id, out.index, 0, text))
            part = rt.event_part("text", text=text)
            content = [rt.ContentPart("output_text", text=text)]
        self.send(ev.response_content_part_done(out.response_id, out.item_id, out.index, 0, part))
        item = rt.message_item(out.item_id, "assistant", content, self.flavor, status=status)
        self.send(ev.response_output_item_done(out.response_id, out.index, item))
        if out.response_id not in self._oob:
            self.send(ev.conversation_item_done(item, self.session.memory.previous_id(out.item_id)))
        out.output.append(item)

    def _response(self, response_id: str, status: ResponseStatus, modalities: Any, *, details: dict | None = None,
                  output: list | None = None, usage: rt.Usage | None = None) -> dict[str, Any]:
        mods = ["audio"] if modalities and "audio" in modalities else ["text"]
        return rt.response_object(
            response_id, self.flavor, status=status, status_details=details, output=output or [], usage=usage,
            conversation_id=None if response_id in self._oob else self.session_id, output_modalities=mods,
            voice=self.cfg.voice_config or self.cfg.voice, output_format=self.cfg.output_format,
            max_output_tokens=self.cfg.max_output_tokens, temperature=self.cfg.temperature,
            metadata=self._metadata.get(response_id))
