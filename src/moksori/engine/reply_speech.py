"""A reply's clauses as speech: the text a clause hands to TTS, and the clause's audio,
resampled to the session's output rate, into the reply's playback."""

from __future__ import annotations

from collections.abc import Callable

from moksori.audio.frames import Frame, trim_leading_silence
from moksori.audio.resample import StreamResampler
from moksori.engine.speaker import Playback
from moksori.providers.base import TTS, TTSOptions
from moksori.text.korean_numbers import normalize_for_tts
from moksori.text.speakable import speakable

__all__ = ["spoken_text", "synthesize_into"]


def spoken_text(clause: str, language: str) -> str | None:
    """What TTS is given for a clause (symbols and numbers in words); None: nothing to say."""
    spoken = normalize_for_tts(speakable(clause), language).strip()
    return spoken if spoken and any(ch.isalnum() for ch in spoken) else None


async def synthesize_into(tts: TTS, spoken: str, opts: TTSOptions, rate: int, playback: Playback | None,
                          clause: str, on_first: Callable[[int], None] | None = None) -> None:
    """One clause's audio into `playback` (None, or cancelled: made and dropped), as one segment
    of `clause`. `on_first`: this is the reply's first sound; its leading silence is trimmed (a
    sound, not a pause, starts the reply) and `on_first(samples)` is called with its first piece."""
    # one resampler per clause: a TTS that streams a sentence in pieces (Piper's windows)
    # is resampled as one signal, with no edge at each piece
    rs: StreamResampler | None = None
    more = False  # a piece of this clause is queued: the next ones continue its segment

    def add(out: Frame) -> None:
        nonlocal on_first, more
        if on_first is not None:
            out = trim_leading_silence(out)
            on_first(len(out))
            on_first = None
        if playback is not None and not playback.cancelled:
            playback.add(out, clause, more=more)
            more = True

    async for frame in tts.synthesize(spoken, opts):
        rs = rs or StreamResampler(frame.rate, rate)
        out = Frame(rs.process(frame.samples), rate)
        if len(out):
            add(out)
    # the resampler's held-back tail; a short clause's whole audio at a low rate (it was dropped
    # when no earlier piece had come out: a clause under ~0.1 s at 8 kHz went unheard)
    tail = rs.flush() if rs is not None else None
    if tail is not None and len(tail):
        add(Frame(tail, rate))
