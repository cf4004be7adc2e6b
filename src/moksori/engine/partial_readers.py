"""Who reads live partial transcripts: a partial is decoded only when someone does.

A partial costs a Whisper decode every `stt.partial_interval_ms` of the user's speech, on the
cores the turn's final decode and the reply need (docs/LATENCY.md). Its readers:

* a Realtime connection that asked for the engine's events (`?moksori_timeline=1`: the browser
  app's captions, over the WebSocket or WebRTC; `server/realtime_conn.py`);
* a follower of the conversation's live events (`GET /v1/conversations/{id}/events`, on any
  worker of a cluster), while one is connected (`server/live_events.py`);
* the LLM prefill (`engine/prefill.py`), while it is on.

Nothing else reads them: the Realtime API sends the input transcription only with the final
transcript, a phone call's carrier never sees them, the CLI chat prints final transcripts, the
end-of-turn logic and backchannels read the pauses' own decodes, and incremental STT
(`engine/incremental_stt.py`) runs its own decodes (a partial reuses its committed words and may
confirm a candidate, but nothing waits for one).

`mode` (`SessionConfig.partials`; setting `stt.partials`, env `MOKSORI_STT_PARTIALS`):
`auto` decodes while a reader is declared and reading (the setting's default), `on` always (the
engine's default: a program that builds a `Session` reads its bus), `off` never. The question is
asked before each decode, so a reader that appears mid-turn gets the next partial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

PartialsMode = Literal["auto", "on", "off"]


class PartialReaders:
    def __init__(self, mode: Callable[[], PartialsMode]) -> None:
        self._mode = mode
        self._readers: dict[int, tuple[str, Callable[[], bool]]] = {}
        self._next = 0

    def add(self, name: str, reading: Callable[[], bool] | None = None) -> Callable[[], None]:
        """Declare a reader; `reading`: whether it reads right now (default: always). Returns
        the call that withdraws it."""
        key, self._next = self._next, self._next + 1
        self._readers[key] = (name, reading or (lambda: True))

        def withdraw() -> None:
            self._readers.pop(key, None)

        return withdraw

    def reading(self) -> list[str]:
        """The readers reading right now."""
        return [name for name, now in self._readers.values() if now()]

    @property
    def mode(self) -> PartialsMode:
        return self._mode()

    def wanted(self) -> bool:
        mode = self._mode()
        if mode != "auto":
            return mode == "on"
        return any(now() for _, now in self._readers.values())
