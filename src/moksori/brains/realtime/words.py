"""The realtime brain's bookkeeping of names and words: which upstream item is which of ours, and
the words of user items committed before their transcript arrived.

`IdMap`: items we create upstream keep our ids; items the upstream creates (a committed user turn,
an assistant output, a function call) are mapped to ours, both ways, within a bound.

`UserWords`: a user item enters memory when its turn is committed, its words later. `expect` a
transcript for it, then `finish` it with the upstream's words (or, when the upstream has none,
fails, or is `TRANSCRIPT_WAIT_S` late, the local STT's words, else none): the memory item is
filled in and `user.transcript` published, once. `wait(turn)` lets a reply to that turn hold its
`agent.response_done` until then, so a recorder writes the turn before its reply.

When every source of the item's words failed (the upstream's transcription failed and there are
no local words, or the local STT failed and the upstream does not transcribe, or failed too, or
is late), the item is not given an empty transcript: it is `fail`ed instead, as the pipeline
does a live turn whose STT failed. Its one audio part stays without words (`parts`
`[("audio", None)]`) and `user.transcription_failed` is published (a Realtime client hears
`conversation.item.input_audio_transcription.failed`), once, instead of `user.transcript`. The
upstream heard the audio all the same: its reply, if any, goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from moksori.engine import events as E
from moksori.engine.memory import BLOCKED_TEXT
from moksori.engine.session_context import SessionContext
from moksori.errors import MoksoriError

log = logging.getLogger("moksori.brains.realtime")

__all__ = ["IdMap", "UserWords", "TRANSCRIPT_WAIT_S", "language_of", "trim"]

TRANSCRIPT_WAIT_S = 8.0  # after a commit, how long the upstream's transcript is waited for
MAX_IDS = 4000  # id mappings kept (a long call has a few hundred items)


def trim(table: dict[Any, Any], keep: int = 64) -> None:
    """Forget the oldest entries (speech the upstream never committed, and the like)."""
    while len(table) > keep:
        table.pop(next(iter(table)))


def _why(err: Exception) -> tuple[str, str]:
    """(code, message) of a failed transcription: the provider's own error, or a bug named only by
    its type (and logged with its traceback)."""
    if isinstance(err, MoksoriError):
        return err.code, str(err)[:300]
    log.error("the local STT failed", exc_info=err)
    return "server_error", f"internal error: {type(err).__name__}"


def language_of(text: str, fallback: str) -> str:
    if any("\uac00" <= ch <= "\ud7a3" or "\u3131" <= ch <= "\u318e" for ch in text):
        return "ko"
    return "en" if any(ch.isascii() and ch.isalpha() for ch in text) else fallback


class IdMap:
    def __init__(self, limit: int = MAX_IDS) -> None:
        self._local_of: OrderedDict[str, str] = OrderedDict()  # upstream item id -> ours
        self._up_of: OrderedDict[str, str] = OrderedDict()  # our item id -> upstream's
        self._limit = limit

    def link(self, upstream_id: str, local_id: str) -> None:
        self._local_of[upstream_id] = local_id
        self._up_of[local_id] = upstream_id
        for table in (self._local_of, self._up_of):
            while len(table) > self._limit:
                table.popitem(last=False)

    def up(self, local_id: str | None) -> str | None:
        """The upstream's id of our item (our own id for items we created upstream)."""
        return None if local_id is None else self._up_of.get(local_id, local_id)

    def all_up(self, local_id: str) -> list[str]:
        """Every upstream item of our item (an `mcp_call` is a call and its output upstream)."""
        ups = [u for u, local in self._local_of.items() if local == local_id]
        return ups or [self._up_of.get(local_id, local_id)]

    def up_known(self, local_id: str) -> str | None:
        return self._up_of.get(local_id)

    def local(self, upstream_id: str | None) -> str | None:
        return None if upstream_id is None else self._local_of.get(upstream_id)

    def knows(self, upstream_id: str) -> bool:
        return upstream_id in self._local_of


class UserWords:
    def __init__(self, ctx: SessionContext, *, upstream_transcribes: Callable[[], bool],
                 local_words_coming: Callable[[], bool], on_words: Callable[[str, str], None]) -> None:
        """`upstream_transcribes()`: the upstream sends transcripts; `local_words_coming()`: the
        local STT analyses turns (moksori turns); `on_words(item, text)`: the words are known."""
        self._ctx = ctx
        self._upstream = upstream_transcribes
        self._local_coming = local_words_coming
        self._on_words = on_words
        self._pending: dict[str, tuple[int | None, asyncio.Event]] = {}  # our item -> (turn, done)
        self._turn_item: dict[int, str] = {}  # turn id -> its user item, while awaited
        self._local: dict[str, str] = {}  # our item -> the local STT's words
        self._local_failed: dict[str, tuple[str, str]] = {}  # our item -> (code, message): its local STT failed
        self._upstream_failed: dict[str, tuple[str, str]] = {}  # ... the upstream's transcription failed
        self._audio_s: dict[str, float] = {}  # our item -> seconds of its audio
        self._partial: dict[str, str] = {}

    # -------------------------------------------------------------- what is known
    def local_text(self, item_id: str) -> str | None:
        return self._local.get(item_id)

    def set_local(self, item_id: str, text: str, audio_s: float | None) -> None:
        """The local STT's words of a turn (moksori turns): the fallback transcript."""
        self._local[item_id] = text
        if audio_s:
            self._audio_s[item_id] = audio_s
        trim(self._local)
        trim(self._audio_s)
        if item_id in self._pending:
            item = self._ctx.memory.get(item_id)
            if item is not None and not item.text:
                item.text = text
            if not self._upstream() or item_id in self._upstream_failed:
                self.finish(item_id, text)

    def local_failed(self, item_id: str, err: Exception, audio_s: float | None) -> None:
        """The local STT could not transcribe the turn (moksori turns): no fallback words. The
        item fails now if no other words can come (the upstream does not transcribe, or failed)."""
        self._local_failed[item_id] = _why(err)
        trim(self._local_failed)
        if audio_s:
            self._audio_s[item_id] = audio_s
            trim(self._audio_s)
        if item_id in self._pending and (not self._upstream() or item_id in self._upstream_failed):
            self.fail(item_id, *self._upstream_failed.get(item_id, self._local_failed[item_id]))

    def set_audio_s(self, item_id: str, seconds: float) -> None:
        self._audio_s[item_id] = seconds
        trim(self._audio_s)

    def pending(self) -> list[str]:
        return list(self._pending)

    # -------------------------------------------------------------- the transcript
    def expect(self, item_id: str, turn_id: int | None) -> None:
        """A committed user item whose words are to come."""
        self._pending[item_id] = (turn_id, asyncio.Event())
        if turn_id is not None:
            self._turn_item[turn_id] = item_id
        if not self._upstream():
            if item_id in self._local_failed:
                self.fail(item_id, *self._local_failed[item_id])
            elif not self._local_coming() or item_id in self._local:
                self.finish(item_id, self._local.get(item_id, ""))
            return
        self._ctx.spawn(self._deadline(item_id), f"transcript-{item_id}")

    async def _deadline(self, item_id: str) -> None:
        await self._ctx.clock.sleep(TRANSCRIPT_WAIT_S)
        if item_id in self._pending:
            log.info("session %s: no upstream transcript for %s after %g s", self._ctx.id, item_id,
                     TRANSCRIPT_WAIT_S)
            why = self._upstream_failed.get(item_id) or self._local_failed.get(item_id)
            if why is not None and item_id not in self._local:  # no words from anywhere
                self.fail(item_id, *why)
            else:
                self.finish(item_id, self._local.get(item_id, ""))

    def upstream(self, item_id: str, text: str, *, failed: bool, code: str | None = None,
                 error: str | None = None) -> None:
        """The upstream's transcript of `item_id`, or (`failed`) its failure to make one: then the
        local STT's words stand in (moksori turns: known, or awaited while they are coming);
        without them the item fails."""
        if not failed:
            self.finish(item_id, text)
            return
        why = (code or "transcription_failed", (error or "transcription failed")[:300])
        if item_id in self._local:
            self.finish(item_id, self._local[item_id])
        elif item_id in self._pending and self._local_coming() and item_id not in self._local_failed:
            self._upstream_failed[item_id] = why  # the local words, when they come, are the transcript
            trim(self._upstream_failed)
        else:
            self.fail(item_id, *why)

    def _take(self, item_id: str) -> tuple[int | None, asyncio.Event] | None:
        """`item_id`'s words are settled now: its (turn id, done event), no longer pending; None:
        they were already (or it never waited for words)."""
        pending = self._pending.pop(item_id, None)
        if pending is not None:
            turn_id = pending[0]
            if turn_id is not None and self._turn_item.get(turn_id) == item_id:
                del self._turn_item[turn_id]
        return pending

    def finish(self, item_id: str, text: str) -> None:
        """The words of `item_id` are known: fill in memory, publish `user.transcript` (once)."""
        pending = self._take(item_id)
        if pending is None:
            return
        ctx = self._ctx
        turn_id, done = pending
        lang = ctx.cfg.language if ctx.cfg.language != "auto" else language_of(text, ctx.last_language)
        item = ctx.memory.get(item_id)
        if item is not None and item.text != BLOCKED_TEXT:  # a turn the input guardrail removed stays removed
            item.text, item.language = text, lang
        if text.strip():
            ctx.last_language = lang
        audio_s = self._audio_s.pop(item_id, None)
        self._local_failed.pop(item_id, None)
        self._upstream_failed.pop(item_id, None)
        ctx.publish(E.UserTranscript(t=ctx.clock.now(), turn_id=turn_id, item_id=item_id, text=text, language=lang,
                                     final=True, audio_s=round(audio_s, 3) if audio_s else None))
        self._partial.pop(item_id, None)
        self._on_words(item_id, text)
        done.set()

    def fail(self, item_id: str, code: str, message: str) -> None:
        """No words can be had for `item_id`: its audio part stays without them (as the pipeline's
        live turn whose STT failed) and `user.transcription_failed` is published (once)."""
        pending = self._take(item_id)
        if pending is None:
            return
        ctx = self._ctx
        turn_id, done = pending
        self._forget(item_id)
        item = ctx.memory.get(item_id)
        if item is not None and item.text != BLOCKED_TEXT:  # a turn the input guardrail removed stays removed
            item.text, item.parts = "", [("audio", None)]
        log.info("session %s: no words for %s: %s", ctx.id, item_id, message)
        ctx.publish(E.UserTranscriptionFailed(t=ctx.clock.now(), item_id=item_id, content_indexes=(0,), code=code,
                                              message=message, retryable=False))
        self._on_words(item_id, "")
        done.set()

    def _forget(self, item_id: str) -> None:
        for table in (self._audio_s, self._partial, self._local_failed, self._upstream_failed):
            table.pop(item_id, None)

    def finish_all(self) -> None:
        for item_id in self.pending():
            self.finish(item_id, self._local.get(item_id, ""))

    def delta(self, item_id: str, delta: str) -> None:
        """A piece of the upstream's transcript: published as the whole hypothesis so far."""
        ctx = self._ctx
        text = self._partial.get(item_id, "") + delta
        self._partial[item_id] = text
        trim(self._partial)
        turn_id = self._pending.get(item_id, (None,))[0]
        ctx.publish(E.UserTranscriptDelta(t=ctx.clock.now(), turn_id=turn_id if turn_id is not None else -1,
                                          item_id=item_id, text=text, language=language_of(text, ctx.last_language)))

    async def wait(self, turn_id: int | None, timeout: float = TRANSCRIPT_WAIT_S) -> None:
        """Until the words of turn `turn_id` are published (at most `timeout`)."""
        item_id = self._turn_item.get(turn_id) if turn_id is not None else None
        pending = self._pending.get(item_id) if item_id is not None else None
        if pending is None:
            return
        try:
            await asyncio.wait_for(pending[1].wait(), timeout)
        except asyncio.TimeoutError:
            pass
