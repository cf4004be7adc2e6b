"""`engine/reply_speech.synthesize_into`: one clause's TTS audio resampled into the reply's playback.

The resampler holds back the end of what it is given until it is flushed. A clause short enough
that all of its audio was held back (a one-word clause at a low output rate: 8 kHz phone calls)
was dropped whole: the flushed tail was added only when an earlier piece had come out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from moksori.audio.frames import Frame
from moksori.engine.reply_speech import synthesize_into
from moksori.engine.speaker import Playback
from moksori.providers.base import TTS, TTSOptions


class Beep(TTS):
    """A stand-in TTS: `seconds` of a tone at `rate`, in pieces of `piece_s`."""

    name = "beep"

    def __init__(self, seconds: float, rate: int = 22050, piece_s: float = 0.02) -> None:
        self.seconds, self.rate, self.piece_s = seconds, rate, piece_s

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        n = int(self.seconds * self.rate)
        t = np.arange(n) / self.rate
        tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        step = max(1, int(self.piece_s * self.rate))
        for i in range(0, n, step):
            yield Frame(tone[i:i + step], self.rate)


@pytest.mark.parametrize("seconds", [0.03, 0.06, 0.5])
@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_a_clause_is_played_whole_at_any_output_rate(seconds, rate):
    async def main() -> tuple[Playback, list[int]]:
        pb = Playback("resp_1", "item_1", rate)
        first: list[int] = []
        await synthesize_into(Beep(seconds), "Hi.", TTSOptions(), rate, pb, "Hi.", on_first=first.append)
        return pb, first

    pb, first = asyncio.run(main())
    samples = sum(n for _, n in pb.segments)
    want = seconds * rate
    assert len(pb.segments) == 1 and pb.segments[0][0] == "Hi."
    assert abs(samples - want) <= 0.02 * want + 2, (samples, want)  # all of it, as one segment
    assert len(first) == 1 and first[0] > 0
