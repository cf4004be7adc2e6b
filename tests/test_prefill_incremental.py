"""The LLM prefill fed by incremental STT's commits, on real speech with the real stack.

Real Whisper, the packaged SmolLM2 on llama.cpp, real recorded speech (en_001, a 7 s read
sentence) on the virtual-time loop: a model call takes no session time, so the incremental
decodes finish while the user speaks. With `stt.incremental` and `llm.prefill` on, the prefill
reads the committed words, no live partial is decoded for it, and what it evaluates is the start
of the reply's own prompt (the reply finds it in the KV cache).
"""

from __future__ import annotations

import pytest

from moksori.audio.frames import Frame
from moksori.audio.wav import load_audio
from moksori.engine import events as E
from moksori.engine.config import config_from_settings
from moksori.engine.session import Session
from moksori.providers.base import ChatRequest
from moksori.settings import load_settings
from moksori.testing.harness import play_into_session, settle
from moksori.testing.virtual_time import run_virtual
from speech import SPEECH, requires_speech, utt

pytestmark = [pytest.mark.models, requires_speech]


def test_committed_words_are_prefilled_and_the_reply_reuses_them(stack) -> None:
    llm = stack.llm
    calls: list[tuple[ChatRequest, str, int]] = []
    real = llm.prefill

    async def recording(request: ChatRequest, upto: str) -> int:
        n = await real(request, upto)
        calls.append((request, upto, n))
        return n

    config = config_from_settings(load_settings(), output_rate=16000, output_lead_ms=0, stt_incremental=True,
                                  llm_prefill=True, partials="auto")
    speech = load_audio(SPEECH / utt("en_001").file, rate=16000)

    async def main():
        llm.prefill = recording  # type: ignore[method-assign]
        try:
            session = Session(stack, config)
            rec = await play_into_session(session, [Frame.silence(0.5, 16000), speech, Frame.silence(4.0, 16000)])
            await settle(session, 30)
            await session.close()
        finally:
            del llm.prefill
        return rec, session

    rec, s = run_virtual(main())
    assert len(rec.of(E.UserTurnEnded)) == 1
    assert s.incremental.commits >= 1, "a piece of the 7 s turn was committed"
    assert s.partials.decodes == 0, "no live partial was decoded for the prefill"
    assert calls, "the committed words went to the LLM's prefill"
    final = rec.of(E.UserTranscript)[0].text
    for _, upto, _ in calls:
        assert final.startswith(upto), (upto, final)  # committed words are the final's start
    done = [e for e in rec.of(E.AgentResponseDone) if e.usage is not None]
    assert done
    # the reply found the last prefilled prompt (system prompt, template, committed words) cached
    inner = getattr(llm, "providers", [llm])[0]
    request, upto, _ = calls[-1]
    prompt = inner.render(request)
    prefilled = len(inner._tokens(prompt[:prompt.rfind(upto) + len(upto)]))
    assert done[0].usage.cached_tokens >= prefilled, (done[0].usage, prefilled)
