"""A Realtime client's `response.create` and `response.cancel`.

One response at a time in the conversation, as OpenAI's server does; out-of-band responses
(`conversation: "none"`) may run beside it, `MAX_OOB_RESPONSES` at a time. A response counts as
active from its `response.create` (or the VAD's turn) until its `response.done` has gone out.
The per-response options become engine options in `realtime_config.response_overrides`.

A `response.cancel` with nothing to cancel is an error (`response_cancel_not_active`), except
right after a `conversation.item.truncate` stopped the reply in progress (`realtime_items`): a
client that truncates, then cancels, gets what it asked for, and no error.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from moksori.errors import ProtocolError
from moksori.protocols import realtime as rt
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

__all__ = ["MAX_OOB_RESPONSES", "ResponseRequests", "ResponsesHost"]

log = logging.getLogger("moksori.realtime")

MAX_OOB_RESPONSES = 2  # out-of-band responses (conversation "none") running at once, per session


class ResponsesHost(Protocol):
    """What the response handlers use of their connection (`RealtimeConnection` is one)."""

    ev: rt.ServerEvents
    stack: Stack
    settings: Settings
    transcription_only: bool
    session: Session
    mcp: RealtimeMCP

    def send(self, event: dict[str, Any] | None) -> None: ...


class ResponseRequests:
    def __init__(self, host: ResponsesHost, outbound: Outbound, items: ConversationItems) -> None:
        self._host = host
        self._outbound = outbound
        self._items = items
        self._created: dict[str, Response] = {}  # response.create responses until their response.done
        outbound.on_done = self._done

    def _done(self, response_id: str) -> None:
        self._created.pop(response_id, None)
        self._host.mcp.response_done(response_id)  # the servers it named for itself are dropped

    def active(self, *, in_conversation: bool) -> list[str]:
        """Responses that have not finished (`response.done` not sent yet), VAD-made ones included."""
        for rid in [rid for rid, r in self._created.items() if r.done.is_set()]:
            del self._created[rid]
        ids = self._outbound.streaming(in_conversation=in_conversation)
        ids += [rid for rid, r in self._created.items()
                if r.opts.in_conversation == in_conversation and rid not in ids]
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
            if o.input is not None:
                kw["replace_input"] = tuple(await self._messages_for(o.input))
            named = kw.get("item_id")  # (Azure's pre-generated message may name its item)
            if named and host.session.memory.get(named) is not None:
                raise ProtocolError(f"an item with id {named} already exists", code="item_exists",
                                    param="response.pre_generated_assistant_message.id")
        if host.transcription_only:
            raise ProtocolError("this is a transcription session: it does not create responses",
                                code="invalid_request_error")
        self._items.stopped_reply = False
        resp = host.session.create_response(**kw)
        self._created[resp.id] = resp
        if o is not None:
            self._outbound.set_metadata(resp.id, o.metadata)
        if not resp.opts.in_conversation:
            self._outbound.out_of_band(resp.id)

    async def _messages_for(self, items: tuple[rt.Item | rt.ItemReference, ...]) -> list[Message]:
        out: list[Message] = []
        for it in items:
            if isinstance(it, rt.ItemReference):
                memory = self._host.session.memory
                if memory.get(it.id) is not None:
                    await memory.words_ready(it.id)  # an audio item still being transcribed
                found = memory.get(it.id)
                if found is None:  # (or deleted while its words came)
                    raise ProtocolError(f"item {it.id} does not exist", code="item_not_found", param="response.input")
                mem = found
            else:
                mem = await self._items.to_memory(it)
            if mem.type == "message" and mem.text:
                out.append(Message(mem.role, mem.text))
        return out

    def cancel(self, ev: rt.ResponseCancel) -> None:
        if self._host.session.cancel_response(ev.response_id):
            return
        if self._items.stopped_reply:  # a truncate stopped it just before: done already
            self._items.stopped_reply = False
            return
        raise ProtocolError("there is no active response to cancel", code="response_cancel_not_active")
