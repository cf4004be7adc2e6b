"""Guardrails: one hook for input (a user turn before the LLM) and one for output (each clause
before TTS), term and pattern lists per language, a PII redactor for what is stored and
logged, and an optional OpenAI-compatible moderation endpoint. See `guard.py`."""

from moksori.guardrails.events import GuardrailTripped
from moksori.guardrails.guard import Guardrails, InputGuard, InputVerdict, OutputGuard, OutputVerdict, PIILogFilter
from moksori.guardrails.moderation import ModerationClient, ModerationResult
from moksori.guardrails.pii import PIIRedactor, luhn_ok, rrn_ok
from moksori.guardrails.terms import TermList

__all__ = [
    "GuardrailTripped", "Guardrails", "InputGuard", "InputVerdict", "ModerationClient", "ModerationResult",
    "OutputGuard", "OutputVerdict", "PIILogFilter", "PIIRedactor", "TermList", "luhn_ok", "rrn_ok",
]
