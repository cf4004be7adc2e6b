"""The Whisper result parser (`stt_whisper.parse_segments`) on hand-made token sequences: no model."""

from __future__ import annotations

from moksori.providers.stt_whisper import parse_segments

WORDS = {1: "the", 2: "long", 3: "journey", 4: "home", 5: "took", 6: "a", 7: "year."}


class Tok:
    """A stand-in for faster-whisper's tokenizer: ids < 50 are words, 50 ends, >= 100 are
    timestamps (100 + t / 0.02 s)."""

    eot = 50
    timestamp_begin = 100

    def decode(self, ids: list[int]) -> str:
        return " " + " ".join(WORDS[i] for i in ids)


def ts(seconds: float) -> int:
    return 100 + round(seconds / 0.02)


def test_one_segment() -> None:
    assert parse_segments([ts(0), 1, 2, 3, ts(2.0), 50], Tok(), 3.0) == ["the long journey"]


def test_two_segments_one_text() -> None:
    ids = [ts(0), 1, 2, 3, ts(1.2), ts(1.2), 4, 5, 6, 7, ts(2.8)]
    assert parse_segments(ids, Tok(), 3.0) == ["the long journey", "home took a year."]


def test_a_segment_in_the_padding_is_dropped() -> None:
    # the audio is 2.0 s long; a segment opening at 1.9 s (in the last 0.15 s) or later is invented
    ids = [ts(0), 1, 2, ts(1.0), ts(1.9), 3, 4, ts(2.5), ts(3.0), 5, ts(4.0)]
    assert parse_segments(ids, Tok(), 2.0) == ["the long"]


def test_unclosed_last_segment_is_kept() -> None:
    assert parse_segments([ts(0), 1, 2, ts(1.0), ts(1.0), 3], Tok(), 3.0) == ["the long", "journey"]


def test_without_timestamps_one_segment() -> None:
    assert parse_segments([1, 2, 3, 4, 50], Tok(), 3.0) == ["the long journey home"]


def test_nothing() -> None:
    assert parse_segments([], Tok(), 3.0) == []
    assert parse_segments([ts(0), ts(1.0), 50], Tok(), 3.0) == []
