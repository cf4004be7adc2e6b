"""Default instructions: short answers meant to be heard, in the user's language, reading the
user's words as what they are: a speech-recognition transcript that may hold misheard words.

(A Korean voicebot's model answered "지하철은 어떻게 탓에" — a misrecognised "지하철은 어떻게
타요?" — by correcting the user's grammar; told that it reads a transcript, it answers the
question the user most likely asked.)
"""

from __future__ import annotations

_BASE = (
    "You are Moksori, a friendly voice assistant talking out loud with a person. "
    "Answer in one or two short, natural spoken sentences. "
    "Never use lists, markdown, emoji or URLs."
)
# The person's turns are transcripts, not text they typed.
_TRANSCRIPT = (
    " What the person says reaches you through speech recognition, so it may contain misheard or "
    "wrongly spelled words: answer what they most likely meant, and never comment on their spelling."
)
# Tiny English-only models (the packaged SmolLM2) get confused by any mention of Korean and
# start answering in broken Korean, so the bilingual sentences are only for models that can.
_BILINGUAL = (
    " Reply in the same language the person speaks: Korean (use polite 존댓말) or English."
    " 사용자의 말은 음성 인식으로 받아 적은 글이라 잘못 알아들은 단어가 있을 수 있습니다. "
    "맞춤법을 지적하지 말고, 가장 그럴듯한 뜻으로 이해해서 답하세요."
)

DEFAULT_INSTRUCTIONS = _BASE + _TRANSCRIPT + _BILINGUAL

# `moksori chat --text`: typed messages, read on a screen; no speech, so no transcript note.
_TEXT_BASE = (
    "You are Moksori, a helpful assistant in a text chat. Answer clearly and to the point; "
    "use short paragraphs, and lists only when they help."
)
_TEXT_BILINGUAL = " Reply in the same language the person writes: Korean (use polite 존댓말) or English."


def system_prompt(instructions: str | None, llm_languages: tuple[str, ...] = ("en", "ko")) -> str:
    if instructions and instructions.strip():
        return instructions.strip()
    return _BASE + _TRANSCRIPT + (_BILINGUAL if "ko" in llm_languages else "")


def text_system_prompt(instructions: str | None, llm_languages: tuple[str, ...] = ("en", "ko")) -> str:
    """The text chat's default: typed messages, longer answers allowed."""
    if instructions and instructions.strip():
        return instructions.strip()
    return _TEXT_BASE + (_TEXT_BILINGUAL if "ko" in llm_languages else "")


def speech_model_prompt(instructions: str | None) -> str:
    """A speech-to-speech model's default (the realtime brain): it hears the person itself, so no
    transcript note; it speaks Korean and English."""
    if instructions and instructions.strip():
        return instructions.strip()
    return _BASE + " Reply in the same language the person speaks: Korean (use polite 존댓말) or English."
