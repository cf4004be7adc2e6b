"""A Realtime client's `response.create` and `response.cancel`.

One response at a time in the conversation, as OpenAI's server does; out-of-band responses
(`conversation: "none"`) may run beside it, `MAX_OOB_RESPONSES` at a time. A response counts as
active from its `response.create` (or the VAD's turn) until its `response.done` has gone out.
The per-response options become engine options in `realtime_config.response_overrides`.

A response's own `input` (its items instead of the conversation) is read as the LLM's messages.
Its audio has to be transcribed first (OpenAI's model hears it; ours reads it), and so do the
words of an item it names that are still coming: that is background work (the same preemptible
windows as a created item's, engine/item_words.py) and the connection's next events are handled
meanwhile. Until its words are in, the response is *preparing*: it counts as active, but nothing
is announced yet (`response.created` comes when it starts). When that audio cannot be
transcribed (the STT failed), or an item it names has audio whose words could not be had, the
model would answer words nobody said: the response fails instead, before it starts
(`response.created`, then `response.done` with status `failed` and `status_details.error.code`
`input_audio_transcription_failed`, the STT's own error in its `message`), and no reply is made.
Input items are not conversation items, so there is no `conversation.item.*` event to carry the
failure (a created item's failed audio is `...input_audio_transcription.failed`: realtime_items).
A `response.cancel` while the response prepares ends it the same way, `cancelled`.
With the realtime brain (`hears_item_audio`) a user message of the input goes upstream with its
audio (`brains/realtime/audio_items.HeardMessage`): the upstream hears it, so its local words
(transcribed as above where there is a local STT) are not needed for the reply, and a response
whose input audio has no local words is made all the same; an item it names (`item_reference`)
goes upstream as a reference to the upstream's copy of it (`ReferencedMessage`: its audio, a tool
call), as its words where the upstream does not have it or cannot take references (Azure); an
item the upstream holds is named without waiting for its local words (the model hears it), and
an audio item whose words could not be had is named all the same there; it fails the response
only where it would have to go as words.

A `response.cancel` with nothing to cancel is an error (`response_cancel_not_active`), except
right after a `conversation.item.truncate` stopped the reply in progress (`realtime_items`): a
client that truncates, then cancels, gets what it asked for, and no error.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from moksori.brains.realtime.audio_items import HeardMessage, ReferencedMessage
from moksori.engine import events as E
from moksori.engine.memory import Item as MemItem, new_id
from moksori.errors import MoksoriError, ProtocolError
from moksori.protocols import realtime as rt
from moksori.protocols.realtime.items import ResponseStatus
from moksori.providers.base import Message
from moksori.providers.registry import Stack
from moksori.server.realtime_config import response_overrides
from moksori.server.realtime_items import ConversationItems
from moksori.server.realtime_outbound import Outbound
from moksori.settings import Settings

if TYPE_CHECKING:
    from moksori.engine.response import Response
    from moksori.engine.session import Session
    from moksori.server.realtime_mcp import RealtimeMCP

__all__ = ["INPUT_UNHEARD", "MAX_OOB_RESPONSES", "ResponseRequests", "ResponsesHost"]

log = logging.getLogger("moksori.realtime")

MAX_OOB_RESPONSES = 2  # out-of-band responses (conversation "none") running at once, per session
# `status_details.error.code` of a response that failed because audio of its input went unheard
INPUT_UNHEARD = "input_audio_transcription_failed"


class ResponsesHost(Protocol):
    """What the response handlers use of their connection (`RealtimeConnection` is one)."""

    ev: rt.ServerEvents
    flavor: rt.Flavor
    cfg: rt.SessionConfig
    session_id: str
    stack: Stack
    settings: Settings
    transcription_only: bool
    session: Session
    mcp: RealtimeMCP

    def send(self, event: dict[str, Any] | None) -> None: ...


class InputUnheard(Exception):
    """Audio in a response's `input` (its own, or an item's it names) could not be transcribed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(eq=False)
class _Preparing:
    """A `response.create` whose input's words are being had: active, not started, not announced.
    `id`: the response's id if it ends before it starts (a started one gets the engine's)."""

    id: str
    in_conversation: bool
    modalities: tuple[str, ...]
    metadata: dict[str, str] | None
    task: asyncio.Task[None] | None = None


class ResponseRequests:
    def __init__(self, host: ResponsesHost, outbound: Outbound, items: ConversationItems) -> None:
        self._host = host
        self._outbound = outbound
        self._items = items
        self._created: dict[str, Response] = {}  # response.create responses until their response.done
        self._preparing: list[_Preparing] = []  # ... and those whose input is still being transcribed
        outbound.on_done = self._done
        host.session.bus.listen(self._on_engine_event)

    def _done(self, response_id: str) -> None:
        self._created.pop(response_id, None)
        self._host.mcp.response_done(response_id)  # the servers it named for itself are dropped

    def _on_engine_event(self, e: E.Event) -> None:
        if isinstance(e, E.SessionClosed):  # nobody waits for a response any more
            for p in self._preparing:
                if p.task is not None:
                    p.task.cancel()
            self._preparing = []

    def active(self, *, in_conversation: bool) -> list[str]:
        """Responses that have not finished (`response.done` not sent yet), VAD-made ones included."""
        for rid in [rid for rid, r in self._created.items() if r.done.is_set()]:
            del self._created[rid]
        ids = self._outbound.streaming(in_conversation=in_conversation)
        ids += [rid for rid, r in self._created.items()
                if r.opts.in_conversation == in_conversation and rid not in ids]
        ids += [p.id for p in self._preparing if p.in_conversation == in_conversation]
        return ids

    async def create(self, ev: rt.ResponseCreate) -> None:
        host = self._host
        o = ev.response
        in_conversation = o is None or o.conversation != "none"
        active = self.active(in_conversation=in_conversation)
        if in_conversation and active and active[0] in host.mcp.resumed:
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
                host.send(host.ev.warning(w, event_id=ev.event_id))
            kw = response_overrides(o, host.settings, voices=host.stack.tts.caps.voices)
            if o.mcp_tools:  # this response's own MCP servers, listed when it starts (either brain)
                kw["reply_tools"] = host.mcp.for_response(o.mcp_tools)
            named = kw.get("item_id")  # (Azure's pre-generated message may name its item)
            if named and host.session.memory.get(named) is not None:
                raise ProtocolError(f"an item with id {named} already exists", code="item_exists",
                                    param="response.pre_generated_assistant_message.id")
        if host.transcription_only:
            raise ProtocolError("this is a transcription session: it does not create responses",
                                code="invalid_request_error")
        if o is not None and o.input is not None:
            p = _Preparing(new_id("resp"), in_conversation, tuple(kw.get("modalities", host.session.cfg.modalities)),
                           o.metadata)
            if self._words_to_come(o.input):  # in the background: the next events are handled meanwhile
                p.task = asyncio.create_task(self._prepare(p, ev, o, kw), name=f"response-input-{p.id}")
                self._preparing.append(p)
                return
            try:
                kw["replace_input"] = tuple(await self._messages_for(o.input))  # (nothing to wait for)
            except InputUnheard as e:
                self._end_unstarted(p, "failed", error=e.message)
                return
        self._start(kw, o)

    def _start(self, kw: dict[str, Any], o: rt.ResponseOverrides | None) -> None:
        self._items.stopped_reply = False
        resp = self._host.session.create_response(**kw)
        self._created[resp.id] = resp
        if o is not None:
            self._outbound.set_metadata(resp.id, o.metadata)
        if not resp.opts.in_conversation:
            self._outbound.out_of_band(resp.id)

    def _words_to_come(self, items: tuple[rt.Item | rt.ItemReference, ...]) -> bool:
        """The input has audio to transcribe, or names an item whose words are still coming."""
        memory = self._host.session.memory
        for it in items:
            if isinstance(it, rt.ItemReference):
                if memory.words_pending(it.id) and not self._upstream_hears(it.id):
                    return True
            elif isinstance(it, rt.MessageItem) and any(
                    p.type in ("input_audio", "output_audio") and p.audio and not p.transcript for p in it.content):
                return True
        return False

    def _upstream_hears(self, item_id: str) -> bool:
        """The realtime brain's upstream holds item `item_id` and a response's input can name it
        there: the model hears the item itself, so its local words are not waited for."""
        session = self._host.session
        holds = getattr(session, "upstream_holds", None)
        return bool(getattr(session, "hears_item_audio", False) and holds is not None and holds(item_id))

    async def _prepare(self, p: _Preparing, ev: rt.ResponseCreate, o: rt.ResponseOverrides,
                       kw: dict[str, Any]) -> None:
        """The words of a response's input, then the response (or its failure), off the handler."""
        host = self._host
        assert o.input is not None
        try:
            try:
                messages = await self._messages_for(o.input)
            finally:
                if p in self._preparing:
                    self._preparing.remove(p)
        except ProtocolError as e:  # a mistake in the input: told as its handler would have
            if e.event_id is None:
                e.event_id = ev.event_id
            host.send(host.ev.error_from(e))
            return
        except InputUnheard as e:
            self._end_unstarted(p, "failed", error=e.message)
            return
        except Exception as e:  # a bug fails this response, not the connection
            log.exception("realtime: the input of response %s", p.id)
            self._end_unstarted(p, "failed", error=f"internal error: {type(e).__name__}", code="server_error")
            return
        if host.session.closed:
            return
        others = self.active(in_conversation=True) if p.in_conversation else []
        if others:  # (the VAD's turn started one meanwhile)
            self._end_unstarted(p, "failed", code="conversation_already_has_active_response",
                                error=f"Conversation already has an active response in progress: {others[0]}.")
            return
        try:
            self._start({**kw, "replace_input": tuple(messages)}, o)
        except Exception as e:  # (its handler is gone: told here, as the handler would have)
            log.exception("realtime: response %s could not start", p.id)
            host.send(host.ev.error(f"internal error handling response.create: {type(e).__name__}",
                                    code="server_error", event_id=ev.event_id, type="server_error"))

    async def _messages_for(self, items: tuple[rt.Item | rt.ItemReference, ...]) -> list[Message]:
        """The input's messages. Raises ProtocolError (a mistake in it), InputUnheard (its audio, or
        an item's it names, could not be transcribed)."""
        out: list[Message] = []
        hears = getattr(self._host.session, "hears_item_audio", False)  # (the realtime brain)
        for index, it in enumerate(items):
            if isinstance(it, rt.ItemReference):
                memory = self._host.session.memory
                if memory.get(it.id) is not None and not self._upstream_hears(it.id):
                    await memory.words_ready(it.id)  # an audio item still being transcribed
                found = memory.get(it.id)
                if found is None:  # (or deleted while its words came)
                    raise ProtocolError(f"item {it.id} does not exist", code="item_not_found", param="response.input")
                if _unheard(found) and not self._upstream_hears(found.id):
                    raise InputUnheard(f"the audio of item {it.id} (response.input[{index}]) could not be "
                                       "transcribed, so the response cannot answer it")
                if hears:  # the upstream is pointed at its own copy of the item; its words if it has none
                    out.append(ReferencedMessage(found.role, found.text if found.type == "message" else "",
                                                 item_id=found.id))
                    continue
                mem = found
            else:
                try:
                    if hears and isinstance(it, rt.MessageItem) and it.role == "user":  # the upstream hears its audio
                        mem, content = await self._items.to_heard(
                            it, transcribe=getattr(self._host.session, "local_item_words", True))
                        if any(not isinstance(c, str) for c in content):
                            out.append(HeardMessage(mem.role, mem.text, parts=tuple(content)))
                            continue
                    else:
                        mem = await self._items.to_memory(it)
                except ProtocolError:
                    raise
                except Exception as e:  # the STT's failure (or a bug) is the response's
                    if not isinstance(e, MoksoriError):
                        log.error("realtime: transcribing response.input[%d] failed", index, exc_info=e)
                    why = str(e) if isinstance(e, MoksoriError) else f"internal error: {type(e).__name__}"
                    raise InputUnheard(f"the audio of response.input[{index}] could not be transcribed: {why}") from e
            if mem.type == "message" and mem.text:
                out.append(Message(mem.role, mem.text))
        return out

    def _end_unstarted(self, p: _Preparing, status: ResponseStatus, *, error: str = "",
                       code: str = INPUT_UNHEARD) -> None:
        """A response that ends before it starts: `response.created`, then its `response.done`
        (`failed` with `error`, or `cancelled` by the client). Nothing of it reached the LLM."""
        host = self._host
        details = rt.status_details(status, reason="client_cancelled", error={
            "type": "server_error", "code": code, "message": error} if status == "failed" else None)
        mods = ["audio"] if "audio" in p.modalities else ["text"]
        cfg = host.cfg

        def response(status: ResponseStatus, details: dict[str, Any] | None) -> dict[str, Any]:
            return rt.response_object(
                p.id, host.flavor, status=status, status_details=details, output=[],
                conversation_id=host.session_id if p.in_conversation else None, output_modalities=mods,
                voice=cfg.voice_config or cfg.voice, output_format=cfg.output_format,
                max_output_tokens=cfg.max_output_tokens, temperature=cfg.temperature, metadata=p.metadata)

        log.info("realtime: response %s %s before it started%s", p.id, status, f": {error}" if error else "")
        host.send(host.ev.response_created(response("in_progress", None)))
        host.send(host.ev.response_done(response(status, details)))

    def cancel(self, ev: rt.ResponseCancel) -> None:
        p = next((p for p in self._preparing
                  if p.id == ev.response_id or (ev.response_id is None and p.in_conversation)), None)
        if p is not None:  # its input is still being transcribed: it ends now, never started
            self._preparing.remove(p)
            if p.task is not None:
                p.task.cancel()
            self._end_unstarted(p, "cancelled")
            return
        if self._host.session.cancel_response(ev.response_id):
            return
        if self._items.stopped_reply:  # a truncate stopped it just before: done already
            self._items.stopped_reply = False
            return
        raise ProtocolError("there is no active response to cancel", code="response_cancel_not_active")


def _unheard(item: MemItem) -> bool:
    """A user message with audio whose words could not be had (its STT failed): a client's
    item's audio part without words, or a live turn's (`parts` `[("audio", None)]`)."""
    return item.type == "message" and item.role == "user" and any(
        kind == "audio" and words is None for kind, words in item.parts)
