"""One Realtime connection: client events -> engine calls, engine events -> server events.

No sockets here: the route hands in raw messages and a `send` coroutine. Every client mistake
becomes an `error` event and the session stays up.

This module is the connection's face: its lifetime, the outbound queue, the dispatch of client
events to their handlers, `session.update` and the input audio buffer. The other jobs are parts
it wires together, each with a narrow port (a `Protocol` this class implements):

    realtime_items.py       conversation.item.create | retrieve | truncate | delete
    realtime_responses.py   response.create | cancel
    realtime_outbound.py    engine events -> server events; the responses still streaming
    realtime_input.py       the client's input audio: positions for VAD events, the manual buffer
    realtime_mcp.py         MCP servers the client names
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from moksori.audio.frames import Frame
from moksori.brains import open_session
from moksori.engine import events as E
from moksori.engine.config import SessionConfig as EngineConfig, config_from_settings
from moksori.engine.memory import new_id
from moksori.engine.tools import ToolBox
from moksori.errors import MoksoriError, ProtocolError
from moksori.protocols import realtime as rt
from moksori.providers.registry import Stack
from moksori.server.realtime_config import engine_config, initial_session
from moksori.server.realtime_input import ClientAudio
from moksori.server.realtime_items import ConversationItems
from moksori.server.realtime_mcp import RealtimeMCP
from moksori.server.realtime_outbound import AudioSink, Outbound
from moksori.server.realtime_responses import MAX_OOB_RESPONSES, ResponseRequests
from moksori.settings import Settings
from moksori.transport import Outbox, StopReason

if TYPE_CHECKING:
    from moksori.agent_kit import AgentKit

__all__ = ["MAX_OOB_RESPONSES", "MAX_OUTBOUND_EVENTS", "AudioSink", "RealtimeConnection", "Send"]

log = logging.getLogger("moksori.realtime")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Any], Awaitable[None] | None]

MAX_OUTBOUND_EVENTS = 1000  # unsent server events (~20-40 s of audio) before a non-reading client is dropped


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
        # the route's way to end the connection when the session cannot go on (the realtime
        # brain's upstream is gone for good): close the socket, hang up the call
        self.on_fatal: Callable[[str], Awaitable[Any]] | None = None
        self._outbox: Outbox[dict[str, Any]] = Outbox(send, name=f"rt-send-{self.session_id}",
                                                      limit=MAX_OUTBOUND_EVENTS, on_stop=self._stopped_sending)
        self._preset_warnings: list[str] = []
        self._closing = False
        self.closed = False
        # the store's recorder of this session (server/recording_hooks.py), told what the client
        # adds and truncates itself; None when nothing is recorded
        self.recorder: Any = None
        # MCP servers the client names (`{"type": "mcp"}` tools), run here with either brain
        self.mcp = RealtimeMCP(self, settings.tools)
        self._input = ClientAudio(settings.server.max_input_buffer_s)
        self._outbound = Outbound(self)
        self._items = ConversationItems(self, self._outbound.audio_sent_ms,
                                        max_audio_s=settings.server.max_input_buffer_s)
        self._responses = ResponseRequests(self, self._outbound, self._items)
        self._handlers: dict[type[rt.ClientEvent], Handler] = {
            rt.SessionUpdate: self._on_session_update,
            rt.TranscriptionSessionUpdate: self._on_transcription_session_update,
            rt.InputAudioBufferAppend: self._on_input_audio_buffer_append,
            rt.InputAudioBufferCommit: self._on_input_audio_buffer_commit,
            rt.InputAudioBufferClear: self._on_input_audio_buffer_clear,
            rt.OutputAudioBufferClear: self._on_output_audio_buffer_clear,
            rt.ConversationItemCreate: self._items.create,
            rt.ConversationItemRetrieve: self._items.retrieve,
            rt.ConversationItemTruncate: self._items.truncate,
            rt.ConversationItemDelete: self._items.delete,
            rt.ResponseCreate: self._responses.create,
            rt.ResponseCancel: self._responses.cancel,
        }
        self.session.bus.listen(self._outbound.on_engine_event)
        if timeline:  # the engine's events, live partials among them (the browser app's captions)
            self.session.partials.readers.add("realtime timeline")

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
    def send_stopped(self) -> StopReason | None:
        """Why the connection stopped sending (None: it has not)."""
        return self._outbox.reason

    @property
    def sender(self) -> asyncio.Task:
        """Ends when the connection can send no more (closed, the socket failed, or the client
        stopped reading): the route then closes the session."""
        return self._outbox.task

    def preset(self, session: dict[str, Any], *, transcription_only: bool = False) -> None:
        """Start from a session config given out of band (an ephemeral key's, a WebRTC call's
        `session` part) instead of the defaults. Call before `start()`; raises ProtocolError."""
        transcription_only = transcription_only or self.transcription_only
        cfg, warnings = rt.apply_session_update(self.cfg, session, self.flavor, transcription=transcription_only)
        self.transcription_only = transcription_only
        self.cfg = cfg
        self.session.update(self._engine_cfg())
        self._preset_warnings += warnings

    def send_after_done(self, response_id: str, event: dict[str, Any]) -> None:
        """Send `event` once `response.done` for this response has gone out (now, if it has)."""
        self._outbound.send_after_done(response_id, event)

    def wire_session(self) -> dict[str, Any]:
        return self._wire_session()

    def input_ms_at(self, t: float) -> int:
        """Session time -> position in the client's input audio (ms)."""
        return self._input.ms_at(t)

    def upstream_failed(self, detail: str) -> None:
        """The realtime brain's upstream is gone for good: the route ends the connection."""
        if self.on_fatal is not None:
            asyncio.get_running_loop().create_task(self._fatal(f"upstream unavailable: {detail}"))

    async def _fatal(self, reason: str) -> None:
        """Let the error events go out first, then end the connection."""
        for _ in range(50):
            if not self._outbox:
                break
            await asyncio.sleep(0.01)
        if self.on_fatal is not None:
            await self.on_fatal(reason[:120])

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
        return self._outbound.output_item_added(response_id, item)

    def output_item_done(self, response_id: str, index: int | None, item: dict[str, Any]) -> None:
        self._outbound.output_item_done(response_id, index, item)

    def send_in(self, response_id: str, event: dict[str, Any] | None) -> None:
        """An event of one of a response's items (an MCP call's), in its place among the response's."""
        self._outbound.send_in(response_id, event)

    def when_sent(self, response_id: str, fn: Callable[[], None]) -> None:
        """Call `fn()` once the response's events so far have gone out (an approval request's)."""
        self._outbound.when_sent(response_id, fn)

    def tools_changed(self) -> None:
        """An MCP server's tools joined or left the session's box (the realtime brain offers
        them to its upstream)."""
        self.session.tools_changed()

    def _sync_mcp(self) -> None:
        self.mcp.sync(self.cfg.mcp_tools)

    # ------------------------------------------------------------------ lifetime

    async def start(self) -> None:
        self.send(self.ev.session_created(self._wire_session(), transcription=self.transcription_only))
        for message in self._early_warnings:
            self.send(self.ev.warning(message))
        self._early_warnings = []
        for w in self._preset_warnings:
            self.send(self.ev.warning(w))
        self._preset_warnings = []
        self._sync_mcp()  # MCP tools of a preset session (an ephemeral key's, a WebRTC call's)

    def _wire_session(self) -> dict[str, Any]:
        return rt.session_to_wire(self.cfg, self.flavor, session_id=self.session_id, model=self.model,
                                  transcription=self.transcription_only)

    async def close(self, *, silent_s: float = 0.0) -> None:
        """Close the session and stop sending. Idempotent, and complete on every path: the
        sender may already have stopped because the socket went away, and the session must
        still be closed (returning early here left replies generating for nobody). `silent_s`:
        the client is gone and was last heard from that long ago (`Session.listener_lost`)."""
        if self._closing:
            return
        self._closing = True
        try:
            self.session.listener_lost(silent_s)
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
        handler = self._handlers.get(type(event))
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

    # ------------------------------------------------------------------ session.update

    def _on_session_update(self, ev: rt.SessionUpdate) -> None:
        cfg, warnings = rt.apply_session_update(self.cfg, ev.session, self.flavor,
                                                transcription=self.transcription_only)
        self._apply(cfg, warnings, ev.event_id)

    def _on_transcription_session_update(self, ev: rt.TranscriptionSessionUpdate) -> None:
        cfg, warnings = rt.apply_session_update(self.cfg, ev.session, self.flavor, transcription=True)
        self.transcription_only = True
        self._apply(cfg, warnings, ev.event_id)

    def _apply(self, cfg: rt.SessionConfig, warnings: list[str], event_id: str | None) -> None:
        self.cfg = cfg
        self.session.update(self._engine_cfg())
        self.send(self.ev.session_updated(self._wire_session(), transcription=self.transcription_only))
        for w in warnings:
            self.send(self.ev.warning(w, event_id=event_id))
        self._sync_mcp()

    # ------------------------------------------------------------------ the input audio buffer

    def _on_input_audio_buffer_append(self, ev: rt.InputAudioBufferAppend) -> None:
        if self.audio_sink is not None:
            raise ProtocolError("on this connection input audio travels on the media track, not in events",
                                code="invalid_request_error")
        self.push_audio(self.cfg.input_format.decode(ev.audio, param="audio"))

    def push_audio(self, frame: Frame) -> None:
        """Client audio at any rate (from an append event, or from a WebRTC inbound track)."""
        if self._input.take(1000 * len(frame) / frame.rate, self.session.clock.now(),
                            manual=self.cfg.turn_detection is None):
            self.session.push_audio(frame)

    async def _on_input_audio_buffer_commit(self, ev: rt.InputAudioBufferCommit) -> None:
        manual_ms = self._input.manual_ms
        if self.cfg.turn_detection is None and manual_ms < 100:
            raise ProtocolError(f"buffer too small: expected at least 100 ms of audio, have {manual_ms:.0f} ms",
                                code="input_audio_buffer_commit_empty")
        await self.session.drain_input()  # audio still in the denoiser belongs to this commit
        item_id = self.session.commit()
        if item_id is None:
            raise ProtocolError("nothing to commit: no speech in the input audio buffer",
                                code="input_audio_buffer_commit_empty")
        self._input.emptied()

    def _on_input_audio_buffer_clear(self, ev: rt.InputAudioBufferClear) -> None:
        self.session.clear_input()
        self._input.emptied()
        self.send(self.ev.input_audio_buffer_cleared())

    def _on_output_audio_buffer_clear(self, ev: rt.OutputAudioBufferClear) -> None:
        self.session.interrupt("client_cancelled")
        if self.audio_sink is not None:
            self.audio_sink.clear([])  # also the tail the speaker already handed over
