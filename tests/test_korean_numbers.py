"""Tests for Korean number reading."""

from __future__ import annotations

import pytest

from moksori.text.korean_numbers import (
    NATIVE_COUNTERS,
    SINO_COUNTERS,
    native_korean,
    normalize_for_tts,
    normalize_korean,
    sino_korean,
)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "영"),
        (1, "일"),
        (10, "십"),
        (11, "십일"),
        (20, "이십"),
        (101, "백일"),
        (110, "백십"),
        (1000, "천"),
        (1100, "천백"),
        (2026, "이천이십육"),
        (10000, "만"),
        (12345, "만이천삼백사십오"),
        (110000, "십일만"),
        (100000000, "일억"),
        (100010000, "일억일만"),
        (120000000, "일억이천만"),
        (10**12, "일조"),
        (-3, "마이너스 삼"),
    ],
)
def test_sino_korean(n: int, expected: str) -> None:
    assert sino_korean(n) == expected


def test_sino_korean_rejects_huge_numbers() -> None:
    with pytest.raises(ValueError):
        sino_korean(10**20)


@pytest.mark.parametrize(
    ("n", "plain", "attributive"),
    [
        (1, "하나", "한"),
        (2, "둘", "두"),
        (3, "셋", "세"),
        (4, "넷", "네"),
        (5, "다섯", "다섯"),
        (10, "열", "열"),
        (11, "열하나", "열한"),
        (20, "스물", "스무"),
        (21, "스물하나", "스물한"),
        (34, "서른넷", "서른네"),
        (99, "아흔아홉", "아흔아홉"),
    ],
)
def test_native_korean(n: int, plain: str, attributive: str) -> None:
    assert native_korean(n) == plain
    assert native_korean(n, attributive=True) == attributive


def test_native_korean_falls_back_to_sino() -> None:
    assert native_korean(100) == "백"
    assert native_korean(0, attributive=True) == "영"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3시", "세 시"),
        ("3개", "세 개"),
        ("2026년", "이천이십육 년"),
        ("15%", "십오 퍼센트"),
        ("2.5%", "이 점 오 퍼센트"),
        ("1개", "한 개"),
        ("2명", "두 명"),
        ("4마리", "네 마리"),
        ("20살", "스무 살"),
        ("21살", "스물한 살"),
        ("3시 30분", "세 시 삼십 분"),
        ("3:30", "세 시 삼십 분"),
        ("3:00에 봐요", "세 시에 봐요"),
        ("오후 12:05:09", "오후 열두 시 오 분 구 초"),
        ("10월", "시월"),
        ("6월", "유월"),
        ("11월 21일", "십일월 이십일 일"),
        ("3,000원", "삼천 원"),
        ("10000원", "만 원"),
        ("1억", "일억"),
        ("2천만", "이천만"),
        ("1만", "만"),
        ("1억 2천만 원", "일억 이천만 원"),
        ("3만5천원", "삼만오천 원"),
        ("3.5킬로그램", "삼 점 오 킬로그램"),
        ("3.5kg", "삼 점 오 킬로그램"),
        ("5km", "오 킬로미터"),
        ("25°C", "이십오 도"),
        ("25℃", "이십오 도"),
        ("25도", "이십오 도"),
        ("-3도", "영하 삼 도"),
        ("-3°C", "영하 삼 도"),
        ("-5", "마이너스 오"),
        ("2시간", "두 시간"),
        ("3번", "세 번"),
        ("3번째", "세 번째"),
        ("1번째", "첫 번째"),
        ("5분", "오 분"),
        ("10초", "십 초"),
        ("3개월", "삼 개월"),
        ("100명", "백 명"),
        ("0", "영"),
        ("0.5", "영 점 오"),
        ("번호는 123입니다", "번호는 백이십삼입니다"),
        ("1000", "천"),
        ("12345", "만이천삼백사십오"),
        ("2~3개", "두 개에서 세 개"),
        ("$5", "오 달러"),
        ("₩3,000", "삼천 원"),
        ("2026-11-21에 만나요", "이천이십육 년 십일월 이십일 일에 만나요"),
        ("010-1234-5678", "공일공 일이삼사 오육칠팔"),
    ],
)
def test_normalize_korean(text: str, expected: str) -> None:
    assert normalize_korean(text) == expected


def test_full_sentence() -> None:
    text = "오늘 3시에 사과 2개와 우유 1병을 사서 5,500원을 냈어요."
    assert normalize_korean(text) == "오늘 세 시에 사과 두 개와 우유 한 병을 사서 오천오백 원을 냈어요."


@pytest.mark.parametrize(
    "text",
    [
        "숫자가 없는 문장입니다.",
        "Hello, world!",
        "MP3 파일과 GPT-4 모델",
        "https://example.com/page?id=12 를 보세요",
        "메일은 user42@example.com 입니다",
        "3D 프린터와 4K 화면",
        "버전 1.2.3 출시",
    ],
)
def test_leaves_non_number_text_alone(text: str) -> None:
    assert normalize_korean(text) == text


def test_every_counter_is_classified_once() -> None:
    assert not set(NATIVE_COUNTERS) & set(SINO_COUNTERS)
    for counter in NATIVE_COUNTERS:
        assert normalize_korean(f"2{counter}") == f"두 {counter}"
    for counter in SINO_COUNTERS:
        if counter != "월":
            assert normalize_korean(f"2{counter}") == f"이 {counter}"


def test_normalize_for_tts_only_touches_korean() -> None:
    assert normalize_for_tts("3개", "ko") == "세 개"
    assert normalize_for_tts("3 apples", "en") == "3 apples"
