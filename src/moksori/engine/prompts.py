"""Default instructions: short answers meant to be heard, in the user's language."""

from __future__ import annotations

_BASE = (
    "You are Moksori, a friendly voice assistant talking out loud with a person. "
    "Answer in one or two short, natural spoken sentences. "
    "Never use lists, markdown, emoji or URLs."
)
# Tiny English-only models (the packaged SmolLM2) get confused by any mention of Korean and
# start answering in broken Korean, so the bilingual sentence is only for models that can.
_BILINGUAL = " Reply in the same language the person speaks: Korean (use polite 존댓말) or English."

DEFAULT_INSTRUCTIONS = _BASE + _BILINGUAL


def system_prompt(instructions: str | None, llm_languages: tuple[str, ...] = ("en", "ko")) -> str:
    if instructions and instructions.strip():
        return instructions.strip()
    return _BASE + (_BILINGUAL if "ko" in llm_languages else "")
