"""Live partial transcripts while the user is still speaking (for captions, e.g. the web UI).

Every `interval` of speech, the turn so far is transcribed and published as
`user.transcript_delta` (a full hypothesis: replace, do not append). It stops when the turn ends.

A partial never delays the turn's final transcript (setting `stt.partial_yield`, on): its decode
is background work marked preemptible, so it gives way between its steps (features, encoder,
decoder) as soon as a live turn's decode is queued for the same model, and yields nothing. When
the user stops, the pause's decode (the final transcript) is queued ~70 ms later: a partial
still running then is abandoned after the step it is in (CTranslate2 cannot stop its encoder or
decoder midway), instead of being finished first (its result was stale anyway: a partial is
published only while the user is speaking). Without it, the final decode waited for the whole
partial (docs/LATENCY.md). A caption is skipped, never wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

import numpy as np

from moksori.engine import events as E
from moksori.engine.clock import Clock
from moksori.engine.config import SessionConfig
from moksori.engine.partial_readers import PartialReaders
from moksori.providers.base import STT, STTOptions, Transcript, one_chunk
from moksori.providers.threads import set_background


class PartialsHost(Protocol):
    """The port partial transcripts use (the session's context implements it)."""

    @property
    def clock(self) -> Clock: ...
    @property
    def cfg(self) -> SessionConfig: ...
    @property
    def stt(self) -> STT: ...

    def publish(self, ev: E.Event) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...
    def stt_language(self) -> str | None: ...


class UserTurn(Protocol):
    """Where the user's turn is: the TurnTaker's `turn_id` and `state`."""

    @property
    def turn_id(self) -> int: ...
    @property
    def state(self) -> str: ...


class PartialTranscripts:
    def __init__(self, host: PartialsHost, turn: UserTurn, audio_between: Callable[[float, float], np.ndarray],
                 item_id_of: Callable[[int], str | None],
                 incremental: Callable[[int], Awaitable[Transcript | None]] | None = None,
                 on_partial: Callable[[int, str], None] | None = None) -> None:
        self._host = host
        self._on_partial = on_partial  # (turn id, text): the LLM prefill (engine/prefill.py)
        self._incremental = incremental  # committed words + the rest (engine/incremental_stt.py)
        self._turn = turn
        self._audio_between = audio_between
        self._item_id_of = item_id_of
        self._task: asyncio.Task[Any] | None = None
        self.readers = PartialReaders(lambda: host.cfg.partials)
        self.decodes = 0  # partial decodes started, all turns (for benchmarks)
        self.gave_way = 0  # ... of which gave way to a live turn's decode (yielded nothing)
        self.unread = 0  # partials not decoded: nobody read them (mode auto, no reader)
        self.last_span: tuple[float, float] | None = None  # session times of the latest one

    def start(self, turn_id: int) -> None:
        cfg = self._host.cfg
        if cfg.partial_interval_ms <= 0 or not cfg.transcribe_input or cfg.partials == "off":
            return
        self.stop()
        self._task = self._host.spawn(self._run(turn_id), f"partials-{turn_id}")

    def stop(self) -> None:
        if self._task and not self._task.done():
            self._task.cancel()
        self._task = None

    async def _run(self, turn_id: int) -> None:
        set_background()  # captions wait behind the turn's own STT and the replies
        host, turn = self._host, self._turn
        interval = host.cfg.partial_interval_ms / 1000
        item_id = self._item_id_of(turn_id)
        onset = host.clock.now()
        last = ""
        while True:
            await host.clock.sleep(interval)
            if turn.turn_id != turn_id:
                return
            if turn.state != "speaking":
                continue
            if not self.readers.wanted():
                self.unread += 1
                continue
            started, got = host.clock.now(), False
            self.decodes += 1
            async for tr in self._transcribe(turn_id, onset):
                got = True
                if turn.turn_id == turn_id and turn.state == "speaking" and tr.text and tr.text != last:
                    last = tr.text
                    host.publish(E.UserTranscriptDelta(t=host.clock.now(), turn_id=turn_id, item_id=item_id,
                                                       text=tr.text, language=tr.language, final=False))
                    if self._on_partial is not None:
                        self._on_partial(turn_id, tr.text)
            self.gave_way += not got
            self.last_span = (started, host.clock.now())

    async def _transcribe(self, turn_id: int, onset: float) -> AsyncIterator[Transcript]:
        if self._incremental is not None:
            tr = await self._incremental(turn_id)
            if tr is not None:
                yield tr
                return
        host = self._host
        audio = self._audio_between(onset - 2.0, host.clock.now())
        opts = STTOptions(language=host.stt_language(), languages=host.cfg.languages,
                          prompt=host.cfg.stt_prompt, preemptible=host.cfg.partial_yield)
        async for tr in host.stt.transcribe(one_chunk(audio), opts):
            yield tr
