"""`response.create` with audio in its own `input`, in virtual time with scripted fakes
(ScriptedSTT, ScriptedLLM stand in for the models only to control timing), the connection's
messages going through the server's own per-connection `Inbox` as on a socket.

The input's audio is transcribed off the handler, the response *preparing* meanwhile: a
`response.cancel` sent right after ends it at once, never started (before the fix the cancel
waited for the whole transcription, then cancelled a reply the LLM had been asked for), and
closing the connection meanwhile stops that transcription. The real server with Whisper and a
failing STT is tests/test_realtime_input_transcription_failures.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from test_item_words import STT_S, Wire, audio_item, errors

from moksori.testing.virtual_time import run_virtual


def response_with_audio(**response: Any) -> dict[str, Any]:
    return {"type": "response.create", "response": {"input": [audio_item((5.0,))["item"]], **response}}


def test_a_cancel_while_the_input_is_transcribed_ends_the_response_at_once() -> None:
    async def main() -> tuple[Wire, float, float]:
        w = Wire()
        await w.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await w.put(response_with_audio(metadata={"ask": "cancelled"}), {"type": "response.cancel"})
        done = await w.wait("response.done")
        cancelled_at = loop.time() - t0
        await asyncio.sleep(3 * STT_S)  # the transcription's time, and more: nothing of it follows
        await w.put({"type": "response.create"})  # the conversation is free again
        await w.wait("response.done", lambda e: e["response"]["id"] != done["response"]["id"])
        await w.close()
        return w, cancelled_at, loop.time() - t0

    w, cancelled_at, _ = run_virtual(main())
    assert cancelled_at < 1.0, cancelled_at  # not after the STT_S of the transcription
    first, second = w.of("response.done")
    assert first["response"]["status"] == "cancelled" and first["response"]["metadata"] == {"ask": "cancelled"}
    assert first["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert [e["response"]["id"] for e in w.of("response.created")] == [first["response"]["id"],
                                                                       second["response"]["id"]]
    assert second["response"]["status"] == "completed"
    assert len(w.llm.requests) == 1  # the second response's: the cancelled one never asked
    assert errors(w) == []


def test_closing_while_the_input_is_transcribed_stops_it() -> None:
    async def main() -> tuple[Wire, list[asyncio.Task]]:
        w = Wire()
        await w.start()
        await w.put(response_with_audio(conversation="none"))
        await asyncio.sleep(STT_S / 2)  # mid-transcription
        await w.close()
        await asyncio.sleep(3 * STT_S)
        left = [t for t in asyncio.all_tasks() if t.get_name().startswith("response-input") and not t.done()]
        return w, left

    w, left = run_virtual(main())
    assert left == []
    assert not [t for _, e in w.sent if (t := e["type"]).startswith("response.")], [e["type"] for _, e in w.sent]
    assert w.llm.requests == [] and errors(w) == []
