"""The default instructions tell the model that user turns are speech transcripts (deliver 8)."""

from __future__ import annotations

from moksori.engine.prompts import DEFAULT_INSTRUCTIONS, system_prompt, text_system_prompt

# A Korean voicebot's model answered "지하철은 어떻게 탓에" (misrecognised "지하철은 어떻게 타요?",
# "how do I take the subway?") as if it were typed text. The instructions must make the model read
# it by its likely meaning, in both languages.
MISHEARD = "지하철은 어떻게 탓에"


def test_voice_instructions_say_turns_are_transcripts_in_english_and_korean() -> None:
    p = system_prompt(None, ("en", "ko"))
    assert p == DEFAULT_INSTRUCTIONS
    assert "speech recognition" in p and "most likely meant" in p  # English
    assert "음성 인식" in p and "그럴듯한 뜻" in p  # Korean
    assert "맞춤법을 지적하지" in p  # do not correct the user's spelling (the 탓에 → 타요 case)


def test_tiny_english_model_gets_the_note_without_any_korean() -> None:
    p = system_prompt(None, ("en",))
    assert "speech recognition" in p and "most likely meant" in p
    assert "Korean" not in p and not any("\uac00" <= ch <= "\ud7a3" for ch in p)


def test_user_instructions_replace_the_defaults_and_text_chat_has_its_own() -> None:
    assert system_prompt("  Be a pirate.  ") == "Be a pirate."
    t = text_system_prompt(None, ("en", "ko"))
    assert "text chat" in t and "speech recognition" not in t and "Korean" in t
    assert "Korean" not in text_system_prompt(None, ("en",))
    assert MISHEARD not in system_prompt(None)  # the example lives in the docs and tests, not the prompt
