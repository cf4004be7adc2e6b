"""What the agent says: its prompt and history budget (`agent`), and the guardrails on what goes in
and out (`guardrails`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from .values import split_csv


class AgentSettings(BaseModel):
    instructions: str | None = None  # system prompt; default: a short-spoken-answers prompt
    greeting: str | None = None
    max_history_messages: int = Field(24, ge=2)
    # token budget of the LLM's prompt (system prompt + history); 0 = the model's context size
    # minus the reply cap
    context_tokens: int = Field(0, ge=0)
    # over budget: drop the oldest turns, or fold them into a running summary written by the LLM
    context_strategy: Literal["drop", "summarize"] = "drop"
    # reply cap of the text chat (`moksori chat --text`); voice keeps llm.max_tokens (short replies)
    text_max_tokens: int = Field(800, ge=1, le=32768)


class GuardrailSettings(BaseModel):
    """Input and output guardrails (see `moksori.guardrails`). Lists are comma-separated in the
    environment (`MOKSORI_GUARDRAILS_BLOCK_TERMS_EN=foo,bar`)."""

    safe_reply_en: str = "Sorry, I can't help with that."
    safe_reply_ko: str = "죄송하지만 그 부분은 도와드릴 수 없어요."
    # words and phrases (case-insensitive; whole words in English, substrings in Korean)
    block_terms_en: Annotated[list[str], NoDecode] = Field(default_factory=list)
    block_terms_ko: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # regular expressions (Python syntax), checked like the terms
    block_patterns_en: Annotated[list[str], NoDecode] = Field(default_factory=list)
    block_patterns_ko: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # input only: masked with "***" before the LLM sees the user turn (a rewrite, not a block)
    mask_terms_en: Annotated[list[str], NoDecode] = Field(default_factory=list)
    mask_terms_ko: Annotated[list[str], NoDecode] = Field(default_factory=list)
    check: Literal["input", "output", "both"] = "both"  # where the term and pattern lists apply
    # PII redaction for what is stored and logged: phone, email, card, rrn (Korean resident number)
    redact_pii: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["phone", "email", "card", "rrn"])
    redact_pii_for_llm: bool = False  # also mask PII in the user turn the LLM sees
    # an OpenAI-compatible /v1/moderations endpoint (base URL ending in /v1); unset: not used
    moderation_url: str | None = None
    moderation_api_key: SecretStr | None = None
    moderation_model: str | None = None  # e.g. omni-moderation-latest; unset: the server's default
    moderation_on: Literal["input", "output", "both"] = "input"
    moderation_timeout_s: float = Field(2.0, gt=0, le=60)
    # when the moderation endpoint fails or times out, or a term or pattern check runs out of its
    # time budget (see moksori.guardrails.terms): open = allow the text, closed = block it
    moderation_failure: Literal["open", "closed"] = "open"

    _split = field_validator("block_terms_en", "block_terms_ko", "block_patterns_en", "block_patterns_ko",
                             "mask_terms_en", "mask_terms_ko", "redact_pii", mode="before")(split_csv)
