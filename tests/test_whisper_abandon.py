"""A live partial's Whisper decoder step is abandoned, not waited for (`stt.partial_abandon`).

CTranslate2's `Whisper.generate` cannot be stopped midway, has no per-token callback, and a
decode cannot be split into calls continuing from the tokens so far: where a continuation
starts, CTranslate2 forces a timestamp token, so the split decode says other words
(`benchmarks/whisper_chunked_decode.json`). So with `partial_abandon` a preemptible decode runs
its decoder step asynchronously on one of two model replicas, and its caller stops waiting for
it once a live turn's decode is queued (`threads.should_yield`): the final decode starts on the
other replica while the abandoned step finishes, unread.

On real speech with the real Whisper model:

* a partial caught in its decoder step gives way (yields nothing), and the final decode starts
  while that step is still running (it no longer waits for it), with the transcript the model
  gives alone;
* with nothing waiting, the asynchronous path gives exactly the one-call path's transcripts,
  also when the short window loops and the 30 s window is decoded again (tel_001 at 8 kHz).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
from speech import load16k, prepared_data_dir, requires_speech, utt

from moksori.providers import threads
from moksori.providers.base import STTOptions, Transcript, one_chunk

T = 20.0  # upper bound for any real wait in these tests


def _build(tmp_path_factory: pytest.TempPathFactory, abandon: bool) -> Any:
    from moksori.providers.registry import build_stt
    from moksori.settings import load_settings

    return build_stt(load_settings(data_dir=prepared_data_dir(tmp_path_factory), stt={"partial_abandon": abandon}))


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return _build(tmp_path_factory, abandon=False)


@pytest.fixture(scope="module")
def abandoning(tmp_path_factory):
    return _build(tmp_path_factory, abandon=True)


class Watch:
    """Wraps the CTranslate2 model: records the partial's pending decoder step and, when the
    final's encoder starts, whether that step was still running."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.pending: list[Any] = []
        self.decoder_started = threading.Event()
        self.partial_running_at_final_encode: list[bool] = []

    def generate(self, *a: Any, **kw: Any) -> Any:
        out = self._model.generate(*a, **kw)
        if kw.get("asynchronous"):
            self.pending.extend(out)
            self.decoder_started.set()
        return out

    def encode(self, *a: Any, **kw: Any) -> Any:
        if self.pending:  # an encoder after the partial's decoder started: the final's
            self.partial_running_at_final_encode.append(not self.pending[0].done())
        return self._model.encode(*a, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@pytest.mark.models
@requires_speech
def test_a_partial_in_its_decoder_is_abandoned_and_the_final_starts_at_once(abandoning) -> None:
    # a long turn so far (~18 s: a decoder step of most of a second) and a short final turn
    partial_audio = np.concatenate([load16k(utt(n).path) for n in ("en_001", "en_003", "en_004")])
    final_audio = load16k(utt("en_002").path)
    opts = STTOptions(language="en")
    alone = abandoning.transcribe_array(final_audio, opts)
    assert alone.text.strip()

    watch = Watch(abandoning._wm.model)
    abandoning._wm.model = watch
    before = abandoning.abandoned

    async def main() -> tuple[list[Transcript], list[Transcript]]:
        async def partial() -> list[Transcript]:
            threads.set_background()
            return [tr async for tr in abandoning.transcribe(one_chunk(partial_audio), STTOptions(
                language="en", preemptible=True))]

        p = asyncio.ensure_future(partial())
        assert await asyncio.to_thread(watch.decoder_started.wait, T)
        final = [tr async for tr in abandoning.transcribe(one_chunk(final_audio), opts)]
        return await asyncio.wait_for(p, T), final

    try:
        partial_out, final_out = asyncio.run(main())
        for pending in watch.pending:  # let the abandoned step end before other tests use the model
            pending.result()
    finally:
        abandoning._wm.model = watch._model
    assert partial_out == []  # it gave way: no caption (a caption is skipped, never a wrong one)
    assert abandoning.abandoned == before + 1
    # the final's encoder ran while the partial's decoder step was still running: no wait for it
    assert watch.partial_running_at_final_encode[:1] == [True]
    assert [tr.text for tr in final_out] == [alone.text]


@pytest.mark.models
@requires_speech
@pytest.mark.parametrize("name", ["en_001", "en_005", "tel_001"])
def test_the_asynchronous_decode_gives_the_one_call_transcript(whisper, abandoning, name) -> None:
    u = utt(name)
    audio = load16k(u.path_8k if name.startswith("tel") else u.path)
    one_call = whisper.transcribe_array(audio, STTOptions(language="en"))

    async def background() -> list[Transcript]:
        threads.set_background()
        return [tr async for tr in abandoning.transcribe(one_chunk(audio), STTOptions(language="en", preemptible=True))]

    before = abandoning.abandoned
    out = asyncio.run(background())
    assert abandoning.abandoned == before  # nothing waited: nothing abandoned
    assert out == [one_call]
    assert one_call.text.strip()
