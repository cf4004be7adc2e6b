"""Conversation memory: an ordered list of items, shaped like OpenAI Realtime conversation items.

Items are what the Realtime API shows clients (create / retrieve / truncate / delete), and they
turn into chat messages for the LLM. An assistant message interrupted by the user keeps only
the words that were actually played out.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from moksori.providers.base import Message, ToolCall

if TYPE_CHECKING:
    from moksori.engine.context import ContextWindow

# "mcp_call": a call of an MCP server's tool and its result in one item, as the Realtime API shows
# it (the LLM sees it as a tool call and a tool message)
ItemType = Literal["message", "function_call", "function_call_output", "mcp_call"]
_seq = itertools.count(1)
# what a user turn blocked by the input guardrail says in the history from then on
BLOCKED_TEXT = "[removed by a guardrail]"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass
class Item:
    id: str
    type: ItemType = "message"
    role: Literal["user", "assistant", "system"] = "user"
    text: str = ""  # the transcript or text content
    # a client's message: its content parts in order, (kind, words; None: an audio part's words not
    # known); `text` is their words joined. Empty: one part, `text`
    parts: list[tuple[Literal["text", "audio"], str | None]] = field(default_factory=list)
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    audio: bool = False  # content came in / went out as audio
    language: str | None = None
    # function calls
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    server_label: str | None = None  # mcp_call: the MCP server
    error: str | None = None  # mcp_call: why the call failed (then `output` is what the LLM read)
    approval_request_id: str | None = None  # mcp_call: the approval it waited for
    # audio bookkeeping
    audio_ms: int = 0  # for assistant audio: how much was generated
    truncated_at_ms: int | None = None
    seq: int = field(default_factory=lambda: next(_seq))


class Memory:
    """This conversation's items, plus `history`: the user's earlier conversations (loaded from the
    store when the session starts, read-only, never shown to a Realtime client as items), which
    the LLM sees before them, within the same budget."""

    def __init__(self, *, max_messages: int = 24) -> None:
        self.items: list[Item] = []
        self.history: list[Item] = []
        self.max_messages = max_messages
        self.window: ContextWindow | None = None  # token budget instead of max_messages
        self._history_loaded: asyncio.Event | None = None
        # items whose words are still being transcribed (a client's audio item: engine/item_words.py)
        self._words: dict[str, asyncio.Event] = {}

    # -------------------------------------------------------------- earlier conversations

    def expect_history(self) -> None:
        """A loader is fetching the user's history: replies wait for it (`history_ready`), also
        when an earlier load gave up (the store was away) and this one comes later."""
        if self._history_loaded is None or self._history_loaded.is_set():
            self._history_loaded = asyncio.Event()

    def set_history(self, items: list[Item], summary: str | None = None) -> None:
        """The user's earlier items, oldest first (and the running summary of what did not fit)."""
        self.history = list(items)
        if summary and self.window is not None and not self.window.summary:
            self.window.summary = summary
        self.history_done()

    def history_done(self) -> None:
        """The load finished (or failed, or was given up on): nobody waits any more."""
        if self._history_loaded is not None:
            self._history_loaded.set()

    async def history_ready(self, timeout_s: float = 5.0) -> None:
        """Wait until what a reply reads is in: the history (at most `timeout_s`; at once when
        none is expected), then the words of the conversation's items (`words_ready`)."""
        ev = self._history_loaded
        if ev is not None and not ev.is_set():
            try:
                await asyncio.wait_for(ev.wait(), timeout_s)
            except TimeoutError:
                ev.set()  # a slow store never holds a reply twice
        await self.words_ready()

    # -------------------------------------------------------------- words still coming

    def words_coming(self, item_id: str) -> None:
        """Item `item_id` is in the conversation, its words not yet (they are being transcribed)."""
        self._words.setdefault(item_id, asyncio.Event())

    def words_known(self, item_id: str) -> None:
        """Its words are in (or will never come: transcription failed, the item was deleted)."""
        ev = self._words.pop(item_id, None)
        if ev is not None:
            ev.set()

    def words_pending(self, item_id: str) -> bool:
        return item_id in self._words

    async def words_ready(self, item_id: str | None = None) -> None:
        """Wait until every item of the conversation (or item `item_id`) has its words. No limit:
        the transcription of each ends (or fails, or the item is deleted); a reply waiting here
        is cancelled as any."""
        if item_id is not None:
            ev = self._words.get(item_id)
            if ev is not None:
                await ev.wait()
            return
        while self._words:
            await next(iter(self._words.values())).wait()

    # -------------------------------------------------------------- edits

    def add(self, item: Item, *, after: str | None = None, before: str | None = None) -> Item:
        """At the end, or right after item `after`, or right before item `before` (at the end
        when that item is not there)."""
        anchor = after if after is not None else before
        idx = self.index(anchor) if anchor is not None else -1
        if idx < 0:
            self.items.append(item)
        else:
            self.items.insert(idx + 1 if after is not None else idx, item)
        return item

    def get(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.id == item_id), None)

    def index(self, item_id: str) -> int:
        return next((n for n, i in enumerate(self.items) if i.id == item_id), -1)

    def previous_id(self, item_id: str) -> str | None:
        idx = self.index(item_id)
        return self.items[idx - 1].id if idx > 0 else None

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def delete(self, item_id: str) -> bool:
        idx = self.index(item_id)
        if idx < 0:
            return False
        del self.items[idx]
        self.words_known(item_id)  # a reply waiting for its words waits no more
        return True

    def truncate(self, item_id: str, heard_text: str, audio_end_ms: int | None = None) -> Item | None:
        item = self.get(item_id)
        if item is None:
            return None
        item.text = heard_text
        item.status = "incomplete"
        item.truncated_at_ms = audio_end_ms
        return item

    def clear(self) -> None:
        self.items.clear()
        for item_id in list(self._words):
            self.words_known(item_id)

    def last_user_turn(self) -> list[Item]:
        """The user items since the last item that is not one (a turn split by a pause is
        several; a reply to it that has just started is looked past), oldest first."""
        found: list[Item] = []
        for item in reversed(self.items):
            if item.type != "message" or item.role != "user":
                if item.role == "assistant" and item.type == "message" and item.status == "in_progress":
                    continue  # the reply answering the turn has already started
                break
            found.append(item)
        return found[::-1]

    def remove_user_turn(self, items: list[Item] | None = None) -> list[Item]:
        """The input guardrail blocked a user turn (`items`, default the last one): its items say
        `BLOCKED_TEXT` from now on. Returns the items changed."""
        changed: list[Item] = []
        for item in self.last_user_turn() if items is None else items:
            if item.text != BLOCKED_TEXT:
                item.text = BLOCKED_TEXT
                changed.append(item)
        return changed

    # -------------------------------------------------------------- LLM view

    def messages(self, system_prompt: str | None) -> list[Message]:
        """Chat messages for the LLM: the system prompt, then the most recent items.

        Context management: only the last `max_messages` items are sent, and the window never
        starts inside a tool exchange (a tool result without its call confuses models).
        """
        everything = [*self.history, *self.items] if self.history else self.items
        if self.window is not None:
            return self.window.messages(everything, system_prompt)
        out: list[Message] = []
        pending_calls: list[ToolCall] = []
        for item in everything:
            if item.type == "message":
                if pending_calls:
                    out.append(Message("assistant", "", tool_calls=tuple(pending_calls)))
                    pending_calls = []
                if item.text.strip() or item.role == "assistant":
                    out.append(Message(item.role, item.text))
            elif item.type == "function_call":
                pending_calls.append(ToolCall(item.call_id or item.id, item.name or "", item.arguments or "{}"))
            elif item.type == "mcp_call":
                cid = item.call_id or item.id
                pending_calls.append(ToolCall(cid, item.name or "", item.arguments or "{}"))
                out.append(Message("assistant", "", tool_calls=tuple(pending_calls)))
                pending_calls = []
                out.append(Message("tool", item.output or "", tool_call_id=cid, name=item.name))
            elif item.type == "function_call_output":
                if pending_calls:
                    out.append(Message("assistant", "", tool_calls=tuple(pending_calls)))
                    pending_calls = []
                out.append(Message("tool", item.output or "", tool_call_id=item.call_id, name=self._call_name(item.call_id)))
        if pending_calls:
            out.append(Message("assistant", "", tool_calls=tuple(pending_calls)))
        # drop empty assistant messages (e.g. a reply interrupted before any word was heard)
        out = [m for m in out if not (m.role == "assistant" and not m.content.strip() and not m.tool_calls)]
        if len(out) > self.max_messages:
            out = out[-self.max_messages:]
            while out and (out[0].role == "tool" or (out[0].role == "assistant" and out[0].tool_calls)):
                out = out[1:]
        system = [Message("system", system_prompt)] if system_prompt else []
        return system + _merge_same_role(out)

    def _call_name(self, call_id: str | None) -> str | None:
        for item in [*self.history, *self.items]:
            if item.type == "function_call" and item.call_id == call_id:
                return item.name
        return None


def _merge_same_role(msgs: list[Message]) -> list[Message]:
    """Two user messages in a row (a turn that was split by a pause) become one."""
    out: list[Message] = []
    for m in msgs:
        if out and m.role == "user" and out[-1].role == "user":
            out[-1] = replace(out[-1], content=f"{out[-1].content} {m.content}".strip())
        else:
            out.append(m)
    return out


def heard_text(segments: list[tuple[str, int]], played: int) -> str:
    """Text of what was played: whole clauses, then the share of words of the cut clause.

    `segments` is [(clause text, samples)], in playback order; `played` is samples played.
    """
    words: list[str] = []
    remaining = played
    for text, n in segments:
        if remaining <= 0:
            break
        parts = text.split()
        if remaining >= n:
            words += parts
        else:
            words += parts[: int(len(parts) * remaining / max(1, n))]
        remaining -= n
    return " ".join(words)
