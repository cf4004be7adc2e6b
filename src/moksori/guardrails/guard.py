"""The two guardrail hooks and the policies behind them.

* **Input** (`check_input`): a user turn, before the LLM sees it -> allow, block (the agent
  says the safe sentence instead of asking the LLM) or rewrite (masked terms, optionally PII).
* **Output** (`check_output`): each clause of a reply, *before it is synthesised* -> allow or
  block. A blocked reply is replaced by the safe sentence of the session's language, so nothing
  blocked is ever spoken. Pass what was already said as `spoken`: a term split across two
  clauses is still caught, and a match lying wholly in text already spoken is not reported again.
* **Redaction** (`redact`): PII masked in what is stored and logged (`PIILogFilter` for logs).

Every trip is a `GuardrailTripped` record in the verdict, for the timeline and `/metrics`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from moksori.guardrails.events import GuardrailTripped
from moksori.guardrails.moderation import ModerationClient
from moksori.guardrails.pii import PIIRedactor
from moksori.guardrails.terms import Match, TermList

if TYPE_CHECKING:
    from moksori.settings import GuardrailSettings

log = logging.getLogger(__name__)

_CONTEXT_CHARS = 80  # how much of the already-spoken reply is re-checked with a new clause


@dataclass(frozen=True)
class InputVerdict:
    action: Literal["allow", "block", "rewrite"]
    text: str  # what the LLM should see: the turn, or its rewrite
    reply: str | None = None  # when blocked: what the agent says instead
    trips: tuple[GuardrailTripped, ...] = ()


@dataclass(frozen=True)
class OutputVerdict:
    action: Literal["allow", "block"]
    replacement: str | None = None  # when blocked: the safe sentence to say instead
    trips: tuple[GuardrailTripped, ...] = ()


class InputGuard(Protocol):
    async def check_input(self, text: str, language: str) -> InputVerdict: ...


class OutputGuard(Protocol):
    async def check_output(self, clause: str, language: str, *, spoken: str = "") -> OutputVerdict: ...


class Guardrails:
    """Both hooks over the configured policies. Cheap when nothing is configured."""

    def __init__(self, *, block: TermList | None = None, mask: TermList | None = None,
                 check: Literal["input", "output", "both"] = "both", redactor: PIIRedactor | None = None,
                 redact_for_llm: bool = False, moderation: ModerationClient | None = None,
                 moderation_on: Literal["input", "output", "both"] = "input",
                 moderation_failure: Literal["open", "closed"] = "open",
                 safe_replies: dict[str, str] | None = None) -> None:
        self.block = block or TermList()
        self.mask_terms = mask or TermList()
        self.check = check
        self.redactor = redactor or PIIRedactor(())
        self.redact_for_llm = redact_for_llm
        self.moderation = moderation
        self.moderation_on = moderation_on
        self.moderation_failure = moderation_failure
        self.safe_replies = safe_replies or {"en": "Sorry, I can't help with that."}

    @classmethod
    def from_settings(cls, s: GuardrailSettings) -> Guardrails:
        # a term or pattern check that runs out of time follows the same failure policy as moderation
        block = TermList({"en": s.block_terms_en, "ko": s.block_terms_ko},
                         {"en": s.block_patterns_en, "ko": s.block_patterns_ko}, where="guardrails.block_patterns",
                         on_timeout=s.moderation_failure)
        mask = TermList({"en": s.mask_terms_en, "ko": s.mask_terms_ko}, on_timeout=s.moderation_failure)
        moderation = None
        if s.moderation_url:
            key = s.moderation_api_key.get_secret_value() if s.moderation_api_key else None
            moderation = ModerationClient(s.moderation_url, api_key=key, model=s.moderation_model,
                                          timeout_s=s.moderation_timeout_s)
        return cls(block=block, mask=mask, check=s.check, redactor=PIIRedactor(s.redact_pii),
                   redact_for_llm=s.redact_pii_for_llm, moderation=moderation, moderation_on=s.moderation_on,
                   moderation_failure=s.moderation_failure,
                   safe_replies={"en": s.safe_reply_en, "ko": s.safe_reply_ko})

    # ------------------------------------------------------------------ helpers

    @property
    def active(self) -> bool:
        """Whether any input or output check is configured (redaction aside)."""
        return bool(self.block or self.mask_terms or self.moderation or self.redact_for_llm)

    def safe_reply(self, language: str) -> str:
        return self.safe_replies.get(language) or self.safe_replies.get("en") or "Sorry, I can't help with that."

    def redact(self, text: str) -> str:
        """PII masked, for what is stored and logged."""
        return self.redactor(text)

    async def _moderate(self, text: str, stage: Literal["input", "output"],
                        language: str) -> GuardrailTripped | None:
        if self.moderation is None or self.moderation_on not in (stage, "both") or not text.strip():
            return None
        res = await self.moderation.check(text)
        if res.error is not None:
            if self.moderation_failure == "closed":
                return GuardrailTripped(stage, "block", "moderation",
                                        f"moderation unavailable, failing closed ({res.error[:120]})", language)
            return None
        if res.flagged:
            return GuardrailTripped(stage, "block", "moderation", "flagged by the moderation endpoint", language,
                                    res.categories)
        return None

    # ------------------------------------------------------------------ hooks

    async def check_input(self, text: str, language: str) -> InputVerdict:
        if self.check in ("input", "both"):
            m = self.block.first(text, language)
            if m is not None:
                trip = GuardrailTripped("input", "block", m.list_kind, _reason(m), language)
                return InputVerdict("block", text, self.safe_reply(language), (trip,))
        flagged = await self._moderate(text, "input", language)
        if flagged is not None:
            return InputVerdict("block", text, self.safe_reply(language), (flagged,))
        trips: list[GuardrailTripped] = []
        out = text
        if self.mask_terms:
            out, n = self.mask_terms.mask(out, language)
            if n:
                trips.append(GuardrailTripped("input", "rewrite", "mask", f"{n} masked term(s)", language))
        if self.redact_for_llm and self.redactor:
            out, kinds = self.redactor.redact(out)
            if kinds:
                trips.append(GuardrailTripped("input", "rewrite", "pii", "personal data masked: "
                                              + ", ".join(sorted(set(kinds))), language))
        return InputVerdict("rewrite" if trips else "allow", out, None, tuple(trips))

    async def check_output(self, clause: str, language: str, *, spoken: str = "") -> OutputVerdict:
        if self.check in ("output", "both") and self.block:
            context = spoken[-_CONTEXT_CHARS:]
            sep = " " if context and not context.endswith(" ") and not clause.startswith(" ") else ""
            window = context + sep + clause
            m = self.block.first(window, language, min_end=len(context) + len(sep))
            if m is not None:
                trip = GuardrailTripped("output", "block", m.list_kind, _reason(m), language)
                return OutputVerdict("block", self.safe_reply(language), (trip,))
        flagged = await self._moderate(clause, "output", language)
        if flagged is not None:
            return OutputVerdict("block", self.safe_reply(language), (flagged,))
        return OutputVerdict("allow")

    def scrub_history(self, text: str, language: str) -> str:
        """An earlier user turn as the LLM should see it again: removed if the block lists match
        it (it was blocked when said), else with its masks and (optionally) PII rewritten. Local
        and cheap: no moderation call, no new trip."""
        if self.check in ("input", "both") and self.block.first(text, language) is not None:
            return "[removed by a guardrail]"
        if self.mask_terms:
            text, _ = self.mask_terms.mask(text, language)
        if self.redact_for_llm and self.redactor:
            text = self.redactor(text)
        return text

    async def close(self) -> None:
        if self.moderation is not None:
            await self.moderation.close()


def _reason(m: Match) -> str:
    if m.timed_out:
        return f"the {m.list_kind[:-1]} check ({m.language}) ran out of time, failing closed"
    return f"a blocked {m.list_kind[:-1]} ({m.language})"


class PIILogFilter(logging.Filter):
    """Masks PII in log records (install on the handlers: `handler.addFilter(PIILogFilter(r))`)."""

    def __init__(self, redactor: PIIRedactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logged as is
            return True
        clean = self.redactor(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True
