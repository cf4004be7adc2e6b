"""Guardrails in a turn: a tripped rule, a blocked user turn removed from the conversation."""

from __future__ import annotations

from .base import Event, _event, optional


@_event
class GuardrailTripped(Event):
    """An input or output guardrail blocked or rewrote text (`moksori.guardrails`). `reason`
    says what kind of rule matched, never the matched text."""

    type = "guardrail.tripped"
    stage: str  # input | output
    action: str  # block | rewrite
    policy: str  # terms | patterns | mask | pii | moderation
    reason: str
    language: str
    categories: tuple[str, ...] = ()
    turn_id: int | None = optional(default=None)
    response_id: str | None = optional(default=None)


@_event
class GuardrailInputRemoved(Event):
    """A user turn the input guardrail blocked is removed from the conversation: the items'
    text is now `memory.BLOCKED_TEXT`, so no later turn sends it to the LLM, and the store's
    copy is replaced too."""

    type = "guardrail.input_removed"
    item_ids: tuple[str, ...]
    turn_id: int | None = optional(default=None)
    response_id: str | None = optional(default=None)
