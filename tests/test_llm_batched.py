"""The batched embedded LLM (`MOKSORI_LLM_PARALLEL`, providers/llm_llamacpp_batched.py), for real.

SmolLM2-135M at temperature 0, compared with `LlamaCppLLM` (one reply at a time) on the same
window: plain replies and tool calls, alone and beside others. Which reply streams first,
overlaps or waits is checked by the order of the events or by token counts, not by wall time
(the machine is shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading

import pytest

from moksori.errors import ConfigError, ProviderError
from moksori.providers.base import ChatDone, ChatRequest, Message, TextDelta, ToolCall, ToolCallEvent, ToolSpec, Usage

pytestmark = pytest.mark.models

SLOTS = 4
SLOT_TOKENS = 512
SYSTEM = "You are a friendly voice assistant on a phone line. Answer in one or two short sentences."
# each gives a reply of 40 tokens at temperature 0 (they do not end early: the replies overlap)
QUESTIONS = [
    "Tell me about the weather in Paris in spring.",
    "How do I bake bread at home?",
    "Tell me a long story about a dragon who learns to bake bread.",
    "Describe a walk in the mountains in autumn.",
]


PARTED_AFTER = 24  # characters a reply made beside others shares with its solo reply, at least


def assert_solo_reply(text: str, q: str, solo: dict) -> None:
    """A reply made beside other replies is its question's solo reply: token for token as a rule,
    but llama.cpp may round a step of several sequences slightly differently from one token alone,
    so a near-tie can part the two later on (seen on an Intel Xeon with AMX, 2026-12-06, in 2 of ~13
    runs: "…Spring is a time for the city…" against "…a time for fashion…"). So: the solo text, or
    at least its first PARTED_AFTER characters and no other question's (no slot's cache mixed up)."""
    want = solo[q][0]
    if text == want:
        return
    parted = next(i for i, (a, b) in enumerate(zip(text + "\0", want + "\1")) if a != b)
    print(f"\n{q!r}: parted from its solo reply at character {parted}: {text!r}")
    assert parted >= PARTED_AFTER, (q, text, want)
    assert not any(text[:PARTED_AFTER] == solo[o][0][:PARTED_AFTER] for o in solo if o != q), (q, text)


def request(*turns: str, max_tokens: int = 40) -> ChatRequest:
    """system, then user / assistant alternating from `turns`."""
    roles = ["user", "assistant"]
    messages = [Message("system", SYSTEM)] + [Message(roles[i % 2], t) for i, t in enumerate(turns)]  # type: ignore[arg-type]
    return ChatRequest(messages=tuple(messages), max_tokens=max_tokens, temperature=0.0)


async def reply(llm, req: ChatRequest, log: list | None = None, tag: object = None) -> tuple[str, Usage]:
    """The reply's text and usage; ("first", tag) and ("done", tag) appended to `log`."""
    text, usage, done = "", None, None
    async for ev in llm.chat(req):
        if isinstance(ev, TextDelta):
            if not text and log is not None:
                log.append(("first", tag))
            text += ev.text
        elif isinstance(ev, Usage):
            usage = ev
        elif isinstance(ev, ChatDone):
            done = ev
    assert usage is not None and done is not None
    if log is not None:
        log.append(("done", tag))
    return text, usage


@pytest.fixture(scope="module")
def batched():
    from moksori.providers.llm_llamacpp_batched import BatchedLlamaCppLLM
    from moksori.providers.models import path_of

    llm = BatchedLlamaCppLLM(path_of("smollm2-135m"), parallel=SLOTS, context_tokens=SLOT_TOKENS)
    assert llm.caps.context_tokens == SLOT_TOKENS
    yield llm
    asyncio.run(llm.close())


@pytest.fixture(scope="module")
def single():
    from moksori.providers.llm_llamacpp import LlamaCppLLM
    from moksori.providers.models import path_of

    llm = LlamaCppLLM(path_of("smollm2-135m"), context_tokens=SLOT_TOKENS)
    yield llm
    asyncio.run(llm.close())


@pytest.fixture(scope="module")
def solo(single):
    """Each question's reply from LlamaCppLLM, alone."""

    async def all_of_them():
        return {q: await reply(single, request(q)) for q in QUESTIONS}

    replies = asyncio.run(all_of_them())
    # the premise of the `output_tokens == 40` checks: each reply runs to its cap alone (SmolLM2's
    # own length depends on the CPU; a reply that ended early need not overlap the others)
    short = {q: text for q, (text, usage) in replies.items() if usage.output_tokens != 40}
    assert not short, f"premise not met: SmolLM2 ended replies before 40 tokens: {short}"
    return replies


WEATHER = ToolSpec("get_weather", "Weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
# SmolLM2-135M calls no tool from the tools block alone; with one earlier call in the conversation,
# written as the block asks for it, it calls get_weather for the next city at temperature 0
EARLIER_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
CITIES = ["London", "Berlin", "Tokyo"]


def weather_request(city: str, *after: Message) -> ChatRequest:
    messages = (Message("system", SYSTEM), Message("user", "What is the weather in Paris?"),
                Message("assistant", EARLIER_CALL), Message("user", f"What is the weather in {city}?"), *after)
    return ChatRequest(messages=messages, tools=(WEATHER,), max_tokens=40, temperature=0.0)


async def calls(llm, req: ChatRequest) -> tuple[str, list[tuple[str, str]], str]:
    """The reply's text, its tool calls (name, arguments: their ids are random) and finish reason."""
    text, found, finish = "", [], None
    async for ev in llm.chat(req):
        if isinstance(ev, TextDelta):
            text += ev.text
        elif isinstance(ev, ToolCallEvent):
            found.append((ev.call.name, ev.call.arguments))
        elif isinstance(ev, ChatDone):
            finish = ev.finish_reason
    assert finish is not None
    return text, found, finish


def slot_of(llm, prompt_end: list[int]):
    return next(s for s in llm._batcher._slots if s.cached[:len(prompt_end)] == prompt_end)


# --------------------------------------------------------------------------- one at a time


async def test_one_request_gives_llamacpp_text(batched, solo):
    for q in QUESTIONS:
        text, usage = await reply(batched, request(q))
        want, want_usage = solo[q]
        assert text == want
        assert usage.input_tokens == want_usage.input_tokens
        assert usage.output_tokens == 40


# --------------------------------------------------------------------------- several at once


async def test_four_at_once_overlap_and_each_gives_its_solo_text(batched, solo):
    log: list = []
    results = await asyncio.gather(*(reply(batched, request(q), log, i) for i, q in enumerate(QUESTIONS)))
    print("\nevents:", log)
    firsts = [i for i, (kind, _) in enumerate(log) if kind == "first"]
    dones = [i for i, (kind, _) in enumerate(log) if kind == "done"]
    assert max(firsts) < min(dones), "every reply streams before any has finished"
    for q, (text, usage) in zip(QUESTIONS, results):
        assert_solo_reply(text, q, solo)
        assert usage.output_tokens == 40


async def test_requests_beyond_the_slots_wait_in_the_executor_queue(batched):
    """The 5th and 6th wait for a free slot as queued jobs of the model's executor, which is what
    admission control reads (server/load.py: `expected_wait_s`)."""
    ex = batched.executor
    await reply(batched, request("Hi.", max_tokens=4))  # the executor knows a reply's service time
    log: list = []
    queued: list[int] = []
    expected: list[float] = []

    async def watch():
        while len([e for e in log if e[0] == "done"]) < 6:
            queued.append(ex.queued)
            expected.append(ex.expected_wait_s())
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    questions = [*QUESTIONS, *QUESTIONS[:2]]
    await asyncio.gather(*(reply(batched, request(q + " Please."), log, i) for i, q in enumerate(questions)))
    await watcher
    assert max(queued) == 2, queued  # two requests queued at once...
    assert max(expected) > 0, expected  # ...and the queue has an expected wait
    first = {tag: i for i, (kind, tag) in enumerate(log) if kind == "first"}
    first_done = min(i for i, (kind, _) in enumerate(log) if kind == "done")
    assert set(sorted(first, key=first.get)[:4]) == {0, 1, 2, 3}
    assert first[4] > first_done and first[5] > first_done, log  # ...until a slot was free


async def test_cancel_one_mid_stream_frees_its_slot_and_leaves_the_others_alone(batched, solo):
    log: list = []
    cancelled = request("Tell me a long story about a cat who sails to Iceland.", max_tokens=200)
    prompt = batched._fit(cancelled)[0]

    freed: list = []

    async def cancel_after_first_token():
        async with contextlib.aclosing(batched.chat(cancelled)) as stream:
            async for ev in stream:
                if isinstance(ev, TextDelta):
                    break
        log.append(("cancelled", None))
        slot = slot_of(batched, prompt[:len(prompt) - 1])
        for _ in range(1000):  # the decode thread lets go of it at its next step
            if slot.reply is None:
                break
            await asyncio.sleep(0.01)
        freed.append((slot.reply is None, len(slot.cached) - len(prompt)))
        # the next request gets that slot (not the executor's queue: 3 replies still run)
        log.append(("late", await reply(batched, request(QUESTIONS[0]), log, "late")))

    others = asyncio.gather(*(reply(batched, request(q), log, i) for i, q in enumerate(QUESTIONS[1:])))
    await asyncio.gather(others, cancel_after_first_token())
    results = others.result()
    for q, (text, _) in zip(QUESTIONS[1:], results):
        assert_solo_reply(text, q, solo)  # undisturbed
    late_text = next(v for k, v in log if k == "late")[0]
    assert_solo_reply(late_text, QUESTIONS[0], solo)
    order = [(k, t) for k, t in log if k in ("first", "done", "cancelled")]
    assert order.index(("first", "late")) < min(order.index(("done", i)) for i in range(3))
    # the cancelled reply stopped within a few tokens of its 200, and its slot was free
    (free, generated), = freed
    print(f"\ncancelled after its first token: {generated} tokens evaluated in its slot")
    assert free and generated <= 16


async def test_a_reader_that_stops_taking_tokens_makes_its_reply_sit_out_while_another_generates(batched, solo):
    """The reply's reader (the executor's worker driving `_generate`: in a session it stops while
    the first clause is synthesised, at most `iterate_blocking`'s max_pause_s) takes one item and
    stops: its reply makes AHEAD more and is stepped no further, while another reply generates
    all of its 40 tokens; read again, it goes on to its solo text."""
    from moksori.providers.llama_batcher import AHEAD

    paused_q, other_q = QUESTIONS[2], QUESTIONS[3]
    stop = threading.Event()
    reader = batched._generate(request(paused_q), stop)
    try:
        first = await asyncio.to_thread(next, reader)
        prompt = batched._fit(request(paused_q))[0]
        paused = next(r for r in list(batched._batcher._active) if r.prompt == prompt)
        other, usage = await reply(batched, request(other_q))
        sat_out = (paused.produced, len(paused.out), paused.ended)
        print(f"\nwhile the other reply made {usage.output_tokens} tokens, the paused one made {sat_out[0]}")
        assert usage.output_tokens == 40
        assert_solo_reply(other, other_q, solo)
        assert sat_out == (1 + AHEAD, AHEAD, False)  # one taken, AHEAD waiting for the reader, not over
        rest = await asyncio.to_thread(list, reader)
    finally:
        await asyncio.to_thread(reader.close)
    assert_solo_reply(first + "".join(x for x in rest if isinstance(x, str)), paused_q, solo)
    assert next(x for x in rest if isinstance(x, Usage)).output_tokens == 40


async def test_a_tool_call_is_llamacpps_alone_and_beside_other_replies(batched, single, solo):
    want = {c: await calls(single, weather_request(c)) for c in CITIES}
    for c in CITIES:  # the one-at-a-time provider calls the tool (the test would prove nothing else)
        text, found, finish = want[c]
        assert (text.strip(), finish, [n for n, _ in found]) == ("", "tool_calls", ["get_weather"]), want[c]
        assert json.loads(found[0][1]) == {"city": c}
    assert await calls(batched, weather_request(CITIES[0])) == want[CITIES[0]]
    *together, (text, _) = await asyncio.gather(*(calls(batched, weather_request(c)) for c in CITIES),
                                                reply(batched, request(QUESTIONS[0])))
    assert dict(zip(CITIES, together)) == want
    assert_solo_reply(text, QUESTIONS[0], solo)  # a reply beside them, no tools: undisturbed
    # the tool's result goes back and the model answers from it, as the one-at-a-time provider does
    name, arguments = want[CITIES[0]][1][0]
    after = weather_request(CITIES[0], Message("assistant", "", tool_calls=(ToolCall("call_1", name, arguments),)),
                            Message("tool", "sunny, 21 degrees", tool_call_id="call_1", name=name))
    assert await calls(batched, after) == await calls(single, after)


async def test_second_turn_reuses_its_slot_while_other_sessions_come_and_go(batched):
    first = request("My name is Ada and I keep bees in my garden. What do bees eat?")
    text, usage1 = await reply(batched, first)
    # three other sessions in between: with one cache (LlamaCppLLM) each would replace Ada's
    await asyncio.gather(*(reply(batched, request(q + " Be brief.", max_tokens=8)) for q in QUESTIONS[:3]))
    second = request(first.messages[1].content, text, "And how much honey does one hive make?")
    _, usage2 = await reply(batched, second)
    print(f"\nsecond turn: {usage2}")
    assert usage2.cached_tokens >= usage1.input_tokens  # the first turn and most of its reply
    assert usage2.input_tokens - usage2.cached_tokens < 40  # only the new question, about


async def test_forget_cached_prompts_makes_a_repeated_prompt_start_cold(batched):
    req = request("What is the tallest mountain in Africa?", max_tokens=4)
    await reply(batched, req)
    _, again = await reply(batched, req)
    assert again.cached_tokens >= again.input_tokens - 1  # premise: a slot holds the whole prompt
    batched.forget_cached_prompts()
    _, cold = await reply(batched, req)
    assert cold.cached_tokens == 0
    _, warm = await reply(batched, req)  # and the slot that evaluated it holds it again
    assert warm.cached_tokens >= warm.input_tokens - 1


async def test_a_slot_still_replying_forgets_its_prompt_once_its_reply_ends(batched):
    req = request("Tell me a long story about a dragon and a knight.", max_tokens=40)
    stream = batched.chat(req)
    async for ev in stream:
        if isinstance(ev, TextDelta):
            break  # the reply is generating in its slot
    batched.forget_cached_prompts()
    async for _ in stream:
        pass
    _, after = await reply(batched, req)
    assert after.cached_tokens == 0


async def test_prefill_history_goes_to_the_conversations_slot(batched):
    first = request("I am planning a trip to Norway in June. What should I pack?")
    text, _ = await reply(batched, first)
    second = request(first.messages[1].content, text, "And which city should I visit first?")
    n = await batched.prefill_history(second)
    assert n > 0
    _, usage = await reply(batched, second)
    assert usage.input_tokens - usage.cached_tokens <= 20  # the user's words and the headers


async def test_a_prefill_gives_way_to_interactive_work(batched, monkeypatch):
    """With an interactive job running (a live STT, a reply, a synthesis: any session's), a
    prefill evaluates nothing; without one it does (the batched provider's own `busy`)."""
    from moksori.providers import llm_llamacpp_batched

    words = "Tell me a story about a lighthouse keeper who keeps bees on the cliff"
    monkeypatch.setattr(llm_llamacpp_batched, "interactive_running", lambda: 1)
    assert await batched.prefill(request(words), words) == 0
    monkeypatch.undo()
    assert await batched.prefill(request(words), words) > 0


async def test_a_conversation_longer_than_a_slot_is_fitted_as_llamacpp_fits_it(batched, single):
    turns = []
    for i in range(30):
        turns += [f"Question {i}: tell me something about the number {i} and why it matters to people.",
                  f"The number {i} is interesting because it appears in many places, such as clocks and maps."]
    req = request(*turns, "So which number do you like best?")
    tokens, budget = batched._fit(req)
    assert len(tokens) + budget <= SLOT_TOKENS
    assert (tokens, budget) == single._fit(req)
    text, usage = await reply(batched, req)
    assert usage.input_tokens == len(tokens) < len(single._tokens(single.render(req)))
    assert text == (await reply(single, req))[0]


# --------------------------------------------------------------------------- closing


async def test_close_while_generating_ends_the_stream_with_an_error():
    from moksori.providers.llm_llamacpp_batched import BatchedLlamaCppLLM
    from moksori.providers.models import path_of

    llm = BatchedLlamaCppLLM(path_of("smollm2-135m"), parallel=2, context_tokens=512)
    got: list = []

    async def long_reply():
        try:
            async for ev in llm.chat(request(QUESTIONS[2], max_tokens=300)):
                got.append(ev)
                if len(got) == 2:
                    closing.set()
        except ProviderError as e:
            got.append(e)

    closing = asyncio.Event()
    streaming = asyncio.create_task(long_reply())
    await closing.wait()
    await asyncio.wait_for(llm.close(), 30)
    await asyncio.wait_for(streaming, 10)
    assert isinstance(got[-1], ProviderError) and "closed" in str(got[-1])
    assert sum(isinstance(e, TextDelta) for e in got) < 100  # not run to its 300 tokens
    with pytest.raises(ProviderError, match="closed"):
        await reply(llm, request("Hello?"))


# --------------------------------------------------------------------------- text of the tokens


def test_text_holds_back_a_possible_stop_string_and_cuts_at_one():
    from moksori.providers.llama_batcher import ReplyText

    t = ReplyText(["<|im_end|>"])
    assert t.feed(b"Hello <|im") == ("Hello ", False)
    assert t.feed(b"_e") == ("", False)
    assert t.feed(b"nd|> after") == ("", True)
    t = ReplyText(["<|im_end|>"])
    assert t.feed(b"a <") == ("a ", False)
    assert t.feed(b"b") == ("<b", False)
    assert t.feed(b" <|") == (" ", False)
    assert t.flush() == "<|"
    t = ReplyText([])
    snow = "눈".encode()
    assert t.feed(snow[:2]) == ("", False)  # half a character waits for its other half
    assert t.feed(snow[2:] + b"!") == ("눈!", False)


# --------------------------------------------------------------------------- the setting


def test_parallel_setting_picks_the_provider(tmp_path, monkeypatch):
    from moksori.providers.llm_llamacpp import LlamaCppLLM
    from moksori.providers.llm_llamacpp_batched import BatchedLlamaCppLLM
    from moksori.providers.models import path_of
    from moksori.providers.registry import build_llm
    from moksori.settings import PACKAGED_PARALLEL, load_settings

    # auto (the default), the packaged model: PACKAGED_PARALLEL replies at once, each with the whole window
    default = build_llm(load_settings(data_dir=tmp_path)).providers[0]
    assert isinstance(default, BatchedLlamaCppLLM) and default.parallel == PACKAGED_PARALLEL > 1
    assert default.executor.workers == PACKAGED_PARALLEL and default.caps.context_tokens == 4096
    # auto with a model given by path: one at a time (a large model's cache per slot can take GBs)
    monkeypatch.setenv("MOKSORI_LLM_MODEL", str(path_of("smollm2-135m")))
    given = build_llm(load_settings(data_dir=tmp_path)).providers[0]
    assert type(given) is LlamaCppLLM
    monkeypatch.delenv("MOKSORI_LLM_MODEL")
    monkeypatch.setenv("MOKSORI_LLM_PARALLEL", "1")
    one = build_llm(load_settings(data_dir=tmp_path)).providers[0]
    assert type(one) is LlamaCppLLM  # 1: one at a time, the provider of before
    monkeypatch.setenv("MOKSORI_LLM_PARALLEL", "3")
    monkeypatch.setenv("MOKSORI_LLM_CONTEXT_TOKENS", "1024")
    llm = build_llm(load_settings(data_dir=tmp_path))
    inner = llm.providers[0]
    assert isinstance(inner, BatchedLlamaCppLLM) and inner.parallel == 3
    assert inner.executor.workers == 3
    assert llm.caps.context_tokens == inner.caps.context_tokens == 1024  # each slot's window
    monkeypatch.setenv("MOKSORI_LLM_PARALLEL", "0")
    with pytest.raises(ConfigError, match="llm.parallel"):
        load_settings(data_dir=tmp_path)
    for p in (default, given, one, inner):
        asyncio.run(p.close())
