"""`moksori chat --text`: the text chat of a chat app. Loads the LLM only, no speech models.

After each reply: `[Tokens used: N | Estimated cost: $X]`. Commands, never sent to the model:
`quit`/`exit`, `clear` (a fresh conversation), `tokens`, `cost`, `history` (a leading `/` is
accepted too). On exit, the session total. `--user ID` resumes that user's history from the
store (and keeps adding to it); without it the conversation is stored as anonymous.

Works with the embedded llama.cpp model and any OpenAI-compatible server, Azure OpenAI included
(settings `llm.api_flavor`, `llm.api_version`, `llm.deployment`). Keys come from
MOKSORI_LLM_API_KEY or MOKSORI_LLM_API_KEY_FILE. A rate-limited (429) or failing server is
retried with backoff (`providers/resilience.py`), then reported in one line; the chat goes on.

The agent kit of every other entry point (`agent_kit.AgentKit`) applies here too: the server-side
tools of the TOML config (`[tools]`: built-ins, `[[tools.http]]`, `[[tools.mcp]]`) are offered to
the LLM and run (`(tool: name)` is printed; at most `MAX_TOOL_ROUNDS` rounds, a round whose tools
all failed ends with the apology), the input guardrail checks each typed turn before the LLM sees
it (a blocked turn is answered with the safe sentence and leaves the history, in memory and in
the store), and with an output check the reply is printed clause by clause once checked, a
blocked clause replaced by the safe sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from moksori import cancellation
from moksori.accounting import PriceTable, TurnUsage, format_cost
from moksori.engine.context import ContextPolicy, ContextWindow, default_budget, token_counter
from moksori.engine.memory import BLOCKED_TEXT, Item, new_id
from moksori.engine.prompts import text_system_prompt
from moksori.engine.reply_guardrails import check_clause, output_gate
from moksori.engine.tool_calls import MAX_TOOL_CALLS_PER_ROUND, MAX_TOOL_ROUNDS, failure_apology
from moksori.engine.tools import ToolBox, ToolRun
from moksori.errors import ProviderError
from moksori.providers.base import LLM, ChatRequest, Message, TextDelta, ToolCall, ToolCallEvent, Usage
from moksori.settings import Settings
from moksori.text.chunker import ClauseChunker
from moksori.text.unencodable import encodable_text

if TYPE_CHECKING:  # the store (SQLAlchemy) loads only when a run stores
    from moksori.agent_kit import AgentKit
    from moksori.guardrails.events import GuardrailTripped
    from moksori.store import Store
    from moksori.store.records import Record

COMMANDS = ("quit", "exit", "clear", "tokens", "cost", "history")


@dataclass(frozen=True)
class TextChatOptions:
    stream: bool = True
    user: str | None = None
    max_tokens: int = 800


@dataclass
class _Totals:
    usage: TurnUsage = field(default_factory=TurnUsage)
    cost: float = 0.0
    replies: int = 0
    estimated: bool = False  # some counts are estimates (the server reported no usage)


class _Lines:
    """stdin lines on a daemon thread, so quitting never waits for a pending `input()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: TextIO) -> None:
        self.q: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop, self._stream = loop, stream
        threading.Thread(target=self._run, name="stdin", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                line = self._readline()
            except (OSError, ValueError):
                line = ""
            self._loop.call_soon_threadsafe(self.q.put_nowait, line.rstrip("\r\n") if line else None)
            if not line:
                return

    def _readline(self) -> str:
        """One line, bytes that are not text in the terminal's encoding shown as U+FFFD. A
        strict stream raised on them, which ended the chat as if at end of input (the lines after
        were lost); Python's usual surrogateescape stdin let them through as lone surrogates, on
        which the tokenizer raised (an internal error, the chat over)."""
        buffer = getattr(self._stream, "buffer", None)
        if buffer is not None:  # the real stdin: decode the bytes ourselves
            raw = buffer.readline()
            return encodable_text(raw.decode(getattr(self._stream, "encoding", None) or "utf-8", "replace"))
        return encodable_text(self._stream.readline())


def friendly_error(e: ProviderError) -> str:
    """One line a person can act on, from the error the provider raised after its retries."""
    status = e.status
    if status == 429:
        return ("the model server is rate-limiting requests (HTTP 429) and still was after retrying with "
                f"backoff; wait a moment and send your message again. ({e.message})")
    if status in (401, 403):
        return f"the model server refused the API key (HTTP {status}); check MOKSORI_LLM_API_KEY. ({e.message})"
    if status == 404:
        return f"the model server does not know this model or deployment (HTTP 404). ({e.message})"
    if status is not None and status >= 500:
        return (f"the model server failed (HTTP {status}) and still did after retrying; "
                f"try again in a moment. ({e.message})")
    return f"the model could not answer: {e}"


class TextChat:
    def __init__(self, settings: Settings, llm: LLM, opts: TextChatOptions, *, store: Store | None = None,
                 prices: PriceTable | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                 kit: AgentKit | None = None) -> None:
        self.settings, self.llm, self.opts, self.store = settings, llm, opts, store
        self.kit = kit
        self.toolbox = ToolBox(kit.engine_tools() if kit is not None else [])
        self.guard = kit.active_guard if kit is not None else None
        self.trips = 0  # guardrail trips this chat
        self.prices = prices or PriceTable()
        self.out, self.err = out, err
        self.system = text_system_prompt(settings.agent.instructions, llm.caps.languages)
        self.count = token_counter(llm)
        self.budget = default_budget(settings.agent.context_tokens, llm.caps.context_tokens, opts.max_tokens)
        self.model = _model_name(llm)
        self.totals = _Totals()
        self.items: list[Item] = []
        self.conversation_id = ""
        self.window = self._new_window()
        self._reply: asyncio.Task[None] | None = None
        from moksori.guardrails.pii import PIIRedactor

        # PII is masked in what is stored (`guardrails.redact_pii`), as for live sessions
        self._redactor = PIIRedactor(settings.guardrails.redact_pii)

    def _language(self, text: str) -> str:
        lang = self.settings.language
        if lang in ("en", "ko"):
            return lang
        return "ko" if any("\uac00" <= ch <= "\ud7a3" for ch in text) else "en"

    def _new_window(self) -> ContextWindow:
        policy = ContextPolicy(budget_tokens=self.budget, strategy=self.settings.agent.context_strategy)
        return ContextWindow(policy, count=self.count, llm=self.llm, on_summary=self._on_summary,
                             on_usage=self._on_summary_usage)

    # ------------------------------------------------------------------ output

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def warn(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    # ------------------------------------------------------------------ store

    def _submit(self, record: Record) -> None:
        if self.store is not None:
            from moksori.recording.recorder import redact_record

            self.store.submit(redact_record(record, self._redactor) if self._redactor else record)

    def _start_conversation(self) -> None:
        from moksori.store import DEFAULT_TENANT, ConversationStarted

        self.conversation_id = f"conv_{uuid.uuid4().hex[:24]}"
        self._submit(ConversationStarted(self.conversation_id, DEFAULT_TENANT, self.opts.user, "text", time.time()))

    async def _load_history(self) -> None:
        if self.store is None or self.opts.user is None:
            return
        from moksori.store import DEFAULT_TENANT

        try:
            await self.store.flush(5.0)
            h = await self.store.load_history(DEFAULT_TENANT, self.opts.user, max_tokens=int(self.budget * 0.7),
                                              count=self.count)
        except Exception as e:  # noqa: BLE001 - no history is better than no chat
            self.warn(f"warning: cannot load the history of {self.opts.user}: {type(e).__name__}: {e}")
            return
        for it in h.items:
            self.items.append(Item(id=f"h{it.seq}", type=it.type, role=it.role or "user",
                                   text=it.spoken_text if it.type == "message" else "", call_id=it.call_id,
                                   name=it.name, arguments=it.arguments, output=it.output, language=it.language,
                                   server_label=it.server_label))
        if h.summary:
            self.window.summary = h.summary
        if h.items:
            self.warn(f"(resumed {len(h.items)} earlier messages of {self.opts.user})")

    def _on_summary(self, summary: str, upto: str | None) -> None:
        from moksori.store import SummaryUpdated

        self._submit(SummaryUpdated(self.conversation_id, summary, upto if upto and not upto.startswith("h") else None,
                                    time.time()))

    def _on_summary_usage(self, u: Usage) -> None:
        from moksori.store import UsageRecord

        usage = TurnUsage(llm_model=self.model, input_tokens=u.input_tokens, cached_tokens=u.cached_tokens,
                          output_tokens=u.output_tokens)
        self._add_totals(usage)
        self._submit(UsageRecord(self.conversation_id, usage, time.time(), kind="summary"))

    # ------------------------------------------------------------------ the loop

    async def run(self, stdin: TextIO = sys.stdin) -> None:
        loop = asyncio.get_running_loop()
        self._start_conversation()
        await self._load_history()
        lines = _Lines(loop, stdin)
        quitting = asyncio.Event()

        def on_sigint() -> None:
            if self._reply is not None and not self._reply.done():
                self._reply.cancel()  # Ctrl-C during a reply stops the reply
            else:
                quitting.set()

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        self.warn("Type a message. Commands: quit, clear, tokens, cost, history.")
        try:
            while True:
                self.out.write("you: ")
                self.out.flush()
                get = asyncio.ensure_future(lines.q.get())
                stop = asyncio.ensure_future(quitting.wait())
                await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if not get.done():
                    get.cancel()
                    self.say()
                    break
                line = get.result()
                if line is None:  # end of input (Ctrl-D)
                    self.say()
                    break
                text = line.strip()
                if not text:
                    continue
                command = text.lower().lstrip("/")
                if command in COMMANDS:
                    if command in ("quit", "exit"):
                        break
                    self._command(command)
                    continue
                self._reply = asyncio.ensure_future(self._turn(text))
                try:
                    await self._reply
                except asyncio.CancelledError:
                    if quitting.is_set():
                        break
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)
            self.window.cancel_background()
            await self.window.wait_background()
            self.say(self._total_line())

    def _command(self, command: str) -> None:
        t = self.totals
        if command == "clear":
            self.window.cancel_background()
            self.items = []
            self.window = self._new_window()
            self._start_conversation()
            self.say("(a fresh conversation: earlier messages are no longer in the context)")
        elif command == "tokens":
            u = t.usage
            approx = " (some counts estimated)" if t.estimated else ""
            self.say(f"Session tokens: {u.input_tokens + u.output_tokens} (input {u.input_tokens}, of which "
                     f"cached {u.cached_tokens}; output {u.output_tokens}) over {t.replies} replies{approx}")
        elif command == "cost":
            note = ""
            unpriced = self.prices.cost(t.usage).unpriced
            if unpriced and self.settings.llm.provider != "llamacpp":  # local models are free unless priced
                note = f" (no price for {', '.join(unpriced)}: see MOKSORI_PRICES_FILE)"
            self.say(f"Session cost: {format_cost(t.cost)} estimated{note}")
        elif command == "history":
            if self.window.summary:
                self.say(f"(summary of earlier turns) {self.window.summary}")
            shown = 0
            for it in self.items:
                if it.type == "message" and it.text.strip():
                    self.say(f"{'you' if it.role == 'user' else 'agent'}: {it.text}")
                    shown += 1
                elif it.type == "function_call":
                    self.say(f"(tool call) {it.name}({it.arguments})")
                elif it.type == "mcp_call":
                    self.say(f"(tool call) {it.server_label}: {it.name}({it.arguments})")
            if not shown:
                self.say("(no messages yet)")

    def _add_totals(self, u: TurnUsage) -> float:
        cost = self.prices.cost(u).usd
        self.totals.usage = self.totals.usage + u
        self.totals.cost += cost
        return cost

    def _total_line(self) -> str:
        u = self.totals.usage
        return (f"[Session total: Tokens used: {u.input_tokens + u.output_tokens} | "
                f"Estimated cost: {format_cost(self.totals.cost)}]")

    async def _turn(self, text: str) -> None:
        from moksori.store import AgentReply, UserTurn

        lang = self._language(text)
        user_item = Item(id=new_id("item"), role="user", text=text, language=lang)
        safe: str | None = None
        if self.guard is not None:  # the input hook, before the LLM (or the store) sees the turn
            verdict = await self.guard.check_input(text, lang)
            self.tripped(verdict.trips)
            if verdict.action == "block":
                safe = verdict.reply or self.guard.safe_reply(lang)
                user_item.text = BLOCKED_TEXT  # never sent to the LLM later, never stored
            elif verdict.action == "rewrite":
                user_item.text = verdict.text
        self.items.append(user_item)
        self._submit(UserTurn(self.conversation_id, user_item.id, text if safe is None else BLOCKED_TEXT,
                              time.time(), audio=False))
        self.window.cancel_background()
        if safe is not None:
            self.out.write("agent: ")
            self.say(safe)
            self.items.append(Item(id=new_id("item"), role="assistant", text=safe))
            self._submit(AgentReply(self.conversation_id, self.items[-1].id, safe, time.time(), audio=False))
            return
        messages = self.window.messages(self.items, self.system)
        parts: list[str] = []
        usage = Usage()
        reported = True
        started = time.time()
        first_token: float | None = None
        interrupted = False
        tools = self.toolbox.specs()
        self.out.write("agent: ")
        self.out.flush()
        convo: list[Message] = []
        gate = _ReplyGate(self, lang)
        try:
            for _round in range(MAX_TOOL_ROUNDS):
                last = _round == MAX_TOOL_ROUNDS - 1  # no tools: the reply ends in words (as in a session)
                req = ChatRequest(messages=tuple(messages + convo), tools=() if last else tools,
                                  temperature=self.settings.llm.temperature, max_tokens=self.opts.max_tokens)
                calls: list[ToolCall] = []
                got_usage = False
                said = len(parts)  # this round's words start here
                stream = self.llm.chat(req)
                try:
                    async for ev in stream:
                        if isinstance(ev, TextDelta) and ev.text:
                            if first_token is None:
                                first_token = time.time()
                            parts.append(ev.text)
                            if await gate.push(ev.text):  # blocked: the rest of this reply is not wanted
                                break
                        elif isinstance(ev, ToolCallEvent):
                            calls.append(ev.call)
                        elif isinstance(ev, Usage):
                            got_usage = True
                            usage = Usage(usage.input_tokens + ev.input_tokens,
                                          usage.output_tokens + ev.output_tokens,
                                          usage.cached_tokens + ev.cached_tokens)
                finally:  # by this task, however the loop ends (Ctrl-C while a line is printed too)
                    await cancellation.close_stream(stream)
                if not got_usage:  # the server reported no usage: count with the tokenizer / estimate
                    reported = False
                    usage = Usage(usage.input_tokens + sum(self.count(m.content) + 4 for m in req.messages),
                                  usage.output_tokens + self.count("".join(parts[said:])), usage.cached_tokens)
                if gate.blocked or not calls:
                    break
                runs = await self._run_tools(calls[:MAX_TOOL_CALLS_PER_ROUND], convo)
                apology = failure_apology(runs, lang)
                if apology is not None:  # every tool failed: the apology, not a second pass
                    await gate.flush()
                    await gate.push((" " if gate.text else "") + apology)
                    break
                if gate.text and not gate.text.endswith(" "):
                    parts.append(" ")
                    await gate.push(" ")
            await gate.flush()
        except asyncio.CancelledError:
            interrupted = True
        except ProviderError as e:
            self.say()
            self.warn(f"error: {friendly_error(e)}")
            self.items.remove(user_item)  # unanswered: out of the context (the store keeps it)
            return
        reply = gate.text.strip()
        if not self.opts.stream:
            self.out.write(reply)
        self.say(" [interrupted]" if interrupted else "")
        if not reported:
            self.totals.estimated = True
        turn = TurnUsage(llm_model=self.model, input_tokens=usage.input_tokens, cached_tokens=usage.cached_tokens,
                         output_tokens=usage.output_tokens)
        cost = self._add_totals(turn)
        if reply:
            self.totals.replies += 1
            self.items.append(Item(id=new_id("item"), role="assistant", text=reply,
                                   status="incomplete" if interrupted else "completed"))
        latency = {"first_token_ms": round((first_token - started) * 1000, 1)} if first_token else None
        self._submit(AgentReply(self.conversation_id, self.items[-1].id if reply else new_id("item"), reply,
                                time.time(), interrupted=interrupted,
                                status="incomplete" if interrupted else "completed", started_at=started,
                                audio=False, latency=latency, usage=turn))
        approx = "" if reported else "~"
        self.say(f"[Tokens used: {approx}{turn.input_tokens + turn.output_tokens} | Estimated cost: {format_cost(cost)}]")
        if not interrupted:
            self.window.after_reply(self.items)

    def tripped(self, trips: tuple[GuardrailTripped, ...]) -> None:
        """Guardrail trips, told on stderr (never the matched words)."""
        for trip in trips:
            self.trips += 1
            self.warn(f"(guardrail: {trip.stage} {trip.action}, {trip.policy}: {trip.reason})")

    async def _run_tools(self, calls: list[ToolCall], convo: list[Message]) -> list[ToolRun]:
        """Run the server tools the model called (an unknown name gets an error it can read);
        each call and result goes into the history and the store."""
        from moksori.store import MCPCallRecord, ToolCallRecord, ToolResultRecord

        runs: list[ToolRun] = []
        for call in calls:
            self.warn(f"(tool: {call.name})")
            tool = self.toolbox.get(call.name)
            label = tool.mcp_server if tool is not None else None
            if label is None:
                self._submit(ToolCallRecord(self.conversation_id, new_id("item"), call.id, call.name, call.arguments,
                                            time.time()))
            run = await self.toolbox.call(call.name, call.arguments)  # each tool's own timeout
            runs.append(run)
            if label is not None:  # an MCP server's tool: one `mcp_call` item, as the voice sessions keep it
                item_id = new_id("mcp")
                self._submit(MCPCallRecord(self.conversation_id, item_id, call.id, label, call.name, call.arguments,
                                           run.output, time.time(), ok=run.ok))
                self.items.append(Item(id=item_id, type="mcp_call", role="assistant", call_id=call.id, name=call.name,
                                       arguments=call.arguments, output=run.output, server_label=label,
                                       error=None if run.ok else run.output))
            else:
                self._submit(ToolResultRecord(self.conversation_id, new_id("item"), call.id, run.output, time.time(),
                                              name=call.name))
                self.items += [Item(id=new_id("item"), type="function_call", role="assistant", call_id=call.id,
                                    name=call.name, arguments=call.arguments),
                               Item(id=new_id("item"), type="function_call_output", role="user", call_id=call.id,
                                    output=run.output)]
            convo += [Message("assistant", "", tool_calls=(call,)),
                      Message("tool", run.output, tool_call_id=call.id, name=call.name)]
        return runs


class _ReplyGate:
    """A reply on its way to the screen: straight through without an output check; with one,
    clause by clause once checked (a blocked clause becomes the safe sentence, and the rest of
    the reply is dropped)."""

    def __init__(self, chat: TextChat, language: str) -> None:
        self.chat, self.language = chat, language
        self.guard = output_gate(chat.guard, backchannel=False)
        self.chunker = ClauseChunker(first_min_chars=4, first_max_chars=50)
        self.text = ""  # what was shown
        self._checked = ""
        self.blocked = False

    def _show(self, words: str) -> None:
        self.text += words
        if self.chat.opts.stream:
            self.chat.out.write(words)
            self.chat.out.flush()

    async def push(self, delta: str) -> bool:
        """Returns True once the reply is blocked."""
        if self.blocked:
            return True
        if self.guard is None:
            self._show(delta)
            return False
        for clause in self.chunker.push(delta):
            if await self._check(clause):
                return True
        return False

    async def flush(self) -> None:
        if self.guard is None or self.blocked:
            return
        for clause in self.chunker.flush():
            if await self._check(clause):
                return

    async def _check(self, clause: str) -> bool:
        assert self.guard is not None
        check = await check_clause(self.guard, clause, self.language, self._checked)
        self._checked = check.checked
        sep = " " if self.text and not self.text.endswith((" ", "\n")) and not clause.startswith(" ") else ""
        if check.replacement is not None:
            self.chat.tripped(check.trips)
            self.blocked = True
            self._show(sep + check.replacement)
            return True
        self._show(sep + clause)
        return False


def _model_name(llm: LLM) -> str:
    inner = getattr(llm, "providers", (llm,))[0]
    model = getattr(inner, "model", None)
    if isinstance(model, str) and model:
        return model
    path = getattr(inner, "path", None)
    return getattr(path, "name", None) or inner.name


async def run_text_chat(settings: Settings, opts: TextChatOptions, *, llm: LLM | None = None,
                        stdin: TextIO = sys.stdin, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> TextChat:
    """Build the LLM (only), open the store, chat until quit or end of input."""
    from moksori.providers.registry import build_llm
    from moksori.store import Store

    if llm is None:
        llm = build_llm(settings)
        if not opts.stream:
            for p in getattr(llm, "providers", (llm,)):
                if hasattr(p, "stream"):
                    p.stream = False
    await llm.load()
    from moksori.agent_kit import AgentKit

    kit = await AgentKit.build(settings)  # the server-side tools and guardrails, as for every entry point
    for w in kit.warnings:
        err.write(f"warning: {w}\n")
    kit.install_log_filter()
    store = None
    try:
        store = Store.from_settings(settings)
        if store is not None:
            await store.start()
    except Exception as e:  # noqa: BLE001 - chat without history rather than not at all
        err.write(f"warning: conversations are not saved: the store is unavailable ({type(e).__name__}: "
                  f"{' '.join(str(e).split())[:200]})\n")
        store = None
    chat = TextChat(settings, llm, opts, store=store, prices=store.prices if store else
                    PriceTable.load(settings.prices_file), out=out, err=err, kit=kit)
    try:
        await chat.run(stdin)
    finally:
        if store is not None:
            await store.close()
        await kit.close()
        await llm.close()
    return chat
