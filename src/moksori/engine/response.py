"""One agent response: LLM stream -> clause chunker -> TTS -> paced playback, all overlapped.

A response may start speculatively (before the turn is certain). Until `release()` it holds
back every event it would publish and its audio stays off the speaker; if the user keeps
talking it is cancelled and nobody ever sees it. Released, it replays the held events and
streams live from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moksori.audio.frames import Frame, trim_leading_silence
from moksori.audio.resample import StreamResampler
from moksori.engine import events as E
from moksori.engine.memory import Item, new_id
from moksori.engine.response_host import ResponseHost, ResponseOptions
from moksori.engine.speaker import Playback
from moksori.engine.tools import Tool, ToolBox, ToolRun
from moksori.errors import MoksoriError, ProviderError
from moksori.providers.base import (
    ChatRequest,
    Message,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    TTSOptions,
    Usage,
)
from moksori.providers.threads import paced_by
from moksori.text.chunker import ClauseChunker
from moksori.text.korean_numbers import normalize_for_tts
from moksori.text.speakable import speakable
from moksori.tools.results import FAILURE_APOLOGIES, SLOW_FILLERS

if TYPE_CHECKING:
    from moksori.guardrails.events import GuardrailTripped
    from moksori.guardrails.guard import Guardrails

# ResponseHost and ResponseOptions (response_host.py) are still importable from here
__all__ = ["LLM_RESUMES_AT_FIRST_PIECE", "MAX_TOOL_ROUNDS", "Response", "ResponseHost", "ResponseOptions"]

MAX_TOOL_ROUNDS = 3
log = logging.getLogger("moksori.session")


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
    # set when the LLM's first output (a token, a tool call) arrives, or the reply ends without
    # one: a speculation may hold its end-of-turn model until then (turn.eot_start)
    llm_answered: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted: bool = False
    heard: str | None = None
    blocked: bool = False  # a guardrail replaced (part of) this reply with the safe sentence
    _raw: str = ""  # everything the LLM generated, checked or not (never published when gated)
    _first_token: bool = False
    _fillers_said: int = 0
    _replaced: bool = False
    _raw_shown: str = ""  # the clauses checked so far (context for the next check)
    _gate: Guardrails | None = None
    _box: ToolBox | None = None  # the session's tool box, plus this reply's own tools
    _input_blocked: bool = False  # the input guardrail blocked the user turn this reply answers

    # -------------------------------------------------------------- lifecycle

    @property
    def audio(self) -> bool:
        return "audio" in self.opts.modalities

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
            if self.item is not None:
                self.item.text = heard if heard is not None else self.text
                self.item.status = "incomplete"
                if self.playback is not None:  # what the listener was sent: a later truncate cannot pass it
                    self.item.audio_ms = int(1000 * self.playback.sent / self.playback.rate)
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
        return E.AgentResponseDone(
            t=self.now(), response_id=self.id, item_id=self.item_id, turn_id=self.turn_id,
            text=self.heard if self.heard is not None else self.text, generated_text=self.text,
            interrupted=self.interrupted, status=self.status, reason=reason, language=self.language,
            function_calls=tuple(self.function_calls), usage=self.usage, modalities=tuple(self.opts.modalities),
            in_conversation=self.opts.in_conversation)

    # -------------------------------------------------------------- pipeline

    async def _run(self) -> None:
        host = self.host
        clauses: asyncio.Queue[str | None] = asyncio.Queue()
        self._gate = self._output_guard()
        tts_task = asyncio.create_task(self._speak(clauses), name=f"tts-{self.id}") \
            if self.audio or self._gate is not None else None
        try:
            self.emit(E.AgentResponseStarted(t=self.now(), response_id=self.id, item_id=self.item_id,
                                             turn_id=self.turn_id, modalities=tuple(self.opts.modalities)))
            if self.opts.fixed_text is not None:
                self._add_text(self.opts.fixed_text, clauses, ClauseChunker(first_min_chars=1), flush=True)
                await clauses.put(None)
            else:
                await self._generate(clauses)
            if tts_task:
                await tts_task
                if self.playback is not None:
                    self.playback.end()
                    if not self.released:
                        await self._wait_release()
                    await self.playback.finished.wait()
                    # still "speaking" until the listener has heard the last chunk
                    await host.clock.sleep(self.playback.play_end - host.clock.now())
            self.status = "completed"
            if self.released:
                self._finish_public()
        except asyncio.CancelledError:
            if tts_task:
                tts_task.cancel()
            raise
        except MoksoriError as e:
            if tts_task:
                tts_task.cancel()
            self.status = "failed"
            host.publish_error(e, response_id=self.id)
            if self.released:
                self._finish_public(reason="error")
            else:
                self.done.set()
                if self.on_finished:
                    self.on_finished(self)  # a failed speculative reply is forgotten too
        finally:
            self.llm_answered.set()
            if tts_task and not tts_task.done():
                tts_task.cancel()

    async def _wait_release(self) -> None:
        await self._released.wait()

    def _finish_public(self, reason: str | None = None) -> None:
        if self.done.is_set():
            return
        if self.item is not None:
            self.item.text = self.text
            self.item.status = "completed" if self.status == "completed" else "incomplete"
            if self.playback is not None:
                self.item.audio_ms = int(1000 * self.playback.sent / self.playback.rate)
        self.host.publish(self._done_event(reason))
        self.done.set()
        if self.on_finished:
            self.on_finished(self)

    def _add_text(self, delta: str, clauses: asyncio.Queue[str | None], chunker: ClauseChunker, *,
                  flush: bool = False) -> bool:
        """Returns True when this delta completed the reply's first clause. With output
        guardrails the text goes out clause by clause once checked (`_speak`), never before."""
        if not self._first_token:
            self._first_token = True
            self.emit(E.LlmFirstToken(t=self.now(), response_id=self.id, item_id=self.item_id))
        self._raw += delta
        if self._gate is None:
            self.text += delta
            if self.item is not None:
                self.item.text = self.text
            self.emit(E.AgentTextDelta(t=self.now(), response_id=self.id, item_id=self.item_id, delta=delta))
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
        g = self.host.guard
        if g is None or self.opts.backchannel:
            return None
        checks_output = (g.check in ("output", "both") and bool(g.block)) or \
            (g.moderation is not None and g.moderation_on in ("output", "both"))
        return g if checks_output else None

    def _trip(self, trip: GuardrailTripped) -> None:
        self.emit(E.GuardrailTripped(t=self.now(), stage=trip.stage, action=trip.action, policy=trip.policy,
                                     reason=trip.reason, language=trip.language, categories=tuple(trip.categories),
                                     turn_id=self.turn_id, response_id=self.id))

    def _show(self, clause: str) -> None:
        """A checked clause goes public: text delta, reply text, item text."""
        delta = (" " if self.text and not self.text.endswith((" ", "\n")) else "") + clause
        self.text += delta
        if self.item is not None:
            self.item.text = self.text
        self.emit(E.AgentTextDelta(t=self.now(), response_id=self.id, item_id=self.item_id, delta=delta))

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
        """The input hook, on the user turn this reply answers (the last message) before the LLM
        sees it: returns the safe sentence when blocked; a rewrite replaces the message. Earlier
        user turns get the cheap rewrite (masks, blocked terms removed) without new trips."""
        guard = self.host.guard
        if guard is None or not base or base[-1].role != "user" or not base[-1].content.strip():
            return None
        for i, m in enumerate(base[:-1]):
            if m.role == "user" and m.content:
                base[i] = Message("user", guard.scrub_history(m.content, self.language))
        verdict = await guard.check_input(base[-1].content, self.language)
        for trip in verdict.trips:
            self._trip(trip)
        if verdict.action == "block":
            self.blocked = self._input_blocked = True
            if self.released:
                self._remove_blocked_input()
            return verdict.reply or guard.safe_reply(self.language)
        if verdict.action == "rewrite":
            base[-1] = Message("user", verdict.text)
        return None

    @property
    def toolbox(self) -> ToolBox:
        return self._box if self._box is not None else self.host.toolbox

    async def _generate(self, clauses: asyncio.Queue[str | None]) -> None:
        host = self.host
        if self.opts.reply_tools is not None:
            self._box = host.toolbox.with_tools(await self.opts.reply_tools(self.id))
        box = self.toolbox
        client = {t.name for t in self.opts.tools}  # a client's tool wins over a server tool of that name
        tools = tuple(self.opts.tools) + tuple(t for t in box.specs() if t.name not in client)
        convo: list[Message] = []
        system = host.system_prompt(self.opts.instructions)
        if self.opts.replace_input is not None:
            base = [Message("system", system), *self.opts.replace_input]
        else:
            if self.opts.in_conversation:
                await host.memory.history_ready()  # the user's earlier turns, once, as the session starts
            base = host.memory.messages(system) if self.opts.in_conversation else [Message("system", system)]
            item = self.opts.extra_input_item
            if item is None or not self.opts.in_conversation or host.memory.get(item) is None:
                base += list(self.opts.extra_input)
        safe = await self._check_input(base)
        if safe is not None:  # blocked: the LLM never sees the turn; the safe sentence is the reply
            self.llm_answered.set()
            self._add_text(safe, clauses, ClauseChunker(first_min_chars=1), flush=True)
            await clauses.put(None)
            return
        for _round in range(MAX_TOOL_ROUNDS):
            chunker = ClauseChunker(first_min_chars=4, first_max_chars=self.opts.first_clause_max_chars,
                                    ramp=self.opts.first_clause_ramp)
            if self._raw and not self._raw.endswith((" ", "\n")):
                self._add_text(" ", clauses, chunker)  # the words of this round follow those said before
            req = ChatRequest(messages=tuple(base + convo), tools=tools, tool_choice=self.opts.tool_choice,
                              temperature=self.opts.temperature, max_tokens=self.opts.max_output_tokens)
            self.emit(E.LlmStarted(t=self.now(), response_id=self.id, item_id=self.item_id,
                                   messages=len(req.messages)))
            calls: list[ToolCall] = []
            # set: the local model may compute its next token (cleared while the first clause's
            # TTS runs, when first_clause_pause is "now")
            go = threading.Event()
            go.set()
            with paced_by(go) if self.opts.first_clause_pause == "now" else contextlib.nullcontext():
                # (read when the stream starts, at its first token: the whole loop is inside)
                stream = host.llm.chat(req)
                async for ev in stream:
                    self.llm_answered.set()
                    if self.blocked:  # a clause was blocked: the rest of this reply is not wanted
                        await _close(stream)
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
            for clause in chunker.flush():
                await clauses.put(clause)
            self.emit(E.LlmFinished(t=self.now(), response_id=self.id, item_id=self.item_id,
                                    input_tokens=self.usage.input_tokens, output_tokens=self.usage.output_tokens))
            if not calls or self.blocked:
                break
            local = [c for c in calls if box.get(c.name) is not None and c.name not in client]
            remote = [c for c in calls if box.get(c.name) is None or c.name in client]
            for call in remote:  # the client runs these; the response ends here
                self.function_calls.append(call)
                item_id = self._remember(Item(id=new_id("item"), type="function_call", role="assistant",
                                              call_id=call.id, name=call.name, arguments=call.arguments))
                self.emit(E.AgentFunctionCall(t=self.now(), response_id=self.id, item_id=self.item_id,
                                              call_id=call.id, name=call.name, arguments=call.arguments,
                                              call_item_id=item_id))
            if remote or not local:
                break
            stop_after = False
            results: list[ToolRun] = []
            # Tools can have effects (hang up, transfer, book...): never run one for a reply
            # that is still speculative. If the user goes on talking, this reply is cancelled here.
            await self._wait_release()
            for call in local:
                tool = box.get(call.name)
                assert tool is not None  # `local` holds only calls of known tools
                self.function_calls.append(call)
                call_item_id = self._announce_tool_call(call, tool)
                if tool.say_first:
                    self._add_text(("" if not self.text else " ") + tool.say_first, clauses, chunker)
                    for clause in chunker.flush():
                        await clauses.put(clause)
                    await self._drain_audio(clauses)
                def say(words: str, chunker: ClauseChunker = chunker) -> bool:
                    self._say(words, clauses, chunker)
                    return True

                run = await self._call_tool(call, tool, say)
                results.append(run)
                self._record_tool_run(call, tool, run, call_item_id)
                convo += [Message("assistant", "", tool_calls=(call,)),
                          Message("tool", run.output, tool_call_id=call.id, name=call.name)]
                stop_after = stop_after or tool.final
            if stop_after:
                break
            apology = self._apology(results)
            if apology is not None:
                # every tool of this round failed: apologise now rather than hope the model does
                # (the errors are in the history: the next turn's LLM knows what went wrong)
                self._say(apology, clauses, chunker)
                break
        await clauses.put(None)

    def _say(self, words: str, clauses: asyncio.Queue[str | None], chunker: ClauseChunker) -> None:
        """Fixed words inside a generated reply (a filler, an apology), as their own clause."""
        for clause in chunker.flush():
            self._clauses_queued += 1
            clauses.put_nowait(clause)
        self._add_text(("" if not self._raw or self._raw.endswith(" ") else " ") + words, clauses, chunker,
                       flush=True)

    async def _call_tool(self, call: ToolCall, tool: Tool, say: Callable[[str], bool]) -> ToolRun:
        """Run one server tool (the box's timeouts: it never hangs, a failure is an error output);
        when it runs longer than `tool_slow_after_s`, a short filler in the reply's language is
        said meanwhile, once per reply. `say(words)` says it the brain's way (the pipeline: a
        clause; the realtime brain: an out-of-band upstream response) and returns False when it
        cannot now. Both brains run their server tools here."""
        host = self.host
        task = asyncio.ensure_future(self.toolbox.call(call.name, call.arguments))
        slow = host.tool_slow_after_s
        if slow is None or self._fillers_said or tool.say_first or not tool.filler:
            return await task
        timer = asyncio.ensure_future(host.clock.sleep(slow))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                options = SLOW_FILLERS.get(self.language) or SLOW_FILLERS["en"]
                words = options[hash(call.id) % len(options)]
                if say(words):
                    self._fillers_said += 1
                    self.emit(E.AgentToolFiller(t=self.now(), response_id=self.id, call_id=call.id, name=call.name,
                                                text=words))
            return await task
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()

    def _apology(self, runs: list[ToolRun]) -> str | None:
        """The words to say when every tool of a round failed (None: some worked, or the
        session has no tool behaviour configured: the model reads the errors itself)."""
        if self.host.tool_slow_after_s is None or not runs or any(r.ok for r in runs):
            return None
        return FAILURE_APOLOGIES.get(self.language) or FAILURE_APOLOGIES["en"]

    def _announce_tool_call(self, call: ToolCall, tool: Tool, item_id: str | None = None) -> str:
        """`agent.tool_call` for a server tool about to run; returns the id of the call's item:
        an MCP server's tool (`Tool.mcp_server`) gets one `mcp_call` item, whose id is announced
        (`mcp_item_id`: the Realtime MCP runner shows the client that item)."""
        mcp = tool.mcp_server is not None
        item_id = item_id or new_id("mcp" if mcp else "item")
        self.emit(E.AgentToolCall(t=self.now(), response_id=self.id, item_id=self.item_id, call_id=call.id,
                                  name=call.name, arguments=call.arguments, mcp_item_id=item_id if mcp else None,
                                  server_label=tool.mcp_server))
        return item_id

    def _record_tool_run(self, call: ToolCall, tool: Tool, run: ToolRun, item_id: str,
                         output_item_id: str | None = None) -> None:
        """A server tool's call and result into memory (one `mcp_call` item for an MCP server's
        tool, else `function_call` + `function_call_output`) and `agent.tool_result`. Both
        brains record their tool calls here."""
        log.debug("tool %s -> %s: %s", call.name, "ok" if run.ok else run.error_kind, run.output[:500])
        if tool.mcp_server is not None:  # one item, as the Realtime client was shown it
            self._remember(Item(id=item_id, type="mcp_call", role="assistant", call_id=call.id, name=call.name,
                                arguments=call.arguments, output=run.output, server_label=tool.mcp_server,
                                error=None if run.ok else run.output))
        else:
            self._remember(Item(id=item_id, type="function_call", role="assistant", call_id=call.id,
                                name=call.name, arguments=call.arguments))
            self._remember(Item(id=output_item_id or new_id("item"), type="function_call_output", role="user",
                                call_id=call.id, output=run.output))
        self.emit(E.AgentToolResult(t=self.now(), response_id=self.id, item_id=self.item_id, call_id=call.id,
                                    name=call.name, output=run.output, ok=run.ok, error_kind=run.error_kind))

    def _remember(self, item: Item) -> str:
        """Store a tool item in memory (once this response is public; it may still be speculative)."""
        if not self.opts.in_conversation:
            return item.id
        if self.released:
            self.host.memory.add(item)
        else:
            self._pending_items.append(item)
        return item.id

    async def _drain_audio(self, clauses: asyncio.Queue[str | None]) -> None:
        """Wait until everything said so far has been played (used before e.g. hanging up)."""
        while not clauses.empty():
            await asyncio.sleep(0.02)
        pb = self.playback
        if pb is None or not self.released:
            return
        while pb.sent < pb.generated and not pb.cancelled:
            await asyncio.sleep(0.02)
        await self.host.clock.sleep(max(0.0, self.host.playout_end() - self.host.clock.now()))

    async def _speak(self, clauses: asyncio.Queue[str | None]) -> None:
        host = self.host
        opts = TTSOptions(voice=self.opts.voice or host.voice, language=self.language, speed=host.speed)
        first = True
        while True:
            clause = await clauses.get()
            if clause is None:
                self._first_audio.set()
                return
            if self._gate is not None:
                if self.blocked and self._replaced:
                    continue  # what the LLM said after a blocked clause is never checked, shown or spoken
                verdict = await self._gate.check_output(clause, self.language, spoken=self._raw_shown)
                self._raw_shown += (" " if self._raw_shown else "") + clause
                if verdict.action == "block":
                    for trip in verdict.trips:
                        self._trip(trip)
                    self.blocked = self._replaced = True
                    clause = verdict.replacement or self._gate.safe_reply(self.language)
                self._show(clause)
                if not self.audio:
                    self._first_audio.set()
                    continue
            spoken = normalize_for_tts(speakable(clause), self.language).strip()
            if not spoken or not any(ch.isalnum() for ch in spoken):
                continue
            if first:
                self.emit(E.TtsStarted(t=self.now(), response_id=self.id, item_id=self.item_id, text=spoken))
            # one resampler per clause: a TTS that streams a sentence in pieces (Piper's windows)
            # is resampled as one signal, with no edge at each piece
            rs: StreamResampler | None = None
            more = False  # a piece of this clause is queued: the next ones continue its segment
            try:
                async for frame in host.tts.synthesize(spoken, opts):
                    rs = rs or StreamResampler(frame.rate, host.output_rate)
                    out = Frame(rs.process(frame.samples), host.output_rate)
                    if len(out) == 0:
                        continue
                    if first:
                        out = trim_leading_silence(out)  # the reply's very first sound, not a pause
                        self.emit(E.TtsFirstAudio(t=self.now(), response_id=self.id, item_id=self.item_id,
                                                  samples=len(out)))
                        first = False
                        if LLM_RESUMES_AT_FIRST_PIECE:
                            self._first_audio.set()
                    if self.playback is not None and not self.playback.cancelled:
                        self.playback.add(out, clause, more=more)
                        more = True
                tail = rs.flush() if rs is not None else None
                if tail is not None and len(tail) and more and self.playback is not None \
                        and not self.playback.cancelled:
                    self.playback.add(Frame(tail, host.output_rate), clause, more=True)
            except ProviderError as e:
                host.publish_error(e, response_id=self.id)
            self._first_audio.set()  # the clause's audio is all made (or it produced none)


# The LLM pauses while the reply's first clause is synthesised (`_generate`). False: it resumes
# when that clause's audio is all made; True: at its first piece. With a TTS that streams a
# clause (Piper's windows), resuming at the first piece puts the LLM on the cores while the rest
# of the clause that is already playing is still being made (benchmarks/first_clause.py `w`).
LLM_RESUMES_AT_FIRST_PIECE = False


async def _close(stream: AsyncIterator[Any]) -> None:
    """Stop an LLM stream early (its generator's cleanup stops the model)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - the reply is being cut short anyway
            pass
