"""Term and pattern lists per language (Korean and English).

English terms match whole words, case-insensitively ("ass" does not match "class"). Korean has
no spaces between a word and its particles, so Korean terms match as substrings ("바보"
matches "바보야"). Patterns are Python regular expressions, case-insensitive. A list for a
language applies to text in that language; text whose language is unknown is checked against
every list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from moksori.errors import ConfigError


def _term_regex(term: str, language: str) -> str:
    t = re.escape(term.strip())
    if language == "ko" or not re.match(r"\w", term.strip()[:1]):
        return t
    return rf"(?<!\w){t}(?!\w)"


@dataclass(frozen=True)
class Match:
    list_kind: str  # "terms" | "patterns"
    language: str
    start: int
    end: int


class TermList:
    """Compiled lists: `{language: [terms]}` and `{language: [patterns]}`."""

    def __init__(self, terms: Mapping[str, Iterable[str]] | None = None,
                 patterns: Mapping[str, Iterable[str]] | None = None, *, where: str = "guardrails") -> None:
        self._rx: list[tuple[str, str, re.Pattern[str]]] = []
        for lang, items in (terms or {}).items():
            alts = [_term_regex(t, lang) for t in items if t.strip()]
            if alts:
                self._rx.append(("terms", lang, re.compile("|".join(alts), re.IGNORECASE)))
        for lang, items in (patterns or {}).items():
            for p in items:
                if not p.strip():
                    continue
                try:
                    self._rx.append(("patterns", lang, re.compile(p, re.IGNORECASE)))
                except re.error as e:
                    raise ConfigError(f"{where}: pattern {p!r} for {lang} is not a valid regular expression: {e}") \
                        from None

    def __bool__(self) -> bool:
        return bool(self._rx)

    def _lists(self, language: str | None) -> list[tuple[str, str, re.Pattern[str]]]:
        if language in ("en", "ko"):
            return [r for r in self._rx if r[1] == language]
        return self._rx

    def first(self, text: str, language: str | None, *, min_end: int = 0) -> Match | None:
        """The first match ending after `min_end` (to skip matches wholly in text already checked)."""
        best: Match | None = None
        for kind, lang, rx in self._lists(language):
            for m in rx.finditer(text):
                if m.end() > min_end and m.end() > m.start():
                    if best is None or m.start() < best.start:
                        best = Match(kind, lang, m.start(), m.end())
                    break
        return best

    def mask(self, text: str, language: str | None, mask: str = "***") -> tuple[str, int]:
        count = 0
        for _, _, rx in self._lists(language):
            text, n = rx.subn(mask, text)
            count += n
        return text, count
