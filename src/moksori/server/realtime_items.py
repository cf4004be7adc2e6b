"""A Realtime client's conversation items: `conversation.item.create`, `.retrieve`, `.truncate`
and `.delete`, and the conversion between wire items and the engine's memory items.

A client's item goes into the session's memory; an `mcp_approval_response` item instead answers
the MCP call waiting for it. Every mistake is a `ProtocolError` the connection turns into an
`error` event.

Audio content is transcribed for the LLM's sake (OpenAI's model hears it; ours reads it). The
item is in the conversation at once (`conversation.item.added`, its transcript null) and the
client's next events are handled meanwhile; its words are background work that gives way to
live turns (engine/item_words.py), then come as a live turn's do
(`conversation.item.input_audio_transcription.*` when transcription is on, then
`conversation.item.done`). A reply waits for them; a `response.cancel` ends that wait at once
(an out-of-band `response.create` naming the item in its `input` waits for them in its handler).
An item keeps its content parts as the client sent them (`Item.parts`; the audio itself is not
echoed back): each audio part shows its own transcript once known, while memory and the LLM read
all their words joined (`Item.text`). Each audio part the server transcribed is heard of on its
own, in content order (`transcription_events`): `...input_audio_transcription.delta` and
`.completed` with its `content_index`, its own words and the seconds of its own audio as usage
(the parts' usage sums to the item's audio, never counted twice), or `.failed` with its own
`content_index` and error when its STT failed (an `error` instead when the client asked for no
transcription); then `conversation.item.done`, a failed part's transcript null. An audio part
whose transcript the client gave is not transcribed, and has no such events.
At most twice `server.max_input_buffer_s` of item audio may wait (`audio_backlog_full`). The
realtime brain (`hears_item_audio`) is given a user item's audio as the client sent it: its
upstream hears it as audio at once (brains/realtime/audio_items.py), and without a local STT the
upstream's transcription is the item's words. An assistant or system item with audio (rare: its
words are not a user's transcript) is transcribed in its handler, and enters with its words.

A truncate keeps, in the session's memory (what the LLM reads next) and in the store, only the
words of the audio the client says it played. As OpenAI's: never past the audio the item sent,
nor past an earlier truncate of it. Of a reply still in progress (generating, or its audio still
going out: a client may truncate without `response.cancel` first) it also stops the reply there:
nothing unheard is generated or sent any more, and the reply ends cancelled
(`conversation.item.truncated` at `audio_end_ms`, then `response.done`, status `cancelled`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np

from moksori.audio.frames import Frame
from moksori.audio.resample import resample
from moksori.engine import events as E
from moksori.engine.item_words import HeardPart, Part, joined_words, set_words
from moksori.engine.memory import Item as MemItem, new_id
from moksori.errors import ProtocolError
from moksori.protocols import realtime as rt
from moksori.protocols.realtime.items import ItemStatus

if TYPE_CHECKING:
    from moksori.engine.session import Session
    from moksori.server.realtime_mcp import RealtimeMCP
    from moksori.settings import Settings

__all__ = ["ConversationItems", "ItemsHost", "audio_transcripts", "item_wire", "transcription_events"]

log = logging.getLogger("moksori.realtime")

KEEP_CUTS = 256  # items whose truncation is remembered (a later truncate may not go past it)
BACKLOG = 2  # item audio waiting for its words: at most this many times the item limit


class HearsItemAudio(Protocol):
    """A session whose brain hears a client's audio item as audio (the realtime brain's: its
    upstream gets the audio as the client sent it, `hears_item_audio`), not only its words."""

    def add_audio_item(self, item: MemItem, parts: list[Part], *, after: str | None = None,
                       audio: Sequence[Frame] | None = None) -> MemItem: ...


class ItemsHost(Protocol):
    """What the item handlers use of their connection (`RealtimeConnection` is one)."""

    ev: rt.ServerEvents
    flavor: rt.Flavor
    cfg: rt.SessionConfig
    transcription_only: bool
    settings: Settings
    session: Session
    mcp: RealtimeMCP
    recorder: Any  # the store's recorder (told what the client adds and truncates), or None

    def send(self, event: dict[str, Any] | None) -> None: ...


def item_wire(item: MemItem, flavor: rt.Flavor, *, status: ItemStatus | None = None,
              words_pending: bool = False) -> dict[str, Any]:
    """A memory item as the wire's conversation item (`words_pending`: its transcript is null)."""
    if item.type == "mcp_call":  # rebuilt from memory (the runner keeps the copy the client was shown)
        return rt.mcp_call_item(item.id, item.server_label or "", item.name or "", item.arguments or "{}",
                                approval_request_id=item.approval_request_id,
                                output=None if item.error else item.output,
                                error=rt.mcp_tool_execution_error(item.error) if item.error else None)
    if item.type == "function_call":
        return rt.function_call_item(item.id, item.call_id or "", item.name or "", item.arguments or "{}", flavor)
    if item.type == "function_call_output":
        return rt.function_call_output_item(item.id, item.call_id or "", item.output or "", flavor)
    if _kept_parts(item):
        content = [_wire_part(item.role, kind, words) for kind, words in item.parts]
    else:  # one part (a live turn's, a reply's; or a client's item whose text changed since: truncated, blocked)
        audio = item.audio and item.role != "system"
        content = [_wire_part(item.role, "audio" if audio else "text",
                              None if audio and words_pending and item.role == "user" else item.text)]
    return rt.message_item(item.id, item.role, content, flavor, status=status or item.status)


def audio_transcripts(item: MemItem | None, text: str) -> list[tuple[int, str]]:
    """The transcripts a user item's words make, one per audio part: (content index, its words).
    A live turn's item is one audio part (`[(0, text)]`); a client's item of several parts has
    each of its audio parts' own words, at its place among the parts."""
    if item is None or not _kept_parts(item):
        return [(0, text)]
    return [(index, words or "") for index, (kind, words) in enumerate(item.parts) if kind == "audio"]


def transcription_events(ev: rt.ServerEvents, item_id: str, item: MemItem | None, text: str, audio_s: float,
                         heard: Sequence[HeardPart] | None) -> list[dict[str, Any]]:
    """The `conversation.item.input_audio_transcription.*` events of a user item whose words came,
    in content order. A client's item (`heard`: what each audio part it transcribed came to, from
    `ItemWords.heard`): per part `.delta` and `.completed` with its own words and its own audio's
    seconds as usage, or `.failed` with its own error. Otherwise (a live turn's item) one part,
    index 0: `text`, all of `audio_s`."""
    if heard is None or item is None or not _kept_parts(item):
        parts = audio_transcripts(item, text)
        # (a client's item without what its parts came to: the usage is its first part's, not each one's)
        return [e for i, (index, words) in enumerate(parts)
                for e in _completed(ev, item_id, index, words, audio_s if i == 0 else 0.0)]
    events: list[dict[str, Any]] = []
    for part in heard:
        if part.words is None:
            events.append(ev.input_audio_transcription_failed(item_id, part.index, part.message, code=part.code))
        else:
            events += _completed(ev, item_id, part.index, part.words.strip(), part.seconds)
    return events


def _completed(ev: rt.ServerEvents, item_id: str, index: int, words: str, seconds: float) -> list[dict[str, Any]]:
    delta = [ev.input_audio_transcription_delta(item_id, index, words)] if words else []
    return delta + [ev.input_audio_transcription_completed(item_id, index, words, audio_seconds=seconds)]


def _kept_parts(item: MemItem) -> bool:
    """The item has its client's content parts, and they still say what it says (a truncate or a
    guardrail may have changed its text since: then it is one part, as it is now)."""
    return bool(item.parts) and joined_words([words for _, words in item.parts]) == item.text


def _wire_part(role: str, kind: Literal["text", "audio"], words: str | None) -> rt.ContentPart:
    """A content part of a `role` message: its text, or an audio part's transcript (None: not known)."""
    reply = role == "assistant"
    if kind == "audio":
        return rt.ContentPart("output_audio" if reply else "input_audio", transcript=words)
    return rt.ContentPart("output_text" if reply else "input_text", text=words or "")


class ConversationItems:
    def __init__(self, host: ItemsHost, audio_sent_ms: Callable[[MemItem], int | None], *,
                 max_audio_s: float = 120.0) -> None:
        self._host = host
        self._audio_sent_ms = audio_sent_ms  # how much audio an assistant item produced so far
        # an item's audio is no longer than the input buffer may grow (`server.max_input_buffer_s`):
        # one cheap message is minutes of STT work (background work now, but work all the same)
        self._max_audio_s = max_audio_s
        self._cuts: OrderedDict[str, int] = OrderedDict()  # item id -> audio_end_ms of its last truncate
        # a truncate stopped the reply in progress, and no response was asked for since: a
        # `response.cancel` that follows it (a client that truncates, then cancels) has its wish
        self.stopped_reply = False
        host.session.bus.listen(self._on_engine_event)

    async def create(self, ev: rt.ConversationItemCreate) -> None:
        host = self._host
        if isinstance(ev.item, rt.MCPApprovalResponseItem):
            self._approval_response(ev.item)
            return
        mem = host.session.memory
        after = ev.previous_item_id
        if after not in (None, "root") and mem.get(after) is None:
            raise ProtocolError(f"previous_item_id {after} does not exist", code="item_not_found",
                                param="previous_item_id")
        item, parts, frames = self._parts(ev.item)
        audio = [p for p in parts if not isinstance(p, str)]
        if audio and item.role == "user":
            self._check_backlog(sum(len(a) for a in audio) / 16000)
            if getattr(host.session, "hears_item_audio", False):  # the realtime brain: the upstream hears it
                cast(HearsItemAudio, host.session).add_audio_item(item, parts, after=after, audio=frames)
            else:
                host.session.add_audio_item(item, parts, after=after)  # its words follow
            host.send(host.ev.conversation_item_added(item_wire(item, host.flavor, words_pending=True),
                                                      mem.previous_id(item.id)))
            return  # its `conversation.item.done` comes with its words (realtime_outbound)
        if audio:
            await self._transcribe(item, parts)
        host.session.add_item(item, after=after)
        if host.recorder is not None:
            host.recorder.item_added(item)
        wire = item_wire(item, host.flavor)
        prev = mem.previous_id(item.id)
        host.send(host.ev.conversation_item_added(wire, prev))
        host.send(host.ev.conversation_item_done(wire, prev))

    def _check_backlog(self, seconds: float) -> None:
        pending, limit = self._host.session.item_words.pending_s, BACKLOG * self._max_audio_s
        if pending + seconds > limit:
            raise ProtocolError(f"{pending:.0f} s of earlier items' audio is still being transcribed: at most {limit:g} s "
                                f"may wait ({BACKLOG} x MOKSORI_SERVER_MAX_INPUT_BUFFER_S); send this item once their "
                                "transcripts have come", code="audio_backlog_full", param="item.content.audio")

    def _approval_response(self, item: rt.MCPApprovalResponseItem) -> None:
        """The client's answer to an `mcp_approval_request`: the waiting call goes on (or not).
        It is echoed as an item, not kept in the conversation the LLM reads."""
        host = self._host
        if not host.mcp.answer(item):
            raise ProtocolError(f"no MCP call is waiting for approval request {item.approval_request_id} "
                                "(answered already, timed out, or unknown)", code="item_not_found",
                                param="item.approval_request_id")
        wire = host.mcp.keep(rt.mcp_approval_response_item(item, item.id or new_id("item")))
        host.send(host.ev.conversation_item_added(wire, None))
        host.send(host.ev.conversation_item_done(wire, None))

    async def to_memory(self, item: rt.Item) -> MemItem:
        """A client's wire item as a memory item (its audio transcribed). Raises ProtocolError."""
        mem, parts, _ = self._parts(item)
        await self._transcribe(mem, parts)
        return mem

    async def to_heard(self, item: rt.Item, *, transcribe: bool) -> tuple[MemItem, list[str | Frame]]:
        """A client's wire item (a response's own input) for a brain that hears its audio: the
        memory item (its audio transcribed now if `transcribe`, else only its text's words) and its
        content in order, text as it is and audio as the client sent it. Raises ProtocolError."""
        mem, parts, frames = self._parts(item)
        words = False
        if transcribe:
            try:
                await self._transcribe(mem, parts)
                words = True
            except Exception as e:  # noqa: BLE001 - the upstream hears the audio all the same
                log.warning("realtime: the words of a heard input item could not be had: %s", e)
        if not words:  # (none of its audio's: its text's only)
            set_words(mem, parts, [p if isinstance(p, str) else None for p in parts])
        audio = iter(frames)
        return mem, [p if isinstance(p, str) else next(audio) for p in parts]

    async def _transcribe(self, item: MemItem, parts: list[Part]) -> None:
        """`item.text`: its parts' text, its audio transcribed now (in background windows)."""
        texts = [p if isinstance(p, str) else (await self._host.session.transcribe_item_audio(p)).text for p in parts]
        set_words(item, parts, texts)

    def _on_engine_event(self, e: E.Event) -> None:
        if isinstance(e, E.UserTranscriptionFailed):
            try:
                self._words_failed(e)
            except Exception:
                log.exception("realtime: cannot report the failed transcription of item %s", e.item_id)

    def _words_failed(self, e: E.UserTranscriptionFailed) -> None:
        """An audio item's words could not be had (all of them, or some of its parts'): its
        transcription events, `...input_audio_transcription.failed` for each part that failed (and
        `.completed` for a client's item's parts that did not), in content order, as a live turn's
        only when the client asked for transcription (otherwise an `error`: it must still learn its
        audio went unheard); then the item is done."""
        host = self._host
        memory = host.session.memory
        if host.cfg.input_transcription is not None or host.transcription_only:
            heard = host.session.item_words.heard(e.item_id)
            item = memory.get(e.item_id)
            if heard is not None and item is not None and _kept_parts(item):
                for event in transcription_events(host.ev, e.item_id, item, e.text, 0.0, heard):
                    host.send(event)
            else:  # a live turn's (or an item without what its parts came to)
                for index in e.content_indexes:
                    host.send(host.ev.input_audio_transcription_failed(e.item_id, index, e.message, code=e.code))
        else:
            host.send(host.ev.error(f"the audio of item {e.item_id} could not be transcribed: {e.message}",
                                    code=e.code, type="server_error"))
        item = memory.get(e.item_id)
        if item is not None:
            host.send(host.ev.conversation_item_done(item_wire(item, host.flavor), memory.previous_id(item.id)))

    def _parts(self, item: rt.Item) -> tuple[MemItem, list[Part], list[Frame]]:
        """A client's wire item as a memory item without the words of its audio, its content in
        order (text, or 16 kHz audio to transcribe), and that audio as the client sent it (PCM16
        at its input format's rate, one frame per audio part). Raises ProtocolError."""
        host = self._host
        if isinstance(item, rt.MCPApprovalResponseItem):
            raise ProtocolError("an mcp_approval_response item goes in conversation.item.create, not in "
                                "response.input", code="invalid_value", param="item.type")
        item_id = getattr(item, "id", None) or new_id("item")
        if host.session.memory.get(item_id) is not None:
            raise ProtocolError(f"an item with id {item_id} already exists", code="item_exists", param="item.id")
        if isinstance(item, rt.FunctionCallItem):
            return MemItem(id=item_id, type="function_call", role="assistant", call_id=item.call_id, name=item.name,
                           arguments=item.arguments), [], []
        if isinstance(item, rt.FunctionCallOutputItem):
            return MemItem(id=item_id, type="function_call_output", role="user", call_id=item.call_id,
                           output=item.output), [], []
        # each content part as the client sent it (kind, words; an audio part's words None until
        # transcribed), and what to transcribe: `parts[i]` is `content[i]`'s text or audio
        kept: list[tuple[Literal["text", "audio"], str | None]] = []
        parts: list[Part] = []
        frames: list[Frame] = []
        audio_s = 0.0
        for part in item.content:
            if part.type == "input_image":
                raise ProtocolError("image input is not supported", code="unsupported_content_type",
                                    param="item.content.type")
            if part.type in ("input_text", "output_text"):
                kept.append(("text", part.text or ""))
                parts.append(part.text or "")
            elif part.transcript or not part.audio:  # its words given (or no audio at all)
                kept.append(("audio", part.transcript))
                parts.append(part.transcript or "")
            else:
                frame = host.cfg.input_format.decode(part.audio, param="item.content.audio")
                audio_s += frame.duration
                if audio_s > self._max_audio_s:
                    raise ProtocolError(f"the item's audio is {audio_s:.0f} s long: at most {self._max_audio_s:g} s "
                                        "(MOKSORI_SERVER_MAX_INPUT_BUFFER_S)", code="audio_too_long",
                                        param="item.content.audio")
                kept.append(("audio", None))
                parts.append(np.asarray(resample(frame, 16000).to_float(), dtype=np.float32))
                frames.append(frame)
        return MemItem(id=item_id, role=item.role, text=joined_words([words for _, words in kept]),
                       audio=any(kind == "audio" for kind, _ in kept), parts=kept), parts, frames

    def retrieve(self, ev: rt.ConversationItemRetrieve) -> None:
        host = self._host
        item = host.session.memory.get(ev.item_id)
        if item is None and ev.item_id in host.mcp.items:  # an MCP item (kept by the runner, not in memory)
            host.send(host.ev.conversation_item_retrieved(host.mcp.items[ev.item_id]))
            return
        if item is None:
            raise ProtocolError(f"item {ev.item_id} does not exist", code="item_not_found", param="item_id")
        if item.type == "mcp_call" and item.id in host.mcp.items:  # as the client was shown it
            host.send(host.ev.conversation_item_retrieved(host.mcp.items[item.id]))
            return
        pending = host.session.memory.words_pending(item.id)
        host.send(host.ev.conversation_item_retrieved(item_wire(item, host.flavor, words_pending=pending)))

    def truncate(self, ev: rt.ConversationItemTruncate) -> None:
        host = self._host
        item = host.session.memory.get(ev.item_id)
        if item is None:
            raise ProtocolError(f"item {ev.item_id} does not exist", code="item_not_found", param="item_id")
        if item.role != "assistant" or item.type != "message":
            raise ProtocolError("only assistant messages can be truncated", code="invalid_item", param="item_id")
        if ev.content_index != 0:
            raise ProtocolError("content_index must be 0", code="invalid_value", param="content_index")
        sent = self._audio_sent_ms(item)
        if sent is None:
            raise ProtocolError(f"item {ev.item_id} has no audio to truncate", code="invalid_value", param="item_id")
        earlier = self._cuts.get(ev.item_id)
        audio = sent if earlier is None else min(sent, earlier)
        if ev.audio_end_ms > audio:  # as OpenAI: never past the audio the item produced, or kept
            raise ProtocolError(f"Audio content of {audio}ms is already shorter than {ev.audio_end_ms}ms",
                                code="invalid_value", param="audio_end_ms")
        # a reply in progress is cut: its own chain says `conversation.item.truncated` (at
        # audio_end_ms, before its response.done); it must not be said twice
        in_progress = item.status == "in_progress"
        cut = host.session.truncate(ev.item_id, ev.audio_end_ms)
        if cut is None:  # (checked above: cannot be)
            raise ProtocolError(f"item {ev.item_id} does not exist", code="item_not_found", param="item_id")
        self._cuts[ev.item_id] = ev.audio_end_ms
        self._cuts.move_to_end(ev.item_id)
        while len(self._cuts) > KEEP_CUTS:
            self._cuts.popitem(last=False)
        if host.recorder is not None:
            host.recorder.truncated(ev.item_id, cut.text)
        if in_progress:
            self.stopped_reply = True
        else:
            host.send(host.ev.conversation_item_truncated(ev.item_id, 0, ev.audio_end_ms))

    def delete(self, ev: rt.ConversationItemDelete) -> None:
        host = self._host
        if not host.session.delete_item(ev.item_id):
            raise ProtocolError(f"item {ev.item_id} does not exist", code="item_not_found", param="item_id")
        host.mcp.items.pop(ev.item_id, None)  # an mcp_call item: not retrievable any more
        self._cuts.pop(ev.item_id, None)
        if host.recorder is not None:  # out of the stored history too: a later session must not see it
            host.recorder.item_deleted(ev.item_id)
        host.send(host.ev.conversation_item_deleted(ev.item_id))
