"""What a tool call gives back to the LLM: text, never an exception.

Every provider (MCP, HTTP, built-in) turns its outcome into a `ToolOutcome`; `text` is what the
LLM reads. Failures are a small JSON object `{"error": "...", "kind": "..."}`, so a model can
tell the user what went wrong and the response never hangs on a tool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

ErrorKind = Literal["timeout", "unavailable", "failed", "bad_arguments", "too_large", "not_allowed"]

# What the agent says while a slow tool runs, and when one fails (phase 2 speaks them).
SLOW_FILLERS: dict[str, tuple[str, ...]] = {
    "en": ("One moment, please.", "Let me check that.", "Just a second."),
    "ko": ("잠시만요.", "확인해 볼게요.", "잠깐만 기다려 주세요."),
}
FAILURE_APOLOGIES: dict[str, str] = {
    "en": "Sorry, I couldn't get that information right now.",
    "ko": "죄송해요, 지금은 그 정보를 가져올 수 없어요.",
}


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    text: str  # what the LLM sees
    kind: ErrorKind | None = None  # set when not ok
    elapsed_s: float = 0.0

    @classmethod
    def success(cls, value: Any, *, limit: int, elapsed_s: float = 0.0) -> ToolOutcome:
        return cls(True, clip(as_text(value), limit), None, elapsed_s)

    @classmethod
    def failure(cls, kind: ErrorKind, message: str, *, elapsed_s: float = 0.0) -> ToolOutcome:
        return cls(False, error_json(kind, message), kind, elapsed_s)


def error_json(kind: ErrorKind, message: str) -> str:
    return json.dumps({"error": " ".join(message.split())[:300], "kind": kind}, ensure_ascii=False)


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def clip(text: str, limit: int) -> str:
    """Cut a long answer for the LLM, saying so (a small model would otherwise lose the thread)."""
    if len(text) <= limit:
        return text
    note = f" …[cut: {len(text) - limit} more characters]"
    return text[: max(0, limit - len(note))] + note
