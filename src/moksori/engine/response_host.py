"""What a reply is given: the port it uses (`ResponseHost`) and what it is asked for
(`ResponseOptions`). The session's context implements the port; `Responses.options()` makes the
options from the session's configuration, with a Realtime `response.create`'s overrides."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from moksori.engine import events as E
from moksori.engine.clock import Clock
from moksori.engine.memory import Memory
from moksori.engine.speaker import Playback
from moksori.engine.tools import Tool, ToolBox
from moksori.providers.base import LLM, TTS, Message, ToolSpec

if TYPE_CHECKING:
    from moksori.guardrails.guard import Guardrails

__all__ = ["ResponseHost", "ResponseOptions"]


class ResponseHost(Protocol):
    """The port a response uses; its session's context implements it. Nothing else of the
    session is within reach of a response."""

    @property
    def clock(self) -> Clock: ...
    @property
    def memory(self) -> Memory: ...
    @property
    def toolbox(self) -> ToolBox: ...
    @property
    def llm(self) -> LLM: ...
    @property
    def tts(self) -> TTS: ...
    @property
    def output_rate(self) -> int: ...
    @property
    def voice(self) -> str | None: ...
    @property
    def speed(self) -> float: ...
    @property
    def guard(self) -> Guardrails | None:
        """Input and output guardrails (None: no checks)."""
    @property
    def tool_slow_after_s(self) -> float | None:
        """Say a filler when a server tool runs longer than this (None: never)."""

    def publish(self, ev: E.Event) -> None: ...
    def publish_error(self, err: BaseException, *, turn_id: int | None = None,
                      response_id: str | None = None) -> None: ...
    def system_prompt(self, instructions: str | None) -> str: ...
    def play(self, pb: Playback) -> None:
        """Queue this reply's audio on the speaker."""
    def playout_end(self) -> float:
        """When the listener will have heard everything sent so far."""
        ...


@dataclass
class ResponseOptions:
    instructions: str | None = None
    modalities: tuple[str, ...] = ("audio", "text")
    voice: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"
    temperature: float = 0.5
    max_output_tokens: int = 160
    first_clause_max_chars: int = 50  # cap on the first clause (time to first audio; SessionConfig)
    first_clause_ramp: bool = False  # later clauses' caps double from the first's
    # once the first clause is complete the LLM pauses for its TTS: "now" (before its next token),
    # or "max_ahead" (the stream's own backpressure: a few more tokens first; SessionConfig)
    first_clause_pause: str = "max_ahead"
    in_conversation: bool = True  # False: an out-of-band response, not stored in memory
    extra_input: tuple[Message, ...] = ()  # messages appended after memory (speculative user turn)
    # the memory item `extra_input` stands for (the speculative user turn): if the turn was
    # committed before the reply read its input, memory has it and `extra_input` is left out
    extra_input_item: str | None = None
    replace_input: tuple[Message, ...] | None = None  # out-of-band input instead of memory
    fixed_text: str | None = None  # speak this instead of asking the LLM (greetings)
    # the id of the reply's (first) message item when the client named it (Azure's
    # `pre_generated_assistant_message`); None: a new one
    item_id: str | None = None
    metadata: dict[str, Any] | None = None
    backchannel: bool = False  # an acknowledgment in the user's pause: played over the hold, not "speaking"
    # server tools for this reply only, made when it starts (given its id): the MCP servers a
    # Realtime client names in `response.create`; they join the session's tool box for this reply
    reply_tools: Callable[[str], Awaitable[list[Tool]]] | None = None
