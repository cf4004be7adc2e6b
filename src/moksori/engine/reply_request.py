"""What a reply asks the LLM: the conversation it answers, the tools it offers, and the
request of one round (a reply that runs tools asks again, up to `MAX_TOOL_ROUNDS` rounds).
The LLM prefill builds its request from the same parts, so the two match token for token."""

from __future__ import annotations

from collections.abc import Sequence

from moksori.engine.response_host import ResponseHost, ResponseOptions
from moksori.engine.tools import ToolBox
from moksori.providers.base import ChatRequest, Message, ToolSpec

__all__ = ["offered_tools", "reply_messages", "round_request"]


def offered_tools(client: Sequence[ToolSpec], box: ToolBox) -> tuple[ToolSpec, ...]:
    """The client's tools, then the server's: a client's tool wins over a server tool of that name."""
    names = {t.name for t in client}
    return tuple(client) + tuple(t for t in box.specs() if t.name not in names)


async def reply_messages(host: ResponseHost, opts: ResponseOptions) -> list[Message]:
    """The system prompt and what the reply answers: an out-of-band input (`replace_input`), or
    the conversation in memory, then the speculative user turn (`extra_input`) unless memory has
    it by now (the turn was committed before the reply read its input)."""
    system = host.system_prompt(opts.instructions)
    if opts.replace_input is not None:
        return [Message("system", system), *opts.replace_input]
    if opts.in_conversation:
        await host.memory.history_ready()  # the user's earlier turns, once, as the session starts
    base = host.memory.messages(system) if opts.in_conversation else [Message("system", system)]
    item = opts.extra_input_item
    if item is None or not opts.in_conversation or host.memory.get(item) is None:
        base += list(opts.extra_input)
    return base


def round_request(opts: ResponseOptions, messages: Sequence[Message], tools: tuple[ToolSpec, ...]) -> ChatRequest:
    return ChatRequest(messages=tuple(messages), tools=tools, tool_choice=opts.tool_choice,
                       temperature=opts.temperature, max_tokens=opts.max_output_tokens)
