"""Redacting personal data from what is stored and logged.

Kinds: `phone` (Korean mobile and landline numbers such as 010-1234-5678, 02-123-4567, +82 10
1234 5678, and international +CC numbers; North American (555) 123-4567), `email`, `card`
(13-19 digits, optionally grouped, passing the Luhn check) and `rrn` (Korean resident
registration numbers, 6+7 digits: a valid birth date and sex/century digit; written without
the hyphen, the check digit must be right too; numbers issued since October 2020 no longer
carry a check digit, so a hyphenated one is redacted on the date and sex digit alone).

Built to leave ordinary numbers alone: dates (2026-12-02), times (10:30), prices (1,200,000원,
$1,234.56), order numbers of other lengths, years and counts are not redacted. Numbers
spoken as words ("공일공 일이삼사") are not recognised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("phone", "email", "card", "rrn")
LABELS = {"phone": "[PHONE]", "email": "[EMAIL]", "card": "[CARD]", "rrn": "[RRN]"}

# digits not glued to other digits or Latin letters on either side (Korean particles may follow
# directly: "010-1234-5678이에요")
_L = r"(?<![0-9A-Za-z_+])"
_R = r"(?![0-9A-Za-z_])"
_SEP = r"[ .-]?"

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_RRN = re.compile(_L + r"(\d{2})(\d{2})(\d{2})(\s?-\s?|\s)?([1-8])(\d{6})" + _R)
_CARD = re.compile(_L + r"\d(?:[ -]?\d){12,18}" + _R)
_PHONES = [
    # Korean mobile: 010-1234-5678, 010 1234 5678, 01012345678, 011-123-4567
    re.compile(_L + r"01[016789]" + _SEP + r"\d{3,4}" + _SEP + r"\d{4}" + _R),
    # Korean landline / VoIP with area code: 02-123-4567, 031-1234-5678, 070-1234-5678
    re.compile(_L + r"0(?:2|[3-6][1-5]|70|50\d)" + r"[ .-]" + r"\d{3,4}" + r"[ .-]" + r"\d{4}" + _R),
    re.compile(_L + r"\(0(?:2|[3-6][1-5])\)\s?\d{3,4}-\d{4}" + _R),
    # +82 10-1234-5678, +82 (0)10 1234 5678, +82-2-123-4567
    re.compile(r"(?<![0-9A-Za-z_])\+82[ .-]?(?:\(0\))?[ .-]?(?:1[016789]|2|[3-6][1-5]|70)[ .-]?\d{3,4}[ .-]?\d{4}" + _R),
    # other international numbers: + country code, 7-14 more digits, optional separators
    re.compile(r"(?<![0-9A-Za-z_])\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,5}" + _R),
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567
    re.compile(_L + r"(?:\(\d{3}\)\s?|\d{3}[.-])\d{3}[.-]\d{4}" + _R),
]


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def rrn_ok(front: str, sex: str, back: str, *, need_check_digit: bool) -> bool:
    """Birth date valid for the century the sex digit gives; check digit when asked."""
    import datetime as dt

    yy, mm, dd = int(front[:2]), int(front[2:4]), int(front[4:6])
    century = {"1": 1900, "2": 1900, "3": 2000, "4": 2000, "5": 1900, "6": 1900, "7": 2000, "8": 2000}[sex]
    try:
        dt.date(century + yy, mm, dd)
    except ValueError:
        return False
    if not need_check_digit:
        return True
    digits = [int(c) for c in front + sex + back]
    weights = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
    check = (11 - sum(d * w for d, w in zip(digits, weights)) % 11) % 10
    return check == digits[12]


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


class PIIRedactor:
    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            from moksori.errors import ConfigError

            raise ConfigError(f"guardrails.redact_pii: unknown kind {sorted(unknown)[0]!r}",
                              hint=f"known: {', '.join(KINDS)}")

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def find(self, text: str) -> list[Finding]:
        found: list[Finding] = []

        def free(s: int, e: int) -> bool:
            return all(e <= f.start or s >= f.end for f in found)

        if "email" in self.kinds:
            found += [Finding("email", m.start(), m.end()) for m in _EMAIL.finditer(text)]
        if "rrn" in self.kinds:
            for m in _RRN.finditer(text):
                sep = m.group(4)
                front = m.group(1) + m.group(2) + m.group(3)
                if free(m.start(), m.end()) and rrn_ok(front, m.group(5), m.group(6), need_check_digit=not sep):
                    found.append(Finding("rrn", m.start(), m.end()))
        if "card" in self.kinds:
            for m in _CARD.finditer(text):
                digits = re.sub(r"\D", "", m.group(0))
                if 13 <= len(digits) <= 19 and luhn_ok(digits) and free(m.start(), m.end()):
                    found.append(Finding("card", m.start(), m.end()))
        if "phone" in self.kinds:
            for rx in _PHONES:
                for m in rx.finditer(text):
                    digits = re.sub(r"\D", "", m.group(0))
                    if 7 <= len(digits) <= 15 and free(m.start(), m.end()):
                        found.append(Finding("phone", m.start(), m.end()))
        return sorted(found, key=lambda f: f.start)

    def redact(self, text: str) -> tuple[str, list[str]]:
        """(text with each finding replaced by its label, the kinds found in order)."""
        if not text or not self.kinds:
            return text, []
        found = self.find(text)
        if not found:
            return text, []
        out, last = [], 0
        for f in found:
            out.append(text[last:f.start])
            out.append(LABELS[f.kind])
            last = f.end
        out.append(text[last:])
        return "".join(out), [f.kind for f in found]

    def __call__(self, text: str) -> str:
        return self.redact(text)[0]
