"""Tool calls written as text by local models, recognised while plain text still streams."""

from __future__ import annotations

import json

import pytest

from moksori.providers.base import TextDelta, ToolCallEvent, ToolSpec
from moksori.providers.tool_calls import ToolCallScanner, parse_tool_calls, tools_system_block


def run(chunks: list[str], enabled: bool = True) -> tuple[str, list]:
    sc = ToolCallScanner(enabled=enabled)
    out = []
    for c in chunks:
        out += sc.feed(c)
    out += sc.finish()
    text = "".join(e.text for e in out if isinstance(e, TextDelta))
    calls = [e.call for e in out if isinstance(e, ToolCallEvent)]
    return text, calls


def split(s: str, n: int = 3) -> list[str]:
    return [s[i:i + n] for i in range(0, len(s), n)]


@pytest.mark.parametrize("raw", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Seoul"}}\n</tool_call>',
    '{"name": "get_weather", "parameters": {"city": "Seoul"}}',
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Seoul"}}]',
    '<|python_tag|>{"name": "get_weather", "arguments": {"city": "Seoul"}}',
])
def test_formats_are_recognised_even_in_small_pieces(raw: str) -> None:
    text, calls = run(split(raw))
    assert text.strip() == ""
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Seoul"}


def test_plain_text_streams_through_and_a_late_call_is_caught() -> None:
    sc = ToolCallScanner(enabled=True)
    first = sc.feed("Let me check")
    assert [e.text for e in first] == ["Let me check"]  # streamed at once, not held
    rest = sc.feed(" that. <tool_") + sc.feed('call>{"name": "lookup", "arguments": {}}</tool_call>') + sc.finish()
    assert "".join(e.text for e in rest if isinstance(e, TextDelta)) == " that. "
    assert [e.call.name for e in rest if isinstance(e, ToolCallEvent)] == ["lookup"]


def test_something_that_only_looks_like_a_call_is_released_as_text() -> None:
    text, calls = run(split("{not json at all} but words"))
    assert calls == [] and text == "{not json at all} but words"
    text, calls = run(["I like <tool", "s> a lot"])
    assert calls == [] and text == "I like <tools> a lot"


def test_disabled_scanner_is_a_pass_through() -> None:
    text, calls = run(['{"name": "x", "arguments": {}}'], enabled=False)
    assert calls == [] and text == '{"name": "x", "arguments": {}}'


def test_two_calls_and_string_arguments() -> None:
    calls = parse_tool_calls('<tool_call>{"name": "a", "arguments": "{\\"k\\": 1}"}</tool_call>'
                             '<tool_call>{"name": "b", "arguments": {"x": [1, 2]}}</tool_call>')
    assert [c.name for c in calls] == ["a", "b"]
    assert json.loads(calls[0].arguments) == {"k": 1} and json.loads(calls[1].arguments) == {"x": [1, 2]}
    assert calls[0].id != calls[1].id


def test_system_block_describes_tools_and_choice() -> None:
    block = tools_system_block([ToolSpec("end_call", "Hang up", {"type": "object"})], "required")
    assert '"name": "end_call"' in block and "<tool_call>" in block and "must call" in block
