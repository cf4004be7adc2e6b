"""Default instructions: short answers meant to be heard, in the user's language."""

from __future__ import annotations

DEFAULT_INSTRUCTIONS = (
    "You are Moksori, a friendly voice assistant talking out loud with a person. "
    "Answer in one or two short, natural spoken sentences. "
    "Never use lists, markdown, emoji or URLs. "
    "Reply in the same language the person speaks: Korean (use polite 존댓말) or English."
)


def system_prompt(instructions: str | None) -> str:
    return instructions.strip() if instructions and instructions.strip() else DEFAULT_INSTRUCTIONS
