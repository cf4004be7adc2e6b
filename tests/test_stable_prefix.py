"""The stable-prefix policy of incremental transcription: plain numbers, no models."""

from __future__ import annotations

import pytest

from moksori.engine.stable_prefix import StablePrefix, norm_words, split_after_words


def test_words_compare_without_case_punctuation_or_hyphens() -> None:
    assert norm_words("Unless, to be rather cold-hearted!") == ["unless", "to", "be", "rather", "coldhearted"]
    assert norm_words(" -- ") == []
    assert norm_words("I'm here.") == ["i'm", "here"]


def test_split_after_words_keeps_punctuation_with_the_head() -> None:
    assert split_after_words("He was, not - an ill man.", 3) == ("He was, not -", "an ill man.")
    assert split_after_words("one two", 5) == ("one two", "")
    assert split_after_words("one two", 0) == ("", "one two")


def test_one_decode_commits_nothing() -> None:
    p = StablePrefix(start=0.0)
    assert not p.propose(0.0, 1.9, "Unless to be")
    assert (p.start, p.text, p.candidate and p.candidate.cut) == (0.0, "", 1.9)


def test_agreeing_later_decode_commits_the_candidate() -> None:
    p = StablePrefix(start=0.0)
    p.propose(0.0, 1.9, "Unless to be.")
    assert p.observe(0.0, 3.0, "Unless to be rather cold hearted")
    # the committed words come from the later decode, which heard them in context
    assert (p.start, p.text, p.candidate, p.commits) == (1.9, "Unless to be", None, 1)
    assert p.compose("rather cold hearted.") == "Unless to be rather cold hearted."


def test_disagreeing_decode_drops_the_candidate() -> None:
    p = StablePrefix(start=0.0)
    p.propose(0.0, 1.9, "Unless to bee")
    assert not p.observe(0.0, 3.0, "Unless to be rather cold")
    assert (p.start, p.text, p.candidate) == (0.0, "", None)


def test_a_word_cut_in_two_is_never_committed() -> None:
    p = StablePrefix(start=0.0)
    p.propose(0.0, 1.0, "he was not an ill dis")
    assert not p.observe(0.0, 2.0, "he was not an ill disposed young man")
    assert p.start == 0.0


def test_confirmation_must_hear_past_the_cut() -> None:
    p = StablePrefix(start=0.0, min_extra_s=0.3)
    p.propose(0.0, 1.9, "Unless to be")
    assert not p.observe(0.0, 2.1, "Unless to be")  # too little new audio to be a second opinion
    assert p.candidate is not None and p.start == 0.0
    assert p.observe(0.0, 2.2, "Unless to be rather")


def test_too_few_words_are_not_committed() -> None:
    p = StablePrefix(start=0.0, min_words=2)
    p.propose(0.0, 0.8, "Um.")
    assert not p.observe(0.0, 2.0, "Um. I wanted to ask")
    assert p.start == 0.0


def test_empty_candidate_is_not_committed() -> None:
    p = StablePrefix(start=0.0)
    p.propose(0.0, 0.8, "")
    assert not p.observe(0.0, 2.0, "hello there")
    assert p.start == 0.0


def test_pause_decodes_chain_commits() -> None:
    """Three internal pauses: each pause's decode confirms the previous candidate and leaves
    its own new words as the next candidate."""
    p = StablePrefix(start=0.0)
    assert not p.propose(0.0, 1.0, "ask not")
    assert p.propose(0.0, 2.5, "Ask not what your country")
    assert (p.start, p.text) == (1.0, "Ask not")
    assert p.candidate is not None and (p.candidate.base, p.candidate.cut, p.candidate.text) == \
        (1.0, 2.5, "what your country")
    # the next decode starts at the committed point, with the committed words as its prompt
    assert p.propose(1.0, 4.0, "what your country can do for you,")
    assert (p.start, p.text) == (2.5, "Ask not what your country")
    assert p.compose("can do for you, ask what") == "Ask not what your country can do for you, ask what"


def test_decodes_from_an_old_start_are_ignored() -> None:
    p = StablePrefix(start=0.0)
    p.propose(0.0, 1.0, "ask not")
    p.observe(0.0, 2.0, "ask not what")
    assert p.start == 1.0
    assert not p.propose(0.0, 3.0, "ask not what your")  # decoded before the commit: stale
    assert p.candidate is None
    assert not p.observe(0.0, 3.0, "ask not what your")


def test_newer_disagreeing_pause_replaces_the_candidate() -> None:
    p = StablePrefix(start=0.0)
    p.propose(0.0, 1.0, "ask knot")
    assert not p.propose(0.0, 2.5, "ask not what your country")
    assert p.candidate is not None and p.candidate.cut == 2.5 and p.start == 0.0
    assert p.observe(0.0, 3.5, "Ask not what your country can")
    assert (p.start, p.text) == (2.5, "Ask not what your country")


def test_older_pause_does_not_replace_a_newer_candidate() -> None:
    p = StablePrefix(start=0.0)
    p.propose(0.0, 2.5, "ask not what your country")
    p.propose(0.0, 1.0, "ask not")  # a late result for an earlier pause
    assert p.candidate is not None and p.candidate.cut == 2.5


def test_split_commits_the_head_when_the_tail_decode_agrees() -> None:
    p = StablePrefix(start=0.0)
    assert p.split(0.0, 2.1, "Had he married a more amiable woman, he might", "he might")
    assert (p.start, p.text, p.commits) == (2.1, "Had he married a more amiable woman,", 1)
    assert p.compose("he might have been made") == "Had he married a more amiable woman, he might have been made"


def test_split_through_a_word_is_refused() -> None:
    p = StablePrefix(start=0.0)
    assert not p.split(0.0, 1.2, "he was not an ill disposed young man", "posed young man")
    assert not p.split(0.0, 1.2, "he was not an ill disposed young man", "this post young man")
    assert p.start == 0.0 and p.text == ""


def test_split_needs_words_on_both_sides() -> None:
    p = StablePrefix(start=0.0, min_words=2)
    assert not p.split(0.0, 1.0, "hello there", "there")  # one-word head and tail
    assert not p.split(0.0, 1.0, "well hello there", "well hello there")  # nothing before the cut
    assert not p.split(0.0, 1.0, "", "")


def test_split_from_a_stale_start_is_ignored_and_drops_old_candidates() -> None:
    p = StablePrefix(start=0.0)
    p.propose(0.0, 0.9, "ask not")
    assert p.split(0.0, 2.0, "ask not what your country", "your country")
    assert p.candidate is None and p.start == 2.0
    assert not p.split(0.0, 3.0, "ask not what your country can", "country can")


def test_strip_overlap_drops_the_words_heard_again() -> None:
    from moksori.engine.stable_prefix import strip_overlap

    assert strip_overlap("He was not", "not an ill-disposed young man.") == "an ill-disposed young man."
    assert strip_overlap("He was not", "was not an ill man") == "an ill man"
    # one fragment of a word cut at the overlap's start is tolerated
    assert strip_overlap("He was not", "is not an ill man") == "an ill man"
    assert strip_overlap("He was not", "an ill man") is None  # no overlap found: caller decodes again
    assert strip_overlap("", "an ill man") is None


def test_local_agreement() -> None:
    from moksori.engine.stable_prefix import local_agreement

    # the common words minus the last one (the earlier decode may have heard it cut)
    assert local_agreement("Unless to be rather co", "Unless to be rather cold-hearted.") == "Unless to be"
    assert local_agreement("Unless to be rather co", "Unless to be rather cold-hearted.", drop=0) == "Unless to be rather"
    # case, punctuation and hyphens do not count; the raw words come from the later decode
    assert local_agreement("and mr john dashwood had", "And Mr. John Dashwood had then") == "And Mr. John Dashwood"
    # a disagreement early on: only the words before it
    assert local_agreement("The long journey", "A long journey home") == ""
    assert local_agreement("", "anything at all") == ""
    assert local_agreement("one", "one two") == ""
    with pytest.raises(ValueError):
        local_agreement("a b", "a b", drop=-1)
