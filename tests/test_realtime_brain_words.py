"""The realtime brain's user words (`brains/realtime/words.py` `UserWords`) when a source of them
fails, in virtual time: the upstream's transcript, the local STT's words (moksori turns), either
failing, in either order, or the upstream late.

An item whose words cannot be had from anywhere is `user.transcription_failed` (its one audio
part without words), never an empty `user.transcript`; while another source may still give
words, it waits for them (bounded by `TRANSCRIPT_WAIT_S`). The servers, the SDK and real
refused connections are tests/test_realtime_brain_transcription_failures.py.
"""

from __future__ import annotations

import asyncio

from moksori.brains.realtime.words import TRANSCRIPT_WAIT_S, UserWords
from moksori.engine import events as E
from moksori.engine.clock import LoopClock
from moksori.engine.config import SessionConfig
from moksori.engine.memory import Item
from moksori.engine.session_context import SessionContext
from moksori.engine.tools import ToolBox
from moksori.errors import ProviderError
from moksori.testing.fakes import fake_stack
from moksori.testing.virtual_time import run_virtual

STT_DOWN = ProviderError("cannot reach STT server 127.0.0.1:9 (ConnectError)", retryable=True, provider="openai-stt")


class Words:
    """A `UserWords` over a real session context, one user item `item_1` in memory, every event kept."""

    def __init__(self, *, upstream_transcribes: bool, local: bool = True) -> None:
        self.ctx = SessionContext(fake_stack(), SessionConfig(language="en"), LoopClock(), "sess_words", ToolBox())
        self.events: list[E.Event] = []
        self.ctx.bus.listen(self.events.append)
        self.words_known: list[tuple[str, str]] = []
        self.words = UserWords(self.ctx, upstream_transcribes=lambda: upstream_transcribes,
                               local_words_coming=lambda: local,
                               on_words=lambda item_id, text: self.words_known.append((item_id, text)))
        self.item = self.ctx.memory.add(Item(id="item_1", role="user", audio=True))

    def outcome(self) -> list[E.Event]:
        return [e for e in self.events if isinstance(e, (E.UserTranscript, E.UserTranscriptionFailed))]


def failed(w: Words) -> E.UserTranscriptionFailed:
    out, = w.outcome()
    assert isinstance(out, E.UserTranscriptionFailed), out
    assert out.item_id == "item_1" and out.content_indexes == (0,) and out.message
    assert w.item.text == "" and w.item.parts == [("audio", None)]  # no words, not empty ones
    assert w.words_known == [("item_1", "")]
    return out


def transcript(w: Words) -> str:
    out, = w.outcome()
    assert isinstance(out, E.UserTranscript) and out.item_id == "item_1", out
    assert w.item.text == out.text and w.item.parts == []
    return out.text


def test_the_upstreams_failure_without_local_words_fails_the_item() -> None:
    async def main() -> Words:
        w = Words(upstream_transcribes=True, local=False)  # the upstream's VAD: no local STT
        w.words.expect("item_1", 0)
        w.words.upstream("item_1", "", failed=True, code="transcription_failed", error="the upstream could not")
        return w

    out = failed(run_virtual(main()))
    assert (out.code, out.message) == ("transcription_failed", "the upstream could not")


def test_the_upstreams_failure_waits_for_local_words_still_coming() -> None:
    async def main() -> tuple[Words, int]:
        w = Words(upstream_transcribes=True)
        w.words.expect("item_1", 0)
        w.words.upstream("item_1", "", failed=True, error="the upstream could not")
        before = len(w.outcome())
        w.words.set_local("item_1", "i have a thousand thoughts", 2.0)
        return w, before

    w, before = run_virtual(main())
    assert before == 0 and transcript(w) == "i have a thousand thoughts"


def test_both_failing_fail_the_item_in_either_order() -> None:
    async def upstream_first() -> Words:
        w = Words(upstream_transcribes=True)
        w.words.expect("item_1", 0)
        w.words.upstream("item_1", "", failed=True, code="upstream_code", error="the upstream could not")
        w.words.local_failed("item_1", STT_DOWN, 2.0)
        return w

    async def local_first() -> Words:
        w = Words(upstream_transcribes=True)
        w.words.local_failed("item_1", STT_DOWN, 2.0)
        w.words.expect("item_1", 0)
        w.words.upstream("item_1", "", failed=True, error="the upstream could not")
        return w

    assert failed(run_virtual(upstream_first())).code == "upstream_code"
    assert failed(run_virtual(local_first())).message == "the upstream could not"


def test_a_failed_local_stt_without_upstream_transcription_fails_the_item() -> None:
    async def before_commit() -> Words:
        w = Words(upstream_transcribes=False)
        w.words.local_failed("item_1", STT_DOWN, 2.0)
        w.words.expect("item_1", 0)
        return w

    async def after_commit() -> Words:
        w = Words(upstream_transcribes=False)
        w.words.expect("item_1", 0)
        w.words.local_failed("item_1", STT_DOWN, 2.0)
        return w

    for main in (before_commit, after_commit):
        out = failed(run_virtual(main()))
        assert (out.code, out.message) == ("provider_error", str(STT_DOWN))


def test_a_failed_local_stt_and_a_late_upstream_fail_the_item_at_the_deadline() -> None:
    async def main() -> tuple[Words, int, float]:
        w = Words(upstream_transcribes=True)
        w.words.local_failed("item_1", STT_DOWN, 2.0)
        w.words.expect("item_1", 0)
        t0 = asyncio.get_running_loop().time()
        waiting = len(w.outcome())
        await w.words.wait(0, timeout=60.0)
        return w, waiting, asyncio.get_running_loop().time() - t0

    w, waiting, waited = run_virtual(main())
    assert waiting == 0 and abs(waited - TRANSCRIPT_WAIT_S) < 0.1, waited
    failed(w)


def test_the_upstreams_words_after_a_failed_local_stt_are_the_transcript() -> None:
    async def main() -> Words:
        w = Words(upstream_transcribes=True)
        w.words.expect("item_1", 0)
        w.words.local_failed("item_1", STT_DOWN, 2.0)
        w.words.upstream("item_1", "i have a thousand thoughts", failed=False)
        return w

    assert transcript(run_virtual(main())) == "i have a thousand thoughts"
