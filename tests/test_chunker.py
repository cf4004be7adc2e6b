"""Tests for the streaming clause chunker."""

from __future__ import annotations

import random
import re

import pytest

from moksori.text.chunker import ClauseChunker


def chunk_all(text: str, sizes: list[int] | None = None, **kwargs: int | bool) -> list[str]:
    """Feed text in deltas of the given sizes (cycled), or as one delta; then flush."""
    chunker = ClauseChunker(**kwargs)
    out: list[str] = []
    if sizes is None:
        out += chunker.push(text)
    else:
        pos, k = 0, 0
        while pos < len(text):
            size = sizes[k % len(sizes)]
            out += chunker.push(text[pos : pos + size])
            pos += size
            k += 1
    return out + chunker.flush()


def by_char(text: str, **kwargs: int | bool) -> list[str]:
    return chunk_all(text, [1], **kwargs)


def test_whole_short_sentence_is_first_chunk() -> None:
    assert by_char("Sure, I can help with that. What do you need?") == [
        "Sure, I can help with that.",
        "What do you need?",
    ]


def test_first_chunk_splits_at_comma_once_long_enough() -> None:
    chunks = by_char("Well, the answer, in short, is yes")
    assert chunks == ["Well, the answer,", "in short, is yes"]


def test_later_chunks_use_min_chars() -> None:
    text = (
        "Okay, here we go. First, a short one, then a much longer clause follows here, and the end."
    )
    assert by_char(text, min_chars=40) == [
        "Okay, here we go.",
        "First, a short one, then a much longer clause follows here,",
        "and the end.",
    ]


def test_boundary_waits_for_the_next_character() -> None:
    chunker = ClauseChunker()
    assert chunker.push("The value of pi is 3.") == []
    assert chunker.push("14 and that is all") == []
    assert chunker.push(". Next") == ["The value of pi is 3.14 and that is all."]
    assert chunker.flush() == ["Next"]


def test_sentence_end_emitted_once_whitespace_arrives() -> None:
    chunker = ClauseChunker()
    assert chunker.push("Hello there!") == []
    assert chunker.push(" ") == ["Hello there!"]
    assert chunker.flush() == []


def test_flush_returns_remainder_and_resets() -> None:
    chunker = ClauseChunker()
    assert chunker.push("  unfinished thought  ") == []
    assert chunker.flush() == ["unfinished thought"]
    assert chunker.flush() == []
    # After a reset the next stream uses first_min_chars again.
    assert chunker.push("Right, so this is it, ") == ["Right, so this is it,"]


@pytest.mark.parametrize(
    "text",
    [
        "Pi is 3.14 and the total is 1,000,000 or 2.5% more at 3:30 today.",
        "Mr. Smith met Mrs. Jones and Dr. Who at St. Paul vs. the rest etc. every day.",
        "Use e.g. this or i.e. that in the U.S. and the U.K. at 9 a.m. or 5 p.m. sharp.",
        "J. K. Rowling and Acme Inc. and Foo Ltd. and Bob Jr. and Al Sr. agreed.",
        "See http://example.com/a.b?x=1.2 or www.example.com/path?x=1.2 and me@ex.org now.",
        "Well... maybe we should wait.",
        "무게는 3.5킬로그램이고 가격은 1,000원입니다.",
        "Item No. 5 is the one we want.",
    ],
)
def test_never_splits_inside_protected_tokens(text: str) -> None:
    assert by_char(text, first_min_chars=1, min_chars=1) == [text]


def test_ellipsis_before_capital_is_sentence_end() -> None:
    assert by_char("I don't know... Let me think.") == ["I don't know...", "Let me think."]
    assert by_char("글쎄요… 잘 모르겠어요.") == ["글쎄요…", "잘 모르겠어요."]


def test_no_is_a_word_unless_a_number_follows() -> None:
    assert by_char("No. I refuse to do it.") == ["No.", "I refuse to do it."]


def test_closing_quote_stays_with_its_sentence() -> None:
    assert by_char('He said "Stop." Then he left.') == ['He said "Stop."', "Then he left."]


def test_question_exclamation_runs() -> None:
    assert by_char("Really?! That is great!!! Yes.") == ["Really?!", "That is great!!!", "Yes."]


def test_newlines_are_hard_boundaries() -> None:
    text = "Here is the list:\n1. Eggs\n2. Milk\n\nThat is all"
    assert by_char(text) == ["Here is the list:", "1. Eggs", "2. Milk", "That is all"]


def test_lone_number_is_not_a_chunk() -> None:
    assert by_char("1. Buy eggs. 2. Buy milk.") == ["1. Buy eggs.", "2. Buy milk."]


def test_korean_sentence_endings() -> None:
    text = "네, 알겠습니다. 정말요? 그렇죠. 좋네요! 할까요?"
    assert by_char(text) == ["네, 알겠습니다.", "정말요?", "그렇죠.", "좋네요!", "할까요?"]


def test_korean_without_space_after_period() -> None:
    assert by_char("비가 옵니다.우산을 챙기세요.") == ["비가 옵니다.", "우산을 챙기세요."]


def test_korean_connective_comma_is_a_clause_boundary() -> None:
    text = "오늘은 날씨가 맑고, 기온은 25도입니다. 내일은 비가 오는데, 우산을 챙기세요."
    assert by_char(text, first_min_chars=5, min_chars=5) == [
        "오늘은 날씨가 맑고,",
        "기온은 25도입니다.",
        "내일은 비가 오는데,",
        "우산을 챙기세요.",
    ]


def test_korean_noun_list_comma_is_not_a_boundary() -> None:
    text = "시장에서 사과, 배, 포도를 샀어요."
    assert by_char(text, first_min_chars=1, min_chars=1) == [text]


def test_korean_comma_respects_min_chars() -> None:
    assert by_char("맑고, 좋아요.") == ["맑고, 좋아요."]


def test_full_width_punctuation() -> None:
    assert by_char("好的。我们走吧！") == ["好的。", "我们走吧！"]


def test_em_dash_is_a_soft_boundary() -> None:
    assert by_char("The answer to your question—as always—is yes.", first_min_chars=12) == [
        "The answer to your question—",
        "as always—is yes.",
    ]


def test_max_chars_cuts_at_whitespace_never_mid_word() -> None:
    text = " ".join(f"word{i}" for i in range(60))
    chunks = by_char(text, max_chars=50)
    assert len(chunks) > 1
    assert all(len(c) <= 50 for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_token_longer_than_max_chars_is_kept_whole() -> None:
    long_word = "x" * 80
    assert by_char(f"see {long_word} then more", max_chars=30) == ["see", long_word, "then more"]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        ClauseChunker(min_chars=-1)
    with pytest.raises(ValueError):
        ClauseChunker(max_chars=1)


_PIECES = [
    "Sure, I can help with that.",
    "Well, the answer, in short, is yes",
    "Pi is 3.14, roughly; the total was 1,000,000 dollars at 3:30 p.m. today!",
    "Mr. Smith and Dr. J. K. Rowling met in the U.S. at No. 10.",
    "Visit www.example.com/path?x=1.2 or write to me@example.org.",
    "Well... maybe. Hmm... Let me think.",
    "네, 알겠습니다. 오늘은 날씨가 맑고, 기온은 25도예요.",
    "무게는 3.5킬로그램이에요.가격은 3,000원입니다!",
    "사과, 배, 포도를 샀는데, 정말 맛있었죠?",
    "The answer—as always—is yes: really?! \"Quoted.\" (Bracketed.)",
    "\n- item one\n- item two\n\n",
    "an extremely long run of words without any punctuation that just keeps going and going "
    "and going well past the maximum number of characters that a chunk may hold",
    "1. First",
    "… 그리고",
]


def _random_text(rng: random.Random) -> str:
    parts = [rng.choice(_PIECES) for _ in range(rng.randint(1, 8))]
    return "".join(p + rng.choice([" ", "  ", "\n", "", " \n "]) for p in parts)


def _random_sizes(rng: random.Random) -> list[int]:
    return [rng.choice([1, 1, 2, 3, 5, 8, 13, 40]) for _ in range(rng.randint(1, 20))]


@pytest.mark.parametrize("seed", range(200))
def test_chunks_do_not_depend_on_delta_splitting(seed: int) -> None:
    rng = random.Random(seed)
    text = _random_text(rng)
    kwargs = {
        "first_min_chars": rng.choice([1, 12]),
        "min_chars": rng.choice([5, 40]),
        "max_chars": rng.choice([60, 220]),
    }
    expected = chunk_all(text, None, **kwargs)
    assert chunk_all(text, [1], **kwargs) == expected
    for _ in range(5):
        assert chunk_all(text, _random_sizes(rng), **kwargs) == expected
    # Every chunk is stripped and non-empty, and no character is lost or reordered.
    assert all(c and c == c.strip() for c in expected)
    assert re.sub(r"\s+", "", "".join(expected)) == re.sub(r"\s+", "", text)
    # Chunks that contain whitespace always respect max_chars.
    assert all(len(c) <= kwargs["max_chars"] for c in expected if re.search(r"\s", c))


# --- first_max_chars: a hard cap on the first chunk (added for time-to-first-audio) ---


def test_first_chunk_cap_prefers_a_break_before_a_function_word() -> None:
    text = ("And Mr. John Dashwood had then leisure to consider how much there might be prudently "
            "in his power to do for them.")
    c = ClauseChunker(first_min_chars=4, first_max_chars=50)
    chunks = c.push(text) + c.flush()
    assert chunks[0] == "And Mr. John Dashwood had then leisure"
    assert " ".join(chunks).split() == text.split()


def test_first_chunk_cap_only_applies_to_the_first_chunk() -> None:
    text = "Yes, " + "word " * 30 + "end."
    c = ClauseChunker(first_min_chars=2, first_max_chars=20, max_chars=220)
    chunks = c.push(text) + c.flush()
    assert chunks[0] == "Yes,"
    assert len(chunks) == 2  # the rest is not capped at 20


@pytest.mark.parametrize("seed", range(20))
def test_first_chunk_cap_is_independent_of_delta_splitting(seed: int) -> None:
    rng = random.Random(seed)
    text = "So the thing is that we went to the market on Sunday and bought apples, pears and bread. Then home."
    whole = ClauseChunker(first_min_chars=4, first_max_chars=40)
    expected = whole.push(text) + whole.flush()
    c = ClauseChunker(first_min_chars=4, first_max_chars=40)
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        out += c.push(text[i:i + n])
        i += n
    out += c.flush()
    assert out == expected


# --- shorter first clause caps (issue 14: time from the first token to the first audio) ---


@pytest.mark.parametrize("cap", [24, 32, 50])
def test_first_chunk_never_exceeds_a_short_cap_and_loses_no_word(cap: int) -> None:
    text = ("I'm sorry for any misunderstanding, but I think the original sentence is not grammatically "
            "correct. Could you say it again?")
    c = ClauseChunker(first_min_chars=4, first_max_chars=cap)
    chunks = c.push(text) + c.flush()
    assert len(chunks[0]) <= cap
    assert " ".join(chunks).split() == text.split()


def test_a_comma_inside_the_cap_still_ends_the_first_chunk() -> None:
    c = ClauseChunker(first_min_chars=4, first_max_chars=24)
    assert c.push("Sure, let me check that for you. ") == ["Sure,", "let me check that for you."]


def test_short_cap_cuts_before_a_function_word_not_inside_a_phrase() -> None:
    c = ClauseChunker(first_min_chars=4, first_max_chars=24)
    chunks = c.push("A more amiable woman might be made still more respectable. ") + c.flush()
    # "might" is not a break word; the cut falls at the last space within 24 characters
    assert chunks[0] == "A more amiable woman"
    c = ClauseChunker(first_min_chars=4, first_max_chars=32)
    chunks = c.push("I think that the weather will be fine tomorrow. ") + c.flush()
    assert chunks[0] == "I think"  # the last break before a function word ("that") within 32


def test_short_cap_on_korean_cuts_at_a_space_and_keeps_every_syllable() -> None:
    text = "오늘 서울의 날씨는 대체로 맑고 낮 최고 기온은 영상 십도 정도로 따뜻할 예정입니다. 외출하기 좋아요."
    for cap in (24, 32):
        c = ClauseChunker(first_min_chars=4, first_max_chars=cap)
        chunks = c.push(text) + c.flush()
        assert len(chunks[0]) <= cap and not chunks[0].endswith(" ")
        assert "".join(chunks).replace(" ", "") == text.replace(" ", "")
    # a connective comma inside the cap ends the first chunk there
    c = ClauseChunker(first_min_chars=4, first_max_chars=24)
    assert c.push("날씨가 맑고, 바람도 불지 않아요. ")[0] == "날씨가 맑고,"


# --- ramp: after a short first clause, the caps double (so each clause is ready before the last ends) ---


def test_ramp_doubles_the_cap_for_each_following_chunk_until_max_chars() -> None:
    text = " ".join(f"w{i:02d}" for i in range(80)) + "."  # no punctuation to cut at: every cut is forced
    c = ClauseChunker(first_min_chars=4, first_max_chars=20, max_chars=100, ramp=True)
    chunks = c.push(text) + c.flush()
    caps = [20, 40, 80, 100, 100, 100]
    assert [len(x) <= cap for x, cap in zip(chunks, caps)] == [True] * len(chunks)
    assert [len(x) for x in chunks[:4]] == [19, 39, 79, 99]
    assert " ".join(chunks).split() == text.split()


def test_ramp_lets_a_comma_end_the_second_chunk_at_half_its_cap() -> None:
    text = ("I'm sorry for any misunderstanding, but I think the original sentence is not grammatically "
            "correct. Could you say it again?")
    plain = ClauseChunker(first_min_chars=4, first_max_chars=24)
    ramped = ClauseChunker(first_min_chars=4, first_max_chars=24, ramp=True)
    assert plain.push(text) + plain.flush() == [
        "I'm sorry", "for any misunderstanding, but I think the original sentence is not grammatically correct.",
        "Could you say it again?"]
    assert ramped.push(text) + ramped.flush() == [
        "I'm sorry", "for any misunderstanding,", "but I think the original sentence is not grammatically correct.",
        "Could you say it again?"]


def test_ramp_without_a_first_cap_changes_nothing() -> None:
    text = "Well, the answer, in short, is yes. " * 3
    assert chunk_all(text, None, ramp=True) == chunk_all(text, None)


def test_ramp_restarts_with_each_stream() -> None:
    c = ClauseChunker(first_min_chars=4, first_max_chars=12, ramp=True)
    text = "one two three four five six seven eight nine ten eleven twelve"
    first = c.push(text) + c.flush()
    assert c.push(text) + c.flush() == first
    assert len(first[0]) <= 12 and len(first[1]) <= 24


@pytest.mark.parametrize("seed", range(100))
def test_ramp_is_independent_of_delta_splitting(seed: int) -> None:
    rng = random.Random(seed)
    text = _random_text(rng)
    kwargs = {"first_min_chars": 4, "first_max_chars": rng.choice([12, 24, 32]), "min_chars": 40,
              "max_chars": rng.choice([60, 220]), "ramp": True}
    expected = chunk_all(text, None, **kwargs)
    assert chunk_all(text, [1], **kwargs) == expected
    for _ in range(3):
        assert chunk_all(text, _random_sizes(rng), **kwargs) == expected
    assert re.sub(r"\s+", "", "".join(expected)) == re.sub(r"\s+", "", text)
