"""Scripted sessions in virtual time whose timelines are pinned byte for byte.

`record_all()` runs every scenario and returns the JSON lines a user sees: what
`converse --timeline` writes and what `moksori.event` messages carry (every event but the raw
audio), with random ids replaced by stable placeholders. `tests/data/timeline_golden.jsonl` was
written by this module on the code *before* the engine events became typed; the catalogue must
keep producing it (see tests/test_event_catalogue.py).

    PYTHONPATH=src python tests/timeline_scenarios.py > tests/data/timeline_golden.jsonl
"""

from __future__ import annotations

import json
import re
import sys

from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.engine.turns import TurnConfig
from moksori.errors import ProviderError
from moksori.providers.base import ToolCall, ToolSpec
from moksori.testing.fakes import ScriptedLLM, ScriptedSTT, fake_stack, quiet, tone
from moksori.testing.harness import play_into_session, settle
from moksori.testing.virtual_time import run_virtual

CFG = SessionConfig(output_rate=16000, partial_interval_ms=0)
LONG = "This is a long answer that goes on and on, with many words, so that it takes several seconds to say."
_ID = re.compile(r"\b(sess|resp|item|event)_[0-9a-f]{20}\b")


class _BoomLLM(ScriptedLLM):
    async def chat(self, request):
        raise ProviderError("model server exploded", retryable=False)
        yield  # pragma: no cover


def _lines(session: Session) -> list[str]:
    out = [json.dumps(ev.to_json(), ensure_ascii=False) for ev in session.bus.history]  # session.started

    def listen(ev) -> None:
        if ev.type != "agent.audio":
            out.append(json.dumps(ev.to_json(), ensure_ascii=False))

    session.bus.listen(listen)
    return out


async def _two_turns() -> list[str]:
    s = Session(fake_stack(stt=ScriptedSTT(["hello there.", "what time is it?"])), CFG)
    lines = _lines(s)
    await play_into_session(s, [quiet(0.5), tone(1.5), quiet(4.0), tone(1.0), quiet(4.0)])
    await settle(s)
    await s.close()
    return lines


async def _barge_in() -> list[str]:
    s = Session(fake_stack(stt=ScriptedSTT(["tell me a story.", "stop please."]), llm=ScriptedLLM(LONG)), CFG)
    lines = _lines(s)
    await play_into_session(s, [quiet(0.3), tone(1.0), quiet(2.0), tone(0.8), quiet(3.0)])
    await settle(s)
    await s.close()
    return lines


async def _noise_reoffer() -> list[str]:
    reply = "First part of the answer is here. And the second part continues after that with more words."
    s = Session(fake_stack(stt=ScriptedSTT(["question?", ""]), llm=ScriptedLLM(reply)), CFG)
    lines = _lines(s)
    await play_into_session(s, [quiet(0.3), tone(1.0), quiet(1.5), tone(0.4), quiet(8.0)])
    await settle(s)
    await s.close()
    return lines


async def _words_while_thinking() -> list[str]:
    # the reply is slow to start; the user says more while it is held: the stale reply is dropped
    s = Session(fake_stack(stt=ScriptedSTT(["hi.", "and one more thing."]),
                           llm=ScriptedLLM("Hello!", first_token_s=1.5)), CFG)
    lines = _lines(s)
    await play_into_session(s, [quiet(0.3), tone(1.0), quiet(0.5), tone(0.3), quiet(4.0)])
    await settle(s)
    await s.close()
    return lines


async def _tools() -> list[str]:
    from moksori.engine.tools import Tool, ToolBox

    async def weather(args: dict) -> dict:
        return {"city": args["city"], "sky": "clear"}

    def tool_call(req):
        if "look" in [m.content for m in req.messages if m.role == "user"][-1]:
            return ToolCall("call_9", "lookup", "{}")
        if req.messages[-1].role == "tool":
            return None
        return ToolCall("call_1", "get_weather", json.dumps({"city": "Seoul"}))

    llm = ScriptedLLM(lambda req: "It is clear in Seoul.", tool_call=tool_call)
    box = ToolBox([Tool(ToolSpec("get_weather", "weather", {"type": "object"}), weather)])
    cfg = CFG.with_(tools=(ToolSpec("lookup", "client side", {"type": "object"}),))
    s = Session(fake_stack(stt=ScriptedSTT(["weather in seoul?", "look it up."]), llm=llm), cfg, toolbox=box)
    lines = _lines(s)
    await play_into_session(s, [quiet(0.3), tone(1.0), quiet(4.0), tone(1.0), quiet(3.0)])
    await settle(s)
    await s.close()
    return lines


async def _manual_and_text() -> list[str]:
    s = Session(fake_stack(stt=ScriptedSTT(["typed by voice."])), CFG.with_(turn=TurnConfig(mode="manual")))
    lines = _lines(s)
    await play_into_session(s, [quiet(0.3), tone(1.0), quiet(1.0)])
    s.commit()
    await play_into_session(s, [quiet(0.5)])
    s.create_response()
    await play_into_session(s, [quiet(1.0)])
    s.add_user_text("never mind, tell me something else.")  # cancels the reply in flight
    await play_into_session(s, [quiet(3.0)])
    s.say("Goodbye.")
    await play_into_session(s, [quiet(2.0)])
    await settle(s)
    await s.close()
    return lines


async def _provider_failure() -> list[str]:
    s = Session(fake_stack(stt=ScriptedSTT(["one."]), llm=_BoomLLM()), CFG)
    lines = _lines(s)
    await play_into_session(s, [quiet(0.3), tone(1.0), quiet(2.0)])
    await settle(s)
    await s.close()
    return lines


async def _partials_and_noise() -> list[str]:
    stt = ScriptedSTT(by_duration=lambda seconds: "one two three four five"[: max(3, int(8 * seconds))])
    s = Session(fake_stack(stt=stt), CFG.with_(partial_interval_ms=400))
    lines = _lines(s)
    await play_into_session(s, [quiet(0.3), tone(0.05), quiet(0.6), tone(2.0), quiet(4.0)])
    await settle(s)
    await s.close()
    return lines


SCENARIOS = {
    "two_turns": _two_turns,
    "partials_and_noise": _partials_and_noise,
    "barge_in": _barge_in,
    "noise_reoffer": _noise_reoffer,
    "words_while_thinking": _words_while_thinking,
    "tools": _tools,
    "manual_and_text": _manual_and_text,
    "provider_failure": _provider_failure,
}


def normalize(lines: list[str]) -> list[str]:
    seen: dict[str, str] = {}

    def sub(m: re.Match[str]) -> str:
        return seen.setdefault(m.group(0), f"{m.group(1)}_{len(seen) + 1}")

    return [_ID.sub(sub, line) for line in lines]


def record(name: str) -> list[str]:
    return normalize(run_virtual(SCENARIOS[name]()))


def record_all() -> list[str]:
    out: list[str] = []
    for name in SCENARIOS:
        out.append(json.dumps({"scenario": name}))
        out += record(name)
    return out


if __name__ == "__main__":
    sys.stdout.write("\n".join(record_all()) + "\n")
