"""The end of a reply: its memory item's last state, and the public `agent.response_done`
(what was heard and what was generated, its status, tool calls and token usage)."""

from __future__ import annotations

from typing import Literal, Protocol

from moksori.engine import events as E
from moksori.engine.memory import Item
from moksori.engine.response_host import ResponseOptions
from moksori.engine.speaker import Playback
from moksori.providers.base import ToolCall, Usage

__all__ = ["EndedReply", "done_event", "settle_item"]


class EndedReply(Protocol):
    """What `agent.response_done` tells of a reply (`Response` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def turn_id(self) -> int | None: ...
    @property
    def language(self) -> str: ...
    @property
    def opts(self) -> ResponseOptions: ...
    @property
    def status(self) -> str: ...
    @property
    def text(self) -> str:
        """Everything generated."""
    @property
    def heard(self) -> str | None:
        """What the listener heard of a cut reply (None: all of it)."""
    @property
    def interrupted(self) -> bool: ...
    @property
    def function_calls(self) -> list[ToolCall]: ...
    @property
    def usage(self) -> Usage: ...


def settle_item(item: Item, text: str, status: Literal["completed", "incomplete"],
                playback: Playback | None) -> None:
    """The reply's memory item as it ends: its words, its status and how much audio the listener
    was sent (a later truncate cannot pass it)."""
    item.text = text
    item.status = status
    if playback is not None:
        item.audio_ms = int(1000 * playback.sent / playback.rate)


def done_event(reply: EndedReply, t: float, reason: str | None = None) -> E.AgentResponseDone:
    return E.AgentResponseDone(
        t=t, response_id=reply.id, item_id=reply.item_id, turn_id=reply.turn_id,
        text=reply.heard if reply.heard is not None else reply.text, generated_text=reply.text,
        interrupted=reply.interrupted, status=reply.status, reason=reason, language=reply.language,
        function_calls=tuple(reply.function_calls), usage=reply.usage, modalities=tuple(reply.opts.modalities),
        in_conversation=reply.opts.in_conversation)
