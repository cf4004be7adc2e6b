"""`moksori serve` with `MOKSORI_LLM_PARALLEL=3` (the batched embedded LLM), for real.

Three Realtime sessions (the `openai` SDK, typed questions, text replies: the LLM is what is
tested, Piper would only add its time) ask at once and are answered together: every reply
streams before any has ended, which the one-at-a-time provider cannot do. A cancel of one reply
mid-stream leaves the other two to complete, and its session's next reply is whole. Three tool
calls at once come back as function calls, and each call's output gets a reply. SmolLM2 at
temperature 0; no traceback in the server's log. Which reply streams or ends first is read from
the order the events arrive in (one list across the sessions), not from wall time.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from speech import prepared_data_dir
from test_llm_batched import CITIES, EARLIER_CALL
from test_realtime_clients import GA_ADAPTER, EventLog, ga_client, moksori_serve

pytestmark = pytest.mark.models

PARALLEL = 3
TOKENS = 40
# each gives a reply of 40 tokens at temperature 0 (they do not end early: the replies overlap)
QUESTIONS = ["Tell me a long story about a dragon who learns to bake bread.",
             "Describe a walk in the mountains in autumn.", "How do I bake bread at home?"]
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("serve-batched"),
                       MOKSORI_LLM_PARALLEL=str(PARALLEL), MOKSORI_LLM_CONTEXT_TOKENS="4096",
                       MOKSORI_LLM_TEMPERATURE="0", MOKSORI_LANGUAGE="en") as srv:
        yield srv


class Sessions:
    """Realtime sessions whose events are also kept in one list, (session, type), in the order
    they arrived: which reply streamed or ended first across sessions."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[int, str]] = []
        self.open: list[tuple[Any, EventLog]] = []

    async def connect(self, port: int, **session: Any) -> tuple[Any, EventLog]:
        """One more session (its tag: how many were opened before it), text replies, no VAD."""
        tag = len(self.open)
        conn = await ga_client(port).realtime.connect(model="gpt-realtime").enter()

        async def recv() -> bytes:
            raw = await conn.recv_bytes()
            self.arrivals.append((tag, json.loads(raw)["type"]))
            return raw

        log = EventLog(recv, adapter=GA_ADAPTER, parse=conn.parse_event)
        self.open.append((conn, log))
        await log.wait("session.created")
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                           "audio": {"input": {"turn_detection": None}}, **session})
        await log.wait("session.updated")
        return conn, log

    def first(self, tag: int, typ: str, start: int = 0) -> int:
        return next(i for i, a in enumerate(self.arrivals) if i >= start and a == (tag, typ))

    def check(self) -> None:
        """Every event valid for the SDK, ids unique, no error event."""
        for _, log in self.open:
            log.check_ids()
            assert not log.of("error"), log.of("error")

    async def close(self) -> None:
        for conn, log in self.open:
            await log.close()
            await conn.close()


async def say(conn, role: str, text: str) -> None:
    kind = "input_text" if role == "user" else "output_text"
    await conn.conversation.item.create(item={"type": "message", "role": role,
                                              "content": [{"type": kind, "text": text}]})


def text_of(done: dict[str, Any]) -> str:
    return "".join(c.get("text") or "" for item in done["response"]["output"] if item["type"] == "message"
                   for c in item["content"])


async def test_three_sessions_are_answered_together_and_a_cancel_leaves_the_others_whole(server):
    s = Sessions()
    try:
        sessions = [await s.connect(server.port) for _ in range(PARALLEL)]

        async def ask(i: int, cancel: bool = False) -> dict[str, Any]:
            conn, log = sessions[i]
            start = len(log.events)
            await say(conn, "user", QUESTIONS[i])
            await conn.response.create(response={"max_output_tokens": TOKENS})
            if cancel:
                await log.wait("response.output_text.delta", start=start, timeout=40)
                await conn.response.cancel()
            return await log.wait("response.done", start=start, timeout=60)

        start = len(s.arrivals)
        dones = await asyncio.gather(*(ask(i) for i in range(PARALLEL)))
        for d in dones:
            assert d["response"]["status"] == "completed" and text_of(d), d["response"]
            # the premise: each reply runs to TOKENS (SmolLM2's own length, which depends on the CPU):
            # a reply that ends early need not overlap the others, and the test below proves nothing
            assert d["response"]["usage"]["output_tokens"] == TOKENS, \
                f"premise not met: SmolLM2 ended a reply before {TOKENS} tokens: {text_of(d)!r}"
        firsts = [s.first(i, "response.output_text.delta", start) for i in range(PARALLEL)]
        ends = [s.first(i, "response.done", start) for i in range(PARALLEL)]
        assert max(firsts) < min(ends), "every reply streams before any has ended"

        start = len(s.arrivals)
        dones = await asyncio.gather(ask(0, cancel=True), *(ask(i) for i in range(1, PARALLEL)))
        cancelled, *others = dones
        assert cancelled["response"]["status"] != "completed", \
            f"premise not met: the reply was over before the cancel reached it: {text_of(cancelled)!r}"
        assert cancelled["response"]["status"] == "cancelled", cancelled["response"]
        for d in others:  # the two beside it go on to the end
            assert d["response"]["status"] == "completed" and text_of(d), d["response"]
            assert d["response"]["usage"]["output_tokens"] == TOKENS, \
                f"premise not met: SmolLM2 ended a reply before {TOKENS} tokens: {text_of(d)!r}"
        assert s.first(0, "response.done", start) < min(s.first(i, "response.done", start) for i in (1, 2))
        again = await ask(0)  # the cancelled session's slot serves its next reply
        assert again["response"]["status"] == "completed" and text_of(again)
        s.check()
    finally:
        await s.close()
    assert "Traceback" not in server.log_text()


async def test_three_tool_calls_at_once_then_replies_to_their_outputs(server):
    """SmolLM2 calls get_weather for the next city once an earlier call is in the conversation
    (test_llm_batched.py: the same call as the one-at-a-time provider's)."""
    s = Sessions()
    try:
        sessions = [await s.connect(server.port, tools=[WEATHER]) for _ in CITIES]

        async def weather(i: int) -> tuple[dict[str, Any], dict[str, Any]]:
            conn, log = sessions[i]
            await say(conn, "user", "What is the weather in Paris?")
            await say(conn, "assistant", EARLIER_CALL)
            await say(conn, "user", f"What is the weather in {CITIES[i]}?")
            await conn.response.create()
            called = await log.wait("response.done", timeout=60)
            made = [o for o in called["response"]["output"] if o["type"] == "function_call"]
            # the premise: SmolLM2 calls the tool (its choice at temperature 0; test_llm_batched.py
            # checks the one-at-a-time provider makes the same call)
            assert made, f"premise not met: SmolLM2 made no tool call for {CITIES[i]}: {called['response']['output']}"
            call = made[0]
            start = len(log.events)
            await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call["call_id"],
                                                      "output": "sunny, 21 degrees"})
            await conn.response.create()
            return call, await log.wait("response.done", start=start, timeout=60)

        results = await asyncio.gather(*(weather(i) for i in range(len(CITIES))))
        for city, (call, answered) in zip(CITIES, results):
            assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": city}, call
            assert answered["response"]["status"] == "completed", answered["response"]
        s.check()
    finally:
        await s.close()
    assert "Traceback" not in server.log_text()
