"""The session runtime: audio frames in; audio frames and timeline events out.

    push_audio -> resample to 16 kHz -> 32 ms frames -> VAD -> TurnTaker -> actions
    pause      -> speculate: STT, end-of-turn model, LLM + TTS held back
    turn ended -> release the speculation (or start one); the speaker plays it
    barge-in   -> cancel LLM/TTS, clear queued audio, keep only what was heard

Every internal result carries its turn id and speculation id; anything stale is dropped, so
a late transcript or LLM token from a cancelled stage can never start a second reply.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from moksori.audio.frames import Frame
from moksori.audio.resample import StreamResampler
from moksori.engine import turns as T
from moksori.engine.audio_ring import AudioRing
from moksori.engine.clock import Clock, LoopClock
from moksori.engine.config import SessionConfig
from moksori.engine.endpointing import text_cue
from moksori.engine.events import Event, EventBus
from moksori.engine.memory import Item, Memory, heard_text, new_id
from moksori.engine.partials import PartialTranscripts
from moksori.engine.prompts import system_prompt
from moksori.engine.response import Response, ResponseOptions
from moksori.engine.speaker import Speaker
from moksori.engine.tools import ToolBox
from moksori.errors import AudioFormatError, MoksoriError
from moksori.providers.base import Message, STTOptions, Transcript, one_chunk
from moksori.providers.registry import Stack

log = logging.getLogger("moksori.session")

VAD_RATE = 16000
RING_SECONDS = 40.0  # audio kept while a turn is in progress (max turn + prefix padding)
IDLE_KEEP_SECONDS = 1.0  # while nobody speaks: enough for the prefix padding of the next turn
# Manual mode keeps everything since the last commit, up to this; transports set a lower limit
# and tell the client (Realtime: input_audio_buffer_full) before this one is ever reached.
MANUAL_MAX_SECONDS = 300.0


@dataclass
class Speculation:
    turn_id: int
    spec_id: int
    onset: float
    voice_end: float
    item_id: str
    released: bool = False
    transcript: Transcript | None = None
    response: Response | None = None
    task: asyncio.Task | None = None
    held: list[tuple[str, float, dict]] = field(default_factory=list)
    committed: bool = False
    audio: np.ndarray | None = None
    audio_s: float = 0.0


class Session:
    def __init__(self, stack: Stack, cfg: SessionConfig | None = None, *, clock: Clock | None = None,
                 session_id: str | None = None, toolbox: ToolBox | None = None,
                 max_history: int = 24) -> None:
        self.stack = stack
        self.cfg = cfg or SessionConfig()
        self.clock = clock or LoopClock()
        self.id = session_id or new_id("sess")
        self.bus = EventBus()
        self.memory = Memory(max_messages=max_history)
        self.toolbox = toolbox or ToolBox()
        self.taker = T.TurnTaker(self.cfg.turn)
        self.speaker = Speaker(self.clock, self.publish, rate=self.cfg.output_rate, chunk_ms=self.cfg.output_chunk_ms,
                               lead_ms=self.cfg.output_lead_ms, on_audible=self._on_audible)
        self._vad = stack.vad.stream()
        self._frame_len = stack.vad.caps.frame_samples
        self._resamplers: dict[int, StreamResampler] = {}
        self._pending = np.zeros(0, dtype=np.float32)
        self._ring = AudioRing()
        self._manual: list[np.ndarray] = []
        self._manual_samples = 0
        self._specs: dict[tuple[int, int], Speculation] = {}
        self._responses: dict[str, Response] = {}
        self._user_item_ids: dict[int, str] = {}
        self._state = "idle"
        self._closed = False
        self._deadline_task: asyncio.Task | None = None
        self._partials = PartialTranscripts(self)
        self._tasks: set[asyncio.Task] = set()
        self._segments_by_item: dict[str, list[tuple[str, int]]] = {}
        self._reoffer: tuple[int, str, str] | None = None  # (turn id, unheard text, language)
        self.last_language = self.cfg.language if self.cfg.language != "auto" else "en"
        self.speaker.start()
        self.publish("session.started", {"session_id": self.id, "stack": stack.describe()})

    # ================================================================== events

    def publish(self, typ: str, data: dict | None = None, *, t: float | None = None) -> None:
        if self._closed and typ not in ("session.closed",):
            return
        self.bus.publish(Event(typ, self.clock.now() if t is None else t, data or {}))

    def publish_error(self, err: BaseException, **extra: Any) -> None:
        code = getattr(err, "code", "server_error")
        msg = str(err) if isinstance(err, MoksoriError) else f"internal error: {type(err).__name__}"
        if not isinstance(err, MoksoriError):
            log.exception("session %s: unexpected error", self.id, exc_info=err)
        self.publish("error", {"code": code, "message": msg, "retryable": getattr(err, "retryable", False), **extra})

    def system_prompt(self, instructions: str | None = None) -> str:
        return system_prompt(instructions if instructions is not None else self.cfg.instructions,
                             self.stack.llm.caps.languages)

    @property
    def state(self) -> str:
        return self._state

    def _update_state(self) -> None:
        user = self.taker.state
        if user == "speaking" and self.taker.confirmed:
            new = "user_speaking"
        elif user == "paused" and self.taker.confirmed:
            new = "user_paused"
        elif self.speaker.audible:
            new = "speaking"
        elif any(r.released and r.status in ("in_progress",) for r in self._responses.values()) or \
                any(s.released and not s.committed for s in self._specs.values()):
            new = "thinking"
        else:
            new = "idle"
        if new != self._state:
            prev, self._state = self._state, new
            log.debug("session %s: %s -> %s", self.id, prev, new)
            self.publish("session.state", {"state": new, "previous": prev})

    # ================================================================== config

    def update(self, cfg: SessionConfig) -> None:
        old = self.cfg
        self.cfg = cfg
        self.taker.set_config(cfg.turn)
        if cfg.output_rate != old.output_rate or cfg.output_chunk_ms != old.output_chunk_ms \
                or cfg.output_lead_ms != old.output_lead_ms:
            self.speaker.rate = cfg.output_rate
            self.speaker.chunk = max(1, cfg.output_rate * cfg.output_chunk_ms // 1000)
            self.speaker.lead = cfg.output_lead_ms / 1000

    # ================================================================== audio in

    def push_audio(self, frame: Frame) -> None:
        """Feed caller audio (any rate). VAD and turn-taking run inline: ~0.15 ms per 32 ms."""
        if self._closed:
            return
        if not isinstance(frame, Frame):
            raise AudioFormatError("push_audio expects a moksori Frame")
        rs = self._resamplers.get(frame.rate)
        if rs is None:
            rs = self._resamplers[frame.rate] = StreamResampler(frame.rate, VAD_RATE)
        x = np.multiply(rs.process(frame.samples), 1.0 / 32768.0, dtype=np.float32)
        if len(x) == 0:
            return
        now = self.clock.now()
        buf = np.concatenate([self._pending, x]) if len(self._pending) else x
        n = self._frame_len
        count = len(buf) // n
        self._pending = buf[count * n:].copy()
        tail = len(self._pending) / VAD_RATE
        for i in range(count):
            chunk = buf[i * n:(i + 1) * n]
            t_end = now - tail - (count - 1 - i) * n / VAD_RATE
            t_start = t_end - n / VAD_RATE
            self._remember(t_start, t_end, chunk)
            if self.cfg.turn.mode == "manual":
                if self._manual_samples + len(chunk) <= MANUAL_MAX_SECONDS * VAD_RATE:
                    self._manual.append(chunk)
                    self._manual_samples += len(chunk)
                continue
            prob = self._vad(chunk)
            self._handle(self.taker.on_frame(t_start, t_end, prob))
        self._arm_deadline()

    def _remember(self, t0: float, t1: float, chunk: np.ndarray) -> None:
        # An idle session keeps ~1 s, not 40 s: with hundreds of listening sessions the full ring
        # cost 2.5 MB each and gave the garbage collector ~1,000 objects per session to walk.
        keep = RING_SECONDS if self.taker.state != "idle" else IDLE_KEEP_SECONDS
        self._ring.append(t0, t1, chunk, keep_s=keep)

    def audio_between(self, t0: float, t1: float) -> np.ndarray:
        return self._ring.between(t0, t1)

    def commit(self) -> str | None:
        """End the user's turn now (manual mode, or Realtime `input_audio_buffer.commit`)."""
        now = self.clock.now()
        if self.cfg.turn.mode == "manual":
            if not self._manual:
                return None
            audio = np.concatenate(self._manual)
            self._manual, self._manual_samples = [], 0
            turn_id = self.taker.turn_id
            self.taker.turn_id += 1
            spec = self._new_spec(turn_id, 0, now - len(audio) / VAD_RATE, now)
            spec.audio = audio  # manual mode: the whole buffer since the last commit
            self.publish("user.turn_ended", {"turn_id": turn_id, "item_id": spec.item_id, "reason": "commit"})
            self._release(spec)
            self._start_spec(spec)
            return spec.item_id
        actions = self.taker.commit(now)
        self._handle(actions)
        ended = [a for a in actions if isinstance(a, T.TurnEnded)]
        return self._user_item_ids.get(ended[0].turn_id) if ended else None

    def clear_input(self) -> None:
        self._manual, self._manual_samples = [], 0
        self._pending = np.zeros(0, dtype=np.float32)
        self.speaker.hold = False
        if self.taker.state != "idle":
            self._cancel_specs(self.taker.turn_id)
            self.taker.reset()
        self._update_state()

    # ================================================================== turn actions

    def _handle(self, actions: list[T.Action]) -> None:
        if not actions:
            return
        for a in actions:
            if isinstance(a, T.SpeechStarted):
                item_id = self._user_item_ids.setdefault(a.turn_id, new_id("item"))
                self.publish("user.speech_started", {"turn_id": a.turn_id, "item_id": item_id}, t=a.onset)
                if self.cfg.turn.interrupt_response:
                    self.speaker.hold = True  # no new reply starts while the user talks
                self._partials.start(a.turn_id)
            elif isinstance(a, T.BargeIn):
                self.interrupt("turn_detected", onset=a.onset)
            elif isinstance(a, T.Speculate):
                spec = self._new_spec(a.turn_id, a.spec_id, a.onset, a.voice_end)
                self._start_spec(spec)
            elif isinstance(a, T.Resumed):
                self._cancel_spec((a.turn_id, a.spec_id))
            elif isinstance(a, T.TurnEnded):
                self._on_turn_ended(a)
            elif isinstance(a, T.Discarded):
                self.publish("user.noise", {"onset": round(a.onset, 3)})
        self._update_state()

    def _on_turn_ended(self, a: T.TurnEnded) -> None:
        item_id = self._user_item_ids.setdefault(a.turn_id, new_id("item"))
        self.publish("user.speech_stopped", {"turn_id": a.turn_id, "item_id": item_id}, t=a.voice_end)
        self.publish("user.turn_ended", {"turn_id": a.turn_id, "item_id": item_id, "reason": a.reason,
                                         "silence_ms": round(1000 * (a.t - a.voice_end))})
        self._partials.stop()
        spec = self._specs.get((a.turn_id, a.spec_id))
        if spec is None or spec.task is None or (spec.task.done() and spec.transcript is None):
            spec = self._new_spec(a.turn_id, a.spec_id, a.onset, a.voice_end)
            self._release(spec)
            self._start_spec(spec)
        else:
            self._release(spec)
        for key in [k for k in self._specs if k[0] == a.turn_id and k != (spec.turn_id, spec.spec_id)]:
            self._cancel_spec(key)
        self._forget_old_turns(a.turn_id)

    def _forget_old_turns(self, turn_id: int) -> None:
        """Finished speculations and item ids of earlier turns are no longer needed."""
        for key in [k for k in self._specs if k[0] < turn_id]:
            spec = self._specs[key]
            if spec.task is None or spec.task.done():
                del self._specs[key]
        for old in [t for t in self._user_item_ids if t < turn_id - 1]:
            del self._user_item_ids[old]

    # ================================================================== speculation

    def _new_spec(self, turn_id: int, spec_id: int, onset: float, voice_end: float) -> Speculation:
        item_id = self._user_item_ids.setdefault(turn_id, new_id("item"))
        spec = Speculation(turn_id, spec_id, onset, voice_end, item_id)
        # take the turn's audio now: the ring is trimmed once the turn is over
        spec.audio = self.audio_between(onset - self.cfg.turn.prefix_padding_ms / 1000, self.clock.now())
        self._specs[(turn_id, spec_id)] = spec
        return spec

    def _start_spec(self, spec: Speculation) -> None:
        spec.task = self._spawn(self._speculate(spec), f"spec-{spec.turn_id}.{spec.spec_id}")

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spec_emit(self, spec: Speculation, typ: str, data: dict) -> None:
        payload = {"turn_id": spec.turn_id, "item_id": spec.item_id, **data}
        if spec.released:
            self.publish(typ, payload)
        else:
            spec.held.append((typ, self.clock.now(), payload))

    async def _speculate(self, spec: Speculation) -> None:
        key = (spec.turn_id, spec.spec_id)
        try:
            audio = spec.audio if spec.audio is not None else np.zeros(0, dtype=np.float32)
            self._spec_emit(spec, "stt.started", {"audio_s": round(len(audio) / VAD_RATE, 3)})
            lang = None if self.cfg.language == "auto" else self.cfg.language
            final: Transcript | None = None
            async for tr in self.stack.stt.transcribe(one_chunk(audio), STTOptions(language=lang,
                                                                                      languages=self.cfg.languages)):
                if tr.final:
                    final = tr
            if self._specs.get(key) is not spec:
                return  # cancelled meanwhile
            spec.transcript = final or Transcript("", lang or self.last_language, True)
            self._spec_emit(spec, "stt.finished", {"text": spec.transcript.text,
                                                   "language": spec.transcript.language})
            if spec.released:
                self._commit_user(spec)
            if spec.transcript.text.strip() and self.cfg.turn.create_response and self.cfg.turn.mode != "manual":
                self._start_spec_response(spec)
            cue = text_cue(spec.transcript.text, spec.transcript.language)
            eot = None
            if self.cfg.turn.mode == "semantic" and self.stack.turn is not None and not spec.released:
                eot = await self.stack.turn.complete_probability(audio, language=spec.transcript.language)
                self._spec_emit(spec, "eot.finished", {"probability": round(eot, 3), "text_cue": cue})
            if self._specs.get(key) is spec and not spec.released:
                self._handle(self.taker.on_analysis(spec.turn_id, spec.spec_id, self.clock.now(),
                                                    eot_prob=eot, text_cue=cue))
                self._arm_deadline()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one failed turn must not end the session
            self.publish_error(e, turn_id=spec.turn_id)
            if spec.released:
                spec.transcript = spec.transcript or Transcript("", self.last_language, True)
                self._commit_user(spec)
        finally:
            spec.audio_s = len(spec.audio) / VAD_RATE if spec.audio is not None else 0.0
            spec.audio = None  # transcribed and judged: let the turn's audio go

    def _start_spec_response(self, spec: Speculation) -> None:
        assert spec.transcript is not None
        lang = self._reply_language(spec.transcript)
        extra = () if spec.committed else (Message("user", spec.transcript.text),)
        opts = self._response_options(extra_input=extra)
        resp = Response(self, opts, spec.turn_id, lang)
        spec.response = resp
        self._track(resp)
        resp.start()
        if spec.released:
            resp.release()

    def _release(self, spec: Speculation) -> None:
        spec.released = True
        held, spec.held = spec.held, []
        for typ, t, data in held:
            self.publish(typ, data, t=t)
        if spec.transcript is not None:
            self._commit_user(spec)
        if spec.response is not None:
            spec.response.release()
        self._update_state()

    def _commit_user(self, spec: Speculation) -> None:
        if spec.committed or spec.transcript is None:
            return
        spec.committed = True
        tr = spec.transcript
        if tr.text.strip():
            self.last_language = tr.language
        self.memory.add(Item(id=spec.item_id, role="user", text=tr.text, audio=True, language=tr.language))
        self.publish("user.transcript", {"turn_id": spec.turn_id, "item_id": spec.item_id, "text": tr.text,
                                         "language": tr.language, "final": True,
                                         "audio_s": round(spec.audio_s or (len(spec.audio) / VAD_RATE
                                                                           if spec.audio is not None else 0.0), 3)})
        self.publish("user.committed", {"turn_id": spec.turn_id, "item_id": spec.item_id,
                                        "previous_item_id": self.memory.previous_id(spec.item_id)})
        self._settle_after_user_turn(spec)

    def _cancel_spec(self, key: tuple[int, int]) -> None:
        spec = self._specs.pop(key, None)
        if spec is None:
            return
        if spec.task and not spec.task.done():
            spec.task.cancel()
        if spec.response is not None:
            spec.response.cancel("turn_continued")
            self._responses.pop(spec.response.id, None)

    def _cancel_specs(self, turn_id: int) -> None:
        for key in [k for k in self._specs if k[0] == turn_id]:
            if not self._specs[key].released:
                self._cancel_spec(key)

    def _reply_language(self, tr: Transcript) -> str:
        if self.cfg.language != "auto":
            return self.cfg.language
        return tr.language if tr.language in self.stack.tts.caps.languages else self.last_language

    # ================================================================== responses

    def _response_options(self, **kw: Any) -> ResponseOptions:
        c = self.cfg
        base = ResponseOptions(instructions=c.instructions, modalities=c.modalities, voice=c.voice, tools=c.tools,
                               tool_choice=c.tool_choice, temperature=c.temperature,
                               max_output_tokens=c.max_output_tokens)
        return replace(base, **kw) if kw else base

    def _track(self, resp: Response) -> None:
        self._responses[resp.id] = resp

        def finished(r: Response) -> None:
            self._responses.pop(r.id, None)
            if r.playback is not None and r.playback.segments:
                self._segments_by_item[r.item_id] = r.playback.segments
                while len(self._segments_by_item) > 32:
                    self._segments_by_item.pop(next(iter(self._segments_by_item)))
            self._update_state()

        resp.on_finished = finished

    def create_response(self, **overrides: Any) -> Response:
        """Start a reply now from the conversation so far (Realtime `response.create`)."""
        opts = self._response_options(**overrides)
        resp = Response(self, opts, None, self.cfg.language if self.cfg.language != "auto" else self.last_language)
        self._track(resp)
        resp.start()
        resp.release()
        self._update_state()
        return resp

    def say(self, text: str, **overrides: Any) -> Response:
        """Speak fixed text (a greeting) as an assistant response."""
        return self.create_response(fixed_text=text, **overrides)

    def add_user_text(self, text: str, *, respond: bool = True) -> Item:
        item = self.memory.add(Item(id=new_id("item"), role="user", text=text))
        self.publish("user.transcript", {"item_id": item.id, "text": text, "language": self.last_language,
                                         "final": True, "typed": True})
        if respond:
            self.interrupt("client_cancelled")
            self.create_response()
        return item

    async def transcribe_item_audio(self, audio16k: np.ndarray) -> Transcript:
        lang = None if self.cfg.language == "auto" else self.cfg.language
        final = Transcript("", lang or self.last_language, True)
        async for tr in self.stack.stt.transcribe(one_chunk(audio16k), STTOptions(language=lang,
                                                                                    languages=self.cfg.languages)):
            final = tr
        return final

    def _settle_after_user_turn(self, spec: Speculation) -> None:
        """The user's words are known: decide the fate of replies held while they talked."""
        words = bool(spec.transcript and spec.transcript.text.strip())
        if words and self.cfg.turn.interrupt_response:
            for resp in list(self._responses.values()):
                pb = resp.playback
                stale = resp.released and resp.turn_id is not None and resp.turn_id < spec.turn_id
                if stale and resp.status == "in_progress" and (pb is None or pb.started_at is None):
                    if pb is not None:
                        self.speaker.cancel(resp.id)
                    self.publish("agent.interrupted", {"response_id": resp.id, "item_id": resp.item_id,
                                                       "reason": "turn_detected", "heard_ms": 0, "text": "",
                                                       "onset": None, "reaction_ms": None})
                    resp.cancel("turn_detected", heard="")
                    self._responses.pop(resp.id, None)
        elif not words and self._reoffer and self._reoffer[0] == spec.turn_id and self._reoffer[1].strip():
            # the "interruption" was a noise with no words: offer the rest of the reply again
            _, rest, lang = self._reoffer
            self.publish("agent.reoffer", {"turn_id": spec.turn_id, "text": rest})
            resp = Response(self, self._response_options(fixed_text=rest), spec.turn_id, lang)
            self._track(resp)
            resp.start()
            resp.release()
        if self._reoffer and self._reoffer[0] <= spec.turn_id:
            self._reoffer = None
        self.speaker.hold = False

    def interrupt(self, reason: str = "turn_detected", *, onset: float | None = None) -> list[str]:
        """Barge-in / cancel: stop audio now, cancel LLM and TTS, keep only what was heard."""
        now = self.clock.now()
        stopped: list[str] = []
        played = {pb.response_id: (pb, n) for pb, n in self.speaker.interrupt()}
        for resp in list(self._responses.values()):
            if not resp.released or resp.status not in ("in_progress", "pending"):
                continue
            pb, n = played.get(resp.id, (resp.playback, 0))
            heard = heard_text(pb.segments, n) if pb is not None else resp.text
            heard_ms = int(1000 * n / pb.rate) if pb is not None else 0
            if reason == "turn_detected" and pb is not None:
                rest = resp.text.split()[len(heard.split()):]
                self._reoffer = (self.taker.turn_id, " ".join(rest), resp.language)
            self.publish("agent.interrupted", {"response_id": resp.id, "item_id": resp.item_id, "reason": reason,
                                               "heard_ms": heard_ms, "text": heard,
                                               "onset": None if onset is None else round(onset, 4),
                                               "reaction_ms": None if onset is None else round(1000 * (now - onset))})
            resp.cancel(reason, heard=heard)
            if resp.item is not None:
                resp.item.truncated_at_ms = heard_ms
            self._responses.pop(resp.id, None)
            stopped.append(resp.id)
        self._update_state()
        return stopped

    def cancel_response(self, response_id: str | None = None) -> list[str]:
        if response_id is not None and response_id not in self._responses:
            return []
        return self.interrupt("client_cancelled")

    def truncate(self, item_id: str, audio_end_ms: int) -> Item | None:
        """The client reports it played only `audio_end_ms` of an assistant item."""
        item = self.memory.get(item_id)
        if item is None or item.role != "assistant":
            return None
        resp = next((r for r in self._responses.values() if r.item_id == item_id), None)
        segments = resp.playback.segments if resp and resp.playback else None
        if segments is None:
            segments = self._segments_by_item.get(item_id)
        if segments:
            text = heard_text(segments, int(audio_end_ms * self.cfg.output_rate / 1000))
        else:
            ratio = min(1.0, audio_end_ms / max(1, item.audio_ms)) if item.audio_ms else 1.0
            words = item.text.split()
            text = " ".join(words[: int(len(words) * ratio)])
        self.memory.truncate(item_id, text, audio_end_ms)
        return item

    def ack_playback(self, response_id: str, ms: int) -> None:
        """A transport confirms the listener has heard `ms` of a response (Twilio marks)."""
        self.speaker.ack(response_id, int(ms * self.cfg.output_rate / 1000))

    # ================================================================== timers

    def _on_audible(self, audible: bool) -> None:
        self.taker.set_agent_speaking(audible)
        self._update_state()

    def _arm_deadline(self) -> None:
        """When audio stops arriving mid-pause, a timer still ends the turn."""
        deadline = self.taker.next_deadline(self.clock.now())
        if deadline is None:
            return
        if self._deadline_task and not self._deadline_task.done():
            return

        async def wait() -> None:
            while True:
                d = self.taker.next_deadline(self.clock.now())
                if d is None:
                    return
                await self.clock.sleep(d - self.clock.now() + 0.001)
                self._handle(self.taker.check(self.clock.now()))

        self._deadline_task = self._spawn(wait(), "turn-deadline")

    # ================================================================== lifecycle

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until no speculation, response or playback is in flight."""
        async def idle() -> None:
            while True:
                busy = any(not r.done.is_set() for r in self._responses.values()) or self.speaker.busy() or \
                    any(s.task and not s.task.done() for s in self._specs.values())
                if not busy:
                    return
                await asyncio.sleep(0.01)
        await asyncio.wait_for(idle(), timeout)

    async def close(self) -> None:
        if self._closed:
            return
        for resp in list(self._responses.values()):
            resp.cancel("session_closed")
        for spec in list(self._specs.values()):
            if spec.task and not spec.task.done():
                spec.task.cancel()
        tasks = [t for t in self._tasks if not t.done()] + [r.task for r in self._responses.values() if r.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.speaker.close()
        self.publish("session.closed", {})
        self._closed = True
        self.bus.close()
