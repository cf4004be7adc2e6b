"""A cheap token estimate for budgets when the model's own tokenizer is not at hand.

BPE tokenizers take about four characters of English per token, and split Hangul and other
wide scripts much more finely (about one token per syllable). The estimate leans high, so a
budget computed with it is not overrun by the real count.
"""

from __future__ import annotations

from collections.abc import Callable

TokenCounter = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    wide = 0
    for ch in text:
        if ord(ch) >= 0x1100:  # Hangul Jamo and everything above: CJK, Hangul syllables, emoji
            wide += 1
    return (len(text) - wide + 3) // 4 + wide
