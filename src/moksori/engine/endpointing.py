"""Does a transcript read like a finished turn? A cheap linguistic cue beside the audio model.

The audio end-of-turn model judges prosody; read speech and flat voices fool it (it scores
some complete LibriVox sentences below 0.25). The words help: a transcript ending in "and",
"um" or a Korean connective ending (…는데, …고) is unfinished whatever the pitch did, and so is
an English sentence that is only a dependent clause ("When you hear the bell." at a comma pause);
one ending in a full stop after a finished clause probably is finished. See engine/turns.py for how
the two cues combine.
"""

from __future__ import annotations

import re

from moksori.engine.turns import TextCue

_EN_CONTINUATION = frozenset("""
a an the and but or nor because since although though if unless until while whereas
to of in on at for with from by into onto than as which whose
my your his her their our its am will would can could should shall must
""".split())
_EN_FILLERS = frozenset("um uh er erm hmm mm uhm".split())
# A sentence opened by one of these is a dependent clause until a main clause follows, which
# Whisper marks with a comma ("When you hear the bell, come quickly."): without a comma it is
# unfinished even when Whisper closes it with a full stop ("When you hear the bell."), which it
# does at a comma pause. Words that also open a finished fragment ("Because I'm tired.", "Since
# Monday.", "Before lunch.", "Unless you'd rather stay.", LibriVox's "Unless to be rather
# cold-hearted ... is to be ill-disposed.") are left out: a false "unfinished" costs a reply delayed to the
# longest pause, a false "finished" costs a reply spoken over the user.
_EN_SUBORDINATORS = frozenset("when whenever if although whereas".split())
_SENTENCE_END = re.compile(r"[.!?。？！]+\s+")
_EN_AUXILIARIES = frozenset("""
is are was were am do does did will would can could should shall may might must have has had
""".split())  # "When does it open." is a question Whisper closed with a full stop

_KO_CONTINUATION = ("는데", "은데", "인데", "고", "며", "면서", "서", "지만", "면", "니까", "거나", "다가", "려고",
                    "도록", "는지", "든지", "데", "랑", "하고", "그리고", "그래서", "그런데", "근데", "그러니까", "음", "어", "저", "그")
_KO_FINAL = ("다", "요", "까", "죠", "지", "네", "군", "래", "니", "게", "자", "라", "세요", "습니다", "습니까")

_TRAILING_PUNCT = re.compile(r"[\s\"'”’)\]]+$")
_WORD = re.compile(r"[A-Za-z']+|[가-힣]+")


def text_cue(text: str, language: str | None = None) -> TextCue:
    t = _TRAILING_PUNCT.sub("", text.strip())
    if not t:
        return "unknown"
    if t.endswith(("...", "…", ",", "-", "—", ":", ";")):
        return "incomplete"
    words = _WORD.findall(t)
    if not words:
        return "unknown"
    last = words[-1]
    ends_sentence = t[-1] in ".!?。？！"
    if re.fullmatch(r"[가-힣]+", last):
        if _ko_ending(last, _KO_CONTINUATION) > _ko_ending(last, _KO_FINAL):
            return "incomplete"
        return "complete" if ends_sentence else "unknown"
    if last.lower() in _EN_FILLERS:
        return "incomplete"
    if t[-1] in "?!":  # a question or exclamation is finished whatever its last word
        return "complete"
    if last.lower() in _EN_CONTINUATION:
        return "incomplete"
    if _dependent_clause_only(t):
        return "incomplete"
    return "complete" if ends_sentence else "unknown"


def _ko_ending(word: str, endings: tuple[str, ...]) -> int:
    """The length of the longest of `endings` that `word` ends with (0: none). The longer match
    decides between the two lists: 오니까 ends in the connective 니까, not the question ending 까;
    하시겠습니까 in 습니까, not 니까."""
    return max((len(e) for e in endings if word.endswith(e)), default=0)


def _dependent_clause_only(t: str) -> bool:
    """The last sentence opens with a subordinator ("When ...", "If ...") and no main clause followed."""
    last_sentence = _SENTENCE_END.split(t)[-1]
    words = _WORD.findall(last_sentence)
    if not words or words[0].lower() not in _EN_SUBORDINATORS or "," in last_sentence:
        return False
    return not (len(words) > 1 and words[1].lower() in _EN_AUXILIARIES)
