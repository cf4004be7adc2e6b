"""A TTS that streams each clause in pieces (as Piper now does), through the session in virtual
time: the pieces are resampled as one signal (no edge at each piece) and a barge-in keeps the
words heard once, not once per piece.

`PiecewiseToneTTS` is a fake standing in for the voice: a chirp at 22,050 Hz (Piper's rate, so
the reply is resampled to the session's rate), cut into uneven pieces.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from moksori.audio.frames import Frame
from moksori.audio.resample import resample
from moksori.engine import events as E
from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.providers.base import TTS, TTSCaps, TTSOptions
from moksori.testing.fakes import ScriptedLLM, ScriptedSTT, fake_stack, quiet, tone
from moksori.testing.harness import play_into_session, settle
from moksori.testing.virtual_time import run_virtual

RATE = 22050
CFG = SessionConfig(output_rate=16000, partial_interval_ms=0)


def chirp(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return 0.3 * np.sin(2 * np.pi * (300 * t + 400 * t * t))


class PiecewiseToneTTS(TTS):
    name = "piecewise-tone-tts"

    def __init__(self) -> None:
        self.caps = TTSCaps(sample_rate=RATE, languages=("en",), voices=("tone",))
        self.clauses: list[np.ndarray] = []

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        whole = Frame.from_float(chirp(0.06 * len(text)), RATE)
        self.clauses.append(whole.samples)
        cuts = [0, 4096, 4096 + 12288, len(whole)]
        for a, b in zip(cuts, cuts[1:]):
            if a < b:
                yield Frame(whole.samples[a:b], RATE)


def test_a_clause_streamed_in_pieces_is_resampled_as_one_signal() -> None:
    tts = PiecewiseToneTTS()

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["hi."]), llm=ScriptedLLM("Hello there, nice to meet you."), tts=tts),
                    CFG)
        s.bus.listen(lambda ev: chunks.append(ev.frame.samples) if isinstance(ev, E.AgentAudio) else None)
        await play_into_session(s, [quiet(0.3), tone(1.0), quiet(5.0)])
        await settle(s)
        await s.close()

    chunks: list[np.ndarray] = []
    run_virtual(main())
    audio = np.concatenate(chunks).astype(np.float64)
    whole = np.concatenate([resample(Frame(c, RATE), 16000).samples for c in tts.clauses]).astype(np.float64)
    assert len(tts.clauses) >= 1
    # the reply's first 10 ms may be trimmed (leading-silence trim): align on the end
    n = min(len(audio), len(whole))
    assert abs(len(audio) - len(whole)) < 16000 * 0.05
    a, w = audio[-n:], whole[-n:]
    snr = 10 * np.log10(np.sum(w ** 2) / max(np.sum((a - w) ** 2), 1e-9))
    assert snr > 40, f"pieces resampled apart: SNR {snr:.1f} dB against the clause resampled whole"


def test_a_barge_in_counts_the_words_of_a_streamed_clause_once() -> None:
    reply = "This is a long answer that goes on and on with many words so that it takes several seconds to say."

    async def main():
        s = Session(fake_stack(stt=ScriptedSTT(["tell me a story.", "stop please."]), llm=ScriptedLLM(reply),
                               tts=PiecewiseToneTTS()), CFG)
        rec = await play_into_session(s, [quiet(0.3), tone(1.0), quiet(2.0), tone(0.8), quiet(3.0)])
        await settle(s)
        await s.close()
        return rec

    rec = run_virtual(main())
    interrupted = rec.of(E.AgentInterrupted)
    assert len(interrupted) == 1
    heard = interrupted[0].text.split()
    assert heard and heard == reply.split()[:len(heard)], interrupted[0].text
    assert len(heard) < len(reply.split())
