"""A reply's guardrail checks: which guardrails check its output, the input check on the user
turn it answers (before the LLM sees it), and the check of each output clause before it is
shown or spoken. Both brains' replies use these (`Response`, the realtime brain's `UpstreamReply`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from moksori.engine import events as E
from moksori.providers.base import Message

if TYPE_CHECKING:
    from moksori.guardrails.events import GuardrailTripped
    from moksori.guardrails.guard import Guardrails

__all__ = ["ClauseCheck", "check_clause", "check_input", "output_gate", "trip_event"]


def output_gate(guard: Guardrails | None, *, backchannel: bool) -> Guardrails | None:
    """The guardrails that check a reply's output clause by clause (None: its text goes out as
    generated; a backchannel is never checked)."""
    if guard is None or backchannel:
        return None
    checks_output = (guard.check in ("output", "both") and bool(guard.block)) or \
        (guard.moderation is not None and guard.moderation_on in ("output", "both"))
    return guard if checks_output else None


def trip_event(trip: GuardrailTripped, *, t: float, turn_id: int | None, response_id: str) -> E.GuardrailTripped:
    return E.GuardrailTripped(t=t, stage=trip.stage, action=trip.action, policy=trip.policy, reason=trip.reason,
                              language=trip.language, categories=tuple(trip.categories), turn_id=turn_id,
                              response_id=response_id)


async def check_input(guard: Guardrails, messages: list[Message],
                      language: str) -> tuple[tuple[GuardrailTripped, ...], str | None]:
    """The input hook, on the user turn a reply answers (the last message) before the LLM sees
    it: returns its trips and, when blocked, the safe sentence said instead. In place: a rewrite
    replaces the message; earlier user turns get the cheap rewrite (masks, blocked terms
    removed) without new trips."""
    if not messages or messages[-1].role != "user" or not messages[-1].content.strip():
        return (), None
    for i, m in enumerate(messages[:-1]):
        if m.role == "user" and m.content:
            messages[i] = Message("user", guard.scrub_history(m.content, language))
    verdict = await guard.check_input(messages[-1].content, language)
    if verdict.action == "block":
        return verdict.trips, verdict.reply or guard.safe_reply(language)
    if verdict.action == "rewrite":
        messages[-1] = Message("user", verdict.text)
    return verdict.trips, None


@dataclass(frozen=True)
class ClauseCheck:
    checked: str  # the clauses checked so far, this one included (the next check's context)
    replacement: str | None = None  # blocked: the safe sentence said instead
    trips: tuple[GuardrailTripped, ...] = ()


async def check_clause(gate: Guardrails, clause: str, language: str, checked: str) -> ClauseCheck:
    """The output hook on one clause of a reply, before it is shown or spoken (`checked`: the
    clauses before it, which a blocked phrase may start in)."""
    verdict = await gate.check_output(clause, language, spoken=checked)
    checked += (" " if checked else "") + clause
    if verdict.action != "block":
        return ClauseCheck(checked)
    return ClauseCheck(checked, verdict.replacement or gate.safe_reply(language), verdict.trips)
