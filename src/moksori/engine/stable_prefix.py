"""The stable start of a user's turn: audio and words that no later decode will change.

Pure bookkeeping in session time, no models. Incremental transcription
(`engine/incremental_stt.py`) decodes the turn in pieces while the user speaks; at the turn's end
only the audio after the committed point is decoded, with the committed words as Whisper's prompt.

Nothing is committed on one decode (the agreement policy: two decodes agree). Two ways:

* at an internal pause (VAD silence within the turn), so no word is cut in two: the decode that
  ends in the pause becomes a *candidate*, committed when the next decode from the same start,
  which hears past the pause, begins with the same words; if they disagree it is dropped (the
  newer decode, which heard more, may replace it);
* at a quiet point inside continuous speech (`split`): a decode of the whole uncommitted audio and
  one of the audio after the cut must agree word for word on what follows the cut.

Words compare case-, punctuation- and hyphen-insensitively; committed text is taken from the
decode that saw more context.

    p = StablePrefix(start=0.0)
    p.propose(base=0.0, cut=1.9, text="Unless to be")            # a pause at 1.9 s: candidate
    p.observe(base=0.0, end=3.0, text="Unless to be rather cold")   # agrees: 0-1.9 s committed
    p.start, p.text   # (1.9, "Unless to be"): decode from 1.9 s with prompt "Unless to be"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[^\w']+", re.UNICODE)


def norm_words(text: str) -> list[str]:
    """Words for comparison: lower case, punctuation and hyphens dropped."""
    out = []
    for raw in text.split():
        w = _WORD.sub("", raw.lower()).strip("'")
        if w:
            out.append(w)
    return out


def split_after_words(text: str, n: int) -> tuple[str, str]:
    """(the raw text of the first n words, the rest); tokens without a word stay with the head."""
    tokens = text.split()
    count, i = 0, 0
    while i < len(tokens) and count < n:
        if norm_words(tokens[i]):
            count += 1
        i += 1
    while i < len(tokens) and not norm_words(tokens[i]):  # trailing punctuation-only tokens
        i += 1
    return " ".join(tokens[:i]), " ".join(tokens[i:])


def strip_overlap(committed: str, decoded: str, *, max_words: int = 6) -> str | None:
    """`decoded` was decoded from a little before the committed point, so it starts with the last
    committed words (perhaps after one fragment of a word cut at the overlap's start): the rest
    of it, or None if no such overlap is found."""
    c, d = norm_words(committed), norm_words(decoded)
    for k in range(min(max_words, len(c), len(d)), 0, -1):
        for junk in (0, 1):
            if d[junk:junk + k] == c[len(c) - k:]:
                return split_after_words(decoded, junk + k)[1]
    return None


def local_agreement(earlier: str, later: str, *, drop: int = 1) -> str:
    """LocalAgreement-2 over two decodes of the same turn, the later hearing more: the raw words
    (from `later`) of their longest common word prefix, minus its last `drop` words (the earlier
    decode may have heard that word cut by the end of its audio). "" if nothing is left.

        local_agreement("Unless to be rather co", "Unless to be rather cold-hearted")  # "Unless to be"
    """
    if drop < 0:
        raise ValueError("drop must be >= 0")
    a, b = norm_words(earlier), norm_words(later)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return split_after_words(later, n - drop)[0] if n - drop > 0 else ""


@dataclass(frozen=True)
class Candidate:
    base: float  # the committed point the decode started from
    cut: float  # where its audio ended: inside an internal pause
    text: str


@dataclass
class StablePrefix:
    start: float  # session time where the uncommitted audio begins
    text: str = ""  # the committed words
    min_words: int = 2  # a candidate with fewer words is never committed (a cough, a lost decode)
    min_extra_s: float = 0.3  # a confirming decode must hear this much past the candidate's cut
    candidate: Candidate | None = None
    commits: int = 0

    def propose(self, base: float, cut: float, text: str) -> bool:
        """A decode of [base, cut], where `cut` lies inside an internal pause. It confirms the
        current candidate if it agrees (then its remaining words are the next candidate), else
        it replaces it. Returns True if something was committed."""
        if not self._current(base) or cut <= self.start:
            return False
        committed = False
        cand = self.candidate
        if cand is not None and cut >= cand.cut + self.min_extra_s:
            committed = self._confirm(text)
            if committed:
                _, rest = split_after_words(text, len(norm_words(cand.text)))
                self.candidate = Candidate(self.start, cut, rest) if norm_words(rest) else None
                return True
        if cand is None or cut > cand.cut:
            self.candidate = Candidate(base, cut, text)
        return committed

    def observe(self, base: float, end: float, text: str) -> bool:
        """A decode of [base, end] that need not end in a pause (a partial, a confirmation):
        commits the candidate if it agrees, drops it if not. Returns True if committed."""
        cand = self.candidate
        if cand is None or not self._current(base) or end < cand.cut + self.min_extra_s:
            return False
        if self._confirm(text):
            self.candidate = None
            return True
        self.candidate = None
        return False

    def split(self, base: float, cut: float, whole: str, tail: str) -> bool:
        """Two decodes that end at the same time: `whole` from `base`, `tail` from `cut` (a quiet
        point inside the speech). If `whole`'s words are a head followed by exactly `tail`'s words,
        the cut fell between words and the head is what was said before it: commit the head.
        (A cut through a word makes the tail start with a fragment, and the two disagree.)"""
        if not self._current(base) or cut <= self.start:
            return False
        w, t = norm_words(whole), norm_words(tail)
        n_head = len(w) - len(t)
        if len(t) < self.min_words or n_head < self.min_words or w[n_head:] != t:
            return False
        head, _ = split_after_words(whole, n_head)
        self.text = self.compose(head)
        self.start = cut
        self.candidate = None  # it was decoded from the old start
        self.commits += 1
        return True

    def compose(self, tail: str) -> str:
        """The whole turn's text: the committed words, then the tail's."""
        return " ".join(p for p in (self.text.strip(), tail.strip()) if p)

    # -------------------------------------------------------------- internals

    def _current(self, base: float) -> bool:
        return abs(base - self.start) < 1e-6

    def _confirm(self, later: str) -> bool:
        """Commit the candidate if `later` (from the same start, hearing more) begins with its words."""
        cand = self.candidate
        assert cand is not None
        words = norm_words(cand.text)
        if len(words) < self.min_words or norm_words(later)[:len(words)] != words:
            return False
        head, _ = split_after_words(later, len(words))
        self.text = self.compose(head)
        self.start = cand.cut
        self.commits += 1
        return True
