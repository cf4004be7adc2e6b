"""Redacting personal data from what is stored and logged.

Kinds: `phone` (Korean mobile and landline numbers such as 010-1234-5678, 02-123-4567, +82 10
1234 5678, and international +CC numbers; North American (555) 123-4567), `email`, `card`
(13-19 digits, optionally grouped, passing the Luhn check) and `rrn` (Korean resident
registration numbers, 6+7 digits: a valid birth date and sex/century digit; written without
the hyphen, the check digit must be right too; numbers issued since October 2020 no longer
carry a check digit, so a hyphenated one is redacted on the date and sex digit alone).

Built to leave ordinary numbers alone: dates (2026-12-02), times (10:30), prices (1,200,000원,
$1,234.56), order numbers of other lengths, years and counts are not redacted.

Numbers spoken as words, as a transcript writes them ("공일공 일이삼사 오육칠팔이에요", "four one
one one, one one one one, ...", "oh one oh ..."; read by `moksori.text.spoken_digits`), are
checked for the three digit kinds with the same checks, once at least four digits were said as
words: Luhn for 13-19 digit cards and a 6+7 resident number with a valid date (the check digit
unless the speaker paused after the sixth digit), both read digit by digit; a phone number shaped
like a Korean mobile or landline number (9-12 digits from 0) or, read in English, a North
American one ([1] NXX NXX XXXX), where pairs and groups count too ("twenty-six", "천이백삼십사",
"five hundred fifty five"); after a plus sign ("plus eight two one oh ...", "+ eight two ...",
"플러스 팔이 일공 ...", "국가번호 팔이 ..."), a country code and number from the sign on, masked
with the sign: +82 shaped like a Korean number, +1 like a North American one, any other code with
9-15 digits in all (E.164) when the number after the code is read digit by digit.
A number is the whole run or goes from pause to pause (comma, hyphen, 에, a space between Korean
groups), never a part of a group cut out to pass a check; a run's numbers are the ones covering
most of it. What is masked is the words' span in the text, a particle after it stays. Counting
("one two three ... ten", "일 이 삼 ...") and a digit said over and over are no number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from moksori.text.spoken_digits import DigitRun, spoken_digit_runs

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


# ------------------------------------------------------------------ numbers spoken as words

_SPOKEN_KINDS = ("rrn", "card", "phone")  # the order the digit rules take
_SPOKEN_MIN_DIGITS = 9  # the shortest number checked: a Seoul landline, 02 + 7 digits
_SPOKEN_MIN_WORDS = 4  # digits said as words in a window; fewer, and the digit rules decide alone
_SPOKEN_MAX_DIGITS = 19
_SPOKEN_PHONES = [
    re.compile(r"01[016789]\d{7,8}"),  # Korean mobile
    re.compile(r"0(?:2|[3-6][1-5]|70|50\d)\d{7,8}"),  # Korean landline / VoIP with its area code
    re.compile(r"1?[2-9]\d\d[2-9]\d{6}"),  # North American, NXX NXX XXXX (not read in Korean)
]
_SPOKEN_INTL_PHONE = re.compile(r"[1-9]\d{8,14}")  # after a plus sign: a country code and number


def _intl_phone(digits: str, by_digit: bool) -> bool:
    """Whether digits said after a plus sign are a phone number: +82 shaped like a Korean number
    (its leading 0 said or not), +1 like a North American one, any other with 9-15 digits in all
    (E.164) when said digit by digit after the country code ("plus twenty twenty-four, twenty
    twenty-five, ..." is years)."""
    if digits.startswith("82"):
        national = digits[2:] if digits[2:3] == "0" else "0" + digits[2:]
        return any(rx.fullmatch(national) for rx in _SPOKEN_PHONES[:2])
    if digits[0] == "1" and _SPOKEN_PHONES[2].fullmatch(digits):
        return True
    return by_digit and _SPOKEN_INTL_PHONE.fullmatch(digits) is not None


class _SpokenRun:
    """One run's digits with its tokens' offsets, to check many windows of it cheaply."""

    def __init__(self, run: DigitRun, kinds: list[str]) -> None:
        self.tokens, self.kinds = run.tokens, kinds
        tokens = run.tokens
        self.intl_start = run.intl_start  # a number from the first token on starts here
        self.digits = "".join(t.digits for t in tokens)
        self.at = [0]  # digit offset of each token, and the end
        self.words = [0]  # digits said as words before each token
        self.wholes = [0]  # tokens read as a whole ("twenty-six") before each token
        self.koreans = [0]  # tokens read from Korean words before each token
        for t in tokens:
            self.at.append(self.at[-1] + len(t.digits))
            self.words.append(self.words[-1] + (len(t.digits) if t.spoken else 0))
            self.wholes.append(self.wholes[-1] + t.whole)
            self.koreans.append(self.koreans[-1] + t.korean)
        # a pause before each token; a pause after every word ("four, one, one, one, ...")
        # groups nothing, so then the run is one group
        self.pauses = [t.group_start for t in tokens]
        if all(self.pauses):
            self.pauses = [True] + [False] * (len(tokens) - 1)

    def starts(self, at: int) -> bool:
        """Whether a number may start at tokens[at]: the run's start or a pause."""
        return at == 0 or self.pauses[at]

    def ends(self, at: int) -> bool:
        """Whether a number may end before tokens[at]: the run's end, a pause, or a last 이 that
        may be the particle ("오육칠팔이 맞아요")."""
        n = len(self.tokens)
        if at == n or self.pauses[at]:
            return True
        last = self.tokens[at]
        return at == n - 1 and last.spoken and last.digits == "2" and last.end - last.start == 1

    def kind(self, i: int, j: int) -> str | None:
        """The kind tokens[i:j] are, if any: the digit rules' checks."""
        if self.words[j] - self.words[i] < _SPOKEN_MIN_WORDS:
            return None
        digits = self.digits[self.at[i]:self.at[j]]
        if digits.count(digits[0]) == len(digits) or self._counting(i, j):
            return None
        by_digit = self.wholes[j] == self.wholes[i]  # cards and resident numbers are read digit by digit
        if (i == 0 and self.intl_start is not None and "phone" in self.kinds
                and _intl_phone(digits, self.wholes[j] == self.wholes[i + 1])):
            return "phone"  # after a plus sign: before a card or resident number's checks
        for kind in self.kinds:
            if kind == "rrn" and by_digit and len(digits) == 13 and digits[6] in "12345678":
                paused = any(self.at[k] - self.at[i] == 6 and self.pauses[k] for k in range(i, j))
                if rrn_ok(digits[:6], digits[6], digits[7:], need_check_digit=not paused):
                    return kind
            elif kind == "card" and by_digit and 13 <= len(digits) <= 19 and luhn_ok(digits):
                return kind
            elif kind == "phone" and len(digits) <= 12:
                phones = _SPOKEN_PHONES if self.koreans[j] == self.koreans[i] else _SPOKEN_PHONES[:2]
                if any(rx.fullmatch(digits) for rx in phones):
                    return kind
        return None

    def _counting(self, i: int, j: int) -> bool:
        """"one two three four ..." or "십 구 팔 칠 ...": counting up or down, not a number."""
        if j - i < 4:
            return False
        first = int(self.tokens[i + 1].digits) - int(self.tokens[i].digits)
        return first in (1, -1) and all(int(self.tokens[k + 1].digits) - int(self.tokens[k].digits) == first
                                         for k in range(i, j - 1))

    def find(self, free: Callable[[int, int], bool], found: list[Finding]) -> None:
        """The numbers that cover the most of the run, each from a pause to a pause (or the
        run's ends), fewest first: the whole run when it is one; "I won one, [CARD]"; two
        phone numbers said in a row. Never a number cut out of a group: a 16-digit run failing
        the Luhn check is not searched for a 13-digit one that passes."""
        n = len(self.tokens)
        # best[k]: (digits covered, -numbers) over tokens[:k], and how it was reached
        best: list[tuple[int, int] | None] = [None] * (n + 1)
        how: list[tuple[int, str | None]] = [(0, None)] * (n + 1)
        best[0] = (0, 0)

        def offer(at: int, score: tuple[int, int], step: tuple[int, str | None]) -> None:
            current = best[at]
            if current is None or score > current:
                best[at], how[at] = score, step

        for i in range(n):
            here = best[i]
            if here is None:
                continue
            offer(i + 1, here, (i, None))  # token i is in no number
            if not self.starts(i):
                continue
            for j in range(i + 1, n + 1):
                length = self.at[j] - self.at[i]
                if length > _SPOKEN_MAX_DIGITS:
                    break
                if length < _SPOKEN_MIN_DIGITS or not self.ends(j):
                    continue
                kind = self.kind(i, j)
                if kind is not None and free(self.start(i, kind), self.tokens[j - 1].end):
                    offer(j, (here[0] + length, here[1] - 1), (i, kind))
        at = n
        while at > 0:
            i, kind = how[at]
            if kind is not None:
                found.append(Finding(kind, self.start(i, kind), self.tokens[at - 1].end))
            at = i

    def start(self, i: int, kind: str) -> int:
        """Where a number of `kind` from tokens[i] starts in the text: a phone number from the
        first token on with the plus sign said before it."""
        if i == 0 and kind == "phone" and self.intl_start is not None:
            return self.intl_start
        return self.tokens[i].start


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
        spoken = [k for k in _SPOKEN_KINDS if k in self.kinds]
        if spoken:
            for run in spoken_digit_runs(text):
                if len(run.digits) >= _SPOKEN_MIN_DIGITS and run.spoken_digits >= _SPOKEN_MIN_WORDS:
                    _SpokenRun(run, spoken).find(free, found)
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
