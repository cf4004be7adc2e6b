"""Incremental transcription on real speech: the same words as decoding the whole turn.

Real Whisper, real recorded speech with pauses spliced in (long enough for the engine to
speculate, too short to end the turn), on the virtual-time loop (a model call takes no session
time, so each pause's decode and the confirming decode finish before the user resumes).
"""

from __future__ import annotations


import numpy as np
import pytest

from moksori.audio.frames import Frame, concat
from moksori.audio.wav import load_audio
from moksori.engine import events as E
from moksori.engine.config import config_from_settings
from moksori.engine.session import Session
from moksori.settings import load_settings
from moksori.testing.harness import Recording, play_into_session, settle
from moksori.testing.virtual_time import run_virtual
from speech import SPEECH, requires_speech, utt, wer

pytestmark = [pytest.mark.models, requires_speech]


def with_pauses(frame: Frame, pause_s: float, at: tuple[float, ...]) -> Frame:
    """Insert pauses at the quietest 50 ms near each fraction `at` of the speech."""
    x = frame.samples.astype(np.float32)
    win = frame.rate // 20
    cuts = []
    for frac in at:
        mid = int(len(x) * frac)
        lo, hi = max(0, mid - frame.rate // 2), min(len(x) - win, mid + frame.rate // 2)
        energies = [float(np.mean(x[i:i + win] ** 2)) for i in range(lo, hi, win // 2)]
        cuts.append(lo + int(np.argmin(energies)) * (win // 2) + win // 2)
    parts, prev = [], 0
    for c in sorted(cuts):
        parts += [Frame(frame.samples[prev:c], frame.rate), Frame.silence(pause_s, frame.rate)]
        prev = c
    parts.append(Frame(frame.samples[prev:], frame.rate))
    return concat(parts)


def run(stack, audio: list[Frame], incremental: bool) -> tuple[Recording, Session]:
    config = config_from_settings(load_settings(), output_rate=16000, output_lead_ms=0, partial_interval_ms=0,
                                  stt_incremental=incremental)

    async def main():
        session = Session(stack, config)
        rec = await play_into_session(session, audio)
        await settle(session, 30)
        await session.close()
        return rec, session

    return run_virtual(main())


@pytest.mark.parametrize("name", ["en_001", "en_004"])
def test_incremental_transcript_matches_whole_turn_decoding(stack, name: str) -> None:
    u = utt(name)
    speech = with_pauses(load_audio(SPEECH / u.file, rate=16000), 0.25, (0.35, 0.7))
    audio = [Frame.silence(0.5, 16000), speech, Frame.silence(4.0, 16000)]
    whole, s_off = run(stack, audio, incremental=False)
    inc, s_on = run(stack, audio, incremental=True)
    t_whole = " ".join(e.text for e in whole.of(E.UserTranscript))
    t_inc = " ".join(e.text for e in inc.of(E.UserTranscript))
    assert len(inc.of(E.UserTurnEnded)) == len(whole.of(E.UserTurnEnded)) == 1
    assert s_off.incremental.commits == 0 and s_off.incremental.decoded_s == 0.0
    assert s_on.incremental.commits >= 1, "no piece was committed: nothing was decoded incrementally"
    # the final decode heard only the tail, not the whole turn
    assert s_on.incremental.last_tail_s < len(speech.samples) / 16000 * 0.8
    assert wer(t_whole, t_inc) <= 0.1, (t_whole, t_inc)
    assert wer(u.transcript, t_inc) <= wer(u.transcript, t_whole) + 0.05, (u.transcript, t_whole, t_inc)

