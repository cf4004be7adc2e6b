"""One agent response: LLM stream -> clause chunker -> TTS -> paced playback, all overlapped.

A response may start speculatively (before the turn is certain). Until `release()` it holds
back every event it would publish and its audio stays off the speaker; if the user keeps
talking it is cancelled and nobody ever sees it. Released, it replays the held events and
streams live from then on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moksori.audio.resample import resample
from moksori.engine.memory import Item, new_id
from moksori.engine.speaker import Playback
from moksori.errors import MoksoriError, ProviderError
from moksori.providers.base import (
    ChatRequest,
    Message,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    ToolSpec,
    TTSOptions,
    Usage,
)
from moksori.text.chunker import ClauseChunker
from moksori.text.korean_numbers import normalize_for_tts
from moksori.text.speakable import speakable

if TYPE_CHECKING:
    from moksori.engine.session import Session

MAX_TOOL_ROUNDS = 3


@dataclass
class ResponseOptions:
    instructions: str | None = None
    modalities: tuple[str, ...] = ("audio", "text")
    voice: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"
    temperature: float = 0.5
    max_output_tokens: int = 160
    in_conversation: bool = True  # False: an out-of-band response, not stored in memory
    extra_input: tuple[Message, ...] = ()  # messages appended after memory (speculative user turn)
    replace_input: tuple[Message, ...] | None = None  # out-of-band input instead of memory
    fixed_text: str | None = None  # speak this instead of asking the LLM (greetings)
    metadata: dict[str, Any] | None = None


@dataclass
class Response:
    session: "Session"
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
    _held: list[tuple[str, float, dict]] = field(default_factory=list)
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    on_finished: Callable[["Response"], None] | None = None
    _clauses_queued: int = 0
    _pending_items: list[Item] = field(default_factory=list)
    _first_audio: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted: bool = False
    heard: str | None = None

    # -------------------------------------------------------------- lifecycle

    @property
    def audio(self) -> bool:
        return "audio" in self.opts.modalities

    def start(self) -> None:
        if self.audio:
            self.playback = Playback(self.id, self.item_id, self.session.cfg.output_rate)
        self.task = asyncio.create_task(self._run(), name=f"response-{self.id}")

    def release(self) -> None:
        """The turn is certain: go public."""
        if self.released or self.status in ("cancelled", "failed"):
            return
        self.released = True
        self._released.set()
        if self.status == "pending":
            self.status = "in_progress"
        s = self.session
        if self.opts.in_conversation:
            self.item = s.memory.add(Item(id=self.item_id, role="assistant", status="in_progress",
                                          audio=self.audio, language=self.language))
            self.item.text = self.text
            for item in self._pending_items:
                s.memory.add(item)
        self._pending_items = []
        held, self._held = self._held, []
        for typ, t, data in held:
            s.publish(typ, data, t=t)
        if self.playback is not None:
            s.speaker.enqueue(self.playback)
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
        if self.playback is not None:
            self.playback.cancelled = True
            self.playback.finished.set()
        if was_public:
            if self.item is not None:
                self.item.text = heard if heard is not None else self.text
                self.item.status = "incomplete"
            self.session.publish("agent.response_done", self._done_payload(reason))
        self.done.set()
        if self.on_finished:
            self.on_finished(self)

    # -------------------------------------------------------------- events

    def emit(self, typ: str, data: dict | None = None) -> None:
        payload = {"response_id": self.id, "item_id": self.item_id, **(data or {})}
        if self.released:
            self.session.publish(typ, payload)
        else:
            self._held.append((typ, self.session.clock.now(), payload))

    def _done_payload(self, reason: str | None = None) -> dict:
        text = self.heard if self.heard is not None else self.text
        return {
            "response_id": self.id, "item_id": self.item_id, "turn_id": self.turn_id,
            "text": text, "generated_text": self.text, "interrupted": self.interrupted,
            "status": self.status, "reason": reason, "language": self.language,
            "function_calls": [c.__dict__ for c in self.function_calls],
            "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens,
                      "cached_tokens": self.usage.cached_tokens},
            "modalities": list(self.opts.modalities), "in_conversation": self.opts.in_conversation,
        }

    # -------------------------------------------------------------- pipeline

    async def _run(self) -> None:
        s = self.session
        clauses: asyncio.Queue[str | None] = asyncio.Queue()
        tts_task = asyncio.create_task(self._speak(clauses), name=f"tts-{self.id}") if self.audio else None
        try:
            self.emit("agent.response_started", {"turn_id": self.turn_id, "modalities": list(self.opts.modalities)})
            if self.opts.fixed_text is not None:
                self._add_text(self.opts.fixed_text, clauses, ClauseChunker(first_min_chars=1))
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
                    await s.clock.sleep(self.playback.play_end - s.clock.now())
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
            s.publish_error(e, response_id=self.id)
            if self.released:
                self._finish_public(reason="error")
            else:
                self.done.set()
        finally:
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
        self.session.publish("agent.response_done", self._done_payload(reason))
        self.done.set()
        if self.on_finished:
            self.on_finished(self)

    def _add_text(self, delta: str, clauses: asyncio.Queue[str | None], chunker: ClauseChunker) -> bool:
        """Returns True when this delta completed the reply's first clause."""
        if not self.text:
            self.emit("llm.first_token")
        self.text += delta
        if self.item is not None:
            self.item.text = self.text
        self.emit("agent.text_delta", {"delta": delta})
        first = False
        if self.audio:
            for clause in chunker.push(delta):
                first = first or self._clauses_queued == 0
                self._clauses_queued += 1
                clauses.put_nowait(clause)
            if self.opts.fixed_text is not None:
                for clause in chunker.flush():
                    self._clauses_queued += 1
                    clauses.put_nowait(clause)
        return first

    async def _generate(self, clauses: asyncio.Queue[str | None]) -> None:
        s = self.session
        tools = tuple(self.opts.tools) + s.toolbox.specs()
        convo: list[Message] = []
        system = s.system_prompt(self.opts.instructions)
        if self.opts.replace_input is not None:
            base = [Message("system", system), *self.opts.replace_input]
        else:
            base = s.memory.messages(system) if self.opts.in_conversation else [Message("system", system)]
            base += list(self.opts.extra_input)
        for _round in range(MAX_TOOL_ROUNDS):
            chunker = ClauseChunker(first_min_chars=4, first_max_chars=50)
            req = ChatRequest(messages=tuple(base + convo), tools=tools, tool_choice=self.opts.tool_choice,
                              temperature=self.opts.temperature, max_tokens=self.opts.max_output_tokens)
            self.emit("llm.started", {"messages": len(req.messages)})
            calls: list[ToolCall] = []
            async for ev in s.stack.llm.chat(req):
                if isinstance(ev, TextDelta):
                    if ev.text and self._add_text(ev.text, clauses, chunker):
                        # The first clause is the critical path: stop pulling tokens (the local
                        # model pauses) until its audio exists, so TTS gets the CPU to itself.
                        await self._first_audio.wait()
                elif isinstance(ev, ToolCallEvent):
                    calls.append(ev.call)
                elif isinstance(ev, Usage):
                    self.usage = Usage(self.usage.input_tokens + ev.input_tokens,
                                       self.usage.output_tokens + ev.output_tokens,
                                       self.usage.cached_tokens + ev.cached_tokens)
            for clause in chunker.flush():
                await clauses.put(clause)
            self.emit("llm.finished", {"input_tokens": self.usage.input_tokens,
                                       "output_tokens": self.usage.output_tokens})
            if not calls:
                break
            local = [c for c in calls if s.toolbox.get(c.name) is not None]
            remote = [c for c in calls if s.toolbox.get(c.name) is None]
            for call in remote:  # the client runs these; the response ends here
                self.function_calls.append(call)
                item_id = self._remember(Item(id=new_id("item"), type="function_call", role="assistant",
                                              call_id=call.id, name=call.name, arguments=call.arguments))
                self.emit("agent.function_call", {"call_id": call.id, "name": call.name, "arguments": call.arguments,
                                                  "call_item_id": item_id})
            if remote or not local:
                break
            stop_after = False
            # Tools can have effects (hang up, transfer, book...): never run one for a reply
            # that is still speculative. If the user goes on talking, this reply is cancelled here.
            await self._wait_release()
            for call in local:
                tool = s.toolbox.get(call.name)
                self.function_calls.append(call)
                self.emit("agent.tool_call", {"call_id": call.id, "name": call.name, "arguments": call.arguments})
                if tool.say_first:
                    self._add_text(("" if not self.text else " ") + tool.say_first, clauses, chunker)
                    for clause in chunker.flush():
                        await clauses.put(clause)
                    await self._drain_audio(clauses)
                output = await s.toolbox.run(call.name, call.arguments)
                self._remember(Item(id=new_id("item"), type="function_call", role="assistant",
                                    call_id=call.id, name=call.name, arguments=call.arguments))
                self._remember(Item(id=new_id("item"), type="function_call_output", role="user",
                                    call_id=call.id, output=output))
                self.emit("agent.tool_result", {"call_id": call.id, "name": call.name, "output": output})
                convo += [Message("assistant", "", tool_calls=(call,)),
                          Message("tool", output, tool_call_id=call.id, name=call.name)]
                stop_after = stop_after or tool.final
            if stop_after:
                break
        await clauses.put(None)

    def _remember(self, item: Item) -> str:
        """Store a tool item in memory (once this response is public; it may still be speculative)."""
        if not self.opts.in_conversation:
            return item.id
        if self.released:
            self.session.memory.add(item)
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
        await self.session.clock.sleep(max(0.0, self.session.speaker._playout_end - self.session.clock.now()))

    async def _speak(self, clauses: asyncio.Queue[str | None]) -> None:
        s = self.session
        opts = TTSOptions(voice=self.opts.voice or s.cfg.voice, language=self.language, speed=s.cfg.speed)
        first = True
        while True:
            clause = await clauses.get()
            if clause is None:
                self._first_audio.set()
                return
            spoken = normalize_for_tts(speakable(clause), self.language).strip()
            if not spoken or not any(ch.isalnum() for ch in spoken):
                continue
            if first:
                self.emit("tts.started", {"text": spoken})
            try:
                async for frame in s.stack.tts.synthesize(spoken, opts):
                    out = resample(frame, s.cfg.output_rate)
                    if first:
                        self.emit("tts.first_audio", {"samples": len(out)})
                        first = False
                        self._first_audio.set()
                    if self.playback is not None and not self.playback.cancelled:
                        self.playback.add(out, clause)
            except ProviderError as e:
                s.publish_error(e, response_id=self.id)
            self._first_audio.set()  # even if that clause produced no audio
