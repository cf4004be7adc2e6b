"""One agent response: LLM stream -> clause chunker -> TTS -> paced playback, all overlapped.

A response may start speculatively (before the turn is certain). Until `release()` it holds
back every event it would publish and its audio stays off the speaker; if the user keeps
talking it is cancelled and nobody ever sees it. Released, it replays the held events and
streams live from then on.

`Response` is the orchestration: its lifecycle, the LLM rounds and the clause queue between
the LLM and TTS. Its parts are their own modules: what it is given (`response_host`), what it
asks the LLM (`reply_request`), its tool calls (`tool_calls`), its guardrail checks
(`reply_guardrails`), a clause's speech (`reply_speech`) and its end (`reply_done`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from moksori import cancellation
from moksori.engine import events as E
from moksori.engine.context import MAX_TOKEN_CHARS
from moksori.engine.memory import Item, new_id
from moksori.engine.reply_done import done_event, settle_item
from moksori.engine.reply_guardrails import check_clause, check_input, output_gate, trip_event
from moksori.engine.reply_parts import MessagePart, part_at, part_words, settle_parts, start_ms
from moksori.engine.reply_request import offered_tools, reply_messages, round_request
from moksori.engine.reply_speech import spoken_text, synthesize_into
from moksori.engine.response_host import ResponseHost, ResponseOptions
from moksori.engine.speaker import PartMark, Playback
from moksori.engine.tool_calls import MAX_TOOL_CALLS_PER_ROUND, MAX_TOOL_ROUNDS, ToolCalls, split_calls
from moksori.engine.tools import ToolBox, ToolRun
from moksori.errors import ProviderError
from moksori.providers.base import ChatRequest, Message, TextDelta, ToolCall, ToolCallEvent, TTSOptions, Usage
from moksori.providers.threads import paced_by
from moksori.text.chunker import ClauseChunker

if TYPE_CHECKING:
    from moksori.guardrails.events import GuardrailTripped
    from moksori.guardrails.guard import Guardrails

# ResponseHost, ResponseOptions and MAX_TOOL_ROUNDS were defined here: still importable from here
__all__ = ["LLM_RESUMES_AT_FIRST_PIECE", "MAX_TOOL_ROUNDS", "Response", "ResponseHost", "ResponseOptions"]

log = logging.getLogger("moksori.engine")


@dataclass(frozen=True)
class _Split:
    """In the clause queue: the clauses before it are the words of the message item before a tool
    item, those after it are `part`'s (`Response.split`); `said()` once they have all gone out."""

    part: MessagePart
    said: Callable[[], None] | None


Clauses = asyncio.Queue[str | _Split | None]


@dataclass
class Response:
    host: ResponseHost
    opts: ResponseOptions
    turn_id: int | None
    language: str
    id: str = field(default_factory=lambda: new_id("resp"))
    item_id: str = field(default_factory=lambda: new_id("item"))
    status: str = "pending"  # pending | in_progress | completed | cancelled | failed | incomplete
    released: bool = False
    text: str = ""  # everything the LLM generated (for display)
    usage: Usage = field(default_factory=Usage)
    playback: Playback | None = None
    function_calls: list[ToolCall] = field(default_factory=list)
    item: Item | None = None
    _held: list[E.Event] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    on_finished: Callable[[Response], None] | None = None
    _clauses_queued: int = 0
    _pending_items: list[Item] = field(default_factory=list)
    _first_audio: asyncio.Event = field(default_factory=asyncio.Event)
    # called with the session time of the first clause's first audio (held or not)
    on_first_audio: Callable[[float], None] | None = None
    # set when the LLM's first output (a token, a tool call) arrives, or the reply ends without
    # one: a speculation may hold its end-of-turn model until then (turn.eot_start)
    llm_answered: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted: bool = False
    heard: str | None = None
    blocked: bool = False  # a guardrail replaced (part of) this reply with the safe sentence
    _raw: str = ""  # everything the LLM generated, checked or not (never published when gated)
    _first_token: bool = False
    _replaced: bool = False
    _raw_shown: str = ""  # the clauses checked so far (context for the next check)
    _gate: Guardrails | None = None
    _box: ToolBox | None = None  # the session's tool box, plus this reply's own tools
    _input_blocked: bool = False  # the input guardrail blocked the user turn this reply answers
    tool_calls: ToolCalls = field(init=False, repr=False, compare=False)  # run, told and recorded
    # its message items when a tool item the client is shown split it (`split`; empty: one item)
    parts: list[MessagePart] = field(default_factory=list)
    _tools_from: int = 0  # the parts there were when this round's tool calls came
    _clauses: Clauses | None = None  # the clauses on their way to TTS
    _tts: asyncio.Task[None] | None = None
    _speaking: bool = False  # TTS (or the output check) is busy with a clause
    _spoken_item: str = ""  # the message item of the clauses `_speak` takes now

    def __post_init__(self) -> None:
        self.tool_calls = ToolCalls(self)
        if self.opts.item_id:  # the client named its item
            self.item_id = self.opts.item_id

    # -------------------------------------------------------------- lifecycle

    @property
    def audio(self) -> bool:
        return "audio" in self.opts.modalities

    @property
    def _max_chars(self) -> int:
        """Text past which the reply is cut whatever the LLM says: max_tokens of the longest
        tokens. An OpenAI-compatible server that ignored max_tokens streamed a reply that never
        ended (141,520 characters in 75 s, later turns refused as the response was active)."""
        return self.opts.max_output_tokens * MAX_TOKEN_CHARS

    def start(self) -> None:
        if self.audio:
            self.playback = Playback(self.id, self.item_id, self.host.output_rate, side=self.opts.backchannel)
        self.task = asyncio.create_task(self._run(), name=f"response-{self.id}")

    def release(self) -> None:
        """The turn is certain: go public."""
        if self.released or self.status in ("cancelled", "failed"):
            return
        self.released = True
        self._released.set()
        if self.status == "pending":
            self.status = "in_progress"
        host = self.host
        if self.opts.in_conversation:
            self.item = host.memory.add(Item(id=self.item_id, role="assistant", status="in_progress",
                                             audio=self.audio, language=self.language))
            self.item.text = self.text
            for item in self._pending_items:
                host.memory.add(item)
        self._pending_items = []
        held, self._held = self._held, []
        for ev in held:
            host.publish(ev)
        if self._input_blocked:
            self._remove_blocked_input()
        if self.playback is not None:
            host.play(self.playback)
        if self.status in ("completed", "incomplete") and not self.audio:
            self._finish_public()

    def cancel(self, reason: str, heard: str | None = None) -> None:
        if self.status in ("completed", "cancelled", "failed"):
            return
        was_public = self.released
        self.status = "cancelled"
        self.interrupted = True
        self.heard = heard
        if self.task and not self.task.done():
            self.task.cancel()
        self.llm_answered.set()
        if self.playback is not None:
            self.playback.cancelled = True
            self.playback.finished.set()
        if was_public:
            self._settle(heard if heard is not None else self.text, "incomplete")
            self._announce_cancel(reason)
        self.done.set()
        if self.on_finished:
            self.on_finished(self)

    def _announce_cancel(self, reason: str) -> None:
        """Publish the `agent.response_done` of a cancelled reply (the realtime brain's reply
        holds it back until the upstream has counted what the reply used)."""
        self.host.publish(self._done_event(reason))

    # -------------------------------------------------------------- events

    def now(self) -> float:
        return self.host.clock.now()

    def emit(self, ev: E.Event) -> None:
        """Publish, or hold back with its timestamp until `release()` (a speculative reply)."""
        if self.released:
            self.host.publish(ev)
        else:
            self._held.append(ev)

    def _done_event(self, reason: str | None = None) -> E.AgentResponseDone:
        return done_event(self, self.now(), reason)

    # -------------------------------------------------------------- pipeline

    async def _run(self) -> None:
        host = self.host
        clauses: Clauses = asyncio.Queue()
        self._clauses = clauses
        self._gate = self._output_guard()
        tts_task = self._tts = asyncio.create_task(self._speak(clauses), name=f"tts-{self.id}") \
            if self.audio or self._gate is not None else None
        failure: Exception | None = None
        try:
            self.emit(E.AgentResponseStarted(t=self.now(), response_id=self.id, item_id=self.item_id,
                                             turn_id=self.turn_id, modalities=tuple(self.opts.modalities)))
            try:
                if self.opts.fixed_text is not None:
                    self._add_text(self.opts.fixed_text, clauses, ClauseChunker(first_min_chars=1), flush=True)
                    await clauses.put(None)
                else:
                    await self._generate(clauses)
                if tts_task:
                    await tts_task
            except Exception as e:  # noqa: BLE001 - a bug too (publish_error logs it) fails this reply only
                failure = e
                await cancellation.stop(tts_task)  # the clause being synthesised is dropped
                host.publish_error(e, response_id=self.id)
                if not self.released:
                    self.status = "failed"
                    self.done.set()
                    if self.on_finished:
                        self.on_finished(self)  # a failed speculative reply is forgotten too
                    return
            await self._play_out()
            self.status = "completed" if failure is None else "failed"
            if self.released:
                self._finish_public(reason=None if failure is None else "error")
        except asyncio.CancelledError:
            if tts_task:
                tts_task.cancel()
            raise
        finally:
            self.llm_answered.set()
            if tts_task and not tts_task.done():
                tts_task.cancel()

    async def _play_out(self) -> None:
        """The end of the reply's audio, completed or failed: the playback is ended and the audio
        made so far is played; the reply lasts until the listener has heard its last chunk.

        A failed reply ends its playback too. Released, it is in the speaker's queue, which plays
        one reply at a time: left open, the speaker waited on it for ever and every later reply
        of the session queued behind it, silent and never done (an LLM server killed mid-reply)."""
        if self.playback is None:
            return
        self.playback.end()
        if not self.released:
            await self._wait_release()
        await self.playback.finished.wait()
        # still "speaking" until the listener has heard the last chunk
        await self.host.clock.sleep(self.playback.play_end - self.host.clock.now())

    async def _wait_release(self) -> None:
        await self._released.wait()

    def _finish_public(self, reason: str | None = None) -> None:
        if self.done.is_set():
            return
        self._settle(self.text, "completed" if self.status == "completed" else "incomplete")
        self.host.publish(self._done_event(reason))
        self.done.set()
        if self.on_finished:
            self.on_finished(self)

    def _add_text(self, delta: str, clauses: Clauses, chunker: ClauseChunker, *,
                  flush: bool = False) -> bool:
        """Returns True when this delta completed the reply's first clause. With output
        guardrails the text goes out clause by clause once checked (`_speak`), never before."""
        if not self._first_token:
            self._first_token = True
            self.emit(E.LlmFirstToken(t=self.now(), response_id=self.id, item_id=self.item_id))
        self._raw += delta
        if self._gate is None:
            self.text += delta
            self._show_text()
            item_id = self.parts[-1].item_id if self.parts else self.item_id  # the message item it is in
            self.emit(E.AgentTextDelta(t=self.now(), response_id=self.id, item_id=item_id, delta=delta))
        first = False
        if self.audio or self._gate is not None:
            for clause in chunker.push(delta):
                first = first or self._clauses_queued == 0
                self._clauses_queued += 1
                clauses.put_nowait(clause)
            if flush:
                for clause in chunker.flush():
                    self._clauses_queued += 1
                    clauses.put_nowait(clause)
        return first and self.audio

    # -------------------------------------------------------------- guardrails

    def _output_guard(self) -> Guardrails | None:
        return output_gate(self.host.guard, backchannel=self.opts.backchannel)

    def _trip(self, trip: GuardrailTripped) -> None:
        self.emit(trip_event(trip, t=self.now(), turn_id=self.turn_id, response_id=self.id))

    def _show(self, clause: str) -> None:
        """A checked clause goes public: text delta, reply text, item text."""
        delta = (" " if self.text and not self.text.endswith((" ", "\n")) else "") + clause
        self.text += delta
        self._show_text()
        self.emit(E.AgentTextDelta(t=self.now(), response_id=self.id, item_id=self._spoken_item or self.item_id,
                                   delta=delta))

    def _remove_blocked_input(self) -> None:
        """The blocked turn leaves the conversation (memory and store): never sent to the LLM
        again, whatever blocked it (a moderation verdict is not re-checked later)."""
        if not self.opts.in_conversation or self.opts.replace_input is not None:
            return
        removed = self.host.memory.remove_user_turn()
        if removed:
            self.host.publish(E.GuardrailInputRemoved(t=self.now(), item_ids=tuple(i.id for i in removed),
                                                      turn_id=self.turn_id, response_id=self.id))

    async def _check_input(self, base: list[Message]) -> str | None:
        """The input hook (`reply_guardrails.check_input`) on the turn this reply answers:
        returns the safe sentence when blocked, and the turn leaves the conversation."""
        guard = self.host.guard
        if guard is None:
            return None
        trips, safe = await check_input(guard, base, self.language)
        for trip in trips:
            self._trip(trip)
        if safe is not None:
            self.blocked = self._input_blocked = True
            if self.released:
                self._remove_blocked_input()
        return safe

    # -------------------------------------------------------------- the LLM rounds

    @property
    def toolbox(self) -> ToolBox:
        return self._box if self._box is not None else self.host.toolbox

    async def _generate(self, clauses: Clauses) -> None:
        host = self.host
        if self.opts.reply_tools is not None:
            self._box = host.toolbox.with_tools(await self.opts.reply_tools(self.id))
        box = self.toolbox
        client = {t.name for t in self.opts.tools}
        tools = offered_tools(self.opts.tools, box)
        base = await reply_messages(host, self.opts)
        safe = await self._check_input(base)
        if safe is not None:  # blocked: the LLM never sees the turn; the safe sentence is the reply
            self.llm_answered.set()
            self._add_text(safe, clauses, ClauseChunker(first_min_chars=1), flush=True)
            await clauses.put(None)
            return
        convo: list[Message] = []
        for _round in range(MAX_TOOL_ROUNDS):
            chunker = ClauseChunker(first_min_chars=4, first_max_chars=self.opts.first_clause_max_chars,
                                    ramp=self.opts.first_clause_ramp)
            if self._raw and not self._raw.endswith((" ", "\n")):
                self._add_text(" ", clauses, chunker)  # the words of this round follow those said before
            last = _round == MAX_TOOL_ROUNDS - 1  # no tools: a model calling them every round said nothing at all
            req = round_request(self.opts, base + convo, () if last else tools)
            self.emit(E.LlmStarted(t=self.now(), response_id=self.id, item_id=self.item_id,
                                   messages=len(req.messages)))
            calls = await self._stream_round(req, clauses, chunker)
            self._tools_from = len(self.parts)
            self.emit(E.LlmFinished(t=self.now(), response_id=self.id, item_id=self.item_id,
                                    input_tokens=self.usage.input_tokens, output_tokens=self.usage.output_tokens))
            if not calls or self.blocked:
                break
            if len(calls) > MAX_TOOL_CALLS_PER_ROUND:
                log.warning("reply %s: the LLM asked for %d tool calls in one round; running the first %d",
                            self.id, len(calls), MAX_TOOL_CALLS_PER_ROUND)
                calls = calls[:MAX_TOOL_CALLS_PER_ROUND]
            local, remote = split_calls(calls, box, client)
            for call in remote:  # the client runs these; the response ends here
                self.function_calls.append(call)
                self.tool_calls.to_client(call, new_id("item"))
            if remote or not local:
                break
            if await self._run_tools(local, clauses, chunker, convo):
                break
        await clauses.put(None)

    async def _stream_round(self, req: ChatRequest, clauses: Clauses,
                            chunker: ClauseChunker) -> list[ToolCall]:
        """One LLM round: its words into clauses, its usage counted; returns its tool calls."""
        calls: list[ToolCall] = []
        # set: the local model may compute its next token (cleared while the first clause's
        # TTS runs, when first_clause_pause is "now")
        go = threading.Event()
        go.set()
        with paced_by(go) if self.opts.first_clause_pause == "now" else contextlib.nullcontext():
            # (read when the stream starts, at its first token: the whole loop is inside)
            stream = self.host.llm.chat(req)
            try:
                async for ev in stream:
                    self.llm_answered.set()
                    if self.blocked:  # a clause was blocked: the rest of this reply is not wanted
                        break
                    if len(self._raw) > self._max_chars:  # an upstream that ignores max_tokens
                        log.warning("reply %s: the LLM went past %d tokens' worth of text (%d characters): cut",
                                    self.id, req.max_tokens, len(self._raw))
                        break
                    if isinstance(ev, TextDelta):
                        if ev.text and self._add_text(ev.text, clauses, chunker):
                            # The first clause is the critical path: stop pulling tokens (the local
                            # model pauses) until its audio exists, so TTS gets the CPU to itself.
                            go.clear()
                            await self._first_audio.wait()
                            go.set()
                    elif isinstance(ev, ToolCallEvent):
                        calls.append(ev.call)
                    elif isinstance(ev, Usage):
                        self.usage = Usage(self.usage.input_tokens + ev.input_tokens,
                                           self.usage.output_tokens + ev.output_tokens,
                                           self.usage.cached_tokens + ev.cached_tokens)
            finally:
                # closed by this task however the loop ends, a cancellation too: left to the
                # garbage collector, each generator of the stream's nest got its own `aclose()`
                # task, and those that ran while an outer one was closing them failed with
                # "asynchronous generator is already running", never retrieved
                await cancellation.close_stream(stream)
        for clause in chunker.flush():
            await clauses.put(clause)
        return calls

    async def _run_tools(self, local: list[ToolCall], clauses: Clauses, chunker: ClauseChunker,
                         convo: list[Message]) -> bool:
        """Run this round's server tools in order, their calls and results appended to `convo`
        for the next round; True: the reply ends here (a final tool, or every tool failed and
        the apology was said)."""
        box = self.toolbox
        stop_after = False
        results: list[ToolRun] = []
        # Tools can have effects (hang up, transfer, book...): never run one for a reply
        # that is still speculative. If the user goes on talking, this reply is cancelled here.
        await self._wait_release()
        for call in local:
            tool = box.get(call.name)
            assert tool is not None  # `local` holds only calls of known tools
            self.function_calls.append(call)
            call_item_id = self.tool_calls.announce(call, tool)
            if tool.say_first:
                self._add_text(("" if not self.text else " ") + tool.say_first, clauses, chunker)
                for clause in chunker.flush():
                    await clauses.put(clause)
                await self._drain_audio(clauses)
            def say(words: str, chunker: ClauseChunker = chunker) -> bool:
                self._say(words, clauses, chunker)
                return True

            run = await self.tool_calls.run(call, tool, say)
            results.append(run)
            self.tool_calls.record(call, tool, run, call_item_id)
            convo += [Message("assistant", "", tool_calls=(call,)),
                      Message("tool", run.output, tool_call_id=call.id, name=call.name)]
            stop_after = stop_after or tool.final
        if stop_after:
            return True
        apology = self.tool_calls.apology(results)
        if apology is not None:
            # every tool of this round failed: apologise now rather than hope the model does
            # (the errors are in the history: the next turn's LLM knows what went wrong)
            self._say(apology, clauses, chunker)
            return True
        return False

    def _say(self, words: str, clauses: Clauses, chunker: ClauseChunker) -> None:
        """Fixed words inside a generated reply (a filler, an apology), as their own clause."""
        for clause in chunker.flush():
            self._clauses_queued += 1
            clauses.put_nowait(clause)
        self._add_text(("" if not self._raw or self._raw.endswith(" ") else " ") + words, clauses, chunker,
                       flush=True)

    def remember(self, item: Item) -> str:
        """Store a tool item in memory (once this response is public; it may still be speculative)."""
        if not self.opts.in_conversation:
            return item.id
        if self.released:
            # before a message item opened since this round's tools came (the words after them)
            later = next((p.item.id for p in self.parts[max(1, self._tools_from):] if p.item is not None), None)
            self.host.memory.add(item, before=later)
        else:
            self._pending_items.append(item)
        return item.id

    # -------------------------------------------------------------- message items

    def split(self, item_id: str, said: Callable[[], None] | None = None) -> bool:
        """A tool item comes inside this reply (the Realtime wire ends the message item open so far
        there): the words from now on are message item `item_id`, after that tool item
        (`reply_parts`). The words said so far keep their audio, however much of it is still being
        synthesised or sent: True when some is, and `said()` is called once it has all gone out
        (never, if the reply is cut first); False: it all had, the new item starts now."""
        if not self.released or self.done.is_set():
            return False
        if not self.parts:
            self.parts.append(MessagePart(self.item_id, 0, 0, self.item))
        before = self.parts[-1]
        part = MessagePart(item_id, len(self.text), None)
        if self.opts.in_conversation:
            part.item = self.host.memory.add(Item(id=item_id, role="assistant", status="in_progress",
                                                  audio=self.audio, language=self.language))
        self.parts.append(part)
        pb = self.playback
        speaking = self._tts is not None and not self._tts.done() and self._clauses is not None \
            and (self._speaking or not self._clauses.empty())
        if speaking:  # clauses before it still to synthesise (or to check): the place is after them
            assert self._clauses is not None
            if self._gate is not None:
                part.text_start = None  # (checked clauses are shown one by one: its words start after them)
            self._clauses.put_nowait(_Split(part, said))
            return True
        if pb is not None and not pb.cancelled and pb.sent < pb.generated:  # all made, not all sent
            self._split_at(before, part, pb.generated)
            pb.mark(item_id, self._part_said(before, said))
            return True
        self._split_at(before, part, pb.sent if pb is not None else 0)
        self._part_said(before, None)()
        return False

    def _split_at(self, before: MessagePart, part: MessagePart, samples: int) -> None:
        """The words and audio of the part `before` are all made: `part` starts at `samples`."""
        if part.text_start is None:
            part.text_start = len(self.text)
        part.sample_start = samples
        self._spoken_item = part.item_id  # (the clauses `_speak` takes from now on are its)
        if before.item is not None:
            before.item.text = part_words(self.text, self.parts, self.parts.index(before))
            pb = self.playback
            start = before.sample_start or 0
            before.item.audio_ms = (samples - start) * 1000 // pb.rate if pb is not None and pb.rate else 0
        self._show_text()

    @staticmethod
    def _part_said(before: MessagePart, said: Callable[[], None] | None) -> Callable[[], None]:
        """What to do once the audio of the part `before` has all gone out: it is complete, as the
        client is shown it, and the transport is told."""
        def tell() -> None:
            if before.item is not None and before.item.status == "in_progress":
                before.item.status = "completed"
            if said is not None:
                said()
        return tell

    def _split_here(self, split: _Split) -> None:
        """`_speak` reached a split: the clauses before it are all synthesised (and shown)."""
        part = split.part
        i = next((i for i, p in enumerate(self.parts) if p is part), None)
        if i is None or i == 0:  # pragma: no cover - a split's part is never the first
            return
        pb, before = self.playback, self.parts[i - 1]
        self._split_at(before, part, pb.generated if pb is not None else 0)
        said = self._part_said(before, split.said)
        if pb is not None and not pb.cancelled:
            pb.mark(part.item_id, said)  # the speaker says when the audio before it has gone out
        elif pb is None:  # (text only: its words are all shown now)
            PartMark(part.item_id, said).tell()

    def message_start_ms(self, item_id: str) -> int | None:
        """Where message item `item_id` of this reply starts in its audio (ms); None: not one of its."""
        if item_id == self.item_id:
            return 0
        part = next((p for p in self.parts if p.item_id == item_id), None)
        if part is None:
            return None
        return start_ms(part, self.playback.rate if self.playback is not None else 0)

    def message_at(self, ms: int) -> tuple[str, int]:
        """The message item that holds the reply's audio at `ms`, and how far into it (ms)."""
        if not self.parts or self.playback is None:
            return self.item_id, ms
        part, into = part_at(self.parts, ms, self.playback.rate)
        return part.item_id, into

    def _show_text(self) -> None:
        """The reply's words so far into its message items (the last, and one whose words may
        still grow: the part before a split not reached yet)."""
        if self.parts:
            for i, p in enumerate(self.parts):
                if p.item is not None and (p.item.status == "in_progress" or i == len(self.parts) - 1):
                    p.item.text = part_words(self.text, self.parts, i)
        elif self.item is not None:
            self.item.text = self.text

    def _settle(self, heard: str, status: Literal["completed", "incomplete"]) -> None:
        """Its memory items as it ends: what was heard of each, status, audio sent."""
        if not self.parts:
            if self.item is not None:
                settle_item(self.item, heard, status, self.playback)
            return
        pb = self.playback
        settle_parts(self.parts, self.text, heard, pb.sent if pb else 0, pb.rate if pb else 0, self.host.memory,
                     status)

    # -------------------------------------------------------------- speech

    async def _drain_audio(self, clauses: Clauses) -> None:
        """Wait until everything said so far has been played (used before e.g. hanging up)."""
        while not clauses.empty():
            await asyncio.sleep(0.02)
        pb = self.playback
        if pb is None or not self.released:
            return
        while pb.sent < pb.generated and not pb.cancelled:
            await asyncio.sleep(0.02)
        await self.host.clock.sleep(max(0.0, self.host.playout_end() - self.host.clock.now()))

    async def _speak(self, clauses: Clauses) -> None:
        """The clauses, in order: checked (with output guardrails) and shown, then spoken."""
        host = self.host
        opts = TTSOptions(voice=self.opts.voice or host.voice, language=self.language, speed=host.speed)
        first = True

        def first_piece(samples: int) -> None:
            nonlocal first
            now = self.now()
            self.emit(E.TtsFirstAudio(t=now, response_id=self.id, item_id=self.item_id, samples=samples))
            if self.on_first_audio is not None:
                self.on_first_audio(now)
            first = False
            if LLM_RESUMES_AT_FIRST_PIECE:
                self._first_audio.set()

        while True:
            self._speaking = False
            clause = await clauses.get()
            if clause is None:
                self._first_audio.set()
                return
            if isinstance(clause, _Split):
                self._split_here(clause)
                continue
            self._speaking = True
            if self._gate is not None:
                if self.blocked and self._replaced:
                    continue  # what the LLM said after a blocked clause is never checked, shown or spoken
                check = await check_clause(self._gate, clause, self.language, self._raw_shown)
                self._raw_shown = check.checked
                if check.replacement is not None:
                    for trip in check.trips:
                        self._trip(trip)
                    self.blocked = self._replaced = True
                    clause = check.replacement
                self._show(clause)
                if not self.audio:
                    self._first_audio.set()
                    continue
            spoken = spoken_text(clause, self.language)
            if spoken is None:
                continue
            if first:
                self.emit(E.TtsStarted(t=self.now(), response_id=self.id, item_id=self.item_id, text=spoken))
            try:
                await synthesize_into(host.tts, spoken, opts, host.output_rate, self.playback, clause,
                                      first_piece if first else None)
            except ProviderError as e:
                host.publish_error(e, response_id=self.id)
            self._first_audio.set()  # the clause's audio is all made (or it produced none)


# The LLM pauses while the reply's first clause is synthesised (`_stream_round`). False: it
# resumes when that clause's audio is all made; True: at its first piece. With a TTS that streams
# a clause (Piper's windows), resuming at the first piece puts the LLM on the cores while the rest
# of the clause that is already playing is still being made (benchmarks/first_clause.py `w`).
LLM_RESUMES_AT_FIRST_PIECE = False


