"""The session runtime: audio frames in; audio frames and timeline events out.

    push_audio -> InputAudio (16 kHz, 32 ms frames) -> VAD -> TurnTaker -> actions, handled here
    pause      -> Speculations: STT, end-of-turn model, a reply held back    (speculation.py)
    turn ended -> release the speculation (or start one); the speaker plays it
    barge-in   -> Interruptions: stop, cancel, keep only what was heard      (interruption.py)

The session wires its parts together and is the one public face of the engine; the parts share
a `SessionContext` and never see the session. Every event it publishes is in
`moksori.engine.events`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from moksori.audio.frames import Frame
from moksori.engine import events as E
from moksori.engine import turns as T
from moksori.engine.backchannels import Backchannels
from moksori.engine.bus import EventBus
from moksori.engine.clock import Clock, LoopClock
from moksori.engine.config import SessionConfig
from moksori.engine.denoised_input import NoiseReduction
from moksori.engine.session_context import SessionContext
from moksori.engine.input_audio import InputAudio
from moksori.engine.interruption import Interruptions
from moksori.engine.item_words import ItemWords, Part
from moksori.engine.memory import Item, Memory, new_id
from moksori.engine.incremental_stt import IncrementalSTT
from moksori.engine.partials import PartialTranscripts
from moksori.engine.prefill import LlmPrefill
from moksori.engine.response import Response
from moksori.engine.responses import Responses
from moksori.engine.speaker import Speaker
from moksori.engine.speculation import Speculation, Speculations
from moksori.engine.timers import IdleTimer, TurnDeadline
from moksori.engine.tools import ToolBox
from moksori.errors import AudioFormatError
from moksori.providers.base import Transcript
from moksori.providers.registry import Stack

if TYPE_CHECKING:
    from moksori.agent_kit import AgentKit

log = logging.getLogger("moksori.session")

IDLE_PROMPT = "The user has said nothing for a while: briefly check whether they are still there."


class Session:
    def __init__(self, stack: Stack, cfg: SessionConfig | None = None, *, clock: Clock | None = None,
                 session_id: str | None = None, toolbox: ToolBox | None = None, kit: AgentKit | None = None) -> None:
        cfg = cfg or SessionConfig()
        box = toolbox or ToolBox()
        for tool in kit.engine_tools() if kit is not None else ():
            if box.get(tool.spec.name) is None:  # a transport's own tool (the phone's end_call) wins
                box.add(tool)
        ctx = self._ctx = SessionContext(stack, cfg, clock or LoopClock(), session_id or new_id("sess"), box, kit)
        self.taker = T.TurnTaker(cfg.turn)
        self.speaker = ctx.speaker = Speaker(ctx.clock, ctx.publish, rate=cfg.output_rate,
                                             chunk_ms=cfg.output_chunk_ms, lead_ms=cfg.output_lead_ms,
                                             on_audible=self._on_audible)
        self._vad = stack.vad.stream()
        self._input = InputAudio(stack.vad.caps.frame_samples)
        self._responses = Responses(ctx)
        self._interruptions = Interruptions(ctx, self._responses, lambda: self.taker.turn_id)
        self._incremental = IncrementalSTT(ctx, self._input)
        self._specs = Speculations(ctx, self._input, self._responses, on_analysis=self._on_analysis,
                                   on_committed=self._on_user_committed, incremental=self._incremental)
        self._prefill = LlmPrefill(ctx, lambda: self._incremental.enabled)
        self._incremental.on_commit = self._prefill.committed
        self._partials = PartialTranscripts(ctx, self.taker, self._input.between, self._specs.known_item_id,
                                            self._incremental.partial, self._prefill.offer)
        self._partials.readers.add("llm prefill", lambda: self._prefill.wants_partials)
        stack.sessions.add(self)  # counted while open (Stack.live_sessions)
        for other in list(stack.sessions):  # `alone`: their prefills stop while this one is open
            if other is not self and not other.closed:
                other.prefill.recheck()
        self._deadline = TurnDeadline(ctx.clock, self.taker, ctx.spawn, self._handle)
        self._idle = IdleTimer(ctx.clock, ctx.spawn, self._on_idle_timeout)
        self._state = "idle"
        self._state_deferred = False
        ctx.on_change = self._update_state
        self.speaker.start()
        ctx.publish(E.SessionStarted(t=ctx.clock.now(), session_id=ctx.id, stack=stack.describe()))
        self._noise = NoiseReduction(ctx, self._push_clean)
        self._noise.set(cfg.noise_reduction)
        self._backchannels = Backchannels(ctx, self._responses, self.taker)
        self._backchannels.configure(cfg)
        self._item_words = ItemWords(ctx)

    # ================================================================== what users read

    @property
    def id(self) -> str:
        return self._ctx.id

    @property
    def incremental(self) -> IncrementalSTT:
        """Incremental transcription of the user's turns (its counters are read by benchmarks)."""
        return self._incremental

    @property
    def partials(self) -> PartialTranscripts:
        """Live partial transcripts (their counters are read by benchmarks). A transport that
        reads them declares it: `session.partials.readers.add(name)` (engine/partial_readers.py)."""
        return self._partials

    @property
    def prefill(self) -> LlmPrefill:
        """The LLM prefill of the user's words (its counters are read by tests and benchmarks)."""
        return self._prefill

    @property
    def item_words(self) -> ItemWords:
        """The background transcription of audio items a client added (its counters are read by tests)."""
        return self._item_words

    @property
    def speculations(self) -> Speculations:
        """The speculative decodes of the user's pauses (their counters are read by benchmarks)."""
        return self._specs

    @property
    def closed(self) -> bool:
        return self._ctx.closed

    @property
    def stack(self) -> Stack:
        return self._ctx.stack

    @property
    def cfg(self) -> SessionConfig:
        return self._ctx.cfg

    @property
    def clock(self) -> Clock:
        return self._ctx.clock

    @property
    def bus(self) -> EventBus:
        return self._ctx.bus

    @property
    def memory(self) -> Memory:
        return self._ctx.memory

    @property
    def toolbox(self) -> ToolBox:
        return self._ctx.toolbox

    @property
    def kit(self) -> AgentKit | None:
        return self._ctx.kit

    def store_redactor(self) -> Callable[[str], str] | None:
        """What masks PII in the records this session writes to the store (the kit's, or the
        guardrails' of a session with guardrails and no kit: the realtime brain)."""
        if self._ctx.kit is not None:
            return self._ctx.kit.store_redactor()
        g = self._ctx.guardrails
        return g.redactor if g is not None and g.redactor else None

    @property
    def last_language(self) -> str:
        return self._ctx.last_language

    @property
    def state(self) -> str:
        """idle | user_speaking | user_paused | thinking | speaking."""
        return self._state

    def publish(self, ev: E.Event) -> None:
        """Put an event on this session's timeline (transports add their own, e.g. `call.*`)."""
        self._ctx.publish(ev)

    def publish_error(self, err: BaseException, *, turn_id: int | None = None,
                      response_id: str | None = None) -> None:
        self._ctx.publish_error(err, turn_id=turn_id, response_id=response_id)

    def system_prompt(self, instructions: str | None = None) -> str:
        return self._ctx.system_prompt(instructions)

    def heard_so_far(self) -> list[tuple[str, str, str]]:
        """(response id, item id, text heard so far) of each reply being played now."""
        return self._responses.heard_so_far()

    def busy(self) -> bool:
        """A speculation, reply or playback is in flight."""
        return self._responses.busy() or self.speaker.busy() or self._specs.busy()

    def _user_activity(self) -> str:
        """idle | speaking | paused: confirmed user speech, as the turn-taker sees it (a brain
        whose upstream detects turns answers from the upstream's speech events instead)."""
        return self.taker.state if self.taker.confirmed else "idle"

    def _thinking(self) -> bool:
        """A reply is on its way: a released turn's words, or a public reply, in the works."""
        return self._responses.thinking() or self._specs.thinking()

    def _update_state(self) -> None:
        if self._state_deferred:
            return
        user = self._user_activity()
        if user == "speaking":
            new = "user_speaking"
        elif user == "paused":
            new = "user_paused"
        elif self.speaker.audible:
            new = "speaking"
        elif self._thinking():
            new = "thinking"
        else:
            new = "idle"
        if new != self._state:
            prev, self._state = self._state, new
            log.debug("session %s: %s -> %s", self.id, prev, new)
            self.publish(E.SessionState(t=self.clock.now(), state=new, previous=prev))

    # ================================================================== config

    def update(self, cfg: SessionConfig) -> None:
        old = self.cfg
        self._ctx.cfg = cfg
        self.taker.set_config(cfg.turn)
        if cfg.turn.mode == "manual" and old.turn.mode != "manual":
            self._drop_turn()  # the VAD's turn in progress could never end now, and would hold every reply
        self.memory.max_messages = cfg.max_history_messages
        window = self.memory.window
        if window is not None and window.policy.max_messages != cfg.max_history_messages:
            window.policy = replace(window.policy, max_messages=cfg.max_history_messages)
        if cfg.output_rate != old.output_rate or cfg.output_chunk_ms != old.output_chunk_ms \
                or cfg.output_lead_ms != old.output_lead_ms:
            self.speaker.rate = cfg.output_rate
            self.speaker.chunk = max(1, cfg.output_rate * cfg.output_chunk_ms // 1000)
            self.speaker.lead = cfg.output_lead_ms / 1000
        if cfg.turn.idle_timeout_ms is None or cfg.turn.mode == "manual":
            self._idle.disarm()
        self._noise.set(cfg.noise_reduction)
        if cfg.backchannel != old.backchannel or cfg.turn != old.turn:
            self._backchannels.configure(cfg)

    def tools_changed(self) -> None:
        """Tools were added to or removed from `toolbox` (e.g. an MCP server was listed). The
        pipeline reads the box at each reply; the realtime brain tells its upstream."""

    # ================================================================== audio in

    def push_audio(self, frame: Frame) -> None:
        """Feed caller audio (any rate). VAD and turn-taking run inline: ~0.15 ms per 32 ms.
        With noise reduction on, the frame goes through the denoiser (off the loop) first."""
        if self._ctx.closed:
            return
        if not isinstance(frame, Frame):
            raise AudioFormatError("push_audio expects a moksori Frame")
        if not self._noise.push(frame):
            self._push_clean(frame)

    async def drain_input(self) -> None:
        """Wait until audio pushed so far has gone through the denoiser (a no-op without one)."""
        await self._noise.drain()

    def _push_clean(self, frame: Frame) -> None:
        if self._ctx.closed:
            return
        frames = self._input.frames(frame, self.clock.now())
        if frames is None:
            return
        manual = self.cfg.turn.mode == "manual"
        for t_start, t_end, chunk in frames:
            self._input.remember(t_start, t_end, chunk, in_turn=self.taker.state != "idle")
            if manual:
                self._input.keep(chunk)
                continue
            self._handle(self.taker.on_frame(t_start, t_end, self._vad(chunk)))
            if self._backchannels.on and self.taker.state == "speaking" and self.taker.confirmed:
                self._backchannels.on_speech(self.taker.turn_id, t_start, t_end)
        self._deadline.arm()

    def audio_between(self, t0: float, t1: float) -> np.ndarray:
        return self._input.between(t0, t1)

    def commit(self) -> str | None:
        """End the user's turn now (manual mode, or Realtime `input_audio_buffer.commit`)."""
        now = self.clock.now()
        if self.cfg.turn.mode == "manual":
            audio = self._input.take()
            if audio is None:
                return None
            turn_id = self.taker.turn_id
            self.taker.turn_id += 1
            spec = self._specs.new_from_audio(turn_id, audio)
            self.publish(E.UserTurnEnded(t=now, turn_id=turn_id, item_id=spec.item_id, reason="commit"))
            self._specs.release(spec)
            self._specs.start(spec)
            return spec.item_id
        actions = self.taker.commit(now)
        self._handle(actions)
        ended = [a for a in actions if isinstance(a, T.TurnEnded)]
        return self._specs.known_item_id(ended[0].turn_id) if ended else None

    def clear_input(self) -> None:
        self._input.clear()
        self._drop_turn()

    def _drop_turn(self) -> None:
        """Forget the user's turn in progress (no transcript, no reply) and let replies play."""
        self._interruptions.release_hold()
        if self.taker.state != "idle":
            self._specs.cancel_unreleased(self.taker.turn_id)
            self._incremental.end_turn()
            self._prefill.end_turn()
            self.taker.reset()
        self._update_state()

    # ================================================================== turn actions

    def _handle(self, actions: list[T.Action]) -> None:
        if not actions:
            return
        for a in actions:
            match a:
                case T.SpeechStarted(turn_id=turn_id, onset=onset):
                    self._idle.disarm()
                    self.publish(E.UserSpeechStarted(t=onset, turn_id=turn_id, item_id=self._specs.item_id(turn_id)))
                    self._interruptions.user_started()
                    self._incremental.begin(turn_id, onset)
                    self._prefill.begin(turn_id)
                    self._partials.start(turn_id)
                case T.BargeIn(onset=onset):
                    self.interrupt("turn_detected", onset=onset)
                case T.Paused(turn_id=turn_id, voice_end=voice_end):
                    self._backchannels.on_pause(turn_id, voice_end)  # else only the state changes (user_paused)
                case T.Speculate(turn_id=turn_id, spec_id=spec_id, onset=onset, voice_end=voice_end):
                    self._specs.start(self._specs.new(turn_id, spec_id, onset, voice_end))
                case T.Resumed(turn_id=turn_id, spec_id=spec_id):
                    self._incremental.resumed(turn_id, spec_id)
                    self._specs.cancel((turn_id, spec_id))
                case T.TurnEnded():
                    self._on_turn_ended(a)
                case T.Discarded(onset=onset):
                    self.publish(E.UserNoise(t=self.clock.now(), onset=round(onset, 3)))
        self._update_state()

    def _on_turn_ended(self, a: T.TurnEnded) -> None:
        self._backchannels.on_turn_end(a.turn_id)
        item_id = self._specs.item_id(a.turn_id)
        self.publish(E.UserSpeechStopped(t=a.voice_end, turn_id=a.turn_id, item_id=item_id))
        self.publish(E.UserTurnEnded(t=self.clock.now(), turn_id=a.turn_id, item_id=item_id, reason=a.reason,
                                     silence_ms=round(1000 * (a.t - a.voice_end))))
        self._partials.stop()
        self._prefill.end_turn()
        self._specs.end_turn(a)
        self._incremental.end_turn()

    def _on_analysis(self, spec: Speculation, eot: float | None, cue: T.TextCue) -> None:
        self._backchannels.on_analysis(spec.turn_id, eot, cue)
        self._handle(self.taker.on_analysis(spec.turn_id, spec.spec_id, self.clock.now(), eot_prob=eot, text_cue=cue))
        self._deadline.arm()

    def _on_user_committed(self, spec: Speculation) -> None:
        self._interruptions.settle(spec.turn_id, bool(spec.transcript and spec.transcript.text.strip()))

    # ================================================================== replies

    def create_response(self, **overrides: Any) -> Response:
        """Start a reply now from the conversation so far (Realtime `response.create`). One in the
        conversation answers the turns whose replies were waiting (engine/responses.py): they go."""
        self._idle.disarm()
        lang = self.cfg.language if self.cfg.language != "auto" else self.last_language
        opts = self._responses.options(**overrides)
        if opts.in_conversation:
            self._responses.drop_waiting()
        resp = self._responses.start(opts, None, lang, release=True)
        self._update_state()
        return resp

    def say(self, text: str, **overrides: Any) -> Response:
        """Speak fixed text (a greeting) as an assistant response."""
        return self.create_response(fixed_text=text, **overrides)

    def add_item(self, item: Item, *, after: str | None = None) -> Item:
        """Add an item from outside a turn (a Realtime client's `conversation.item.create`):
        after `after`, at the start with `after="root"`, else at the end."""
        mem = self.memory
        if after == "root":
            mem.items.insert(0, item)
        else:
            mem.add(item, after=after)
        if item.type == "message" and item.role == "user" and item.text and not item.audio:
            # typed words, as from `add_user_text`: followers (live events) see them too
            self.publish(E.UserTranscript(t=self.clock.now(), item_id=item.id, text=item.text,
                                          language=item.language or self.last_language, final=True, typed=True))
        return item

    def add_audio_item(self, item: Item, parts: list[Part], *, after: str | None = None) -> Item:
        """Add a client's item with audio (`parts`: its content in order, text or 16 kHz audio) as
        `add_item` does, at once; its words follow in the background (engine/item_words.py), then
        `user.transcript` (not typed). A reply that reads the conversation waits for them."""
        item = self.add_item(item, after=after)
        self._item_words.add(item, parts)
        return item

    def delete_item(self, item_id: str) -> bool:
        """Remove an item from the conversation (Realtime `conversation.item.delete`)."""
        deleted = self.memory.delete(item_id)
        if deleted:
            self._item_words.cancel(item_id)  # its words, if still coming, are not wanted
        return deleted

    def add_user_text(self, text: str, *, respond: bool = True) -> Item:
        item = self.memory.add(Item(id=new_id("item"), role="user", text=text))
        self.publish(E.UserTranscript(t=self.clock.now(), item_id=item.id, text=text, language=self.last_language,
                                      final=True, typed=True))
        if respond:
            self.interrupt("client_cancelled")
            self.create_response()
        return item

    async def transcribe_item_audio(self, audio16k: np.ndarray) -> Transcript:
        """The words of a client's audio, now: background work in windows that give way to live
        turns (engine/item_words.py), awaited by the caller."""
        return await self._item_words.transcribe(audio16k)

    # ================================================================== interruption (interruption.py)

    def interrupt(self, reason: str = "turn_detected", *, onset: float | None = None) -> list[str]:
        """Barge-in / cancel: stop audio now, cancel LLM and TTS, keep only what was heard. The
        turns' replies waiting for the one cut go too (engine/responses.py)."""
        with self._one_state_change():
            self._responses.drop_waiting(reason)
            return self._interruptions.interrupt(reason, onset=onset)

    def cancel_response(self, response_id: str | None = None) -> list[str]:
        """Cancel one reply (by id) or every reply in flight; returns the ids cancelled."""
        if response_id is None:
            return self.interrupt("client_cancelled")
        with self._one_state_change():
            return self._interruptions.cancel(response_id)

    @contextmanager
    def _one_state_change(self) -> Iterator[None]:
        """An interruption's events form one chain (cleared, interrupted, done); the session's
        new state follows it instead of landing in the middle."""
        self._state_deferred = True
        try:
            yield
        finally:
            self._state_deferred = False
            self._update_state()

    def truncate(self, item_id: str, audio_end_ms: int) -> Item | None:
        """The client reports it played only `audio_end_ms` of an assistant item (a reply still
        in progress is cut there, as by a cancel)."""
        with self._one_state_change():
            return self._interruptions.truncate(item_id, audio_end_ms)

    def split_reply(self, response_id: str, item_id: str, said: Callable[[], None] | None = None) -> bool:
        """A transport shows a tool item inside reply `response_id`: the words the reply says from
        now on are assistant message item `item_id` (`engine/reply_parts.py`). The words said
        before it keep their audio: True when some of it is still being synthesised or sent (the
        transport shows the tool item after it: `said()` is called once it has all gone out, or
        never if the reply is cut first, which ends it anyway); False: it all has."""
        return self._responses.split(response_id, item_id, said)

    def ack_playback(self, response_id: str, ms: int) -> None:
        """A transport confirms the listener has heard `ms` of a response (Twilio marks)."""
        self._interruptions.ack(response_id, ms)

    def listener_lost(self, silent_s: float) -> None:
        """The listener is gone and was last known to be there `silent_s` seconds ago (a client
        whose network vanished, noticed only by the keepalive): the reply playing then is heard
        up to that moment, not up to what the clock says played since. Call before `close()`."""
        if silent_s > 0:
            self.speaker.listener_lost(self.clock.now() - silent_s)

    # ================================================================== idle timeout

    def _on_audible(self, audible: bool) -> None:
        self.taker.set_agent_speaking(audible)
        self._backchannels.set_agent_speaking(audible)
        idle_ms = self.cfg.turn.idle_timeout_ms
        if audible:
            self._idle.disarm()
        elif idle_ms and self.cfg.turn.mode != "manual" and self.taker.state == "idle":
            self._idle.arm(self.clock.now(), idle_ms / 1000)
        self._update_state()

    def _on_idle_timeout(self, since: float) -> None:
        """Nobody spoke for `idle_timeout_ms` after the agent's audio: commit an empty user
        turn and reply to it, as OpenAI's `server_vad` does."""
        if self._ctx.closed or self.taker.state != "idle" or self.state != "idle" or self.busy():
            return
        now = self.clock.now()
        ended = self.taker.idle_timeout(now)
        if ended is None:
            return
        turn_id, item_id = ended.turn_id, self._specs.item_id(ended.turn_id)
        self.publish(E.UserIdleTimeout(t=now, turn_id=turn_id, item_id=item_id, idle_since=round(since, 4)))
        self.publish(E.UserTurnEnded(t=now, turn_id=turn_id, item_id=item_id, reason=ended.reason,
                                     silence_ms=round(1000 * (now - since))))
        self.memory.add(Item(id=item_id, role="user", text="", audio=True, language=self.last_language))
        self.publish(E.UserTranscript(t=now, turn_id=turn_id, item_id=item_id, text="", language=self.last_language,
                                      final=True, audio_s=round(now - since, 3)))
        self.publish(E.UserCommitted(t=now, turn_id=turn_id, item_id=item_id,
                                     previous_item_id=self.memory.previous_id(item_id)))
        if self.cfg.turn.create_response:
            base = self.system_prompt()
            self.create_response(instructions=f"{base}\n{IDLE_PROMPT}")

    # ================================================================== lifecycle

    async def ready(self, timeout: float | None = None) -> None:
        """Wait until the brain can take the caller's audio (the pipeline always can; the realtime
        brain once its upstream is connected, else `ProviderError`)."""

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until no speculation, response or playback is in flight."""
        async def idle() -> None:
            while self.busy():
                await asyncio.sleep(0.01)
        await asyncio.wait_for(idle(), timeout)

    async def keep_last_words(self, timeout: float) -> bool:
        """The caller is gone (a phone call hung up) and may have been speaking: end their turn
        now, with no reply, and wait up to `timeout` (virtual-time aware) for its words to be
        committed to the conversation, so the record keeps what they said last. True if it did
        not have to give up. A no-op when no turn is open and no transcript is pending."""
        if self._ctx.closed:
            return True
        await self.drain_input()
        if self.cfg.turn.create_response:
            self.update(self.cfg.with_(turn=replace(self.cfg.turn, create_response=False)))
        self.commit()  # nothing unless the VAD confirmed speech in a turn still open
        deadline = self.clock.now() + timeout
        while self._specs.thinking():
            if self.clock.now() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def close(self) -> None:
        ctx = self._ctx
        if ctx.closed:
            return
        reply_tasks = self._responses.close()
        self._specs.close()
        self._item_words.close()
        self._incremental.end_turn()
        self._prefill.end_turn()
        self._backchannels.close()
        await self._noise.close()
        tasks = ctx.running_tasks() + reply_tasks
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.speaker.close()
        self.publish(E.SessionClosed(t=self.clock.now()))
        ctx.closed = True
        self.bus.close()


