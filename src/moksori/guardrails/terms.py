"""Term and pattern lists per language (Korean and English).

English terms match whole words, case-insensitively ("ass" does not match "class"). Korean has
no spaces between a word and its particles, so Korean terms match as substrings ("바보"
matches "바보야"). Patterns are Python regular expressions, case-insensitive. A list for a
language applies to text in that language; text whose language is unknown is checked against
every list.

The checks run on the event loop, so each is bounded: one call of `first` or `mask` spends at
most `budget_s` (default 20 ms) of its own thread's CPU time on all its lists together, terms
first, then the patterns in config order, each list being given at least 2 ms even when an
earlier one used up the budget (so about 20 ms + 2 ms per further list). The `regex` package's
`timeout` counts the whole process's CPU time, which busy model threads spend too; `cpu_budget`
turns this thread's budget into it, so other threads' work does not cut a check short. A list
that does not finish in time fails as the guardrail's failure policy says (`on_timeout`): `open`
skips it (the text is allowed, or left unmasked), `closed` treats the whole text as matched (blocked, or masked whole). Each pattern that
runs out of time is logged once. A pattern with a repeat inside an unbounded repeat, such as
`(a+)+$`, can take exponential time on a short text: it is accepted, with a warning at load.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from re import _constants as sre_c  # type: ignore[attr-defined]  # the stdlib's own parser, for the load-time lint
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, Literal

import regex

from moksori.errors import ConfigError
from moksori.guardrails.cpu_budget import ThreadBudget

log = logging.getLogger(__name__)

BUDGET_S = 0.02  # its thread's CPU time one `first`/`mask` call may spend, all lists together
FLOOR_S = 0.002  # ... but each list gets at least this: a slow pattern does not starve the ones after it
_TIMED_OUT_CACHE = 256  # texts whose check timed out, remembered so a history re-check costs nothing


def _term_regex(term: str, language: str) -> str:
    t = regex.escape(term.strip())
    if language == "ko" or not re.match(r"\w", term.strip()[:1]):
        return t
    return rf"(?<!\w){t}(?!\w)"


def nested_unbounded_repeat(pattern: str) -> bool:
    """Whether `pattern` has a repeat inside an unbounded repeat (`(a+)+`, `(\\w+\\s?)*`): the
    classic shape of catastrophic backtracking. A lint (`(ab+)+` is harmless, `(a|a)*` is not
    caught), so it warns; the time budget is what bounds a check."""
    try:
        tree = sre_parse.parse(pattern)
    except Exception:  # noqa: BLE001 - syntax only `regex` knows: no lint
        return False

    def walk(items: Any, in_unbounded: bool) -> bool:
        for op, av in items:
            if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT):
                lo, hi, sub = av
                unbounded = hi is sre_c.MAXREPEAT or hi > 64
                if in_unbounded and hi > lo:  # a variable repeat in a repeat: many ways to split a run
                    return True
                if walk(sub, in_unbounded or unbounded):
                    return True
            elif op is sre_c.SUBPATTERN:
                if walk(av[-1], in_unbounded):
                    return True
            elif op is sre_c.BRANCH:
                if any(walk(b, in_unbounded) for b in av[1]):
                    return True
            elif op in (sre_c.ASSERT, sre_c.ASSERT_NOT):
                if walk(av[1], in_unbounded):
                    return True
            elif op is sre_c.GROUPREF_EXISTS:
                if any(b is not None and walk(b, in_unbounded) for b in av[1:]):
                    return True
            # ATOMIC_GROUP and POSSESSIVE_REPEAT do not backtrack into themselves
        return False

    return walk(tree, False)


def _first_after(rx: Any, text: str, min_end: int, timeout: float) -> Any:
    """The first non-empty match of `rx` in `text` ending after `min_end`, or None."""
    for m in rx.finditer(text, timeout=timeout):
        if m.end() > min_end and m.end() > m.start():
            return m
    return None


def _masked(rx: Any, text: str, mask: str, timeout: float) -> tuple[str, int]:
    return rx.subn(mask, text, timeout=timeout)


@dataclass(frozen=True)
class Match:
    list_kind: str  # "terms" | "patterns"
    language: str
    start: int
    end: int
    timed_out: bool = False  # the list ran out of time and the policy is `closed`: the whole text


@dataclass
class _List:
    kind: str
    language: str
    rx: Any  # regex.Pattern
    source: str  # for the log: the pattern, or "N terms"
    logged: bool = False


class TermList:
    """Compiled lists: `{language: [terms]}` and `{language: [patterns]}`."""

    def __init__(self, terms: Mapping[str, Iterable[str]] | None = None,
                 patterns: Mapping[str, Iterable[str]] | None = None, *, where: str = "guardrails",
                 on_timeout: Literal["open", "closed"] = "open", budget_s: float = BUDGET_S) -> None:
        self.on_timeout = on_timeout
        self.budget_s = budget_s
        self.warnings: list[str] = []
        self._rx: list[_List] = []  # terms first: they are cheap and must not lose the budget to a pattern
        self._timed_out: OrderedDict[tuple[str, str | None, int, str], Any] = OrderedDict()
        for lang, items in (terms or {}).items():
            alts = [_term_regex(t, lang) for t in items if t.strip()]
            if alts:
                self._rx.append(_List("terms", lang, regex.compile("|".join(alts), regex.IGNORECASE),
                                      f"{len(alts)} {lang} term(s)"))
        for lang, items in (patterns or {}).items():
            for p in items:
                if not p.strip():
                    continue
                try:
                    self._rx.append(_List("patterns", lang, regex.compile(p, regex.IGNORECASE), repr(p)))
                except (regex.error, ValueError, OverflowError) as e:
                    raise ConfigError(f"{where}: pattern {p!r} for {lang} is not a valid regular expression: {e}") \
                        from None
                if nested_unbounded_repeat(p):
                    msg = (f"{where}: pattern {p!r} for {lang} repeats a repeat and may backtrack catastrophically "
                           f"on some text; a check that runs out of time fails {on_timeout} (rewrite it, e.g. "
                           "without the nested + or *)")
                    log.warning("%s", msg)
                    self.warnings.append(msg)

    def __bool__(self) -> bool:
        return bool(self._rx)

    def _lists(self, language: str | None) -> list[_List]:
        if language in ("en", "ko"):
            return [r for r in self._rx if r.language == language]
        return self._rx

    def _ran_out(self, lst: _List, text: str, what: str) -> None:
        if lst.logged:
            return
        lst.logged = True
        outcome = "allowed unchecked" if self.on_timeout == "open" else "treated as matched"
        log.warning("guardrails: %s ran out of time %s a %d-character text (%g ms of the thread's CPU for all "
                    "the lists of one check); failing %s: the text is %s (logged once for this list)", lst.source,
                    what, len(text), self.budget_s * 1000, self.on_timeout, outcome)

    def _remember(self, key: tuple[str, str | None, int, str], value: Any) -> None:
        self._timed_out[key] = value
        while len(self._timed_out) > _TIMED_OUT_CACHE:
            self._timed_out.popitem(last=False)

    def first(self, text: str, language: str | None, *, min_end: int = 0) -> Match | None:
        """The first match ending after `min_end` (to skip matches wholly in text already checked).
        A list that runs out of time is skipped (`open`) or is a match of the whole text (`closed`)."""
        key = (text, language, min_end, "first")
        if key in self._timed_out:
            return self._timed_out[key]
        budget = ThreadBudget(self.budget_s, FLOOR_S)
        best: Match | None = None
        timed_out = False
        for lst in self._lists(language):
            try:
                m = budget.run(partial(_first_after, lst.rx, text, min_end))
                if m is not None and (best is None or m.start() < best.start):
                    best = Match(lst.kind, lst.language, m.start(), m.end())
            except TimeoutError:
                timed_out = True
                self._ran_out(lst, text, "checking")
                if self.on_timeout == "closed":
                    best = best or Match(lst.kind, lst.language, 0, len(text), timed_out=True)
                    break
        if timed_out:
            self._remember(key, best)
        return best

    def mask(self, text: str, language: str | None, mask: str = "***") -> tuple[str, int]:
        """`text` with every match replaced by `mask`, and how many. A list that runs out of time is
        skipped (`open`) or masks the whole text (`closed`)."""
        key = (text, language, 0, mask)
        if key in self._timed_out:
            return self._timed_out[key]
        budget = ThreadBudget(self.budget_s, FLOOR_S)
        original, count, timed_out = text, 0, False
        for lst in self._lists(language):
            try:
                text, n = budget.run(partial(_masked, lst.rx, text, mask))
            except TimeoutError:
                timed_out = True
                self._ran_out(lst, text, "masking")
                if self.on_timeout == "closed":
                    text, count = mask, count + 1
                    break
                continue
            count += n
        if timed_out:
            self._remember((original, language, 0, mask), (text, count))
        return text, count
