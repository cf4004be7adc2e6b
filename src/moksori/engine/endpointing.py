"""Does a transcript read like a finished turn? A cheap linguistic cue beside the audio model.

The audio end-of-turn model judges prosody; read speech and flat voices fool it (it scores
some complete LibriVox sentences below 0.25). The words help: a transcript ending in "and",
"um" or a Korean connective ending (…는데, …고) is unfinished whatever the pitch did, and one
ending in a full stop after a finished clause probably is finished. See engine/turns.py for how
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
        if any(last.endswith(e) for e in _KO_CONTINUATION) and not any(last.endswith(f) for f in _KO_FINAL):
            return "incomplete"
        if ends_sentence or any(last.endswith(f) for f in _KO_FINAL):
            return "complete" if ends_sentence else "unknown"
        return "unknown"
    if last.lower() in _EN_FILLERS:
        return "incomplete"
    if t[-1] in "?!":  # a question or exclamation is finished whatever its last word
        return "complete"
    if last.lower() in _EN_CONTINUATION:
        return "incomplete"
    return "complete" if ends_sentence else "unknown"
