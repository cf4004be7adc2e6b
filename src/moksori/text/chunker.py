"""Split a stream of LLM text deltas into speakable clauses for TTS.

`ClauseChunker` emits a chunk only once its end is certain, so the chunk sequence depends
on the whole text only, never on how it was split into deltas.

Conventions:
- Hard boundaries: newlines, and sentence ends (`.` `!` `?` `…` `。` `！` `？`, runs such
  as `?!`, plus any closing quotes/brackets) followed by whitespace. Full-width ends split
  even without a following space; a sentence end glued between two Hangul syllables
  ("했다.그리고") splits too.
- A single `.` does not end a sentence after an abbreviation (Mr., e.g., U.S., a.m., ...),
  a single capital initial ("J. K."), or inside a number ("3.14", "3.5킬로그램", because no
  whitespace follows). "No." is an abbreviation only when a digit follows ("No. 5").
- Ellipsis (`...`, `…`) ends a sentence only when whitespace and then an uppercase letter
  or a Hangul syllable follow ("Well... maybe" stays whole; "Hmm... Let me" splits).
- Soft boundaries (`,` `;` `:` `—`, full-width `，` `、` `；` `：`, and ` – `) split only when
  the pending chunk has at least `first_min_chars` (first chunk of the stream) or
  `min_chars` characters. ASCII ones need whitespace after, so "1,000", "3:30" and URLs
  are never split. A comma right after Hangul counts only after a connective ending
  (…고, …며, …서, …는데, …지만, …면, …니까, …거나, …다가, ...), so noun lists such as
  "사과, 배, 포도" stay together.
- A chunk must contain a letter to end at punctuation ("1." alone never becomes a chunk).
- With no boundary, a chunk is cut at the last whitespace at or before `max_chars`; a
  chunk longer than `max_chars` only happens when there is no whitespace to cut at.
- `first_max_chars` caps the first chunk (cut before a conjunction or preposition when
  possible, else at the last whitespace); with `ramp`, the cap doubles for each following
  chunk until it reaches `max_chars`, and a soft boundary ends such a chunk once it has half
  its cap (or `min_chars`, if less). Caps depend on the chunk's index only, never on timing.
- `flush()` ends the stream and resets the chunker for the next one.
"""

from __future__ import annotations

import re
from enum import Enum

_TERMINATORS = frozenset(".!?…。！？")
_FULLWIDTH_TERMINATORS = frozenset("。！？")
_SOFT = frozenset(",;:")
_FULLWIDTH_SOFT = frozenset("，、；：")
_EM_DASH = "—"
_EN_DASH = "–"
_CLOSERS = frozenset("\"'”’)]}」』》〉】")
_OPENERS = "\"'“‘([{「『《〈【"

_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "inc", "ltd", "jr", "sr", "co",
     "corp", "mt", "ft", "approx", "fig", "no"}
)
_DOTTED_LETTERS = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
_KOREAN_CONNECTIVES = (
    "고", "며", "서", "는데", "은데", "인데", "지만", "면", "니까", "거나", "다가",
    "므로", "도록", "어도", "아도", "해도", "려고",
)
_WHITESPACE = re.compile(r"\s")
_CANDIDATES = _TERMINATORS | _SOFT | _FULLWIDTH_SOFT | {_EM_DASH, _EN_DASH}


class _Verdict(Enum):
    SPLIT = "split"
    SKIP = "skip"
    WAIT = "wait"


_BREAK_WORDS = frozenset(
    "and but or so because that which who when while if to with for of in on at as than then where "
    "though although until unless since".split())
_BREAK_BEFORE = re.compile(r"\s+([A-Za-z']+)(?=\s)")


def _is_hangul(ch: str) -> bool:
    return "가" <= ch <= "힣"


class ClauseChunker:
    """Accumulates streamed text and returns complete clauses as soon as they are certain."""

    def __init__(
        self, *, first_min_chars: int = 12, min_chars: int = 40, max_chars: int = 220,
        first_max_chars: int | None = None, ramp: bool = False,
    ) -> None:
        if first_min_chars < 0 or min_chars < 0:
            raise ValueError("first_min_chars and min_chars must be >= 0")
        if max_chars < 2:
            raise ValueError("max_chars must be >= 2")
        self._first_min = first_min_chars
        self._min = min_chars
        self._max = max_chars
        # The first chunk is what the listener waits for: cap it harder if asked.
        self._first_max = min(first_max_chars, max_chars) if first_max_chars else None
        # With a capped first chunk, `ramp` doubles the cap for each following chunk (and
        # lets a soft boundary end one at half its cap) until it reaches `max_chars`: a
        # short first clause is followed by short ones, each ready before the last ends.
        self._ramp = ramp
        self._buf = ""
        self._emitted = False
        self._count = 0  # chunks emitted in this stream

    def push(self, delta: str) -> list[str]:
        """Add a delta; return the chunks whose end is now certain, in order."""
        self._buf += delta
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of stream: return every remaining chunk and reset for a new stream."""
        out = self._drain(final=True)
        rest = self._buf.strip()
        if rest:
            out.append(rest)
        self._buf = ""
        self._emitted = False
        self._count = 0
        return out

    def _drain(self, *, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            self._buf = self._buf.lstrip()
            cut = self._scan(final)
            if cut is None:
                return out
            end, resume = cut
            chunk = self._buf[:end].strip()
            self._buf = self._buf[resume:]
            if chunk:
                out.append(chunk)
                self._emitted = True
                self._count += 1

    def _scan(self, final: bool) -> tuple[int, int] | None:
        """Next certain cut in the buffer as (chunk end, resume index), or None to wait."""
        buf = self._buf
        limit = self._limit()
        i = 0
        while i < len(buf):
            if i >= limit:
                return self._forced_cut(final)
            ch = buf[i]
            if ch == "\n":
                return i, i + 1
            if ch in _CANDIDATES:
                verdict, end = self._judge(i, final)
                if verdict is _Verdict.WAIT:
                    return None
                if verdict is _Verdict.SPLIT:
                    return (end, end) if end <= limit else self._forced_cut(final)
                i = end
                continue
            i += 1
        return None

    def _limit(self) -> int:
        if not self._first_max:
            return self._max
        if not self._emitted:
            return self._first_max
        if self._ramp:
            return min(self._max, self._first_max << min(self._count, 16))
        return self._max

    def _threshold(self) -> int:
        """How long the pending chunk must be for a soft boundary (comma, ...) to end it."""
        if not self._emitted:
            return self._first_min
        limit = self._limit()
        return min(self._min, limit // 2) if limit < self._max else self._min

    def _forced_cut(self, final: bool) -> tuple[int, int] | None:
        """Cut at the last whitespace within the limit, else the first one after it.

        For a capped first chunk (or a ramped one after it), prefer the last break before a
        conjunction or preposition ("... had then leisure | to consider ..."), so the cut falls
        between phrases. Only words wholly inside the first limit+1 characters count, so the
        result never depends on how the text was split into deltas.
        """
        buf = self._buf
        limit = self._limit()
        if limit != self._max:
            head = buf[: limit + 1]
            breaks = [m.start() for m in _BREAK_BEFORE.finditer(head)
                      if m.start() >= max(1, self._first_min) and m.group(1).lower() in _BREAK_WORDS]
            if breaks:
                return breaks[-1], breaks[-1]
        last = max((m.start() for m in _WHITESPACE.finditer(buf, 1, limit + 1)), default=-1)
        if last > 0:
            return last, last
        later = _WHITESPACE.search(buf, limit)
        if later is not None:
            return later.start(), later.start()
        return None  # wait for whitespace; on flush the remainder goes out whole

    def _judge(self, i: int, final: bool) -> tuple[_Verdict, int]:
        """Decide whether the punctuation run starting at i ends a chunk."""
        buf, n = self._buf, len(self._buf)
        ch = buf[i]
        j = i + 1
        if ch in _TERMINATORS:
            while j < n and buf[j] in _TERMINATORS:
                j += 1
        elif ch == _EM_DASH:
            while j < n and buf[j] == _EM_DASH:
                j += 1
        run_end = j
        while j < n and buf[j] in _CLOSERS:
            j += 1
        if j >= n:
            return (_Verdict.SPLIT, j) if final else (_Verdict.WAIT, j)
        run = buf[i:run_end]
        nxt = buf[j]
        prev = buf[i - 1] if i > 0 else ""
        spaced = nxt.isspace()
        glued = run_end == j and _is_hangul(prev) and _is_hangul(nxt)
        has_letter = any(c.isalpha() for c in buf[:i])

        if ch in _TERMINATORS:
            if not has_letter:
                return _Verdict.SKIP, j
            if any(c in _FULLWIDTH_TERMINATORS for c in run):
                return _Verdict.SPLIT, j
            if set(run) <= {".", "…"} and run != ".":
                return self._judge_ellipsis(j, final) if spaced else (_Verdict.SKIP, j)
            if not (spaced or glued):
                return _Verdict.SKIP, j
            if run == "." and self._is_abbreviation(self._token_before(i)):
                if self._token_before(i).lower() != "no":
                    return _Verdict.SKIP, j
                k = self._next_visible(j)
                if k is None:
                    return (_Verdict.SPLIT, j) if final else (_Verdict.WAIT, j)
                return (_Verdict.SKIP if buf[k].isdigit() else _Verdict.SPLIT), j
            return _Verdict.SPLIT, j

        # Soft boundaries.
        if ch in _SOFT and not spaced and not (ch == "," and glued):
            return _Verdict.SKIP, j
        if ch == _EN_DASH and not (spaced and prev.isspace()):
            return _Verdict.SKIP, j
        if ch in ",，" and _is_hangul(prev):
            if not self._token_before(i).endswith(_KOREAN_CONNECTIVES):
                return _Verdict.SKIP, j
        threshold = self._threshold()
        if has_letter and len(buf[:j].strip()) >= threshold:
            return _Verdict.SPLIT, j
        return _Verdict.SKIP, j

    def _judge_ellipsis(self, j: int, final: bool) -> tuple[_Verdict, int]:
        k = self._next_visible(j)
        if k is None:
            return (_Verdict.SPLIT, j) if final else (_Verdict.WAIT, j)
        c = self._buf[k]
        return (_Verdict.SPLIT if c.isupper() or _is_hangul(c) else _Verdict.SKIP), j

    def _next_visible(self, j: int) -> int | None:
        """Index of the first non-whitespace character at or after j, if buffered."""
        buf = self._buf
        while j < len(buf) and buf[j].isspace():
            j += 1
        return j if j < len(buf) else None

    def _token_before(self, i: int) -> str:
        """The non-whitespace run ending just before index i, without opening quotes."""
        start = i
        while start > 0 and not self._buf[start - 1].isspace():
            start -= 1
        return self._buf[start:i].lstrip(_OPENERS)

    @staticmethod
    def _is_abbreviation(token: str) -> bool:
        if token.lower() in _ABBREVIATIONS:
            return True
        if len(token) == 1 and token.isupper() and token.isascii():
            return True  # an initial, as in "J. K. Rowling"
        return _DOTTED_LETTERS.fullmatch(token) is not None
