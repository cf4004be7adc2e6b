"""Recognising tool calls in the raw text of a local model, while still streaming plain text.

Local models write tool calls as text in one of a few conventions. The scanner streams text
deltas straight through until it sees something that may start a tool call; from there it
buffers, and at the end parses the buffer into `ToolCallEvent`s. If the buffer turns out not
to be a tool call, it is released as text, so nothing the model said is lost.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from moksori.providers.base import TextDelta, ToolCall, ToolCallEvent, ToolSpec

_MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "<function_call>")
_JSON_STARTS = ("{", "[")
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def call_text(name: str, arguments: str) -> str:
    """A tool call as `tools_system_block` asks a model to write one (and as the scanner reads
    it): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. `arguments` is the call's
    JSON text; text that is not a JSON object is written as it is (the template's example `...`)."""
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        body = json.dumps({"name": name, "arguments": parsed}, ensure_ascii=False)
    else:
        body = f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {{{arguments}}}}}'
    return f"<tool_call>{body}</tool_call>"


def tools_system_block(tools: Sequence[ToolSpec], tool_choice: str = "auto") -> str:
    """System-prompt text describing tools, for chat templates that have no tool support."""
    lines = ["You can call these tools:"]
    for t in tools:
        lines.append(json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters},
                                ensure_ascii=False))
    lines.append(f'To call a tool, reply with only: {call_text("<tool name>", "...")}')
    if tool_choice == "required":
        lines.append("You must call one of the tools.")
    elif tool_choice not in ("auto", "none", "required"):
        lines.append(f"You must call the tool {tool_choice}.")
    else:
        lines.append("Otherwise answer normally.")
    return "\n".join(lines)


class ToolCallScanner:
    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._pending = ""  # text that may be the start of a marker
        self._buffer = ""  # text after a marker: a tool call in progress
        self._capturing = False
        self._seen_text = False

    def feed(self, delta: str) -> list[TextDelta]:
        if not self.enabled:
            return [TextDelta(delta)] if delta else []
        if self._capturing:
            self._buffer += delta
            return []
        text = self._pending + delta
        self._pending = ""
        # A reply that starts with JSON may be a bare tool call (Llama 3 style).
        if not self._seen_text:
            stripped = text.lstrip()
            if not stripped:
                self._pending = text
                return []
            if stripped.startswith(_JSON_STARTS):
                self._capturing = True
                self._buffer = stripped
                return []
        for marker in _MARKERS:
            idx = text.find(marker)
            if idx >= 0:
                self._capturing = True
                self._buffer = text[idx:]
                return self._emit(text[:idx])
        # keep back a tail that could be the beginning of a marker
        keep = 0
        for marker in _MARKERS:
            for n in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:n]):
                    keep = max(keep, n)
                    break
        if keep:
            self._pending = text[-keep:]
            text = text[:-keep]
        return self._emit(text)

    def _emit(self, text: str) -> list[TextDelta]:
        if not text:
            return []
        if text.strip():
            self._seen_text = True
        return [TextDelta(text)]

    def finish(self) -> list[TextDelta | ToolCallEvent]:
        out: list[TextDelta | ToolCallEvent] = []
        if self._pending:
            out.append(TextDelta(self._pending))
            self._pending = ""
        if not self._capturing:
            return out
        calls = parse_tool_calls(self._buffer)
        if calls:
            out.extend(ToolCallEvent(c) for c in calls)
        elif self._buffer.strip():
            out.append(TextDelta(self._buffer))  # not a tool call after all
        self._buffer = ""
        self._capturing = False
        return out


def parse_tool_calls(text: str) -> list[ToolCall]:
    body = text.strip()
    for prefix in ("[TOOL_CALLS]", "<|python_tag|>", "<function_call>"):
        if body.startswith(prefix):
            body = body[len(prefix):].strip()
    candidates: list[Any] = []
    tagged = _TAGGED.findall(body) if "<tool_call>" in body else []
    for chunk in tagged or [body]:
        parsed = _loads_lenient(chunk)
        if parsed is None:
            continue
        candidates.extend(parsed if isinstance(parsed, list) else [parsed])
    calls = []
    for c in candidates:
        if not isinstance(c, dict):
            continue
        inner = c.get("function")
        fn = inner if isinstance(inner, dict) else c
        name = fn.get("name")
        args = fn.get("arguments", fn.get("parameters", {}))
        if not isinstance(name, str) or not name:
            continue
        if isinstance(args, str):
            args_text = args
        else:
            args_text = json.dumps(args if args is not None else {}, ensure_ascii=False)
        calls.append(ToolCall(id=f"call_{uuid.uuid4().hex[:20]}", name=name, arguments=args_text))
    return calls


def _loads_lenient(text: str) -> Any:
    text = text.strip().rstrip(",")
    try:
        return json.loads(text)
    except ValueError:
        pass
    # take the first balanced JSON object/array in the text
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(text[start:], start):
        if in_str:
            esc = (ch == "\\") and not esc
            if ch == '"' and not esc:
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                try:
                    return json.loads(text[start:i + 1])
                except ValueError:
                    return None
    return None
