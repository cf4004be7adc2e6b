"""The realtime brain: a `Session` whose replies come from a speech-to-speech upstream.

`RealtimeSession` is the engine's `Session` with one part swapped: the part that turns a user
turn into a reply. Everything else is the session's own and unchanged: the speaker (paced output,
what was heard), memory, the interruption chain, the idle timer, the typed events. So every
transport, the metrics and the store's recorder work as they do with the pipeline brain.

Who ends the user's turn (`MOKSORI_REALTIME_TURN_DETECTION`):

* `server_vad` / `semantic_vad` (upstream): every frame goes up as it comes; the upstream's
  `speech_started`/`speech_stopped`/`committed` become `user.speech_started`/`user.speech_stopped`/
  `user.turn_ended` here, and the upstream answers by itself. A `speech_started` while the agent
  is audible (or a reply is on its way) is a barge-in: the local speaker stops at once, the
  upstream response is cancelled and its item truncated at what was heard.
* `moksori`: Moksori's own turn-taking (Silero, smart-turn, the transcript cue) decides, and the
  upstream's VAD is off. Audio goes up from the onset of speech (less the prefix padding) to the
  end of the turn, so silence is never paid for; at the end of the turn: `commit` +
  `response.create`. Speculation still transcribes and judges each pause (the turn-taker needs
  it), but nothing is said before the turn is certain: an upstream cannot hold a reply back.
* a Realtime client's `turn_detection: null`: audio goes up as it comes, the client commits.

User transcripts are the upstream's (`input_audio_transcription`); they can arrive after the
reply started. The user item is put in memory when the turn is committed (after the item the
upstream says it follows), so the transcript lands in its place, and a reply's
`agent.response_done` waits (bounded) for the transcript of the turn it answers, so the store
records them in order. With `moksori` turns the local transcript is the fallback when the
upstream's is off, fails, or is late.

Every call to the upstream goes through one ordered queue (audio, commits, items, responses,
cancels, truncates), so a commit never overtakes the audio before it. The upstream client
(`client.RealtimeUpstream`) survives drops and time limits by reconnecting and re-seeding; each
drop and reconnect is a `brain.*` event on the timeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from moksori.audio.frames import Frame
from moksori.engine import events as E
from moksori.engine import turns as T
from moksori.engine.clock import Clock
from moksori.engine.config import SessionConfig
from moksori.engine.item_words import Part
from moksori.engine.memory import Item, new_id
from moksori.engine.prompts import speech_model_prompt
from moksori.engine.response import ResponseOptions
from moksori.engine.session import Session
from moksori.engine.session_context import SessionContext
from moksori.engine.speculation import Speculation
from moksori.engine.tools import ToolBox
from moksori.errors import AudioFormatError, ProviderError
from moksori.protocols.realtime import PCM16_24K, PCMU
from moksori.providers.registry import Stack

if TYPE_CHECKING:
    from moksori.guardrails.guard import Guardrails

from . import events as ev
from .audio_items import AudioItems
from .client import RealtimeUpstream
from .guarding import UpstreamGuard
from .options import SessionOptions, TurnMode, UpstreamOptions
from .protocol import MAX_RESPONSE_TEXT_CHARS, TEXT_LIMIT
from .reply import UpstreamReply, say_exactly
from .transport import Connector
from .words import IdMap, UserWords, language_of, trim

log = logging.getLogger("moksori.brains.realtime")

__all__ = ["RealtimeSession", "Who"]

Who = Literal["upstream", "moksori"]
RING_S = 1.5  # recent input kept for the prefix padding (moksori turns)


class RealtimeSession(Session):
    hears_item_audio = True  # a client's audio item goes upstream as audio (`add_audio_item`)

    def __init__(self, stack: Stack, cfg: SessionConfig | None = None, *, upstream: UpstreamOptions,
                 who: Who = "upstream", clock: Clock | None = None, session_id: str | None = None,
                 toolbox: ToolBox | None = None, connector: Connector | None = None,
                 input_rate: int | None = None, guard: Guardrails | None = None,
                 tool_slow_after_s: float | None = None) -> None:
        self.who = who
        self._up_user = "idle"  # idle | speaking | paused (the upstream's VAD)
        self._flavor = upstream.endpoint.flavor
        # telephony audio (8 kHz) goes up as G.711 μ-law, as it came: no resampling
        self._input_format = PCMU if input_rate == 8000 else PCM16_24K
        super().__init__(stack, cfg, clock=clock, session_id=session_id, toolbox=toolbox)
        self._ctx.guardrails = guard  # the server's input and output checks (`guarding.py`)
        self._ctx.slow_tool_after_s = tool_slow_after_s  # a filler while a server tool is slow (the kit's)
        self._guarding = UpstreamGuard(self)
        self.closing = False
        self._responses.factory = self._new_reply
        self._specs.analysis_only = True
        self._options = replace(upstream, session=self._session_options(self.cfg, upstream.session))
        self.upstream = RealtimeUpstream(self._options, connector=connector)
        self._ops: asyncio.Queue[Callable[[], Awaitable[Any]] | None] = asyncio.Queue()
        self._ids = IdMap()
        # our assistant message item -> its reply's (upstream audio items with their first sample,
        # samples in all, where the message item starts: after a tool item, it is not the first)
        self._audio_items: OrderedDict[str, tuple[list[tuple[str, int]], int, int]] = OrderedDict()
        self._awaiting: deque[UpstreamReply] = deque()  # replies asked for, in order, not started yet
        self._by_upstream: dict[str, UpstreamReply] = {}
        self._replies: list[UpstreamReply] = []  # replies whose done event may still be held back
        self._creating: int = 0  # > 0 while a reply the upstream started is being made
        self._answering: int | None = None  # the turn the upstream's own next reply answers
        # user turns
        self._up_turn: dict[str, int] = {}  # upstream speech item -> our turn id (upstream VAD)
        self._speech_ms: dict[str, int] = {}  # upstream speech item -> where it started (ms)
        self._stopped_at: dict[str, float] = {}
        self._pending_commits: deque[tuple[str, int]] = deque()  # (our item, turn) committed by us, not echoed
        self._words = UserWords(self._ctx, upstream_transcribes=lambda: self.transcription,
                                local_words_coming=lambda: self._turn_mode() == "moksori", on_words=self._on_words)
        self._ring: deque[tuple[float, Frame]] = deque()
        self._words_later: set[str] = set()  # a client's audio items whose words are still coming (upstream next)
        self._heard_items = AudioItems(self, self._ctx)  # ... and those the upstream hears as audio
        self.bus.listen(self._on_item_words)
        self._forwarding = False
        self._forwarded_until = 0.0
        self._failed = False
        ctx = self._ctx
        self._op(self._seed_history)  # first, before any audio or turn
        ctx.spawn(self._run_ops(), "upstream-ops")
        ctx.spawn(self._pump(), "upstream-events")
        ctx.spawn(self._connect(), "upstream-connect")

    # ================================================================== the upstream's settings

    @property
    def transcription(self) -> bool:
        return self._options.session.transcription_model != ""

    def _turn_mode(self, cfg: SessionConfig | None = None) -> Literal["upstream", "moksori", "manual"]:
        cfg = cfg or self.cfg
        if cfg.turn.mode == "manual":
            return "manual"
        return "moksori" if self.who == "moksori" else "upstream"

    def _session_options(self, cfg: SessionConfig, base: SessionOptions) -> SessionOptions:
        t = cfg.turn
        mode = self._turn_mode(cfg)
        turn: TurnMode = ("semantic_vad" if t.mode == "semantic" else "server_vad") if mode == "upstream" else "manual"
        tools = tuple({"name": s.name, "description": s.description, "parameters": s.parameters}
                      for s in (*cfg.tools, *self.toolbox.specs()))
        choice: Any = cfg.tool_choice if cfg.tool_choice in ("auto", "none", "required") else \
            {"type": "function", "name": cfg.tool_choice}
        return replace(
            base, instructions=speech_model_prompt(cfg.instructions), voice=cfg.voice or base.voice, tools=tools,
            tool_choice=choice, turn=turn, eagerness=t.eagerness, silence_duration_ms=t.silence_duration_ms,
            threshold=t.threshold, prefix_padding_ms=t.prefix_padding_ms, create_response=t.create_response,
            interrupt_response=t.interrupt_response,
            transcription_language=cfg.language if cfg.language in ("en", "ko") else base.transcription_language,
            input_format=self._input_format, output_format=PCMU if cfg.output_rate == 8000 else PCM16_24K,
            output_modalities=("audio",) if "audio" in cfg.modalities else ("text",),
            temperature=cfg.temperature if self._flavor == "azure" else None)

    def update(self, cfg: SessionConfig) -> None:
        old_mode = self._turn_mode()
        super().update(cfg)
        if self._turn_mode() != old_mode:
            self._forwarding = False
            self._up_user = "idle"
        self._reconfigure()

    def tools_changed(self) -> None:
        """The session's tool box changed (a Realtime client's MCP server was listed or dropped):
        the upstream is offered the tools as they are now."""
        self._reconfigure()

    def _reconfigure(self) -> None:
        session = self._session_options(self.cfg, self._options.session)
        if session != self._options.session:
            self._options = replace(self._options, session=session)
            self._op(self.upstream.update_session, session)

    # ================================================================== plumbing

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._ctx.spawn(coro, name)

    def _op(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> None:
        """Queue a call to the upstream; calls go out one at a time, in order."""
        if not self._ctx.closed and not self._failed:
            self._ops.put_nowait(lambda: fn(*args, **kw))

    async def _run_ops(self) -> None:
        while True:
            op = await self._ops.get()
            if op is None:
                return
            try:
                await op()
            except ProviderError as e:  # the upstream is gone for good: the pump reports it
                log.debug("session %s: upstream call dropped: %s", self.id, e)
            except Exception:
                log.exception("session %s: upstream call failed", self.id)

    async def _seed_history(self) -> None:
        """The user's earlier conversations (loaded by the store's recorder into `memory.history`,
        if it runs) and any items the session started with go upstream as text, newest within the
        re-seed budget, so the model knows them from the first turn."""
        mem = self.memory
        ready = getattr(mem, "history_ready", None)
        if ready is not None:
            await ready()
        items = [*getattr(mem, "history", ()), *mem.items]
        budget = self._options.reseed
        chosen: list[Item] = []
        chars = 0
        for it in reversed(items):
            size = len(it.text or it.output or it.arguments or "")
            if len(chosen) >= budget.max_items or chars + size > budget.max_chars:
                break
            chosen.append(it)
            chars += size
        while chosen and chosen[-1].type == "function_call_output":  # never start inside a tool exchange
            chosen.pop()
        for it in reversed(chosen):
            iid = it.id if len(it.id) <= 32 else new_id("item")
            last = iid  # the upstream item that later items follow
            if it.type == "function_call" and it.call_id and it.name:
                await self.upstream.add_function_call(it.call_id, it.name, it.arguments or "{}", item_id=iid)
            elif it.type == "function_call_output" and it.call_id:
                await self.upstream.add_function_output(it.call_id, it.output or "", item_id=iid)
            elif it.type == "mcp_call" and it.call_id and it.name:  # one item here, a call and its output upstream
                await self.upstream.add_function_call(it.call_id, it.name, it.arguments or "{}", item_id=iid)
                last = await self.upstream.add_function_output(it.call_id, it.output or "", item_id=new_id("item"))
            elif it.type == "message" and it.text.strip() and it.role in ("user", "assistant"):
                await self.upstream.add_message(it.role, it.text, item_id=iid)
            else:
                continue
            if it in mem.items:
                self._ids.link(iid, it.id)
                if last != iid:
                    self._ids.link(last, it.id)

    async def _connect(self) -> None:
        try:
            await self.upstream.start()
        except ProviderError as e:
            log.warning("session %s: the realtime upstream is not available: %s", self.id, e)

    async def ready(self, timeout: float | None = None) -> None:
        """Wait until the upstream is connected and configured; `ProviderError` if it cannot be."""
        async def live() -> None:
            while not self.upstream.connected:
                failure = self.upstream.failure
                if self._failed or failure is not None:
                    detail = failure.detail if failure is not None else "failed"
                    raise ProviderError(f"the realtime upstream is not available: {detail}", retryable=False,
                                        provider="realtime")
                await asyncio.sleep(0.02)
        await asyncio.wait_for(live(), timeout)

    async def _pump(self) -> None:
        async for e in self.upstream.events():
            try:
                self._on_upstream(e)
            except Exception:
                log.exception("session %s: upstream event %s failed", self.id, type(e).__name__)

    def _input_time(self, ms: int) -> float:
        """Session time of a position on the current connection's input axis."""
        sent = self.upstream.proto.ring.sent_ms
        return self.clock.now() - max(0.0, sent - ms) / 1000

    # ================================================================== audio in

    def push_audio(self, frame: Frame) -> None:
        if self._ctx.closed:
            return
        if not isinstance(frame, Frame):
            raise AudioFormatError("push_audio expects a moksori Frame")
        self._follow_input_rate(frame.rate)
        mode = self._turn_mode()
        if mode != "moksori":
            self._send_audio(frame)
            return
        now = self.clock.now()
        self._ring.append((now, frame))
        while self._ring and self._ring[0][0] < now - RING_S:
            self._ring.popleft()
        if self._forwarding:
            self._send_audio(frame)
        super().push_audio(frame)

    def _follow_input_rate(self, rate: int) -> None:
        """Telephony audio (8 kHz) goes up as G.711 μ-law, as it came: no resampling. (Set by
        `input_rate` from the start where the entry point knows it: a change costs a session.update.)"""
        fmt = PCMU if rate == 8000 else PCM16_24K
        if fmt != self._input_format:
            self._input_format = fmt
            self._reconfigure()

    def _send_audio(self, frame: Frame) -> None:
        self._op(self.upstream.append_audio, frame)
        self._forwarded_until = self.clock.now()

    def _start_forwarding(self, onset: float) -> None:
        """Speech confirmed (moksori turns): send from the onset less the prefix padding, then live."""
        if self._forwarding:
            return
        since = max(onset - self.cfg.turn.prefix_padding_ms / 1000, self._forwarded_until)
        for t_end, frame in self._ring:
            if t_end > since:
                self._op(self.upstream.append_audio, frame)
        self._forwarding = True
        self._forwarded_until = self.clock.now()

    async def keep_last_words(self, timeout: float) -> bool:
        """Not here: the upstream holds the caller's audio, and committing it there could ask for
        (and bill) a reply nobody will hear. What the upstream transcribed is kept as it comes."""
        return True

    def clear_input(self) -> None:
        super().clear_input()
        self._forwarding = False
        self._op(self.upstream.clear_input)

    # ================================================================== turns (moksori and manual)

    def _handle(self, actions: list[T.Action]) -> None:
        for a in actions:
            if isinstance(a, T.SpeechStarted) and self._turn_mode() == "moksori":
                self._start_forwarding(a.onset)
        super()._handle(actions)

    def _on_turn_ended(self, a: T.TurnEnded) -> None:
        super()._on_turn_ended(a)
        if self._turn_mode() != "moksori":
            return
        self._forwarding = False
        item_id = self._specs.item_id(a.turn_id)
        words = self._words.local_text(item_id)
        if words is not None and not words.strip():
            # the local transcript is in and holds no words: a noise, not a turn (the pipeline
            # brain would not answer it either); the upstream forgets that audio
            self._op(self.upstream.clear_input)
            self._add_user_item(a.turn_id, item_id)
            self._words.expect(item_id, a.turn_id)
            self._words.finish(item_id, "")
            return
        self._commit(a.turn_id, item_id, respond=self.cfg.turn.create_response)

    def commit(self) -> str | None:
        mode = self._turn_mode()
        if mode == "moksori":
            return super().commit()
        turn_id = self.taker.turn_id
        self.taker.turn_id += 1
        item_id = self._specs.item_id(turn_id)
        if mode == "manual":
            self.publish(E.UserTurnEnded(t=self.clock.now(), turn_id=turn_id, item_id=item_id, reason="commit"))
            self._commit(turn_id, item_id, respond=False)
        else:  # an explicit commit while the upstream's VAD runs: the item appears when it answers
            self._pending_commits.append((item_id, turn_id))
            self._op(self.upstream.commit)
        return item_id

    def _commit(self, turn_id: int, item_id: str, *, respond: bool) -> None:
        """Our turn is over: the user item goes into memory now (its words come later), the
        upstream commits the audio, and (moksori turns) a reply is asked for."""
        self._add_user_item(turn_id, item_id, text=self._words.local_text(item_id) or "")
        self._pending_commits.append((item_id, turn_id))
        self._op(self.upstream.commit)
        self._words.expect(item_id, turn_id)
        if respond:
            self._responses.start(self._responses.options(), turn_id, self._reply_language(), release=True)
        self._update_state()

    def _add_user_item(self, turn_id: int, item_id: str, *, text: str = "", after: str | None = None) -> None:
        mem = self.memory
        if mem.get(item_id) is None:
            lang = language_of(text, self.last_language) if text else self.last_language
            mem.add(Item(id=item_id, role="user", text=text, audio=True, language=lang), after=after)
        self.publish(E.UserCommitted(t=self.clock.now(), turn_id=turn_id, item_id=item_id,
                                     previous_item_id=mem.previous_id(item_id)))

    def _on_user_committed(self, spec: Speculation) -> None:
        """The local STT's words of a turn (moksori turns): they settle the interruption and are
        the fallback transcript. When the local STT failed there are none (not an empty
        transcript: the turn is not taken for a noise, and goes upstream as any)."""
        text = spec.transcript.text if spec.transcript is not None else ""
        super()._on_user_committed(spec)
        audio_s = len(spec.audio) / 16000 if spec.audio is not None else spec.audio_s
        if spec.failure is not None:
            self._words.local_failed(spec.item_id, spec.failure, audio_s)
        else:
            self._words.set_local(spec.item_id, text, audio_s)

    def _reply_language(self) -> str:
        return self.cfg.language if self.cfg.language != "auto" else self.last_language

    # ================================================================== transcripts

    def _on_words(self, item_id: str, text: str) -> None:
        """A user item's words are known: a reconnect re-seeds them as text, not its audio."""
        up = self._ids.up_known(item_id)
        rec = self.upstream.proto.conv.get(up) if up is not None else None
        if rec is not None and text and not rec.text:
            rec.text, rec.final, rec.user_audio = text, True, None
        self._guarding.words_known(item_id, text)

    # ================================================================== guardrails (`guarding.py`)

    async def check_input(self, reply: UpstreamReply) -> str | None:
        """Before asking the upstream for `reply`: the safe sentence if the input guardrail
        blocks the turn it answers (then removed), else None."""
        return await self._guarding.check_input(reply)

    def output_blocked(self, reply: UpstreamReply, safe: str) -> None:
        self._guarding.output_blocked(reply, safe)

    # what `guarding.UpstreamGuard` uses (its `GuardHost`)

    @property
    def guard(self) -> Guardrails | None:
        return self._ctx.guard

    def reply_language(self) -> str:
        return self._reply_language()

    def local_words_coming(self) -> bool:
        return self._turn_mode() == "moksori"

    def live_replies(self) -> list[UpstreamReply]:
        return [r for r in self._responses.active()
                if isinstance(r, UpstreamReply) and r.released and r.live and r.opts.in_conversation]

    def cut_reply(self, reply: UpstreamReply) -> None:
        with self._one_state_change():
            self._interruptions.cancel(reply.id, reason="guardrail")

    def say_safe(self, text: str, turn_id: int | None, language: str, *, in_conversation: bool = True) -> None:
        self._responses.start(self._responses.options(fixed_text=text, in_conversation=in_conversation), turn_id,
                              language, release=True)
        self._update_state()

    def queue_upstream(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self._op(fn, *args)

    def upstream_id(self, item_id: str) -> str | None:
        up = self._ids.up_known(item_id)
        if up is None and self.upstream.proto.conv.get(item_id) is not None:
            up = item_id  # an item we created upstream (typed text) has our id
        return up

    def upstream_ids(self, item_id: str) -> tuple[str, ...]:
        """Every upstream id our item may have (an `mcp_call` is a call and its output there), in
        order; whether the upstream holds them now is the protocol's to say when they go."""
        return tuple(self._ids.all_up(item_id))

    def upstream_holds(self, item_id: str) -> bool:
        """A response's `input` can name our item upstream now (`UpstreamProtocol.nameable`)."""
        return bool(self.upstream.proto.nameable(self.upstream_ids(item_id)))

    async def delete_upstream(self, upstream_id: str) -> None:
        await self.upstream.delete_item(upstream_id)

    async def transcript_of(self, turn_id: int | None) -> None:
        """Wait (bounded) until the transcript of turn `turn_id` is published."""
        await self._words.wait(turn_id)

    # ================================================================== replies

    def _new_reply(self, ctx: SessionContext, opts: ResponseOptions, turn_id: int | None,
                   language: str) -> UpstreamReply:
        for r in self._replies:  # a reply held back for its usage goes out before the next one starts
            if r.done_pending:
                r.flush_done()
        self._replies = [r for r in self._replies if not r.done.is_set() or r.done_pending][-16:]
        reply = UpstreamReply(ctx, opts, turn_id, language, brain=self, upstream_initiated=self._creating > 0)
        self._replies.append(reply)
        return reply

    def request(self, reply: UpstreamReply, *, followup: bool = False, say: str | None = None) -> None:
        """Ask the upstream for a response for `reply` (the first, or a follow-up after a tool).
        `say`: a follow-up that says these words (a failed tool's apology) and calls no tool."""
        if self._failed:
            reply.fail("upstream_failed")
            return
        s = self._options.session
        kw = reply.request_args(s.instructions, s.output_modalities, self.cfg.tools, self.cfg.tool_choice)
        if followup:  # after a tool: the same tools (e.g. the reply's own MCP servers'), modalities, instructions
            kw = {k: v for k, v in kw.items() if k in ("tools", "modalities", "instructions")}
        if say is not None:
            kw.update(instructions=say_exactly(kw.get("instructions", s.instructions), say), tool_choice="none")
        self._awaiting.append(reply)
        self._op(self.upstream.create_response, **kw)

    def upstream_idle(self) -> bool:
        """No response asked for or running upstream (one more would be refused)."""
        return not self._failed and not self._awaiting and not self.upstream.in_response

    def request_filler(self, reply: UpstreamReply, words: str) -> None:
        """A slow tool's filler for `reply`: an out-of-band response (it reads only its
        instructions and adds nothing to the upstream conversation), its audio played in `reply`."""
        s = self._options.session
        mods = reply.request_args(s.instructions, s.output_modalities, self.cfg.tools,
                                  self.cfg.tool_choice).get("modalities")
        self._awaiting.append(reply)
        self._op(self.upstream.create_response, instructions=say_exactly(s.instructions, words), modalities=mods,
                 tool_choice="none", metadata={"moksori": "tool_filler"}, input=[])

    def tool_output(self, call_id: str, output: str, item_id: str, *, local_id: str | None = None) -> None:
        """A server tool's output goes up as `item_id`. `local_id`: our one item for the call and
        its output (an `mcp_call`): it then stands upstream for the output too, so an item added
        after it goes after the output, and deleting it deletes both."""
        self._op(self.upstream.add_function_output, call_id, output, item_id=item_id)
        if local_id is not None:
            self._ids.link(item_id, local_id)

    def reply_finished(self, reply: UpstreamReply) -> None:
        """Keep where each upstream audio item starts in a reply, for a client's late truncate."""
        if reply.audio_items:
            audio = list(reply.audio_items)
            for item_id in reply.message_items():
                self._audio_items[item_id] = (audio, reply.samples, reply.message_start(item_id) or 0)
            while len(self._audio_items) > 64:
                self._audio_items.popitem(last=False)

    def reply_cancelled(self, reply: UpstreamReply, heard_samples: int, heard_text: str) -> None:
        """The session cut `reply` (barge-in, a client's cancel): the upstream stops generating
        and keeps only what was heard (clamped by the client to what it generated)."""
        if reply in self._awaiting or any(self.upstream.proto.responses.get(r) for r in reply.upstream_ids):
            self._op(self.upstream.cancel_response)
        self.reply_finished(reply)
        self._truncate_upstream(heard_samples, heard_text, reply.audio_items, reply.samples, reply.host.output_rate)

    def _truncate_upstream(self, heard: int, heard_text: str, audio_items: list[tuple[str, int]], total: int,
                           rate: int) -> None:
        """Cut the upstream's audio items of one reply at `heard` samples (of the reply): an
        item heard in full stays, the one being heard is cut there, later ones at 0."""
        for n, (up_item, start) in enumerate(audio_items):
            end = audio_items[n + 1][1] if n + 1 < len(audio_items) else total
            if heard >= end:
                continue
            if start >= heard:
                self.upstream.set_heard_text(up_item, "")
            else:
                self.upstream.set_heard_text(up_item, heard_text)
            self._op(self.upstream.truncate, up_item, max(0, heard - start) * 1000 // rate)

    def truncate(self, item_id: str, audio_end_ms: int) -> Item | None:
        item = super().truncate(item_id, audio_end_ms)
        if item is not None:
            audio = self._audio_items.get(item_id) or next(
                ((list(r.audio_items), r.samples, start) for r in self._replies
                 if (start := r.message_start(item_id)) is not None), None)
            if audio:  # (`audio_end_ms` is into the message item, which may start after a tool item)
                items, total, start = audio
                rate = self.cfg.output_rate
                self._truncate_upstream(start + audio_end_ms * rate // 1000, item.text, items, total, rate)
        return item

    def split_reply(self, response_id: str, item_id: str, said: Callable[[], None] | None = None) -> bool:
        """A transport shows a tool item inside reply `response_id` (an MCP call): the upstream's
        words from now on are message item `item_id`; the audio of the words before it that is
        still to go out stays theirs (`UpstreamReply.split`)."""
        reply = self._responses.get(response_id)
        return reply.split(item_id, said) if isinstance(reply, UpstreamReply) else False

    # ================================================================== items from outside a turn

    def add_item(self, item: Item, *, after: str | None = None) -> Item:
        item = super().add_item(item, after=after)
        if item.id in self._words_later or item.id in self._heard_items:
            return item  # (upstream as audio at once, or as words once they have come: `add_audio_item`)
        if after == "root":
            prev: str | None = "root"
        elif self.memory.last_id() == item.id:
            # at the end here: at the end upstream too. A reply with a tool keeps its message
            # before its tool items here but after them upstream, so "after our last item" could
            # land between the tool's output and the reply there.
            prev = None
        else:
            prev = self._ids.up(self.memory.previous_id(item.id))
        if item.type == "message":
            if item.role == "assistant" or item.text or item.role == "system":
                self._op(self.upstream.add_message, item.role, item.text, item_id=item.id, previous_item_id=prev)
        elif item.type == "function_call_output" and item.call_id:
            self._op(self.upstream.add_function_output, item.call_id, item.output or "", item_id=item.id)
        else:
            log.info("session %s: a client's %s item is kept here but not sent upstream", self.id, item.type)
        return item

    def add_audio_item(self, item: Item, parts: list[Part], *, after: str | None = None,
                       audio: Sequence[Frame] | None = None) -> Item:
        """A client's item with audio, in the conversation at once. `audio`: its audio parts as
        the client sent them (PCM16, in content order): a user item goes upstream as audio at
        once, in its place (`audio_items.py`); its words are the local STT's, transcribed in the
        background (engine/item_words.py, as with the pipeline), or without a local STT the
        upstream's. Without `audio` the upstream gets it as text once its words have come
        (`_on_item_words`)."""
        if audio is None or item.role != "user" or len(audio) != sum(not isinstance(p, str) for p in parts):
            self._words_later.add(item.id)
            return super().add_audio_item(item, parts, after=after)
        local = self.local_item_words
        up = self._heard_items.add(item.id, parts, audio, local=local)
        if local:
            item = super().add_audio_item(item, parts, after=after)  # (`add_item` leaves it to us)
        else:
            item = self.add_item(item, after=after)
        self._ids.link(up, item.id)
        if audio:  # (the item's audio is in the client's format, as its live audio is: the upstream follows it)
            self._follow_input_rate(audio[0].rate)
        self._op(self._heard_items.send, item.id)
        return item

    @property
    def local_item_words(self) -> bool:
        """A client's audio has a local STT for its words (else only the upstream's)."""
        return not getattr(self.stack.stt, "standin", False)

    def send_words_later(self, item_id: str) -> None:
        """A client's audio item the upstream would not take as audio: upstream as text, once its
        words have come (now, if they have)."""
        if self.memory.words_pending(item_id):
            self._words_later.add(item_id)
        else:
            self._op(self._add_heard_item, item_id)

    def _on_item_words(self, e: E.Event) -> None:
        if isinstance(e, E.UserTranscript | E.UserTranscriptionFailed) and e.item_id in self._words_later:
            self._words_later.discard(e.item_id)
            self._op(self._add_heard_item, e.item_id)
        elif isinstance(e, E.UserTranscript) and e.item_id in self._heard_items:
            self._heard_items.words_known(e.item_id)

    def upstream_previous(self, item_id: str) -> str | None:
        """Where item `item_id` goes upstream: after the nearest item before it that the upstream
        has (None: at the end; "root": at the start)."""
        if self.memory.last_id() == item_id:
            return None
        local = self.memory.previous_id(item_id)
        while local is not None and self.upstream.proto.conv.get(self._ids.up(local)) is None:
            local = self.memory.previous_id(local)
        return self._ids.up(local) if local is not None else "root"

    async def _add_heard_item(self, item_id: str) -> None:
        """A client's audio item, its words known: upstream as text (none, if none could be had),
        after the nearest item before it that the upstream has (it may have been answered by now)."""
        item = self.memory.get(item_id)
        if item is None or not item.text.strip():
            return
        await self.upstream.add_message(item.role, item.text, item_id=item.id,
                                        previous_item_id=self.upstream_previous(item_id))

    def delete_item(self, item_id: str) -> bool:
        self._words_later.discard(item_id)
        self._heard_items.forget(item_id)
        ok = super().delete_item(item_id)
        if ok:
            for up in self._ids.all_up(item_id):
                if self.upstream.proto.conv.get(up) is not None:
                    self._op(self.upstream.delete_item, up)
        return ok

    def add_user_text(self, text: str, *, respond: bool = True) -> Item:
        item = super().add_user_text(text, respond=False)
        self._op(self.upstream.add_message, "user", text, item_id=item.id)
        if respond:
            self.interrupt("client_cancelled")
            self.create_response()
        return item

    # ================================================================== the upstream's events

    def _on_upstream(self, e: ev.UpstreamEvent) -> None:
        match e:
            case ev.AudioDelta():
                r = self._by_upstream.get(e.response_id)
                if r is not None:
                    r.on_audio(e.item_id, e.frame)
            case ev.AssistantTranscriptDelta():
                r = self._by_upstream.get(e.response_id)
                if r is not None:
                    self._claim(r, e.item_id)
                    r.on_text_delta(e.item_id, e.delta)
            case ev.AssistantTranscript():
                r = self._by_upstream.get(e.response_id)
                if r is not None:
                    self._claim(r, e.item_id)
                    r.on_text_done(e.item_id, e.text)
            case ev.SpeechStarted():
                self._speech_started(e)
            case ev.SpeechStopped():
                self._speech_stopped(e)
            case ev.InputCommitted():
                self._committed(e)
            case ev.UserTranscriptDelta():
                self._transcript_delta(e)
            case ev.UserTranscript():
                local = self._ids.local(e.item_id)
                if local is not None and not self._heard_items.upstream_words(local, e):
                    self._words.upstream(local, e.text, failed=e.failed, code=e.code, error=e.error)
            case ev.ResponseStarted():
                self._response_started(e)
            case ev.FunctionCall():
                r = self._by_upstream.get(e.response_id)
                if r is not None:
                    self._ids.link(e.item_id, r.on_function_call(e))
            case ev.ResponseDone():
                r = self._by_upstream.pop(e.response_id, None)
                if r is not None:
                    r.on_upstream_done(e)
                    if e.response_id in r.filler_responses:  # out of band: never re-seeded after a reconnect
                        for iid in e.item_ids:
                            self.upstream.proto.conv.delete(iid)
                    if e.reason == TEXT_LIMIT and r.cut_short is not None:
                        self.publish(E.ErrorEvent(
                            t=self.clock.now(), code="upstream_text_limit", retryable=False, response_id=r.id,
                            message=f"the realtime upstream sent more than {MAX_RESPONSE_TEXT_CHARS} characters "
                                    "for one reply: it was cut there"))
            case ev.ResponseAbandoned():
                self._response_abandoned(e)
            case ev.TruncateRejected():
                self._truncate_rejected(e)
            case ev.UpstreamError():
                self._upstream_error(e)
            case ev.SessionReady(reconnected=False):
                s = self._options.session
                self.publish(E.BrainUpstreamReady(t=self.clock.now(), model=self._options.endpoint.model,
                                                  flavor=self._options.endpoint.flavor, turn_detection=s.turn))
            case ev.UpstreamDropped():
                self.publish(E.BrainUpstreamDropped(t=self.clock.now(), reason=e.reason, detail=e.detail[:300],
                                                    age_s=round(e.age_s, 3), in_response=e.in_response,
                                                    planned=e.planned))
                if self._up_user != "idle":
                    self._up_user = "idle"
                    self._update_state()
            case ev.Reconnecting():
                self.publish(E.BrainReconnecting(t=self.clock.now(), attempt=e.attempt, delay_s=round(e.delay_s, 3)))
            case ev.Reconnected():
                self.publish(E.BrainReconnected(t=self.clock.now(), attempt=e.attempt, gap_s=round(e.gap_s, 3),
                                                reseeded=e.reseeded, replayed_audio_ms=e.replayed_audio_ms,
                                                resumed=e.resumed))
            case ev.UpstreamFailed():
                self._upstream_failed(e)

    def _claim(self, reply: UpstreamReply, upstream_item: str) -> None:
        if not self._ids.knows(upstream_item):  # (after a tool item: the reply's message item after it)
            self._ids.link(upstream_item, reply.message_item_id)

    def _response_started(self, e: ev.ResponseStarted) -> None:
        reply = self._awaiting.popleft() if self._awaiting else None
        if reply is None:  # the upstream answered by itself (its VAD, or a resume after a reconnect)
            self._creating += 1
            try:
                started = self._responses.start(self._responses.options(), self._answering, self._reply_language(),
                                                release=True)
            finally:
                self._creating -= 1
            assert isinstance(started, UpstreamReply)
            reply = started
            self._update_state()
        reply.bind(e.response_id)
        self._by_upstream[e.response_id] = reply
        if not reply.live:  # cut before the upstream started it: stop it there too
            self._op(self.upstream.cancel_response)

    # ---------------------------------------------------------------- upstream VAD

    def _speech_started(self, e: ev.SpeechStarted) -> None:
        if self._turn_mode() != "upstream":
            return
        turn_id = self.taker.turn_id
        item_id = self._specs.item_id(turn_id)
        self._up_turn[e.item_id] = turn_id
        self._speech_ms[e.item_id] = e.audio_start_ms
        for table in (self._up_turn, self._speech_ms, self._stopped_at):
            trim(table)
        self._ids.link(e.item_id, item_id)
        onset = self._input_time(e.audio_start_ms)
        self._idle.disarm()
        self._up_user = "speaking"
        self.publish(E.UserSpeechStarted(t=onset, turn_id=turn_id, item_id=item_id))
        self._interruptions.user_started()
        # every response here is an UpstreamReply (`_new_reply`)
        replying = any(r.released and isinstance(r, UpstreamReply) and r.live for r in self._responses.active())
        if self.cfg.turn.interrupt_response and (self.speaker.audible or replying):
            self.interrupt("turn_detected", onset=onset)
        self._update_state()

    def _speech_stopped(self, e: ev.SpeechStopped) -> None:
        turn_id = self._up_turn.get(e.item_id)
        if turn_id is None:
            return
        t = self._input_time(e.audio_end_ms)
        self._stopped_at[e.item_id] = t
        start = self._speech_ms.pop(e.item_id, None)
        if start is not None:
            pad = self._options.session.prefix_padding_ms
            self._words.set_audio_s(self._specs.item_id(turn_id), max(0, e.audio_end_ms - start + pad) / 1000)
        self._up_user = "paused"
        self.publish(E.UserSpeechStopped(t=t, turn_id=turn_id, item_id=self._specs.item_id(turn_id)))
        self._update_state()

    def _committed(self, e: ev.InputCommitted) -> None:
        up = e.item_id
        turn_id = self._up_turn.pop(up, None)
        if turn_id is not None:  # the upstream's VAD ended a turn we saw start
            item_id = self._specs.item_id(turn_id)
            if turn_id == self.taker.turn_id:
                self.taker.turn_id += 1
            self._end_upstream_turn(up, turn_id, item_id, reason="upstream_vad", previous=e.previous_item_id)
            return
        if self._pending_commits:  # ours (moksori or manual turns): already in memory
            item_id, turn_id = self._pending_commits.popleft()
            self._ids.link(up, item_id)
            if self.memory.get(item_id) is None:  # an explicit commit while the upstream's VAD runs
                self._end_upstream_turn(up, turn_id, item_id, reason="commit", previous=e.previous_item_id)
            return
        # a turn the upstream committed with no speech_started we saw (e.g. audio replayed after a reconnect)
        turn_id = self.taker.turn_id
        self.taker.turn_id += 1
        self._end_upstream_turn(up, turn_id, self._specs.item_id(turn_id), reason="upstream_vad",
                                previous=e.previous_item_id)

    def _end_upstream_turn(self, up: str, turn_id: int, item_id: str, *, reason: str, previous: str | None) -> None:
        self._ids.link(up, item_id)
        now = self.clock.now()
        stopped = self._stopped_at.pop(up, None)
        self._up_user = "idle"
        self.publish(E.UserTurnEnded(t=now, turn_id=turn_id, item_id=item_id, reason=reason,
                                     silence_ms=round(1000 * (now - stopped)) if stopped is not None else None))
        after = self._ids.local(previous)
        self._add_user_item(turn_id, item_id, after=after if after is not None and self.memory.get(after) else None)
        self._interruptions.settle(turn_id, True)
        self._answering = turn_id
        self._words.expect(item_id, turn_id)
        self._update_state()

    def _transcript_delta(self, e: ev.UserTranscriptDelta) -> None:
        local = self._ids.local(e.item_id)
        if local is not None and e.delta:
            self._words.delta(local, e.delta)

    def _user_activity(self) -> str:
        if self._turn_mode() == "upstream":
            return self._up_user
        return super()._user_activity()

    def _upstream_pending(self) -> bool:
        """The upstream owes a reply (asked for, or a turn its VAD committed)."""
        return bool(self._awaiting) or (not self._failed and (self.upstream.in_response or self.upstream.proto.unanswered))

    def _thinking(self) -> bool:
        return super()._thinking() or self._upstream_pending()

    def busy(self) -> bool:
        return super().busy() or self._upstream_pending()

    # ---------------------------------------------------------------- trouble

    def _truncate_rejected(self, e: ev.TruncateRejected) -> None:
        """The upstream kept the whole item although the user heard only part of it. The model
        must not believe it said what nobody heard: replace its copy with the heard words."""
        local = self._ids.local(e.item_id) or e.item_id
        self.publish(E.BrainTruncateRejected(t=self.clock.now(), item_id=local, heard_ms=e.audio_end_ms,
                                             code=e.code, message=e.message[:300]))
        conv = self.upstream.proto.conv
        rec = conv.get(e.item_id)
        if rec is None:
            return
        heard, prev = rec.reseed_text(), conv.previous(e.item_id)
        self._op(self.upstream.delete_item, e.item_id)
        if heard.strip():
            new = "item_mk" + new_id("x")[2:22]
            self._ids.link(new, local)
            self._op(self.upstream.add_message, "assistant", heard, item_id=new, previous_item_id=prev)

    def _upstream_error(self, e: ev.UpstreamError) -> None:
        if e.client_event == "conversation.item.create" and e.item_id is not None:
            local = self._ids.local(e.item_id) or e.item_id
            if self._heard_items.refused(local, e.code, e.message):
                return  # (it goes the text path, or says its words cannot be had)
        if e.client_event == "response.create" and self._awaiting:
            self._awaiting.popleft().fail("upstream_refused")
        elif e.client_event == "input_audio_buffer.commit" and self._pending_commits:
            item_id, _ = self._pending_commits.popleft()
            self._words.finish(item_id, self._words.local_text(item_id) or "")
        if e.client_event in ("conversation.item.truncate", "conversation.item.delete", "response.cancel"):
            return  # nothing depends on them
        self.publish(E.ErrorEvent(t=self.clock.now(), code=f"upstream_{e.code or 'error'}",
                                  message=f"the realtime upstream said: {e.message}"[:500], retryable=False))

    def _response_abandoned(self, e: ev.ResponseAbandoned) -> None:
        """The upstream would not give a reply, asked for again after a drop: the reply waiting
        for it fails (`agent.response_done` failed, `upstream_unresponsive`) and says why; the
        session goes on, and the next turn asks afresh."""
        reply = self._awaiting.popleft() if e.asked and self._awaiting else None
        if reply is not None:
            reply.fail("upstream_unresponsive")
        self.publish(E.ErrorEvent(t=self.clock.now(), code="upstream_unresponsive", retryable=False,
                                  response_id=reply.id if reply is not None else None,
                                  message=f"the realtime upstream did not give a reply: {e.detail}"[:500]))

    def _upstream_failed(self, e: ev.UpstreamFailed) -> None:
        self._failed = True
        self.publish(E.BrainUpstreamFailed(t=self.clock.now(), reason=e.reason, detail=e.detail[:300]))
        self.publish(E.ErrorEvent(t=self.clock.now(), code="upstream_failed",
                                  message=f"the realtime upstream is gone: {e.detail}"[:500], retryable=False))
        while self._awaiting:
            self._awaiting.popleft().fail("upstream_failed")
        for r in list(self._by_upstream.values()):
            r.fail("upstream_failed")
        self._by_upstream.clear()
        self._words.finish_all()

    # ================================================================== lifecycle

    async def close(self) -> None:
        if self._ctx.closed:
            return
        self.closing = True
        for r in self._replies:
            if r.done_pending:
                r.flush_done()
        await super().close()
        self._ops.put_nowait(None)
        await self.upstream.close()
