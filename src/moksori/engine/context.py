"""Context management: memory items → the LLM's messages, within a token budget.

The system prompt and the newest turn are always kept. Older turns go, whole (a turn is a user
message and everything after it up to the next one, so a window never starts inside a tool
exchange). Two strategies:

* `drop` (default): over budget, the oldest turns are left out.
* `summarize`: the same, and the turns left out are folded into a running summary written by
  the LLM *after* a reply (`after_reply`), never during one; a new turn cancels a fold still
  running (`cancel_background`). The summary rides in the system message.

A user or tool message longer than the model's per-message limit (the embedded llama.cpp model's
`max_message_tokens`; `message_limit`) is sent as its start and its end with a marker between
(`cut_middle`): reading a whole window of one pasted text took the local model minutes on 2
busy cores. The conversation itself keeps the whole text.

When the window has to cut, it cuts down to `low_water` of the room (not just enough for this
turn) and keeps that start for the turns that follow: the prompt's prefix stays the same from
turn to turn, so llama.cpp's KV cache is reused instead of re-reading the whole history.

Token counts come from an injected counter: the model's own tokenizer for local models
(`token_counter(llm)`), a cheap estimate otherwise (`moksori.text.tokens.estimate_tokens`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from moksori.engine.memory import Item
from moksori.providers.base import LLM, ChatRequest, Message, Role, TextDelta, ToolCall, Usage
from moksori.text.tokens import TokenCounter, estimate_tokens

log = logging.getLogger(__name__)

Strategy = Literal["drop", "summarize"]
SUMMARY_HEADER = "Earlier in this conversation (a summary):"
# more characters than any one token of the tokenizers we know (BPE vocabularies' longest are
# runs of spaces or symbols): a text longer than `tokens` × this cannot fit in `tokens`
MAX_TOKEN_CHARS = 32


@dataclass(frozen=True)
class ContextPolicy:
    budget_tokens: int  # everything sent as the prompt: system prompt, summary, history
    strategy: Strategy = "drop"
    overhead_tokens: int = 8  # per message: role markers and separators of a chat template
    low_water: float = 0.6  # after a cut, history fills at most this share of the room
    summary_share: float = 0.25  # the running summary's share of the budget, at most
    max_messages: int | None = None  # also cap the number of history messages (agent.max_history_messages)
    # a user or tool message longer than this is cut in the middle (`cut_middle`); None: the
    # model's own limit (`message_limit`: the embedded llama.cpp model's), else no such limit
    max_message_tokens: int | None = None


def default_budget(configured: int, model_context: int, reply_cap: int, reserve: int = 0) -> int:
    """`MOKSORI_AGENT_CONTEXT_TOKENS` if set (> 0), else the model's context minus the reply cap
    and `reserve` (e.g. tool definitions)."""
    if configured > 0:
        return configured
    return max(64, model_context - reply_cap - reserve)


def token_counter(llm: LLM) -> TokenCounter:
    """The model's own tokenizer when it has one (llama.cpp), else the estimate."""
    for candidate in (llm, *getattr(llm, "providers", ())):
        count = getattr(candidate, "count_tokens", None)
        if callable(count):
            return cast(TokenCounter, count)  # count_tokens(text) -> int (llm_llamacpp)
    return estimate_tokens


def message_limit(llm: LLM | None) -> int | None:
    """The most tokens one user or tool message may take for this LLM: the embedded llama.cpp
    model's `max_message_tokens` (evaluating a whole window-sized message takes it tens of
    seconds on a few cores; `MOKSORI_LLM_MAX_MESSAGE_TOKENS`), None for a remote model or an
    embedded one set to no limit (0): the window's budget is then its only bound."""
    if llm is None:
        return None
    for candidate in (llm, *getattr(llm, "providers", ())):
        limit = getattr(candidate, "max_message_tokens", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


def to_messages(items: Sequence[Item]) -> list[Message]:
    """Items as chat messages: tool calls grouped into one assistant message, results as `tool`
    messages, empty replies (interrupted before a word was heard) left out."""
    out: list[Message] = []
    pending: list[ToolCall] = []
    names: dict[str, str] = {}
    for item in items:
        if item.type == "function_call":
            cid = item.call_id or item.id
            names[cid] = item.name or ""
            pending.append(ToolCall(cid, item.name or "", item.arguments or "{}"))
            continue
        if item.type == "mcp_call":  # a call and its result in one item: the LLM sees both
            cid = item.call_id or item.id
            pending.append(ToolCall(cid, item.name or "", item.arguments or "{}"))
            out.append(Message("assistant", "", tool_calls=tuple(pending)))
            pending = []
            out.append(Message("tool", item.output or "", tool_call_id=cid, name=item.name))
            continue
        if pending:
            out.append(Message("assistant", "", tool_calls=tuple(pending)))
            pending = []
        if item.type == "function_call_output":
            out.append(Message("tool", item.output or "", tool_call_id=item.call_id,
                               name=names.get(item.call_id or "")))
        elif item.text.strip():
            role = item.role if item.role in ("user", "assistant", "system") else "user"
            out.append(Message(role, item.text))
    if pending:
        out.append(Message("assistant", "", tool_calls=tuple(pending)))
    return out


def merge_same_role(msgs: list[Message]) -> list[Message]:
    """Two user messages in a row (a turn split by a pause, a failed reply) become one."""
    out: list[Message] = []
    for m in msgs:
        if out and m.role == "user" and out[-1].role == "user" and not m.tool_calls:
            out[-1] = Message("user", f"{out[-1].content} {m.content}".strip())
        else:
            out.append(m)
    return out


def _turns(items: Sequence[Item]) -> list[list[Item]]:
    turns: list[list[Item]] = []
    for item in items:
        if not turns or (item.type == "message" and item.role == "user" and item.text.strip()):
            turns.append([item])
        else:
            turns[-1].append(item)
    return turns


class Counter:
    """Message → tokens, cached (the same history is counted every turn).

    A text longer than `exact_chars` is not tokenized: it cannot fit the window anyway (no token is
    longer than MAX_TOKEN_CHARS), and tokenizing megabytes on the event loop took seconds. It
    counts as more than the budget, so the window trims it (`shrink_text`, which reads only what fits)."""

    def __init__(self, count: TokenCounter, overhead: int, *, exact_chars: int | None = None) -> None:
        self.count = count
        self.overhead = overhead
        self.exact_chars = exact_chars
        self._cache: dict[tuple[Role, str, tuple[ToolCall, ...], str | None], int] = {}

    def text(self, s: str) -> int:
        if self.exact_chars is not None and len(s) > self.exact_chars:
            return len(s) // MAX_TOKEN_CHARS + 1
        return self.count(s) if s else 0

    def message(self, m: Message) -> int:
        key = (m.role, m.content, m.tool_calls, m.tool_call_id)
        n = self._cache.get(key)
        if n is None:
            n = self.overhead + self.text(m.content)
            for c in m.tool_calls:
                n += self.text(c.name) + self.text(c.arguments) + 4
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = n
        return n

    def messages(self, msgs: Sequence[Message]) -> int:
        return sum(self.message(m) for m in msgs)


def shrink_text(text: str, tokens: int, count: TokenCounter, *, keep: Literal["head", "tail"]) -> str:
    """The longest head or tail of `text` that fits in `tokens`, marked with "…" where cut.

    Reads at most `tokens` × MAX_TOKEN_CHARS characters of `text` (a client may send megabytes),
    and guesses the cut from the text's own characters per token before the binary search, so a
    cut costs a few counts of about the size kept, not twenty of the whole text."""
    limit = max(0, tokens) * MAX_TOKEN_CHARS
    if len(text) <= limit and count(text) <= tokens:
        return text

    def piece(n: int) -> str:
        return text[:n] + "…" if keep == "head" else "…" + text[len(text) - n:]

    n = _longest(piece, min(len(text), limit), tokens, count)
    return piece(n) if n else ""


def _longest(piece: Callable[[int], str], most: int, tokens: int, count: TokenCounter, *, slack: int = 0) -> int:
    """The largest n <= `most` with `count(piece(n)) <= tokens` (0 if none), to within `slack`
    characters: a few guesses from the characters per token of what did not fit, then a binary
    search."""
    lo, hi = 0, most  # `lo` characters fit; more than `hi` do not
    guess = hi
    for _ in range(4):  # from the characters per token of what did not fit
        if guess <= lo:
            break
        n = count(piece(guess))
        if n <= tokens:
            lo = guess
            break
        hi = guess - 1
        guess = int(guess * tokens / n * 0.97)
    if slack and lo < hi:  # the guess fitted: the answer is most likely within a few % above it
        up = min(hi, lo + max(1, lo // 32))
        if count(piece(up)) > tokens:
            hi = up - 1
        else:
            lo = up
    while hi - lo > slack:  # binary search on the number of characters kept
        mid = (lo + hi + 1) // 2
        if count(piece(mid)) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return lo


def surely_fits(text: str, tokens: int) -> bool:
    """`text` cannot be over `tokens` tokens: fewer UTF-8 bytes than that (no token of a text is
    less than a byte, but a tokenizer's leading space marker may be one more)."""
    return len(text) * 4 < tokens or (len(text) < tokens and len(text.encode("utf-8", "surrogatepass")) < tokens)


CUT_MARK = "[… {n:,} characters cut …]"
_SNAP_CHARS = 24  # a cut moves back to the last space within this many characters (whole words)


def cut_middle(text: str, tokens: int, count: TokenCounter) -> str:
    """`text` within `tokens`: its start and its end (where a message's question usually is),
    with CUT_MARK saying how much of the middle was left out. Like `shrink_text` it reads at most
    `tokens` × MAX_TOKEN_CHARS characters from each end. A text that fits is returned as it is,
    so cutting a cut text changes nothing."""
    tokens = max(0, tokens)
    if surely_fits(text, tokens) or (len(text) <= tokens * MAX_TOKEN_CHARS and count(text) <= tokens):
        return text
    mark_tokens = count(" " + CUT_MARK.format(n=len(text)) + " ") + 2  # + what the joins may cost
    half = (tokens - mark_tokens) // 2
    while half > 0:
        most = min(len(text), half * MAX_TOKEN_CHARS)
        head = _longest(lambda n: text[:n], most, half, count, slack=_SNAP_CHARS // 2)
        tail = _longest(lambda n: text[len(text) - n:], most, half, count, slack=_SNAP_CHARS // 2)
        if head + tail >= len(text):  # both halves fit: the text is about `tokens` long
            tail = max(0, len(text) - head - 1)
        start, end = text[:head], text[len(text) - tail:] if tail else ""
        space = start.rfind(" ", max(0, head - _SNAP_CHARS))
        if space > 0:
            start = start[:space]
        space = end.find(" ", 0, _SNAP_CHARS)
        if space >= 0:
            end = end[space + 1:]
        start, end = start.rstrip(), end.lstrip()
        out = f"{start} {CUT_MARK.format(n=len(text) - len(start) - len(end))} {end}".strip()
        if count(out) <= tokens:
            return out
        half -= max(1, half // 16)  # the joins cost more than allowed for: a little less of each end
    return shrink_text(text, tokens, count, keep="tail")


class ContextWindow:
    """Per-session state of the window (its start, the running summary) and the summarizer."""

    def __init__(self, policy: ContextPolicy, *, count: TokenCounter = estimate_tokens,
                 llm: LLM | None = None, on_summary: Callable[[str, str | None], None] | None = None,
                 on_usage: Callable[[Usage], None] | None = None) -> None:
        self.policy = policy
        self.counter = Counter(count, policy.overhead_tokens, exact_chars=policy.budget_tokens * MAX_TOKEN_CHARS)
        self.llm = llm
        self._model_limit = message_limit(llm)
        self._cut: dict[str, str] = {}  # a long message's text → what the model sees of it
        self.on_summary = on_summary  # (summary, upto item id): e.g. the store's SummaryUpdated
        self.on_usage = on_usage  # the summary calls' usage, for accounting
        self.summary: str | None = None
        self.summary_upto: str | None = None  # the last item the summary covers
        self._start: str | None = None  # first item of the first kept turn, once the window has cut
        self._task: asyncio.Task[None] | None = None
        self.folds = 0  # summaries written
        self.last_tokens = 0  # prompt tokens of the last window (estimate)
        self.last_dropped = 0  # items left out of the last window

    # ------------------------------------------------------------------ the window

    def system_text(self, system_prompt: str | None) -> str:
        base = system_prompt or ""
        if self.summary:
            return f"{base}\n\n{SUMMARY_HEADER} {self.summary}".strip()
        return base

    def messages(self, items: Sequence[Item], system_prompt: str | None, *, extra_tokens: int = 0) -> list[Message]:
        """The system prompt (with the summary), then as many of the newest turns as fit.

        `extra_tokens` is room to keep free for what the caller appends (a speculative user
        turn, tool rounds of the current reply)."""
        p, c = self.policy, self.counter
        system = self.system_text(system_prompt)
        sys_msgs = [Message("system", system)] if system else []
        room = p.budget_tokens - c.messages(sys_msgs) - p.overhead_tokens - extra_tokens  # + the reply's prompt
        turns = _turns(items)
        msgs_per_turn = [[self._bounded(m) for m in to_messages(t)] for t in turns]
        costs = [c.messages(m) for m in msgs_per_turn]
        start = self._choose_start(turns, msgs_per_turn, costs, room)
        kept = [m for ms in msgs_per_turn[start:] for m in ms]
        kept = [self._bounded(m) for m in merge_same_role(kept)]  # two user messages merged: one again
        if c.messages(kept) > room:  # the newest turn alone is too big: trim it
            kept = self._trim_newest(kept, max(0, room))
        self.last_dropped = sum(len(t) for t in turns[:start])
        self.last_tokens = c.messages(sys_msgs) + c.messages(kept)
        return sys_msgs + kept

    @property
    def max_message_tokens(self) -> int | None:
        return self.policy.max_message_tokens or self._model_limit

    def _bounded(self, m: Message) -> Message:
        """A user or tool message within `max_message_tokens`: its start and end (`cut_middle`).
        Only what the model is sent is cut; the conversation keeps the whole text."""
        limit = self.max_message_tokens
        if limit is None or m.role not in ("user", "tool") or surely_fits(m.content, limit):
            return m
        text = self._cut.get(m.content)
        if text is None:
            text = cut_middle(m.content, limit, self.counter.count)
            if text != m.content:
                log.debug("a %s message of %d characters is cut to %d for the model (%d-token limit "
                          "per message)", m.role, len(m.content), len(text), limit)
            if len(self._cut) > 256:
                self._cut.clear()
            self._cut[m.content] = text
        return m if text is m.content else Message(m.role, text, m.tool_calls, m.tool_call_id, m.name)

    def _choose_start(self, turns: list[list[Item]], msgs: list[list[Message]], costs: list[int], room: int) -> int:
        p = self.policy
        n = len(turns)
        if n == 0:
            return 0

        def fits(s: int) -> bool:
            if sum(costs[s:]) > room:
                return False
            return p.max_messages is None or sum(len(m) for m in msgs[s:]) <= p.max_messages

        found = None
        if self._start is not None:
            found = next((i for i, t in enumerate(turns) if t[0].id == self._start), None)
            if found is not None and fits(found):
                return found
        if found is None and fits(0):  # never cut, or the old start was deleted and all fits now
            self._start = None
            return 0
        # cut: keep the newest turns within low_water of the room (the newest one always)
        target = int(room * p.low_water)
        s, used, count = n - 1, costs[-1], len(msgs[-1])
        while s > 0:
            nxt = costs[s - 1]
            if used + nxt > target or (p.max_messages is not None and count + len(msgs[s - 1]) > p.max_messages):
                break
            s -= 1
            used += nxt
            count += len(msgs[s])
        self._start = turns[s][0].id
        return s

    def _trim_newest(self, kept: list[Message], room: int) -> list[Message]:
        c = self.counter
        while len(kept) > 1 and c.messages(kept) > room:
            kept = kept[1:]
            while len(kept) > 1 and (kept[0].role == "tool" or kept[0].tool_calls):
                kept = kept[1:]
        if kept and c.messages(kept) > room:
            m = kept[0]
            text = shrink_text(m.content, max(0, room - c.overhead), c.count, keep="tail")
            kept = [Message(m.role, text, m.tool_calls, m.tool_call_id, m.name)]
        return kept

    # ------------------------------------------------------------------ summary (off the critical path)

    def pending_fold(self, items: Sequence[Item]) -> list[Item]:
        """Items outside the window that the summary does not cover yet."""
        if self._start is None:
            return []
        idx = next((i for i, it in enumerate(items) if it.id == self._start), None)
        if idx is None:
            return []
        begin = 0
        if self.summary_upto is not None:
            done = next((i for i, it in enumerate(items) if it.id == self.summary_upto), None)
            begin = 0 if done is None else done + 1
        return list(items[begin:idx])

    @property
    def folding(self) -> bool:
        return self._task is not None and not self._task.done()

    def after_reply(self, items: Sequence[Item]) -> asyncio.Task[None] | None:
        """Call when a reply has finished: with the summarize strategy, start folding the turns
        that left the window into the summary, in the background."""
        if self.policy.strategy != "summarize" or self.llm is None or self.folding:
            return None
        todo = self.pending_fold(items)
        if not todo:
            return None
        self._task = asyncio.get_running_loop().create_task(self._fold(todo), name="context-summary")
        return self._task

    def cancel_background(self) -> None:
        """A new turn is starting: the LLM is needed for the reply, not for the summary."""
        if self.folding:
            assert self._task is not None
            self._task.cancel()

    async def wait_background(self) -> None:
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _fold(self, todo: list[Item]) -> None:
        assert self.llm is not None
        p, c = self.policy, self.counter
        cap = max(16, int(p.budget_tokens * p.summary_share))
        words = max(10, cap * 3 // 5)
        prompt = (f"You keep a short running summary of a conversation between a user and an assistant. "
                  f"Update the summary with the new part. Keep what the assistant will need later: names, "
                  f"facts about the user, preferences, decisions, open questions. Write at most {words} words, "
                  f"in the language of the conversation, as plain sentences.")
        frame = f"Summary so far: {self.summary or '(none)'}\n\nNew part of the conversation:\n\n\nUpdated summary:"
        # fold no more than the model can read in one go; the rest waits for the next reply
        room = p.budget_tokens - cap - c.text(prompt) - c.text(frame) - 3 * c.overhead
        chosen: list[Item] = []
        used = 0
        for it in todo:
            n = c.text(it.output or it.arguments or it.text) + c.overhead
            if chosen and used + n > room:
                break
            chosen.append(it)
            used += n
        transcript = "\n".join(_line(it) for it in chosen if _line(it))
        transcript = shrink_text(transcript, max(16, room), c.count, keep="tail")
        user = (f"Summary so far: {self.summary or '(none)'}\n\nNew part of the conversation:\n{transcript}\n\n"
                f"Updated summary:")
        req = ChatRequest(messages=(Message("system", prompt), Message("user", user)), temperature=0.2,
                          max_tokens=cap)
        parts: list[str] = []
        try:
            async for ev in self.llm.chat(req):
                if isinstance(ev, TextDelta):
                    parts.append(ev.text)
                elif isinstance(ev, Usage) and self.on_usage is not None:
                    self.on_usage(ev)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a failed summary leaves the window as it was
            log.warning("context summary failed: %s", e)
            return
        text = " ".join("".join(parts).split())
        if not text:
            return
        self.summary = shrink_text(text, cap, c.count, keep="head")
        self.summary_upto = chosen[-1].id
        self.folds += 1
        if self.on_summary is not None:
            self.on_summary(self.summary, self.summary_upto)


def _line(it: Item) -> str:
    if it.type == "mcp_call":
        return f"(the assistant called {it.name}({it.arguments}); the tool answered: {it.output})"
    if it.type == "function_call":
        return f"(the assistant called {it.name}({it.arguments}))"
    if it.type == "function_call_output":
        return f"(the tool answered: {it.output})"
    if not it.text.strip():
        return ""
    return f"{'User' if it.role == 'user' else 'Assistant'}: {it.text.strip()}"
