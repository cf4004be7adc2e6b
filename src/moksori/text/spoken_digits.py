"""Digit sequences spoken as words, found in a transcript (the opposite of `korean_numbers`).

`spoken_digit_runs(text)` reads runs of digits said one by one and gives each run's digits with
the characters of the text every digit was read from, so a caller can check the digits (a
card's Luhn sum, a phone number's shape) and act on the words' span in the original text.

* English: zero / oh / o, one .. nine; "double X" / "triple X"; ten .. nineteen and twenty ..
  ninety with an optional unit ("twenty-six", "twenty six" -> 26), read as the pairs people
  say in phone numbers; "X hundred" (one .. nine) as the group X00, or with a pair or teen after
  it as X and the pair ("five hundred fifty five" -> 555; "five hundred five" is 500 then 5, as
  "one eight hundred five five five" is 1 800 555). Whole words only, any case.
* Korean: the Sino-Korean digit syllables 공/영 일 이 삼 사 오 육 칠 팔 구 read one by one,
  glued ("공일공") or spaced, in groups of 1, 3 or more (of 2 only from 0: the area code 공이;
  "오이", "사이", "이사" are words, as are "삼삼오오", "육이오", "일일이"; after a plus sign also in
  the first four digits: "플러스 팔이 일공 ..." is +82 10 ...); a 3-4 digit group read
  positionally with 백/천 in three syllables or more ("천이백삼십사" -> 1234; "이백", "천" are amounts).
  A Hangul word counts only if it is made of digit syllables alone, or of digit syllables and
  a particle from a fixed list ("오육칠팔이에요": 5678 + 이에요; a particle starting with 이 only
  after a syllable ending in a consonant, so "팔이에요" is 8 and "이예요" is 2). "일이삼사에 오육칠팔"
  reads 에 as a pause between groups; any other particle ends the run.
* Digits written as digits join a run ("010 일이삼사 오육칠팔").
* A plus sign before a run, said ("plus", "플러스") or written ("+"), or the label 국가번호
  (country code), marks the run as a number in international form: `DigitRun.intl_start` is where
  that form starts (the sign, or for the label the first digit), else None. The sign is no digit
  and no part of the run's own span: "two plus two" is the runs "2" and "2", the second marked.
* Between two digits of a run: spaces, one comma, full stop, hyphen or slash, or the words
  dash / hyphen / 다시.

A run is every such digit in a row, nothing more: "이 일 이후에" is the run "12" and "I won one"
the run "1". What is a number worth acting on (how long, which shape) is the caller's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_EN_UNITS = {"zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
             "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_EN_TEENS = {"ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15",
             "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19"}
_EN_TENS = {"twenty": "2", "thirty": "3", "forty": "4", "fifty": "5", "sixty": "6", "seventy": "7",
            "eighty": "8", "ninety": "9"}
_KO_DIGITS = {"공": "0", "영": "0", "일": "1", "이": "2", "삼": "3", "사": "4", "오": "5", "육": "6", "칠": "7",
              "팔": "8", "구": "9"}
_KO_UNITS = {"십": 1, "백": 2, "천": 3}
_KO_VOWEL_FINAL = frozenset("이사오구")  # digit syllables without a final consonant

# particles and endings a digit group may carry; after a vowel, 이... is the digit 2 (이에요 vs 예요)
_KO_PARTICLES = frozenset((
    "에", "이에요", "예요", "입니다", "이요", "요", "이고", "고", "이고요", "고요", "이야", "야", "이랑", "랑", "하고",
    "이나", "나", "으로", "로", "으로요", "로요", "은", "는", "이", "가", "을", "를", "도", "까지", "부터", "이며",
    "이죠", "죠", "인데", "인데요", "이라고", "라고", "이라고요", "라고요", "이거든요", "거든요", "번", "번이에요",
    "번입니다", "번이요", "번요",
))
# words of digit syllables that are words: 오이 (cucumber), 사이 (between), 삼삼오오, 육이오 (the war)...;
# digit by digit, Korean reads a number in groups of 3-4 (or 1: "공 일 공"), 2 only for an area code 공이
_KO_WORDS = frozenset(("삼삼오오", "육이오", "일일이", "이삼일", "삼사일", "사오일", "칠팔일"))
_KO_CONTINUES = "에"  # "일이삼사에 오육칠팔": a pause between groups, not the end of the number

_EN_WORDS = "|".join(_EN_UNITS)
_ONE_NINE = "one|two|three|four|five|six|seven|eight|nine"
_TOKEN = re.compile(
    r"(?P<en>(?<![A-Za-z'’])(?:"
    rf"(?P<mult>double|triple)\s+(?P<mu>{_EN_WORDS})"
    rf"|(?P<hund>{_ONE_NINE})\s+hundred(?:\s+(?:(?P<htens>{'|'.join(_EN_TENS)})(?:[\s-](?P<htu>{_ONE_NINE}))?"
    rf"|(?P<hteen>{'|'.join(_EN_TEENS)})))?"
    rf"|(?P<tens>{'|'.join(_EN_TENS)})(?:[\s-](?P<tu>{_ONE_NINE}))?"
    rf"|(?P<teen>{'|'.join(_EN_TEENS)})"
    rf"|(?P<unit>{_EN_WORDS})"
    r")(?![A-Za-z'’]))"
    r"|(?P<num>(?<![0-9A-Za-z_])[0-9]+(?![0-9A-Za-z_]))"
    r"|(?P<ko>(?<![가-힣])[공영일이삼사오육칠팔구십백천][가-힣]*)",
    re.IGNORECASE,
)
_GAP = re.compile(r"\s*(?:[,.\-–—/]\s*|(?:dash|hyphen|다시)\s+)?", re.IGNORECASE)
# a plus sign said or written just before a run's first digit, or the label "country code"
_INTL = re.compile(r"(?:(?P<sign>(?<![A-Za-z'’])plus|\+|(?<![가-힣])플러스)|(?<![가-힣])국가\s?번호(?:는|가)?)\s*$",
                   re.IGNORECASE)
_INTL_LOOKBACK = 16  # characters before a run searched for the sign
_INTL_PAIRS = 4  # after a sign, 2-syllable Korean groups count while the run has fewer digits: 팔이 일공
_KO_POSITIONAL = re.compile(r"(?:([일이삼사오육칠팔구])?천)?(?:([일이삼사오육칠팔구])?백)?"
                            r"(?:([일이삼사오육칠팔구])?십)?([일이삼사오육칠팔구])?")


@dataclass(frozen=True)
class DigitToken:
    """Digits read from one word (or one Korean syllable, or one group of written digits)."""

    digits: str
    start: int
    end: int
    spoken: bool  # read from words, not written as digits
    group_start: bool  # a pause mark (comma, hyphen, 에, a space between Korean groups) or the run's start before it
    whole: bool = False  # a number read as a whole ("twenty-six", "천이백삼십사"), not digit by digit
    korean: bool = False  # read from Korean words


@dataclass(frozen=True)
class DigitRun:
    """Digits in a row, each token with its characters in the text."""

    tokens: tuple[DigitToken, ...]
    intl_start: int | None = None  # after a plus sign: where the international form starts

    @property
    def digits(self) -> str:
        return "".join(t.digits for t in self.tokens)

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """One (start, end) per digit: the characters of the text it was read from."""
        return tuple((t.start, t.end) for t in self.tokens for _ in t.digits)

    @property
    def spoken_digits(self) -> int:
        return sum(len(t.digits) for t in self.tokens if t.spoken)

    @property
    def start(self) -> int:
        return self.tokens[0].start

    @property
    def end(self) -> int:
        return self.tokens[-1].end


def spoken_digit_runs(text: str) -> list[DigitRun]:
    """Every run of digits in `text` that has at least one digit spoken as a word."""
    runs: list[DigitRun] = []
    current: list[DigitToken] = []
    last_end, last_grouped, last_e = 0, False, False
    intl: int | None = None  # the current run's intl_start

    def close() -> None:
        if any(t.spoken for t in current):
            runs.append(DigitRun(tuple(current), intl))
        current.clear()

    for m in _TOKEN.finditer(text):
        gap = text[last_end:m.start()]
        after_e = last_e and gap.startswith(_KO_CONTINUES) and gap[1:2].isspace()
        if after_e:
            gap = gap[1:]
        joined = bool(current) and _GAP.fullmatch(gap) is not None
        sign = None if joined else _INTL.search(text, max(last_end, m.start() - _INTL_LOOKBACK), m.start())
        if joined:
            pairs = intl is not None and sum(len(t.digits) for t in current) < _INTL_PAIRS
        else:
            pairs = sign is not None
        tokens, grouped, e_after = _read(m, pairs)
        if not tokens:  # a Hangul word that is not a number
            close()
            intl = None
            continue
        if not joined:
            close()
            intl = None if sign is None else sign.start() if sign.group("sign") else m.start()
        pause = not joined or after_e or _is_pause(gap, last_grouped or grouped)
        current.append(replace(tokens[0], group_start=pause))
        current.extend(tokens[1:])
        last_end, last_grouped, last_e = tokens[-1].end, grouped, e_after
    close()
    return runs


def _is_pause(gap: str, spaced_groups: bool) -> bool:
    """Whether a gap marks a group boundary: punctuation, a dash word, or a space between Korean
    or written groups (English words are spaced one by one, so there a space says nothing)."""
    if any(c in gap for c in ",.-–—/") or re.search(r"[A-Za-z가-힣]", gap):
        return True
    return spaced_groups and gap != ""


def _read(m: re.Match[str], pairs: bool = False) -> tuple[list[DigitToken], bool, bool]:
    """The tokens of one match; whether it is a group (Korean word, written digits) rather than
    one English word; whether a Korean word ends in the pause particle 에. `pairs`: a Korean word
    of two digit syllables is a group (in a country code and the group after it)."""
    start, end = m.start(), m.end()
    if m.group("num") is not None:
        return [DigitToken(m.group("num"), start, end, False, False)], True, False
    if m.group("ko") is not None:
        return _read_korean(m.group("ko"), start, pairs)
    whole = True
    if m.group("hund") is not None:
        tail = m.group("htens") or m.group("hteen")
        if tail is None:
            rest = "00"
        elif m.group("hteen") is not None:
            rest = _EN_TEENS[tail.lower()]
        else:
            rest = _EN_TENS[tail.lower()] + (_EN_UNITS[m.group("htu").lower()] if m.group("htu") else "0")
        digits = _EN_UNITS[m.group("hund").lower()] + rest
    elif m.group("mult") is not None:
        times = 2 if m.group("mult").lower() == "double" else 3
        digits, whole = _EN_UNITS[m.group("mu").lower()] * times, False
    elif m.group("tens") is not None:
        ones = m.group("tu")
        digits = _EN_TENS[m.group("tens").lower()] + (_EN_UNITS[ones.lower()] if ones else "0")
    elif m.group("teen") is not None:
        digits = _EN_TEENS[m.group("teen").lower()]
    else:
        digits, whole = _EN_UNITS[m.group("unit").lower()], False
    return [DigitToken(digits, start, end, True, False, whole)], False, False


def _read_korean(word: str, start: int, pairs: bool = False) -> tuple[list[DigitToken], bool, bool]:
    """A Hangul word of digit syllables, maybe with a particle: one token per syllable (one for
    a positional group); no tokens if the word is not a number."""
    prefix = 0
    while prefix < len(word) and (word[prefix] in _KO_DIGITS or word[prefix] in _KO_UNITS):
        prefix += 1
    for cut in range(prefix, 0, -1):
        rest = word[cut:]
        if rest and rest not in _KO_PARTICLES:
            continue
        if rest[:1] == "이" and word[cut - 1] in _KO_VOWEL_FINAL:
            continue  # after a vowel 이 is the digit 2, not a particle ("이예요", never "이이에요")
        tokens = _korean_tokens(word[:cut], start, pairs)
        if tokens is not None:
            return tokens, True, rest == _KO_CONTINUES
    return [], True, False


def _korean_tokens(body: str, start: int, pairs: bool = False) -> list[DigitToken] | None:
    if not any(c in _KO_UNITS for c in body):
        if body in _KO_WORDS or (len(body) == 2 and body[0] not in "공영" and not pairs):
            return None
        return [DigitToken(_KO_DIGITS[c], start + i, start + i + 1, True, False, korean=True)
                for i, c in enumerate(body)]
    m = _KO_POSITIONAL.fullmatch(body)
    if m is None or len(body) < 3 or not ("백" in body or "천" in body):
        return None  # a group of a number is 3-4 digits: "오십", "이백", "천" are quantities
    value = 0
    for group, unit, power in ((1, "천", 3), (2, "백", 2), (3, "십", 1)):
        if unit in body:
            value += int(_KO_DIGITS[m.group(group)] if m.group(group) else 1) * 10**power
    if m.group(4):
        value += int(_KO_DIGITS[m.group(4)])
    return [DigitToken(str(value), start, start + len(body), True, False, whole=True, korean=True)]
