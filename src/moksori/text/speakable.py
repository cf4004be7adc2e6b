"""Turn LLM markdown into plain text that a TTS voice can read aloud.

Conventions: line structure is kept (one newline between non-empty lines, which the clause
chunker treats as a boundary); runs of other whitespace become one space. Table rows become
comma-separated cells. Code fences are dropped but the code lines stay. Any `*` left
after markdown is removed (a TTS would read it as "asterisk").
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^[ \t]*(```|~~~).*$", re.MULTILINE)
_RULE = re.compile(r"^[ \t]*([-*_])([ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_TABLE_SEPARATOR = re.compile(
    r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", re.MULTILINE
)
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE)
_QUOTE = re.compile(r"^[ \t]*(>[ \t]?)+", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+", re.MULTILINE)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)\s]*(?:\s+\"[^\"]*\")?\)")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS = re.compile(r"(?<![\w*])([*_])(?=\S)(.+?)(?<=\S)\1(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_CODE = re.compile(r"`+")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TABLE_PIPES = re.compile(r"^[ \t]*\|(.*)\|[ \t]*$", re.MULTILINE)
_STRAY_MARKUP = re.compile(r"\*+")
_PICTOGRAPHS = re.compile(
    "["
    "\U0001F000-\U0001FAFF"  # emoji, pictographs, flags, skin tones
    "\u2600-\u27BF"  # misc symbols and dingbats
    "\u2B00-\u2BFF"  # arrows and stars used as emoji
    "\uFE00-\uFE0F"  # variation selectors
    "\u200D"  # zero-width joiner
    "\u20E3"  # combining keycap
    "\U000E0020-\U000E007F"  # tag characters
    "]+"
)
_REPEATED_MARKS = re.compile(r"([!?])[!?]+")
_REPEATED_SAME = re.compile(r"([,;:~])\1+")
_LONG_DOTS = re.compile(r"\.{4,}")
_SPACE_BEFORE_MARK = re.compile(r"[ \t]+([.,!?;:])")
_INLINE_SPACE = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\s*\n\s*")


def _table_row(match: re.Match[str]) -> str:
    cells = [c.strip() for c in match.group(1).split("|")]
    return ", ".join(c for c in cells if c)


def speakable(text: str) -> str:
    """Strip markdown, emoji and noisy punctuation; keep words, numbers and plain punctuation."""
    text = _HTML_BREAK.sub(" ", text)
    text = _FENCE.sub("", text)
    text = _RULE.sub("", text)
    text = _TABLE_SEPARATOR.sub("", text)
    text = _TABLE_PIPES.sub(_table_row, text)
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _CODE.sub("", text)
    text = _STRONG.sub(r"\2", text)
    text = _STRIKE.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\2", text)
    text = _STRAY_MARKUP.sub("", text)
    text = _PICTOGRAPHS.sub(" ", text)
    text = _REPEATED_MARKS.sub(r"\1", text)
    text = _REPEATED_SAME.sub(r"\1", text)
    text = _LONG_DOTS.sub("...", text)
    text = _SPACE_BEFORE_MARK.sub(r"\1", text)
    text = _INLINE_SPACE.sub(" ", text)
    return _BLANK_LINES.sub("\n", text).strip()
