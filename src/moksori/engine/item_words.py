"""The words of audio a client puts in the conversation as an item (Realtime
`conversation.item.create` with `input_audio`), transcribed in the background.

The item is in the conversation at once; its words follow (`user.transcript`, not typed), and a
reply that reads the conversation waits for them (`Memory.words_ready`). Until 2026-12 the item's
audio was transcribed in one STT job inside the client's event handler: ~100 s of speech held
Whisper ~50 s for every session (another session's turn got its transcript 53.6 s late) and the
connection handled nothing else meanwhile (its `response.cancel` took effect 19 s later).

Now the transcription is background work (`providers/threads.background`): it queues behind
every live turn's decode, and it goes in windows of at most `WINDOW_S` of speech, cut in the
pauses the VAD finds (as uploads are: providers/long_form.py), each its own STT job. Each window
is preemptible: when a live turn's decode waits for the model it gives way between its steps
(features, encoder, decoder) and is tried again; after `GIVE_WAY_TRIES` such tries it runs to its
end, so a busy server delays an item but never starves it. A live turn therefore waits for at
most one step of one window (~1 s on the 2-core VM), not for the whole item.

One session's items are transcribed one at a time, in the order they came. Deleting an item
stops its transcription (a step in progress runs to its end, unread); closing the session stops
them all.

An item keeps its content parts (`Item.parts`): each audio part gets its own words, and `text` is
all their words joined (what the LLM and the store read). When an audio part's STT fails, that
part stays without words, the other parts still count, and `user.transcription_failed` names the
parts instead of `user.transcript` (the item's text is then the words of its other parts).
What each audio part came to (`HeardPart`: its words or why it has none, and how many seconds of
audio it was) is kept while the item is in the conversation (`ItemWords.heard`): a Realtime
client hears of each part on its own (server/realtime_items.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moksori.engine import events as E
from moksori.engine.input_audio import VAD_RATE
from moksori.engine.memory import Item
from moksori.engine.session_context import SessionContext
from moksori.errors import MoksoriError
from moksori.providers.base import STTOptions, Transcript, one_chunk
from moksori.providers.threads import background, background_context, run_blocking
from moksori.providers.vad_segments import speech_regions

__all__ = ["GIVE_WAY_TRIES", "WINDOW_S", "HeardPart", "ItemWords", "Part", "joined_words", "set_words",
           "transcription_failed"]

log = logging.getLogger("moksori.session")

# Speech per STT job. Whisper's window is 30 s; a shorter one makes each step a live turn may
# have to wait for shorter: on the loaded 2-core VM a 27 s window's encoder took 2.1 s, a 15 s
# one's 0.95 s (its 3 s of padding cost a little more in all).
WINDOW_S = 15.0
GIVE_WAY_TRIES = 4  # a window that gave way this often to live turns runs to its end

Part = str | np.ndarray  # an item's content in order: text as it is, audio (16 kHz float32) to transcribe


@dataclass(frozen=True)
class HeardPart:
    """What one audio part of an item came to: its words, or (`code`, `message`) why its STT
    failed; `seconds`: its audio (what transcribing it cost, whether it succeeded or not)."""

    index: int  # its place among the item's content parts
    seconds: float
    words: str | None  # None: failed
    code: str = ""
    message: str = ""


def joined_words(words: Sequence[str | None]) -> str:
    """An item's text: the words of its parts, in order (parts without words left out)."""
    return " ".join(w.strip() for w in words if w and w.strip())


def set_words(item: Item, parts: Sequence[Part], words: Sequence[str | None]) -> None:
    """The item's words: `words` has one entry per part of `parts` (its content, text as it is,
    audio transcribed; None: the audio's words could not be had). `item.text` is them joined;
    each audio part of `item.parts` keeps its own."""
    item.text = joined_words(words)
    if len(item.parts) == len(parts):
        item.parts = [(kind, said if isinstance(part, np.ndarray) else known)
                      for (kind, known), part, said in zip(item.parts, parts, words)]


def transcription_failed(t: float, item_id: str, content_indexes: tuple[int, ...], err: Exception, *,
                         text: str = "", session_id: str = "") -> E.UserTranscriptionFailed:
    """The event for an item whose audio parts `content_indexes` could not be transcribed: the
    provider's own error says why; any other failure is a bug, logged with its traceback and
    named only by its type."""
    if not isinstance(err, MoksoriError):
        log.error("session %s: item %s: transcription failed", session_id, item_id, exc_info=err)
    code, message = _why(err)
    return E.UserTranscriptionFailed(t=t, item_id=item_id, content_indexes=content_indexes, code=code,
                                     message=message, retryable=getattr(err, "retryable", False), text=text)


def _why(err: Exception) -> tuple[str, str]:
    """(code, message) of a failed transcription: the provider's own error, or a bug named only
    by its type."""
    message = str(err) if isinstance(err, MoksoriError) else f"internal error: {type(err).__name__}"
    return getattr(err, "code", "server_error"), message


class ItemWords:
    def __init__(self, ctx: SessionContext) -> None:
        self._ctx = ctx
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._pending_s: dict[str, float] = {}  # audio waiting or being transcribed, per item
        self._heard: dict[str, tuple[HeardPart, ...]] = {}  # items whose words came: what each audio part came to
        self._turn = asyncio.Lock()  # one item at a time, in order (asyncio.Lock is FIFO)
        self.windows = 0  # STT jobs run to a result, all items (for tests and benchmarks)
        self.gave_way = 0  # ... tries that gave way to a live turn's decode

    @property
    def pending_s(self) -> float:
        """Seconds of item audio not transcribed yet."""
        return sum(self._pending_s.values())

    def heard(self, item_id: str) -> tuple[HeardPart, ...] | None:
        """What each audio part of item `item_id` came to, in content order, once its words came
        (known from `user.transcript` / `user.transcription_failed` on); None: not a client's
        audio item, its words not come yet, or deleted."""
        return self._heard.get(item_id)

    def add(self, item: Item, parts: Sequence[Part]) -> None:
        """`item` is in memory; its words (`parts` in order, the audio ones transcribed) come later."""
        self._ctx.memory.words_coming(item.id)
        self._pending_s[item.id] = sum(len(p) / VAD_RATE for p in parts if not isinstance(p, str))
        self._tasks[item.id] = self._ctx.spawn(self._words_of(item, list(parts)), f"item-words-{item.id}",
                                               context=background_context())

    def cancel(self, item_id: str) -> None:
        """The item left the conversation: its words are not wanted any more."""
        task = self._tasks.pop(item_id, None)
        self._pending_s.pop(item_id, None)
        self._heard.pop(item_id, None)
        if task is not None:
            task.cancel()
        self._ctx.memory.words_known(item_id)

    def close(self) -> None:
        for item_id in list(self._tasks):
            self.cancel(item_id)
        self._heard.clear()

    async def _words_of(self, item: Item, parts: list[Part]) -> None:
        ctx = self._ctx
        language = item.language
        words: list[str | None] = []
        heard: list[HeardPart] = []
        failed: list[tuple[int, Exception]] = []  # (content index, why)
        try:
            async with self._turn:
                for index, part in enumerate(parts):
                    if isinstance(part, str):
                        words.append(part)
                        continue
                    seconds = round(len(part) / VAD_RATE, 3)
                    try:
                        tr = await self.transcribe(part)
                    except Exception as e:  # noqa: BLE001 - a failed part leaves the item without its words, not the session broken
                        failed.append((index, e))
                        words.append(None)
                        heard.append(HeardPart(index, seconds, None, *_why(e)))
                        continue
                    words.append(tr.text)
                    heard.append(HeardPart(index, seconds, tr.text))
                    language = language or (tr.language if tr.text.strip() else None)
        except asyncio.CancelledError:
            ctx.memory.words_known(item.id)  # (deleted, or the session closes) nobody waits for them
            raise
        finally:
            self._tasks.pop(item.id, None)
            self._pending_s.pop(item.id, None)
        if ctx.memory.get(item.id) is not item:
            ctx.memory.words_known(item.id)
            return  # deleted meanwhile
        set_words(item, parts, words)
        item.language = language or ctx.last_language
        self._heard[item.id] = tuple(heard)
        ctx.memory.words_known(item.id)
        if failed:
            self._failed(item, failed)
            return
        ctx.publish(E.UserTranscript(t=ctx.clock.now(), item_id=item.id, text=item.text, language=item.language,
                                     final=True, audio_s=round(sum(h.seconds for h in heard), 3)))

    def _failed(self, item: Item, failed: list[tuple[int, Exception]]) -> None:
        """`user.transcription_failed` for the item's parts whose STT failed (the first failure
        says why; a failure that is not the provider's own is a bug, and logged as one)."""
        ctx = self._ctx
        for _, e in failed[1:]:
            if not isinstance(e, MoksoriError):
                log.error("session %s: item %s: transcription failed", ctx.id, item.id, exc_info=e)
        ctx.publish(transcription_failed(ctx.clock.now(), item.id, tuple(i for i, _ in failed), failed[0][1],
                                         text=item.text, session_id=ctx.id))

    async def transcribe(self, audio16k: np.ndarray) -> Transcript:
        """The words of `audio16k` (any length), as background work in preemptible windows."""
        ctx = self._ctx
        lang = ctx.stt_language()
        texts: list[str] = []
        with background():  # (also when awaited in a client's event handler: this block only)
            for start, end in await self._windows(audio16k):
                tr = await self._window(audio16k[start:end], lang)
                if tr.text.strip():
                    texts.append(tr.text.strip())
                    lang = lang or tr.language  # the first words decide the language of the rest
        text = re.sub(r"\s+", " ", " ".join(texts)).strip()
        return Transcript(text, lang or ctx.last_language, True, len(audio16k) / VAD_RATE)

    async def _windows(self, audio16k: np.ndarray) -> list[tuple[int, int]]:
        """[(start, end)] samples of the windows to transcribe: the whole of a short item; else
        the VAD's speech regions, joined while they fit in `WINDOW_S` (silence between is skipped)."""
        limit = int(WINDOW_S * VAD_RATE)
        if len(audio16k) <= limit:
            return [(0, len(audio16k))]
        # the VAD over minutes of audio takes a while (a frame at a time): off the event loop
        regions = await run_blocking(speech_regions, self._ctx.stack.vad, audio16k, max_region_s=WINDOW_S)
        windows: list[tuple[int, int]] = []
        for a_s, b_s in regions:
            a, b = int(a_s * VAD_RATE), int(b_s * VAD_RATE)
            if windows and b - windows[-1][0] <= limit:
                windows[-1] = (windows[-1][0], b)
            else:
                windows.append((a, b))
        return windows

    async def _window(self, audio: np.ndarray, lang: str | None) -> Transcript:
        ctx = self._ctx
        for attempt in range(GIVE_WAY_TRIES + 1):
            opts = STTOptions(language=lang, languages=ctx.cfg.languages, prompt=ctx.cfg.stt_prompt,
                              preemptible=attempt < GIVE_WAY_TRIES)
            final: Transcript | None = None
            async for tr in ctx.stt.transcribe(one_chunk(audio), opts):
                if tr.final:
                    final = tr
            if final is not None:
                self.windows += 1
                return final
            self.gave_way += 1  # a live turn's decode went first: this window again
        return Transcript("", lang or ctx.last_language, True, len(audio) / VAD_RATE)
