"""engine/reply_pace.py: the expected time from a voice end to its reply's first audio."""

from __future__ import annotations

import pytest

from moksori.engine.reply_pace import MIN_DECODES, MIN_REPLIES, ReplyPace, for_stt


class Stt:
    """Any object that can be weakly referenced stands for an STT provider here."""


def test_no_estimate_until_enough_turns() -> None:
    pace = ReplyPace()
    for _ in range(MIN_DECODES - 1):
        pace.decoded(3.0, 300.0)
    assert pace.decode_ms(3.0) is None
    pace.decoded(3.0, 300.0)
    assert pace.decode_ms(3.0) == 300.0
    assert pace.ready_ms(3.0, 50.0) is None  # no reply seen yet
    for _ in range(MIN_REPLIES):
        pace.replied(250.0)
    assert pace.ready_ms(3.0, 50.0) == pytest.approx(50.0 + 300.0 + 250.0)


def test_the_decode_grows_with_the_audio() -> None:
    pace = ReplyPace()
    for s in (2.0, 3.0, 4.0, 5.0, 6.0):
        pace.decoded(s, 100.0 + 50.0 * s)  # a fixed part and a part per second
    assert pace.decode_ms(8.0) == pytest.approx(500.0)
    assert pace.decode_ms(2.5) == pytest.approx(225.0)


def test_a_wild_slope_is_bounded_and_never_negative() -> None:
    pace = ReplyPace()
    for s, ms in ((2.0, 900.0), (3.0, 700.0), (4.0, 500.0), (5.0, 300.0)):
        pace.decoded(s, ms)
    assert pace.decode_ms(20.0) == pytest.approx(600.0)  # slope clamped at 0: the mean
    steep = ReplyPace()
    for s, ms in ((2.0, 0.0), (2.6, 600.0), (3.2, 1200.0), (3.8, 1800.0)):
        steep.decoded(s, ms)
    assert steep.decode_ms(13.0) == pytest.approx(900.0 + 200.0 * 10.1)


def test_the_reply_time_is_the_median_of_the_last_replies() -> None:
    pace = ReplyPace()
    for s in (2.0, 3.0, 4.0, 5.0):
        pace.decoded(s, 300.0)
    for ms in (200.0, 900.0, 250.0):  # one slow outlier does not move it
        pace.replied(ms)
    assert pace.ready_ms(3.0, 0.0) == pytest.approx(300.0 + 250.0)


def test_one_pace_per_stt_instance() -> None:
    a, b = Stt(), Stt()
    assert for_stt(a) is for_stt(a)
    assert for_stt(a) is not for_stt(b)
