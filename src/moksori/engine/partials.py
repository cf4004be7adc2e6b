"""Live partial transcripts while the user is still speaking (for captions, e.g. the web UI).

Every `interval` of speech, the turn so far is transcribed and published as
`user.transcript_delta` (a full hypothesis: replace, do not append). It stops when the turn ends.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from moksori.providers.base import STTOptions, one_chunk

if TYPE_CHECKING:
    from moksori.engine.session import Session


class PartialTranscripts:
    def __init__(self, session: "Session") -> None:
        self.session = session
        self._task: asyncio.Task | None = None

    def start(self, turn_id: int) -> None:
        cfg = self.session.cfg
        if cfg.partial_interval_ms <= 0 or not cfg.transcribe_input:
            return
        self.stop()
        self._task = self.session._spawn(self._run(turn_id), f"partials-{turn_id}")  # noqa: SLF001

    def stop(self) -> None:
        if self._task and not self._task.done():
            self._task.cancel()
        self._task = None

    async def _run(self, turn_id: int) -> None:
        s = self.session
        interval = s.cfg.partial_interval_ms / 1000
        item_id = s._user_item_ids.get(turn_id)  # noqa: SLF001
        onset = s.clock.now()
        last = ""
        while True:
            await s.clock.sleep(interval)
            if s.taker.turn_id != turn_id:
                return
            if s.taker.state != "speaking":
                continue
            audio = s.audio_between(onset - 2.0, s.clock.now())
            opts = STTOptions(language=None if s.cfg.language == "auto" else s.cfg.language,
                              languages=s.cfg.languages)
            async for tr in s.stack.stt.transcribe(one_chunk(audio), opts):
                if s.taker.turn_id == turn_id and s.taker.state == "speaking" and tr.text and tr.text != last:
                    last = tr.text
                    s.publish("user.transcript_delta", {"turn_id": turn_id, "item_id": item_id, "text": tr.text,
                                                        "language": tr.language, "final": False})
