"""One over-long message and a long prompt on the embedded llama.cpp model.

Finding: a session typed ~100 KB (`'word ' * 20000`); the window kept it whole up to the model's
context (~3,900 tokens: tens of seconds of prompt evaluation on 2 cores), its reply timed out
after 15 s, and the model went on evaluating that prompt (llama-cpp-python reads the whole
prompt before it yields a token, and the stop flag was checked only between tokens): another
session's short question waited 94.6 s. Now one user or tool message is cut in the middle to the
model's per-message limit (`cut_middle`, by the context window and by the model itself), and the
prompt is evaluated in short steps, with a check for cancellation between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from moksori.engine.context import CUT_MARK, ContextPolicy, ContextWindow, cut_middle, message_limit
from moksori.engine.memory import Item
from moksori.providers.base import ChatRequest, Message, TextDelta, Usage
from moksori.testing.fakes import ScriptedLLM
from moksori.text.tokens import estimate_tokens

SYSTEM = "You are a helpful voice assistant. Answer briefly."
QUESTION = "So what is the capital of France?"
TYPED = "Here is my long text. " + "word " * 20000 + QUESTION  # ~100 KB, as the tester typed


# --------------------------------------------------------------------------- cut_middle (pure)


def test_cut_middle_keeps_the_start_and_the_end_within_the_limit() -> None:
    read = [0]

    def count(s: str) -> int:
        read[0] += len(s)
        return estimate_tokens(s)

    cut = cut_middle(TYPED, 300, count)
    assert estimate_tokens(cut) <= 300
    assert cut.startswith("Here is my long text. word") and cut.endswith(QUESTION)
    assert "characters cut …]" in cut
    start, rest = cut.split(" [… ", 1)
    end = rest.split(" …] ", 1)[1]
    assert TYPED.startswith(start) and TYPED.endswith(end)
    assert CUT_MARK.format(n=len(TYPED) - len(start) - len(end)) in cut, "it says how much was left out"
    assert estimate_tokens(cut) > 240, "most of the limit is used"
    assert " wor " not in cut and " w " not in cut, "cut between words"
    assert read[0] < 40 * 300 * 4 * 2, "reads about what it keeps from each end, not the whole text"
    assert cut_middle(cut, 300, estimate_tokens) == cut, "a cut text fits: cutting it again changes nothing"
    short = "a short message that fits"
    assert cut_middle(short, 300, estimate_tokens) is short
    assert estimate_tokens(cut_middle("x" * 10_000, 40, estimate_tokens)) <= 40  # no spaces to cut at


def test_cut_middle_on_a_text_just_over_the_limit() -> None:
    text = " ".join(f"w{i}" for i in range(400))
    for tokens in (20, 100, estimate_tokens(text) - 1):
        cut = cut_middle(text, tokens, estimate_tokens)
        assert estimate_tokens(cut) <= tokens and cut.startswith("w0") and cut.endswith("w399")


# --------------------------------------------------------------------------- the context window


class LocalLLM(ScriptedLLM):
    """A scripted stand-in for the embedded model: it has a per-message limit."""

    max_message_tokens = 200


def test_the_window_cuts_a_long_user_message_for_the_model_and_keeps_the_history() -> None:
    history = [Item(id=f"{r}{i}", role=role, text=f"{role} {i} " + "word " * 20)
               for i in range(10) for r, role in (("u", "user"), ("a", "assistant"))]
    big = Item(id="big", role="user", text=TYPED)
    w = ContextWindow(ContextPolicy(budget_tokens=2000), llm=LocalLLM())
    msgs = w.messages([*history, big], SYSTEM)
    last = msgs[-1]
    assert last.role == "user" and last.content.startswith("Here is my long text.") and last.content.endswith(QUESTION)
    assert "characters cut" in last.content
    assert w.counter.message(last) <= 200 + w.policy.overhead_tokens
    assert w.last_dropped == 0, "the history stays: the message no longer takes the whole window"
    assert big.text == TYPED, "the conversation keeps the user's whole text"
    assert w.messages([*history, big], SYSTEM) == msgs, "the same prompt next turn (the KV cache's prefix)"
    assert w.max_message_tokens == 200

    # a tool's long answer too; not the assistant's own words or the system prompt
    tool = [Item(id="c", type="function_call", call_id="c1", name="search", arguments="{}"),
            Item(id="o", type="function_call_output", call_id="c1", output="result " * 5000)]
    msgs = w.messages([*history, Item(id="q", role="user", text="look it up"), *tool], "system " * 400)
    assert msgs[0].content == "system " * 400
    assert msgs[-1].role == "tool" and "characters cut" in msgs[-1].content
    assert w.counter.message(msgs[-1]) <= 200 + w.policy.overhead_tokens

    # without a per-message limit (a remote model), only the window's budget bounds a message
    plain = ContextWindow(ContextPolicy(budget_tokens=2000), llm=ScriptedLLM())
    assert plain.max_message_tokens is None
    assert "characters cut" not in plain.messages([*history, big], SYSTEM)[-1].content
    # the policy's own limit wins
    own = ContextWindow(ContextPolicy(budget_tokens=2000, max_message_tokens=50), llm=LocalLLM())
    assert own.counter.message(own.messages([big], SYSTEM)[-1]) <= 50 + own.policy.overhead_tokens


def test_two_user_messages_in_a_row_are_one_message_within_the_limit() -> None:
    items = [Item(id="1", role="user", text="first " * 3000 + "end one."),
             Item(id="2", role="user", text="second " * 3000 + "end two?")]
    w = ContextWindow(ContextPolicy(budget_tokens=4000), llm=LocalLLM())
    msgs = w.messages(items, SYSTEM)
    assert len(msgs) == 2 and msgs[-1].content.startswith("first") and msgs[-1].content.endswith("end two?")
    assert w.counter.message(msgs[-1]) <= 200 + w.policy.overhead_tokens


# --------------------------------------------------------------------------- the real packaged model


@pytest.fixture(scope="module")
def llama():
    from moksori.providers.llm_llamacpp import LlamaCppLLM
    from moksori.providers.models import path_of

    # small steps so a test waits little for the one being evaluated
    llm = LlamaCppLLM(path_of("smollm2-135m"), threads=2, context_tokens=2048, llama_options={"n_batch": 32})
    yield llm
    asyncio.run(llm.close())


@pytest.mark.models
def test_a_100kb_message_is_sent_cut_to_the_models_limit(llama, caplog) -> None:
    limit = 512  # the default: 512 tokens, at most a quarter of the context window
    request = ChatRequest(messages=(Message("system", SYSTEM), Message("user", TYPED)), max_tokens=64)
    with caplog.at_level(logging.DEBUG, logger="moksori.providers.llm_llamacpp"):
        started = time.perf_counter()
        tokens, max_tokens = llama._fit(request)
        took = time.perf_counter() - started
    system = len(llama._tokens(llama.render(ChatRequest(messages=(Message("system", SYSTEM),)))))
    assert len(tokens) <= system + limit + 16, "the message is cut, not sent whole"
    assert max_tokens == 64
    prompt = llama._llm.detokenize(tokens).decode("utf-8", "replace")
    assert "Here is my long text." in prompt and QUESTION in prompt and "characters cut" in prompt
    assert any("cut" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert took < 5, f"cutting took {took:.1f} s"
    assert request.messages[-1].content == TYPED, "the request itself is left as it was"
    assert llama.max_message_tokens == limit and message_limit(llama) == limit  # the window cuts the same way


def many_turns(tokens: int, llm) -> ChatRequest:
    """A conversation of short messages (none cut) of about `tokens` prompt tokens."""
    msgs = [Message("system", SYSTEM)]
    i = 0
    while True:
        msgs += [Message("user", f"Question {i}: tell me about the weather in the city today please."),
                 Message("assistant", f"Answer {i}: the weather is fine and sunny with a light breeze.")]
        i += 1
        req = ChatRequest(messages=(*msgs, Message("user", "And tomorrow?")), max_tokens=8, temperature=0.0)
        if len(llm._tokens(llm.render(req))) >= tokens:
            return req


async def reply_of(llm, request: ChatRequest) -> tuple[str, Usage | None]:
    text, usage = "", None
    async for ev in llm.chat(request):
        if isinstance(ev, TextDelta):
            text += ev.text
        elif isinstance(ev, Usage):
            usage = ev
    return text, usage


@pytest.mark.models
async def test_a_reply_cancelled_while_its_prompt_is_read_frees_the_model_within_one_step(llama) -> None:
    request = many_turns(700, llama)
    n_prompt = len(llama._tokens(llama.render(request)))
    llama._llm.reset()  # nothing of it in the cache
    batch = llama._llm.n_batch

    async def consume() -> None:
        async with contextlib.aclosing(llama.chat(request)) as stream:
            async for _ in stream:
                pass

    task = asyncio.create_task(consume())
    deadline = time.monotonic() + 120
    while llama._llm.n_tokens < 2 * batch and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the prompt is being evaluated
    at_cancel = llama._llm.n_tokens
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    started = time.perf_counter()
    assert await asyncio.to_thread(llama._lock.acquire, True, 300)
    try:
        freed = time.perf_counter() - started
        evaluated = llama._llm.n_tokens
    finally:
        llama._lock.release()
    print(f"\ncancelled at {at_cancel}/{n_prompt} prompt tokens; model free after {freed * 1000:.0f} ms, "
          f"{evaluated - at_cancel} tokens evaluated after the cancel")
    assert at_cancel < n_prompt - 4 * batch, "cancelled while the prompt was being read"
    assert evaluated - at_cancel <= batch, "at most the step in flight is finished"
    assert evaluated < n_prompt

    # what was evaluated is a valid prefix: the same request reuses it and replies
    text, usage = await reply_of(llama, request)
    assert text.strip() and usage is not None and usage.input_tokens == n_prompt
    assert usage.cached_tokens >= evaluated - 1


@pytest.mark.models
async def test_a_prompt_read_in_steps_gives_llama_cpps_own_reply(llama) -> None:
    request = many_turns(150, llama)
    tokens, max_tokens = llama._fit(request)
    llama._llm.reset()
    own = llama._llm.create_completion(prompt=tokens, max_tokens=max_tokens, temperature=0.0, top_p=0.95,
                                       repeat_penalty=1.1, stop=["<|im_end|>"])
    llama._llm.reset()
    llama._step = 16  # several steps
    text, usage = await reply_of(llama, request)
    assert usage is not None and usage.cached_tokens == 0
    assert text == own["choices"][0]["text"]
    text_again, usage = await reply_of(llama, request)  # all but the last token from the cache
    assert usage is not None and usage.cached_tokens == usage.input_tokens and text_again == text
