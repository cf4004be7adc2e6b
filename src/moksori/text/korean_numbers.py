"""Write numbers, dates, times and units out in Korean before TTS.

Conventions:
- Sino-Korean numbers are written without spaces between 만/억/조 groups:
  12345 → "만이천삼백사십오", 120000000 → "일억이천만".
- A leading 1 is dropped before 십/백/천 ("천", "백십") and before 만 when 만 is the
  largest group ("만", "만이천"); it is kept before 억/조/경 ("일억").
- Native-Korean numbers cover 1–99; anything else falls back to Sino-Korean.
- Number and counter are separated by a space ("세 개", "이천이십육 년"), except months,
  which are single words ("시월", "십일월").
- Decimals are read digit by digit after 점 ("삼 점 일사") and always Sino-Korean.
- Digit strings with a leading zero (IDs, phone numbers) are read digit by digit with 공.
- Digits inside URLs, e-mail addresses and Latin words (MP3, GPT-4) are left alone; digits
  next to English words elsewhere are still converted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_DIGITS = "영일이삼사오육칠팔구"
_PHONE_DIGITS = "공일이삼사오육칠팔구"
_SMALL_UNITS = ("", "십", "백", "천")
_LARGE_UNITS = ("", "만", "억", "조", "경")
_NATIVE_ONES = ("", "하나", "둘", "셋", "넷", "다섯", "여섯", "일곱", "여덟", "아홉")
_NATIVE_ONES_ATTRIBUTIVE = ("", "한", "두", "세", "네", "다섯", "여섯", "일곱", "여덟", "아홉")
_NATIVE_TENS = ("", "열", "스물", "서른", "마흔", "쉰", "예순", "일흔", "여든", "아흔")
_MONTHS = ("", "일월", "이월", "삼월", "사월", "오월", "유월", "칠월", "팔월", "구월", "시월", "십일월", "십이월")

NATIVE_COUNTERS: tuple[str, ...] = (
    "시", "개", "명", "살", "마리", "권", "잔", "병", "시간", "번", "번째", "사람", "장", "대",
    "벌", "켤레", "그릇", "송이", "곳", "가지", "달", "군데", "배", "채", "척", "쌍", "통",
)
"""Counters read with native-Korean numbers (한 개, 두 명, 세 시)."""

SINO_COUNTERS: tuple[str, ...] = (
    "분", "초", "년", "월", "일", "원", "층", "호", "개월", "주", "주년", "퍼센트", "도", "회",
    "달러", "위", "등", "점", "세", "학년", "인분", "박", "쪽", "페이지", "분기", "킬로미터",
    "킬로그램", "그램", "밀리그램", "미터", "센티미터", "밀리미터", "리터", "밀리리터",
)
"""Counters read with Sino-Korean numbers (오 분, 이천이십육 년)."""

LATIN_UNITS: dict[str, str] = {
    "km": "킬로미터", "kg": "킬로그램", "mg": "밀리그램", "cm": "센티미터", "mm": "밀리미터",
    "ml": "밀리리터", "mL": "밀리리터", "GB": "기가바이트", "MB": "메가바이트",
    "KB": "킬로바이트", "kB": "킬로바이트", "TB": "테라바이트", "°C": "도", "℃": "도",
    "°": "도", "%": "퍼센트", "m": "미터", "g": "그램", "l": "리터", "L": "리터",
}
"""Unit symbols written after digits, and how they are read."""

_NATIVE = frozenset(NATIVE_COUNTERS)


def _alternation(words: Iterable[str]) -> str:
    """Regex alternation trying longer words first ("개월" before "개")."""
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_NUM = r"\d{1,3}(?:,\d{3})+(?!\d)|\d+"
_COUNTER = _alternation(NATIVE_COUNTERS + SINO_COUNTERS)
_UNIT = _alternation(LATIN_UNITS)

_PROTECTED = re.compile(
    r"(?:https?://|www\.)\S+"
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|[A-Za-z][A-Za-z0-9_-]*\d[A-Za-z0-9_-]*"
    r"|\d+(?:\.\d+){3,}"
)
_PHONE = re.compile(r"(?<!\d)(0\d{1,2})-(\d{3,4})-(\d{4})(?!\d)")
_DATE = re.compile(r"(?<![\d.])(\d{4})([-./])(\d{1,2})\2(\d{1,2})(?![\d])")
_TIME = re.compile(r"(?<![\d:.])([01]?\d|2[0-4]):([0-5]\d)(?::([0-5]\d))?(?![\d:])")
_VERSION = re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}")
_RANGE = re.compile(
    rf"(?<![\d.,])(?P<a>{_NUM})(?:\.(?P<af>\d+))?\s?~\s?(?P<b>{_NUM})(?:\.(?P<bf>\d+))?"
    rf"(?:(?P<counter>{_COUNTER})|\s?(?P<unit>{_UNIT})(?![A-Za-z]))?"
)
_NUMBER = re.compile(
    r"(?<![\d.,A-Za-z_])"
    r"(?P<sign>(?<![0-9A-Za-z가-힣])[-−])?"
    r"(?P<currency>[$₩])?"
    rf"(?P<int>{_NUM})(?:\.(?P<frac>\d+))?"
    r"(?P<mag>[십백천만억조]*)"
    rf"(?:(?P<counter>{_COUNTER})|\s?(?P<unit>{_UNIT})(?![A-Za-z]))?"
)


def sino_korean(n: int) -> str:
    """Read an integer with Sino-Korean numerals (1000 → 천, 12345 → 만이천삼백사십오)."""
    if n < 0:
        return "마이너스 " + sino_korean(-n)
    if n == 0:
        return "영"
    if n >= 10 ** (4 * len(_LARGE_UNITS)):
        raise ValueError(f"number too large to read: {n}")
    parts: list[str] = []
    for index in range(len(_LARGE_UNITS) - 1, -1, -1):
        group = n // 10 ** (4 * index) % 10000
        if group == 0:
            continue
        leading_man = group == 1 and index == 1 and not parts
        parts.append(("" if leading_man else _read_group(group)) + _LARGE_UNITS[index])
    return "".join(parts)


def _read_group(n: int) -> str:
    """Read 1..9999 without the leading 일 before 십/백/천."""
    out: list[str] = []
    for power in (3, 2, 1, 0):
        digit = n // 10**power % 10
        if digit == 0:
            continue
        if power == 0:
            out.append(_DIGITS[digit])
        else:
            out.append(("" if digit == 1 else _DIGITS[digit]) + _SMALL_UNITS[power])
    return "".join(out)


def native_korean(n: int, *, attributive: bool = False) -> str:
    """Read 1–99 with native-Korean numerals (하나/한, 스물/스무); other values as Sino-Korean.

    `attributive=True` gives the form used before a counter: 한, 두, 세, 네, 스무.
    """
    if not 1 <= n <= 99:
        return sino_korean(n)
    tens, ones = divmod(n, 10)
    if attributive and n == 20:
        return "스무"
    ones_words = _NATIVE_ONES_ATTRIBUTIVE if attributive else _NATIVE_ONES
    return _NATIVE_TENS[tens] + ones_words[ones]


def _digit_by_digit(digits: str, zero: str = "영") -> str:
    return "".join(zero if d == "0" else _DIGITS[int(d)] for d in digits)


def _read_plain(int_part: str, frac: str | None) -> str:
    """Sino-Korean reading of a digit string with optional decimal part."""
    digits = int_part.replace(",", "")
    if len(digits) > 1 and digits.startswith("0") and not frac:
        return _digit_by_digit(digits, zero="공")
    value = int(digits)
    whole = sino_korean(value) if value < 10**20 else _digit_by_digit(digits)
    return f"{whole} 점 {_digit_by_digit(frac)}" if frac else whole


def _with_counter(int_part: str, frac: str | None, counter: str) -> str:
    """Read a number followed by a counter, choosing native or Sino-Korean numerals."""
    value = int(int_part.replace(",", ""))
    if frac is None and counter == "월" and 1 <= value <= 12:
        return _MONTHS[value]
    if frac is None and counter == "번째" and value == 1:
        return "첫 번째"
    if frac is None and counter in _NATIVE and 1 <= value <= 99:
        return f"{native_korean(value, attributive=True)} {counter}"
    return f"{_read_plain(int_part, frac)} {counter}"


def _number(match: re.Match[str]) -> str:
    text = match.group(0)
    end = match.end()
    after = match.string[end : end + 1]
    counter = match.group("counter")
    unit = match.group("unit")
    if unit:
        counter = LATIN_UNITS[unit]
    elif counter is None and after.isascii() and after.isalpha():
        return text  # "3D", "4K": part of a Latin token
    int_part, frac, mag = match.group("int"), match.group("frac"), match.group("mag")
    if match.group("currency") == "$":
        counter = counter or "달러"
    elif match.group("currency") == "₩":
        counter = counter or "원"

    if mag:
        number = _read_plain(int_part, frac)
        if number == "일" and mag[0] in "십백천만":
            number = ""
        words = number + mag + (f" {counter}" if counter else "")
    elif counter:
        words = _with_counter(int_part, frac, counter)
    else:
        words = _read_plain(int_part, frac)

    if match.group("sign"):
        prefix = "영하 " if counter == "도" else "마이너스 "
        words = prefix + words
    return words


def _range(match: re.Match[str]) -> str:
    unit = match.group("unit")
    counter = LATIN_UNITS[unit] if unit else match.group("counter")
    if counter is None:
        after = match.string[match.end() : match.end() + 1]
        if after.isascii() and after.isalpha():
            return match.group(0)
        first = _read_plain(match.group("a"), match.group("af"))
        return f"{first}에서 {_read_plain(match.group('b'), match.group('bf'))}"
    first = _with_counter(match.group("a"), match.group("af"), counter)
    return f"{first}에서 {_with_counter(match.group('b'), match.group('bf'), counter)}"


def _time(match: re.Match[str]) -> str:
    hour, minute, second = int(match.group(1)), int(match.group(2)), match.group(3)
    words = "영 시" if hour == 0 else f"{native_korean(hour, attributive=True)} 시"
    if minute or second:
        words += f" {sino_korean(minute)} 분"
    if second and int(second):
        words += f" {sino_korean(int(second))} 초"
    return words


def _date(match: re.Match[str]) -> str:
    year, month, day = int(match.group(1)), int(match.group(3)), int(match.group(4))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return match.group(0)
    return f"{sino_korean(year)} 년 {_MONTHS[month]} {sino_korean(day)} 일"


def _phone(match: re.Match[str]) -> str:
    return " ".join(_digit_by_digit(g, zero="공") for g in match.groups())


def _normalize_segment(text: str) -> str:
    text = _PHONE.sub(_phone, text)
    text = _DATE.sub(_date, text)
    text = _TIME.sub(_time, text)
    parts: list[str] = []
    last = 0
    for version in _VERSION.finditer(text):  # "1.2.3" stays as it is
        parts.append(_convert_numbers(text[last : version.start()]))
        parts.append(version.group(0))
        last = version.end()
    parts.append(_convert_numbers(text[last:]))
    return "".join(parts)


def _convert_numbers(text: str) -> str:
    return _NUMBER.sub(_number, _RANGE.sub(_range, text))


def normalize_korean(text: str) -> str:
    """Rewrite digits in Korean text as Korean words ("3개" → "세 개", "15%" → "십오 퍼센트")."""
    out: list[str] = []
    last = 0
    for protected in _PROTECTED.finditer(text):
        out.append(_normalize_segment(text[last : protected.start()]))
        out.append(protected.group(0))
        last = protected.end()
    out.append(_normalize_segment(text[last:]))
    return "".join(out)


def normalize_for_tts(text: str, language: str) -> str:
    """Apply the language's TTS text normalization (Korean only, for now)."""
    return normalize_korean(text) if language == "ko" else text
