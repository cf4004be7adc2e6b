"""The speculation lifecycle: the reply is computed before the turn is certain.

    pause (TurnTaker `Speculate`) -> new + start: STT, end-of-turn model, a held-back Response
    user resumes (`Resumed`)      -> cancel: nobody ever sees it
    turn ended (`TurnEnded`)      -> release: held events go public with their real timestamps,
                                     the user item is committed, the reply's audio is queued

The end-of-turn model runs beside the decode (the default), after the transcript (beside the reply's LLM call)
or once the reply's LLM has answered: `TurnConfig.eot_start`. Its probability and the transcript
cue go to the TurnTaker together, whichever came first. With `TurnConfig.eot_skip` "auto", a
pause whose reply is expected only after the text rule's time (engine/reply_pace.py) is judged
only if its transcript does not end like a sentence (then after the decode); one that does is
left to the text rule.

A speculation's results carry its (turn id, speculation id); anything that arrives for a
speculation no longer in the table is dropped, so a late transcript of a cancelled pause can
never start a second reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from moksori.engine import events as E
from moksori.engine import reply_pace
from moksori.engine.session_context import SessionContext
from moksori.engine.endpointing import text_cue
from moksori.engine.incremental_stt import IncrementalSTT
from moksori.engine.input_audio import VAD_RATE, InputAudio
from moksori.engine.item_words import transcription_failed
from moksori.engine.memory import Item, new_id
from moksori.engine.response import Response
from moksori.engine.responses import Responses
from moksori.engine.turns import TextCue, TurnEnded
from moksori.providers.base import Message, STTOptions, Transcript, one_chunk

log = logging.getLogger("moksori.session")

Key = tuple[int, int]  # (turn id, speculation id)


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
    task: asyncio.Task[None] | None = None
    held: list[E.Event] = field(default_factory=list)
    committed: bool = False
    audio: np.ndarray | None = None
    audio_s: float = 0.0
    audio_t0: float = 0.0  # session times of the first and last frame of `audio`
    audio_end: float = 0.0
    failure: Exception | None = None  # why its words could not be had (the turn's own decode failed)

    @property
    def key(self) -> Key:
        return (self.turn_id, self.spec_id)


# (speculation, end-of-turn probability or None, transcript cue) -> the session asks the TurnTaker
OnAnalysis = Callable[[Speculation, float | None, TextCue], None]
OnCommitted = Callable[[Speculation], None]


class Speculations:
    def __init__(self, ctx: SessionContext, audio: InputAudio, responses: Responses, *,
                 on_analysis: OnAnalysis, on_committed: OnCommitted,
                 incremental: IncrementalSTT | None = None) -> None:
        self._ctx = ctx
        self._audio = audio
        self._responses = responses
        self._on_analysis = on_analysis
        self._on_committed = on_committed
        self._incremental = incremental
        self._specs: dict[Key, Speculation] = {}
        # counters, all turns (for benchmarks): speculations started; cancelled because the user
        # went on; of those, cancelled before their transcript came (CTranslate2 cannot stop a
        # decode midway: it runs on, and the next decode may queue behind it)
        self.started = 0
        self.cancelled = 0
        self.cancelled_decoding = 0
        self._item_ids: dict[int, str] = {}  # turn id -> the user item it becomes
        # The realtime brain: a pause is still transcribed and judged (the turn-taker needs the
        # end-of-turn model and the transcript cue), but no reply starts here and the user item is
        # the brain's to commit (its transcript comes from the upstream); `on_committed` still runs.
        self.analysis_only = False

    # -------------------------------------------------------------- turns and items

    def item_id(self, turn_id: int) -> str:
        """The user item id of a turn (made on first use)."""
        return self._item_ids.setdefault(turn_id, new_id("item"))

    def known_item_id(self, turn_id: int) -> str | None:
        return self._item_ids.get(turn_id)

    # -------------------------------------------------------------- lifecycle

    def new(self, turn_id: int, spec_id: int, onset: float, voice_end: float) -> Speculation:
        ctx = self._ctx
        spec = Speculation(turn_id, spec_id, onset, voice_end, self.item_id(turn_id))
        # take the turn's audio now: the ring is trimmed once the turn is over
        spec.audio, spec.audio_t0, spec.audio_end = self._audio.span(onset - ctx.cfg.turn.prefix_padding_ms / 1000,
                                                                      ctx.clock.now())
        self._specs[spec.key] = spec
        return spec

    def new_from_audio(self, turn_id: int, audio: np.ndarray) -> Speculation:
        """Manual mode: the whole buffer since the last commit is the turn."""
        now = self._ctx.clock.now()
        spec = Speculation(turn_id, 0, now - len(audio) / VAD_RATE, now, self.item_id(turn_id))
        spec.audio = audio
        self._specs[spec.key] = spec
        return spec

    def start(self, spec: Speculation) -> None:
        self.started += 1
        spec.task = self._ctx.spawn(self._run(spec), f"spec-{spec.turn_id}.{spec.spec_id}")

    def release(self, spec: Speculation) -> None:
        """The turn is certain: go public."""
        spec.released = True
        held, spec.held = spec.held, []
        for ev in held:
            self._ctx.publish(ev)
        if spec.transcript is not None:
            self._commit_user(spec)
        if spec.response is not None:
            spec.response.release()
        self._ctx.on_change()

    def cancel(self, key: Key) -> None:
        spec = self._specs.pop(key, None)
        if spec is None:
            return
        self.cancelled += 1
        if spec.task and not spec.task.done():
            self.cancelled_decoding += spec.transcript is None
            spec.task.cancel()
        if spec.response is not None:
            spec.response.cancel("turn_continued")
            self._responses.forget(spec.response.id)

    def cancel_unreleased(self, turn_id: int) -> None:
        for key in [k for k in self._specs if k[0] == turn_id]:
            if not self._specs[key].released:
                self.cancel(key)

    def end_turn(self, a: TurnEnded) -> None:
        """Release the speculation of the pause that ended the turn (or start one now)."""
        spec = self._specs.get((a.turn_id, a.spec_id))
        if spec is None or spec.task is None or (spec.task.done() and spec.transcript is None):
            spec = self.new(a.turn_id, a.spec_id, a.onset, a.voice_end)
            self.release(spec)
            self.start(spec)
        else:
            self.release(spec)
        for key in [k for k in self._specs if k[0] == a.turn_id and k != spec.key]:
            self.cancel(key)
        self._forget_old_turns(a.turn_id)

    def _forget_old_turns(self, turn_id: int) -> None:
        """Finished speculations and item ids of earlier turns are no longer needed."""
        for key in [k for k in self._specs if k[0] < turn_id]:
            spec = self._specs[key]
            if spec.task is None or spec.task.done():
                del self._specs[key]
        for old in [t for t in self._item_ids if t < turn_id - 1]:
            del self._item_ids[old]

    # -------------------------------------------------------------- queries

    def is_current(self, spec: Speculation) -> bool:
        return self._specs.get(spec.key) is spec

    def thinking(self) -> bool:
        """A released turn whose words are not known yet."""
        return any(s.released and not s.committed for s in self._specs.values())

    def busy(self) -> bool:
        return any(s.task and not s.task.done() for s in self._specs.values())

    def close(self) -> None:
        for spec in list(self._specs.values()):
            if spec.task and not spec.task.done():
                spec.task.cancel()

    # -------------------------------------------------------------- the work

    def _emit(self, spec: Speculation, ev: E.Event) -> None:
        if spec.released:
            self._ctx.publish(ev)
        else:
            spec.held.append(ev)

    def _judges(self, spec: Speculation) -> bool:
        """Does this speculation's pause need the end-of-turn model (the turn is not over yet)?"""
        ctx = self._ctx
        return ctx.cfg.turn.mode == "semantic" and ctx.stack.turn is not None and not spec.released

    async def _eot(self, audio: np.ndarray, language: str | None) -> float:
        assert self._ctx.stack.turn is not None
        return await self._ctx.stack.turn.complete_probability(audio, language=language)

    async def _run(self, spec: Speculation) -> None:
        ctx = self._ctx
        eot_task: asyncio.Task[float] | None = None
        try:
            audio = spec.audio if spec.audio is not None else np.zeros(0, dtype=np.float32)
            audio_s = len(audio) / VAD_RATE
            started = ctx.clock.now()
            # a reply expected after the text rule's time (`eot_skip`): the model waits for the
            # words, which may make it moot
            late = self._late(spec, audio_s, started)
            if ctx.cfg.turn.eot_start == "with_stt" and self._judges(spec) and not late:
                # the model needs only the audio (smart-turn ignores the language): judge the pause
                # while Whisper decodes it, so the reply's LLM later has the cores to itself
                eot_task = asyncio.create_task(self._eot(audio, ctx.stt_language() or ctx.last_language),
                                               name=f"eot-{spec.turn_id}.{spec.spec_id}")
            self._emit(spec, E.SttStarted(t=started, turn_id=spec.turn_id, item_id=spec.item_id,
                                          audio_s=round(audio_s, 3)))
            lang = ctx.stt_language()
            final: Transcript | None = None
            inc = self._incremental
            if inc is not None and spec.spec_id > 0 and inc.owns(spec.turn_id):
                final = await inc.transcribe(spec)  # only the audio after the committed point
            else:
                async for tr in ctx.stt.transcribe(one_chunk(audio), STTOptions(language=lang,
                                                                                 languages=ctx.cfg.languages,
                                                                                 prompt=ctx.cfg.stt_prompt)):
                    if tr.final:
                        final = tr
                if self.is_current(spec):  # a whole decode (not a cancelled one): its time teaches the pace
                    reply_pace.for_stt(ctx.stt).decoded(audio_s, 1000 * (ctx.clock.now() - started))
            if not self.is_current(spec):
                return  # cancelled meanwhile
            spec.transcript = final or Transcript("", lang or ctx.last_language, True)
            self._emit(spec, E.SttFinished(t=ctx.clock.now(), turn_id=spec.turn_id, item_id=spec.item_id,
                                           text=spec.transcript.text, language=spec.transcript.language))
            if spec.released:
                self._commit_user(spec)
            turn = ctx.cfg.turn
            if spec.transcript.text.strip() and turn.create_response and turn.mode != "manual" \
                    and not self.analysis_only:
                self._start_response(spec)
                if isinstance(spec.response, Response):  # its first audio teaches the pace
                    spec.response.on_first_audio = _pace_reply(reply_pace.for_stt(ctx.stt), ctx.clock.now())
            cue = text_cue(spec.transcript.text, spec.transcript.language)
            eot = None
            # a late reply and words that end like a sentence: the text rule ends the turn before
            # the reply is ready, whatever the model would say; no model call
            skip = late and cue == "complete"
            if eot_task is None and turn.eot_start == "after_first_token" and spec.response is not None \
                    and self._judges(spec) and not skip:
                # the reply's prompt evaluation first, alone on the cores; then the model, beside
                # the first clause's tokens. The turn's end still comes before that clause's audio
                # (which waits for it anyway)
                await spec.response.llm_answered.wait()
            if eot_task is not None and not self._judges(spec):
                eot_task.cancel()  # the turn ended meanwhile (max pause): its end needs no model
                eot_task = None
            elif eot_task is None and self._judges(spec) and not skip:
                eot_task = asyncio.create_task(self._eot(audio, spec.transcript.language),
                                               name=f"eot-{spec.turn_id}.{spec.spec_id}")
            if eot_task is not None:
                eot = await eot_task
                self._emit(spec, E.EotFinished(t=ctx.clock.now(), turn_id=spec.turn_id, item_id=spec.item_id,
                                               probability=round(eot, 3), text_cue=cue))
            if self.is_current(spec) and not spec.released:
                self._on_analysis(spec, eot, cue)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one failed turn must not end the session
            if spec.transcript is None:
                self._words_failed(spec, e)  # the turn's words could not be had (analysis only: the brain's to say)
            else:
                ctx.publish_error(e, turn_id=spec.turn_id)
                if spec.released:
                    spec.transcript = spec.transcript or Transcript("", ctx.last_language, True)
                    self._commit_user(spec)
        finally:
            if eot_task is not None and not eot_task.done():
                eot_task.cancel()
            spec.audio_s = len(spec.audio) / VAD_RATE if spec.audio is not None else 0.0
            spec.audio = None  # transcribed and judged: let the turn's audio go

    def _words_failed(self, spec: Speculation, err: Exception) -> None:
        """A decode failed. A pause's is moot: the turn's end decodes again (`end_turn`), and only
        that one is reported. The turn's own: its item is committed without words, the session
        hears `user.transcription_failed` (not an empty transcript), and no reply is made (analysis
        only: the brain is told, `spec.failure` set, and says what the turn came to)."""
        ctx = self._ctx
        if not spec.released:
            log.info("session %s: a pause's transcription failed (%s); the turn's end tries again", ctx.id, err)
            return
        spec.transcript, spec.failure = Transcript("", ctx.last_language, True), err
        self._commit_user(spec)

    def _late(self, spec: Speculation, audio_s: float, now: float) -> bool:
        """`eot_skip` is auto and this pause's reply is expected after the text rule's time."""
        turn = self._ctx.cfg.turn
        if turn.eot_skip != "auto" or not self._judges(spec):
            return False
        ready = reply_pace.for_stt(self._ctx.stt).ready_ms(audio_s, 1000 * (now - spec.voice_end))
        return ready is not None and ready >= turn.silence_duration_ms + turn.text_grace_ms

    def _start_response(self, spec: Speculation) -> None:
        assert spec.transcript is not None
        extra = () if spec.committed else (Message("user", spec.transcript.text),)
        # the turn may end (and commit the user item) before the reply reads its input
        opts = self._responses.options(extra_input=extra, extra_input_item=spec.item_id)
        spec.response = self._responses.start(opts, spec.turn_id,
                                              self._reply_language(spec.transcript), release=spec.released)

    def _reply_language(self, tr: Transcript) -> str:
        ctx = self._ctx
        if ctx.cfg.language != "auto":
            return ctx.cfg.language
        return tr.language if tr.language in ctx.tts.caps.languages else ctx.last_language

    def _commit_user(self, spec: Speculation) -> None:
        if spec.committed or spec.transcript is None:
            return
        ctx = self._ctx
        spec.committed = True
        tr = spec.transcript
        if tr.text.strip():
            ctx.last_language = tr.language
        if self.analysis_only:
            self._on_committed(spec)
            return
        # a failed decode: its one audio part has no words (null, as a client's unheard item's)
        unheard: list[tuple[Literal["text", "audio"], str | None]] = [("audio", None)] if spec.failure else []
        ctx.memory.add(Item(id=spec.item_id, role="user", text=tr.text, audio=True, language=tr.language, parts=unheard))
        log.debug("session %s: the user said (%s): %s", ctx.id, spec.item_id, tr.text)  # PII masked by the log filter
        audio_s = spec.audio_s or (len(spec.audio) / VAD_RATE if spec.audio is not None else 0.0)
        now = ctx.clock.now()
        if spec.failure is not None:
            ctx.publish(transcription_failed(now, spec.item_id, (0,), spec.failure, session_id=ctx.id))
        else:
            ctx.publish(E.UserTranscript(t=now, turn_id=spec.turn_id, item_id=spec.item_id, text=tr.text,
                                         language=tr.language, final=True, audio_s=round(audio_s, 3)))
        ctx.publish(E.UserCommitted(t=now, turn_id=spec.turn_id, item_id=spec.item_id,
                                    previous_item_id=ctx.memory.previous_id(spec.item_id)))
        self._on_committed(spec)


def _pace_reply(pace: reply_pace.ReplyPace, transcript_t: float) -> Callable[[float], None]:
    """The callback a reply calls at its first audio: only the pace and a time, never the session
    (the pace outlives every session of the process)."""
    return lambda at: pace.replied(1000 * (at - transcript_t))
