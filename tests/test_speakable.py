"""Tests for markdown/emoji stripping before TTS."""

from __future__ import annotations

import pytest

from moksori.text.speakable import speakable


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("This is **bold** text.", "This is bold text."),
        ("This is *emphasis* and _this_ too.", "This is emphasis and this too."),
        ("Very __strong__ words.", "Very strong words."),
        ("~~old~~ new", "old new"),
        ("Run `pip install moksori` now.", "Run pip install moksori now."),
        ("# Heading\nBody", "Heading\nBody"),
        ("### Smaller heading", "Smaller heading"),
        ("See [the docs](https://example.com/docs) first.", "See the docs first."),
        ("![a cat](cat.png) sleeps", "a cat sleeps"),
        ("> quoted line", "quoted line"),
        ("Great job 👍🏽!", "Great job!"),
        ("Done ✅ 🎉 ❤️", "Done"),
        ("Flags 🇰🇷 and families 👨‍👩‍👧 go", "Flags and families go"),
        ("Really???", "Really?"),
        ("What?!", "What?"),
        ("Wait..... what", "Wait... what"),
        ("Hmm,, okay", "Hmm, okay"),
        ("  lots   of\t\tspace  ", "lots of space"),
        ("line one\n\n\n\nline two", "line one\nline two"),
        ("snake_case_name and 2*3", "snake_case_name and 23"),
    ],
)
def test_speakable(text: str, expected: str) -> None:
    assert speakable(text) == expected


def test_list_bullets_are_removed_but_lines_kept() -> None:
    text = "Options:\n- first\n* second\n+ third\n1. fourth\n2) fifth\n  - nested"
    assert speakable(text) == "Options:\nfirst\nsecond\nthird\nfourth\nfifth\nnested"


def test_dash_inside_a_line_is_kept() -> None:
    assert speakable("Seoul - Busan is 325 km.") == "Seoul - Busan is 325 km."


def test_korean_numbers_and_punctuation_are_kept() -> None:
    text = "오늘 기온은 **25도**이고, 습도는 3.5% 입니다. 괜찮으세요? 😊"
    assert speakable(text) == "오늘 기온은 25도이고, 습도는 3.5% 입니다. 괜찮으세요?"


def test_code_fences_and_rules_are_dropped() -> None:
    text = "Try this:\n```python\nprint(1)\n```\n---\nThat is all."
    assert speakable(text) == "Try this:\nprint(1)\nThat is all."


def test_tables_become_comma_separated_rows() -> None:
    text = "| City | Temp |\n|------|:----:|\n| Seoul | 25 |"
    assert speakable(text) == "City, Temp\nSeoul, 25"


def test_plain_text_is_unchanged() -> None:
    text = "Hello, world! It's 3:30 p.m. and 1,000 people are here."
    assert speakable(text) == text


def test_empty_and_emoji_only() -> None:
    assert speakable("") == ""
    assert speakable("🎉🎉🎉") == ""
