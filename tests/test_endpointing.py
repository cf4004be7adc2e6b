"""The transcript cue (engine/endpointing.py): does a turn's text read as finished?

Pure logic on strings; the real-speech case (tel_010, a comma pause after a "When" clause) is in
tests/test_conversation.py."""

from __future__ import annotations

import pytest

from moksori.engine.endpointing import text_cue


@pytest.mark.parametrize("text", [
    "when you hear the bell.",              # Whisper's full stop at the comma pause
    "If I cancel my booking now",
    "I need help. When you hear the bell.",  # the last sentence counts
    "Although it was raining.",
    "I was going to and the",
    "I went to the,",
    "um",
    "비가 오는데",
    "비가 오니까",      # 니까, a connective, though 까 alone ends a question
    "어디 가는지",      # 는지, though 지 alone ends a sentence
    "뭘 먹든지",
    "그러니까",
])
def test_unfinished(text: str) -> None:
    assert text_cue(text, None) == "incomplete"


@pytest.mark.parametrize("text", [
    "When you hear the bell, come quickly.",  # the comma: the main clause followed
    "If I cancel now, do I get a refund?",
    "When does it open.",                     # a question closed with a full stop
    "When is the train?",
    "Because I'm tired.",                     # an answer fragment: not a dependent-clause opener here
    "Before lunch.",
    "Unless to be rather cold hearted and rather selfish is to be ill disposed.",  # LibriVox en_003
    "Come quickly.",
    "비가 옵니다.",
    "내일 갈까?",
    "지금 가시겠습니까.",  # 습니까 (a question), though it ends in 니까 too
    "그건 좋지.",
])
def test_finished(text: str) -> None:
    assert text_cue(text, None) == "complete"


def test_no_words_is_unknown() -> None:
    assert text_cue("", None) == "unknown"
    assert text_cue("...", None) == "incomplete"
    assert text_cue("the bell rang", None) == "unknown"  # no full stop: the audio model decides
