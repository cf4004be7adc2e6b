"""`Session.close()` waits for the replies it cancels.

`Responses.close()` cancels every reply in flight and hands their tasks to `Session.close()`,
which awaits them with its own tasks, so nothing of a reply runs after the session closed (its
LLM stream's close, its TTS). It handed back none: a cancel takes the reply out of the active
ones at once, and the tasks were collected from them after the cancels. A reply whose stream
takes a while to close (as an HTTP stream does) was still running when `close()` returned.

Virtual time; the LLM is a stand-in (it only controls timing: a long reply whose stream takes
0.3 s to close once cancelled), the rest the package's scripted fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.providers.base import ChatEvent, ChatRequest
from moksori.testing.fakes import ScriptedLLM, fake_stack
from moksori.testing.virtual_time import run_virtual


class SlowToClose(ScriptedLLM):
    """A long reply, one word every 0.5 s; once cancelled, its stream takes 0.3 s to close."""

    def __init__(self) -> None:
        super().__init__(" ".join(["word"] * 200), token_delay_s=0.5)
        self.streaming = asyncio.Event()

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        try:
            async for ev in super().chat(request):
                self.streaming.set()
                yield ev
        finally:
            await asyncio.sleep(0.3)


def test_close_waits_for_the_replies_it_cancels() -> None:
    async def main() -> tuple[bool, bool]:
        llm = SlowToClose()
        s = Session(fake_stack(llm=llm), SessionConfig(output_rate=16000, partial_interval_ms=0))
        s.add_user_text("Tell me a long story.", respond=False)
        resp = s.create_response()
        await asyncio.wait_for(llm.streaming.wait(), 5)
        assert resp.task is not None and not resp.task.done()
        await s.close()
        return resp.task.done(), resp.status == "cancelled"

    done, cancelled = run_virtual(main())
    assert cancelled
    assert done, "the reply's task was still running after Session.close()"
