"""Context management: the window within a token budget (pure), the running summary in virtual
time with a scripted LLM, and 300 turns on a 512-token context with the real packaged model."""

from __future__ import annotations

import asyncio

import pytest

from moksori.engine.context import (
    SUMMARY_HEADER,
    ContextPolicy,
    ContextWindow,
    default_budget,
    shrink_text,
    to_messages,
    token_counter,
)
from moksori.engine.memory import Item, Memory
from moksori.providers.base import ChatRequest, Message
from moksori.testing.fakes import ScriptedLLM
from moksori.testing.virtual_time import run_virtual
from moksori.text.tokens import estimate_tokens

SYSTEM = "You are a helpful voice assistant. Answer briefly."


def user(i: int, words: int = 6) -> Item:
    return Item(id=f"u{i}", role="user", text=f"question {i} " + "word " * words)


def agent(i: int, words: int = 6) -> Item:
    return Item(id=f"a{i}", role="assistant", text=f"answer {i} " + "word " * words)


def convo(n: int, words: int = 6) -> list[Item]:
    return [x for i in range(n) for x in (user(i, words), agent(i, words))]


def cost(window: ContextWindow, msgs: list[Message]) -> int:
    return window.counter.messages(msgs)


def test_everything_fits_nothing_dropped() -> None:
    w = ContextWindow(ContextPolicy(budget_tokens=4000))
    msgs = w.messages(convo(5), SYSTEM)
    assert msgs[0] == Message("system", SYSTEM) and len(msgs) == 11 and w.last_dropped == 0


def test_over_budget_keeps_system_and_newest_within_budget() -> None:
    items = convo(100)
    w = ContextWindow(ContextPolicy(budget_tokens=300))
    msgs = w.messages(items, SYSTEM)
    assert msgs[0].role == "system" and msgs[0].content == SYSTEM
    assert msgs[-1].content == agent(99).text and msgs[1].role == "user"
    assert cost(w, msgs) + w.policy.overhead_tokens <= 300
    assert w.last_dropped > 0


def test_the_start_stays_put_so_the_prompt_prefix_is_reused() -> None:
    items = convo(60)
    w = ContextWindow(ContextPolicy(budget_tokens=300, low_water=0.5))
    first = w.messages(items, SYSTEM)
    starts = []
    for i in range(60, 75):
        items += [user(i), agent(i)]
        msgs = w.messages(items, SYSTEM)
        assert cost(w, msgs) + w.policy.overhead_tokens <= 300
        starts.append(msgs[1].content)
    # the window moved only a few times in 15 turns, and between moves its prefix is unchanged
    assert len(set(starts)) <= 4 and starts[0] == first[1].content


def test_never_starts_inside_a_tool_exchange() -> None:
    items: list[Item] = []
    for i in range(30):
        items += [user(i),
                  Item(id=f"fc{i}", type="function_call", call_id=f"c{i}", name="lookup", arguments='{"q": 1}'),
                  Item(id=f"fo{i}", type="function_call_output", call_id=f"c{i}", output="result " * 10),
                  agent(i)]
    for budget in (120, 200, 333, 500):
        w = ContextWindow(ContextPolicy(budget_tokens=budget))
        msgs = w.messages(items, SYSTEM)
        assert msgs[1].role == "user", budget
        for k, m in enumerate(msgs):
            if m.role == "tool":  # every result follows its call
                assert msgs[k - 1].tool_calls or msgs[k - 1].role == "tool"


def test_a_huge_newest_turn_is_cut_not_failed() -> None:
    items = convo(3) + [Item(id="big", role="user", text="blah " * 2000 + "the actual question at the end")]
    w = ContextWindow(ContextPolicy(budget_tokens=200))
    msgs = w.messages(items, SYSTEM)
    assert cost(w, msgs) + w.policy.overhead_tokens <= 200
    assert msgs[-1].role == "user" and msgs[-1].content.endswith("the actual question at the end")
    assert msgs[-1].content.startswith("…")


def test_megabytes_of_newest_turn_are_cut_reading_little_of_them() -> None:
    """A Realtime client's 3.9 MB text item: tokenizing all of it for every count (and a binary
    search of ~22 counts) held the event loop ~12 s, every session with it. The window now counts
    no more than the budget can hold, and the cut costs a few counts of about what is kept."""
    read = [0]

    def count(s: str) -> int:  # the estimate, minding how much text it was given
        read[0] += len(s)
        return estimate_tokens(s)

    question = "and finally the actual question?"
    items = convo(2) + [Item(id="big", role="user", text="lorem ipsum dolor sit amet " * 150_000 + question)]
    w = ContextWindow(ContextPolicy(budget_tokens=2048), count=count)
    msgs = w.messages(items, SYSTEM)
    assert cost(w, msgs) + w.policy.overhead_tokens <= 2048
    assert msgs[-1].content.startswith("…") and msgs[-1].content.endswith(question)
    assert len(msgs[-1].content) > 2048  # most of the room is used, not a sliver of it
    assert read[0] < 40 * 2048 * 4  # characters tokenized, against ~4 M in the item (×22 before)


def test_shrink_text_finds_the_longest_piece_that_fits() -> None:
    text = " ".join(f"w{i}" for i in range(3000))
    for keep in ("head", "tail"):
        for tokens in (1, 7, 100, 999):
            cut = shrink_text(text, tokens, estimate_tokens, keep=keep)
            assert estimate_tokens(cut) <= tokens
            longer = text[:len(cut)] + "…" if keep == "head" else "…" + text[len(text) - len(cut):]
            assert cut == "" or estimate_tokens(longer) > tokens  # one more character would not fit


def test_max_messages_is_honoured_too() -> None:
    w = ContextWindow(ContextPolicy(budget_tokens=100_000, max_messages=6))
    msgs = w.messages(convo(20), SYSTEM)
    assert len(msgs) - 1 <= 6 and msgs[1].role == "user" and msgs[-1].content == agent(19).text


def test_memory_uses_the_window_when_given() -> None:
    mem = Memory(max_messages=1000)
    for it in convo(80):
        mem.add(it)
    mem.window = ContextWindow(ContextPolicy(budget_tokens=250))
    msgs = mem.messages(SYSTEM)
    assert mem.window.last_dropped > 0 and estimate_tokens(" ".join(m.content for m in msgs)) < 250


def test_budget_defaults_and_helpers() -> None:
    assert default_budget(0, 4096, 160) == 3936
    assert default_budget(0, 4096, 800, reserve=300) == 2996
    assert default_budget(1500, 4096, 160) == 1500
    assert shrink_text("one two three four", 3, estimate_tokens, keep="head").endswith("…")
    assert token_counter(ScriptedLLM()) is estimate_tokens
    assert estimate_tokens("안녕하세요") == 5 and estimate_tokens("hello world!") == 3
    tools = to_messages([Item(id="1", type="function_call", call_id="c", name="f", arguments="{}"),
                         Item(id="2", type="function_call_output", call_id="c", output="ok")])
    assert tools[0].tool_calls[0].name == "f" and tools[1] == Message("tool", "ok", tool_call_id="c", name="f")


# --------------------------------------------------------------------------- summary, virtual time


def summary_llm(delay_s: float = 0.5) -> ScriptedLLM:
    def reply(req: ChatRequest) -> str:
        text = req.messages[-1].content
        n = text.count("User:")
        return f"They talked about {n} more things."

    return ScriptedLLM(reply, first_token_s=delay_s, token_delay_s=0.05)


def test_summary_is_written_after_a_reply_and_rides_in_the_system_prompt() -> None:
    async def main() -> None:
        llm = summary_llm()
        updates: list[tuple[str, str | None]] = []
        w = ContextWindow(ContextPolicy(budget_tokens=300, strategy="summarize"), llm=llm,
                          on_summary=lambda s, upto: updates.append((s, upto)))
        items = convo(60)
        msgs = w.messages(items, SYSTEM)  # the reply's prompt: cut, no summary yet
        assert SUMMARY_HEADER not in msgs[0].content and llm.requests == []
        task = w.after_reply(items)
        assert task is not None and w.folding
        await w.wait_background()
        assert w.folds == 1 and updates and updates[0][1] == w.summary_upto
        msgs = w.messages(items, SYSTEM)
        assert msgs[0].content.startswith(SYSTEM) and SUMMARY_HEADER in msgs[0].content
        assert "more things" in msgs[0].content
        assert cost(w, msgs) + w.policy.overhead_tokens <= 300
        # folding continues after each reply until everything outside the window is covered
        left = len(w.pending_fold(items))
        while w.pending_fold(items):
            assert w.after_reply(items) is not None
            await w.wait_background()
            assert len(w.pending_fold(items)) < left
            left = len(w.pending_fold(items))
        assert w.after_reply(items) is None and w.folds >= 2
        assert cost(w, w.messages(items, SYSTEM)) + w.policy.overhead_tokens <= 300

    run_virtual(main())


def test_a_new_turn_cancels_a_fold_in_progress() -> None:
    async def main() -> None:
        llm = summary_llm(delay_s=2.0)
        w = ContextWindow(ContextPolicy(budget_tokens=300, strategy="summarize"), llm=llm)
        items = convo(60)
        w.messages(items, SYSTEM)
        w.after_reply(items)
        await asyncio.sleep(0.5)
        assert w.folding
        w.cancel_background()  # the user speaks again: the reply needs the LLM now
        await w.wait_background()
        assert w.summary is None and w.folds == 0
        assert llm.cancelled == 1
        # the next quiet moment folds it after all
        w.after_reply(items)
        await w.wait_background()
        assert w.summary is not None

    run_virtual(main())


def test_drop_strategy_never_calls_the_llm() -> None:
    async def main() -> None:
        llm = summary_llm()
        w = ContextWindow(ContextPolicy(budget_tokens=300, strategy="drop"), llm=llm)
        items = convo(60)
        w.messages(items, SYSTEM)
        assert w.after_reply(items) is None and llm.requests == []

    run_virtual(main())


# --------------------------------------------------------------------------- the real packaged model


@pytest.fixture(scope="module")
def small_llm():
    from moksori.providers.llm_llamacpp import LlamaCppLLM
    from moksori.providers.models import path_of

    llm = LlamaCppLLM(path_of("smollm2-135m"), threads=2, context_tokens=512)
    yield llm
    asyncio.run(llm.close())


async def _converse(llm, window: ContextWindow, turns: int, reply_cap: int) -> list[int]:
    from moksori.providers.base import TextDelta

    items: list[Item] = []
    prompt_tokens: list[int] = []
    topics = ["my cat Nabi", "the subway to Gangnam", "a recipe for kimchi stew", "the weather in Busan",
              "learning the guitar", "a long trip across the whole country by train with three friends"]
    for i in range(turns):
        text = f"Tell me one thing about {topics[i % len(topics)]}." + (" Please." * (i % 4))
        items.append(Item(id=f"u{i}", role="user", text=text))
        window.cancel_background()
        msgs = window.messages(items, SYSTEM)
        req = ChatRequest(messages=tuple(msgs), max_tokens=reply_cap, temperature=0.0)
        prompt_tokens.append(len(llm._tokens(llm.render(req))))
        reply = []
        async for ev in llm.chat(req):  # raises ProviderError if the prompt were over the context
            if isinstance(ev, TextDelta):
                reply.append(ev.text)
        items.append(Item(id=f"a{i}", role="assistant", text="".join(reply).strip() or "Okay."))
        window.after_reply(items)
    await window.wait_background()
    return prompt_tokens


@pytest.mark.models
@pytest.mark.slow
def test_300_turns_on_a_512_token_context_never_fail(small_llm) -> None:
    reply_cap = 8
    budget = default_budget(0, 512, reply_cap)
    # a low water mark: the window moves rarely, so llama.cpp re-reads the history rarely
    window = ContextWindow(ContextPolicy(budget_tokens=budget, low_water=0.35), count=token_counter(small_llm))
    sizes = asyncio.run(_converse(small_llm, window, 300, reply_cap))
    assert len(sizes) == 300 and max(sizes) <= 512 - reply_cap
    print(f"\n300 turns, prompt tokens min {min(sizes)} max {max(sizes)} of {512 - reply_cap}")


@pytest.mark.models
@pytest.mark.slow
def test_summarize_on_a_small_context_with_the_real_model(small_llm) -> None:
    reply_cap = 8
    window = ContextWindow(ContextPolicy(budget_tokens=default_budget(0, 512, reply_cap), strategy="summarize"),
                           count=token_counter(small_llm), llm=small_llm)
    sizes = asyncio.run(_converse(small_llm, window, 30, reply_cap))
    assert max(sizes) <= 512 - reply_cap
    assert window.folds >= 1 and window.summary
    print(f"\nsummary after 30 turns ({window.folds} folds): {window.summary!r}")


def test_a_deleted_start_item_does_not_cut_needlessly() -> None:
    items = convo(60)
    w = ContextWindow(ContextPolicy(budget_tokens=300))
    w.messages(items, SYSTEM)
    assert w.last_dropped > 0
    short = convo(3)  # e.g. a client deleted most items
    assert len(w.messages(short, SYSTEM)) == 7 and w.last_dropped == 0


def test_an_mcp_call_item_reads_as_a_tool_call_and_its_result() -> None:
    """One `mcp_call` item (a Realtime client's MCP tool, as the client was shown it) is, for the
    LLM, an assistant tool call followed by the tool's answer: with and without a window, and in
    what a summary reads."""
    from moksori.engine.context import _line

    items = [Item(id="u1", role="user", text="Weather in Seoul?"),
             Item(id="mcp_1", type="mcp_call", role="assistant", call_id="call_1", name="weather",
                  arguments='{"city": "Seoul"}', output="sunny", server_label="wx"),
             Item(id="a1", role="assistant", text="It is sunny.")]
    mem = Memory()
    mem.items = list(items)
    for msgs in (mem.messages("sys"), ContextWindow(ContextPolicy(budget_tokens=4000), count=estimate_tokens)
                 .messages(items, "sys")):
        assert [m.role for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
        call = msgs[2].tool_calls[0]
        assert (call.id, call.name, call.arguments) == ("call_1", "weather", '{"city": "Seoul"}')
        assert msgs[3].content == "sunny" and msgs[3].tool_call_id == "call_1" and msgs[3].name == "weather"
    assert "weather" in _line(items[1]) and "sunny" in _line(items[1])
