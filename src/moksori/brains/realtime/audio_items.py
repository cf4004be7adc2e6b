"""The realtime brain: a client's audio item is heard by the upstream as audio.

A Realtime client's `conversation.item.create` with `input_audio` goes upstream at once as a
user message with its audio (`input_audio` parts, resampled and encoded to the upstream's input
format), in its place in the conversation, under the id mapping the brain keeps for upstream
items: the speech-to-speech model hears the voice itself (tone, names, language), as OpenAI's own
server would. Its words (the item's transcript, memory, the store) come from:

* the local STT where there is one (`MOKSORI_REALTIME_TURN_DETECTION=moksori`): transcribed in the
  background as with the pipeline brain (engine/item_words.py); the upstream's own transcript of
  the item is not used;
* else the upstream's transcription of the item (`...input_audio_transcription.completed`, or
  `.failed`, per audio part): the item's words are its words, published as `user.transcript`
  (or `user.transcription_failed` for the parts it failed, or did not transcribe within
  `TRANSCRIPT_WAIT_S` of the item being sent, or at once when it does not transcribe at all).

Where the upstream refuses the item (an `error` answering its `conversation.item.create`), the
item goes the text path instead: upstream as words once the local STT's words have come, as
before; without a local STT its words cannot be had (`user.transcription_failed`).

A response's own `input` (out of band) is heard the same way: a user message of it with audio
goes up with its audio (`HeardMessage`), and an item of the conversation it names
(`item_reference`) is named upstream too, by the upstream's id of it (`ReferencedMessage`), so the
model gets the item itself, not a transcript of it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from moksori.audio.frames import Frame
from moksori.engine import events as E
from moksori.engine.item_words import Part, set_words
from moksori.engine.memory import BLOCKED_TEXT, new_id
from moksori.engine.session_context import SessionContext
from moksori.providers.base import Message

from . import events as ev
from .words import TRANSCRIPT_WAIT_S, language_of

if TYPE_CHECKING:
    from .session import RealtimeSession

log = logging.getLogger("moksori.brains.realtime")

__all__ = ["AudioItems", "HeardMessage", "MAX_UPSTREAM_ID", "ReferencedMessage"]

MAX_UPSTREAM_ID = 32  # an item id OpenAI accepts (a longer client id gets one of ours upstream)
KEEP = 256  # audio items remembered (for the upstream's late transcript, or its refusal)
_NO_AUDIO = np.zeros(0, dtype=np.float32)  # an audio part whose audio has been sent and let go


@dataclass(frozen=True)
class HeardMessage(Message):
    """A user message of a response's own `input` whose audio the upstream hears: `parts` its
    content in order (text, or the audio as the client sent it, PCM16); `content` its words, as
    far as they were had (the local STT's; none without one)."""

    parts: tuple[str | Frame, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class ReferencedMessage(Message):
    """An item of the conversation that a response's own `input` names (`item_reference`):
    `item_id` our id of it. The brain names the upstream's copy of it instead (its audio, a tool
    call: what the model would have heard); `content` is its words (none for a tool item), what
    goes up where the upstream does not have it (`protocol.InputRef`)."""

    item_id: str = field(default="", compare=False)


@dataclass
class _AudioItem:
    item_id: str
    up_id: str
    parts: list[Part]  # the item's content in order: text as it is, 16 kHz audio (what the local STT reads)
    frames: list[Frame]  # its audio parts as the client sent them (PCM16 at the client's rate), in order
    local: bool  # the local STT gives its words
    seconds: float
    words: dict[int, str | None] = field(default_factory=dict)  # upstream's words per audio part (None: failed)
    why: tuple[str, str] | None = None  # (code, message) of the first part the upstream failed
    done: bool = False  # its words are settled (published)
    sent: bool = False  # the upstream has been sent it

    @property
    def audio_indexes(self) -> list[int]:
        return [i for i, p in enumerate(self.parts) if not isinstance(p, str)]

    def content(self) -> list[str | Frame]:
        frames = iter(self.frames)
        return [p if isinstance(p, str) else next(frames) for p in self.parts]

    def drop_audio(self) -> None:
        """Keep the parts' order and kinds (what the words are set by), not their audio."""
        self.frames = []
        self.parts = [p if isinstance(p, str) else _NO_AUDIO for p in self.parts]


class AudioItems:
    def __init__(self, brain: RealtimeSession, ctx: SessionContext) -> None:
        self._brain = brain
        self._ctx = ctx
        self._items: OrderedDict[str, _AudioItem] = OrderedDict()

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._items

    def add(self, item_id: str, parts: list[Part], frames: Sequence[Frame], *, local: bool) -> str:
        """Item `item_id` (in memory now) goes upstream as audio: the upstream's id of it."""
        up = item_id if len(item_id) <= MAX_UPSTREAM_ID else "item_mk" + new_id("x")[2:22]
        seconds = sum(len(f) / f.rate for f in frames)
        self._items[item_id] = _AudioItem(item_id, up, list(parts), list(frames), local, seconds)
        while len(self._items) > KEEP:
            self._items.popitem(last=False)
        return up

    def forget(self, item_id: str) -> None:
        self._items.pop(item_id, None)

    async def send(self, item_id: str) -> None:
        """(The brain's ordered queue) the item goes upstream, after the nearest item before it
        that the upstream has; without a local STT the wait for the upstream's words starts."""
        a = self._items.get(item_id)
        brain = self._brain
        if a is None or brain.memory.get(item_id) is None:
            return  # deleted meanwhile
        content = a.content()
        a.drop_audio()  # sent: up to KEEP items are remembered, and an item may hold minutes of audio
        await brain.upstream.add_user_audio(content, item_id=a.up_id,
                                            previous_item_id=brain.upstream_previous(item_id))
        a.sent = True
        if a.local:
            if not brain.memory.words_pending(item_id):  # its words came first: a re-seed sends them
                self.words_known(item_id)
        elif not brain.transcription:
            self._fail_missing(a, "transcription_unavailable", "there is no local speech recognition and the "
                               "realtime upstream does not transcribe (MOKSORI_REALTIME_TRANSCRIPTION_MODEL is "
                               "empty): the item's audio was heard by the upstream, but its words cannot be had")
        else:
            brain.spawn(self._deadline(a), f"item-words-{item_id}")

    async def _deadline(self, a: _AudioItem) -> None:
        await self._brain.clock.sleep(TRANSCRIPT_WAIT_S)
        if not a.done:
            log.info("session %s: no upstream transcript for item %s after %g s", self._brain.id, a.item_id,
                     TRANSCRIPT_WAIT_S)
            self._fail_missing(a, "transcription_timeout",
                               f"the realtime upstream did not transcribe the item's audio within {TRANSCRIPT_WAIT_S:g} s")

    def words_known(self, item_id: str) -> None:
        """The local STT's words of the item came: a re-seed sends them, not its audio."""
        a = self._items.get(item_id)
        item = self._brain.memory.get(item_id)
        if a is None or item is None or not a.local:
            return
        rec = self._brain.upstream.proto.conv.get(a.up_id)
        if rec is not None and item.text:
            rec.text, rec.final, rec.user_audio = item.text, True, None

    def upstream_words(self, item_id: str, e: ev.UserTranscript) -> bool:
        """The upstream's transcript (or failure) of one audio part of item `item_id`. True: the
        item is ours (heard as audio), whether or not its words are the upstream's."""
        a = self._items.get(item_id)
        if a is None:
            return False
        if a.local or a.done:
            return True  # the local STT's words stand
        indexes = a.audio_indexes
        index = e.content_index if e.content_index in indexes else next(
            (i for i in indexes if i not in a.words), indexes[0])
        if e.failed:
            a.words[index] = None
            a.why = a.why or (e.code or "transcription_failed", (e.error or "transcription failed")[:300])
        else:
            a.words[index] = e.text.strip()
        if all(i in a.words for i in indexes):
            self._settle(a)
        return True

    def refused(self, item_id: str, code: str | None, message: str) -> bool:
        """The upstream refused the item (`conversation.item.create` answered by an `error`): it
        goes the text path (the local STT's words, once come); without a local STT its words
        cannot be had. True: it was ours."""
        a = self._items.pop(item_id, None)
        brain = self._brain
        if a is None:
            return False
        brain.upstream.proto.conv.delete(a.up_id)
        log.warning("session %s: the upstream refused audio item %s (%s: %s)%s", brain.id, item_id, code, message,
                    "; it goes up as words" if a.local else "")
        if a.local:
            brain.send_words_later(item_id)
        elif not a.done:
            a.done = True
            self._fail(a, a.audio_indexes, f"upstream_{code or 'error'}",
                       f"the realtime upstream refused the item's audio: {message}"[:300])
        return True

    def _fail_missing(self, a: _AudioItem, code: str, message: str) -> None:
        for i in a.audio_indexes:
            a.words.setdefault(i, None)
        a.why = a.why or (code, message)
        self._settle(a)

    def _settle(self, a: _AudioItem) -> None:
        """Every audio part's words are in (or failed): the item's words, published once."""
        if a.done:
            return
        a.done = True
        brain = self._brain
        item = brain.memory.get(a.item_id)
        if item is None:
            return
        words = [p if isinstance(p, str) else a.words.get(i) for i, p in enumerate(a.parts)]
        failed = [i for i in a.audio_indexes if a.words.get(i) is None]
        if item.text != BLOCKED_TEXT:
            set_words(item, a.parts, words)
        lang = brain.cfg.language if brain.cfg.language != "auto" else language_of(item.text, brain.last_language)
        item.language = lang
        rec = brain.upstream.proto.conv.get(a.up_id)
        if rec is not None and item.text:
            rec.text, rec.final, rec.user_audio = item.text, True, None
        if failed:
            why = a.why or ("transcription_failed", "transcription failed")
            self._fail(a, failed, *why)
            return
        if item.text.strip():
            self._ctx.last_language = lang
        brain.publish(E.UserTranscript(t=brain.clock.now(), item_id=a.item_id, text=item.text, language=lang,
                                       final=True, audio_s=round(a.seconds, 3)))

    def _fail(self, a: _AudioItem, indexes: list[int], code: str, message: str) -> None:
        brain = self._brain
        item = brain.memory.get(a.item_id)
        log.info("session %s: no words for item %s: %s", brain.id, a.item_id, message)
        brain.publish(E.UserTranscriptionFailed(t=brain.clock.now(), item_id=a.item_id, content_indexes=tuple(indexes),
                                                code=code, message=message, retryable=False,
                                                text=item.text if item is not None else ""))

