"""Transcribing a whole recording: speech regions from the VAD, then each region through STT.

This is the path for files and uploads (`moksori transcribe`, `/v1/audio/transcriptions`).
Gating on the VAD first matters: on pure noise Whisper invents fluent sentences ("I'm going to
go to the next one.") with no reliable confidence signal, while Silero finds no speech at all.
Live sessions are gated the same way by the turn-taker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from moksori.providers.base import STT, VAD, STTOptions, one_chunk
from moksori.providers.threads import run_blocking
from moksori.providers.vad_segments import speech_regions


@dataclass
class LongFormResult:
    text: str
    language: str | None
    segments: list[dict] = field(default_factory=list)


async def transcribe_long(stt: STT, vad: VAD, audio16k: np.ndarray, *, language: str | None = None,
                          languages: tuple[str, ...] = ("en", "ko"), prompt: str | None = None) -> LongFormResult:
    """`prompt`: the STT's prompt (Whisper's "previous text") for every speech region."""
    segments: list[dict] = []
    lang = language
    # the VAD over a whole file takes seconds (a frame at a time): off the event loop
    for start, end in await run_blocking(speech_regions, vad, audio16k):
        piece = audio16k[int(start * 16000):int(end * 16000)]
        final = None
        async for tr in stt.transcribe(one_chunk(piece), STTOptions(language=lang, languages=languages,
                                                                        prompt=prompt)):
            final = tr
        if final is None:
            continue
        lang = lang or final.language  # the first region decides the language of the rest
        if final.text.strip():
            segments.append({"start": round(start, 2), "end": round(end, 2), "text": final.text.strip()})
    text = re.sub(r"\s+", " ", " ".join(s["text"] for s in segments)).strip()
    return LongFormResult(text, lang, segments)
