"""Incremental transcription: most of a turn is decoded while the user is still speaking.

Without it, every pause's speculation (and the final one) decodes the whole turn from its onset,
so the final transcript costs a decode of all of it after the user stops. With it (setting
`stt.incremental`, env `MOKSORI_STT_INCREMENTAL=on`):

* each pause's speculation decodes only the audio after the turn's committed point, with the
  committed words as Whisper's prompt (its context), and returns committed + new words;
* when the user resumes after such a pause (an internal pause, VAD silence inside the turn), that
  decode, which ends in the silence, is offered to `StablePrefix` as a candidate;
* once another ~0.8 s of speech has been heard past it, one confirming decode from the same
  committed point runs; if it begins with the candidate's words, the candidate's audio and words
  are committed (`engine/stable_prefix.py` holds the policy, pure and tested in virtual time).

* while the user speaks on without pausing, every ~second past 2.8 s of uncommitted audio, the
  audio is cut at its quietest 64 ms; a decode of all of it and one of the audio after the cut
  must agree word for word on what follows the cut (`StablePrefix.split`).

So at the end of a turn only the tail after the last commit is decoded (from 0.6 s before it:
the words it repeats are dropped). A turn with no commit is decoded whole, exactly as before.

The tries are background work and preemptible (`stt.partial_yield`, on by default): a split try
or a confirming decode still running when the user stops gives way to that pause's decode
between its steps (features, encoder, decoder) and is dropped, so the final decode waits at most
one step, not a whole try (it used to wait for the whole try: short turns got slower and p50 over
the LibriVox + telephone sets did not improve, 2026-12-03). No confirming decode starts while the
user is in a pause: that pause's own decode hears past the cut (offered if they resume). A split
try's decode of everything also serves as the confirmation of a pending pause candidate.
Measured: docs/LATENCY.md ("What incremental STT does"). `on_commit(turn_id, words)`
tells another stage (e.g. an LLM prefill) each time words are committed.
The decodes are not thrown away when a pause's
speculation is cancelled (the user resumed): they run in their own task and serve as candidates.
Forcing the previous partial transcript as a decoder prefix was tried before and saved nothing
(CTranslate2 restarts the sentence); committing audio with its words is what pays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from moksori.engine.input_audio import VAD_RATE, InputAudio
from moksori.engine.session_context import SessionContext
from moksori.engine.stable_prefix import StablePrefix, strip_overlap
from moksori.providers.base import STTOptions, Transcript, one_chunk
from moksori.providers.threads import QueueMeter, context_with_meter, set_background

CONFIRM_AFTER_S = 0.8  # speech heard past a candidate's cut before the confirming decode
MIN_SILENCE_AFTER_CUT_S = 0.06  # a candidate's audio must end this long before speech resumed
PIECE_MIN_S = 1.2  # the shortest piece committed at a pause
SPLIT_PIECE_MIN_S = 2.0  # ... and at a quiet point inside continuous speech (each try costs two
# decodes; a commit saves little on a short turn: Whisper base costs ~0.1 s + ~0.05 s per second)
RIGHT_CONTEXT_S = 0.8  # speech after such a cut that both decodes hear
SPLIT_EVERY_S = 1.0  # speech between two tries
OVERLAP_S = 0.6  # audio before the committed point that a turn's final decode hears again


class SpecAudio(Protocol):
    """What a pause's speculation hands over: its turn and id, and the turn's audio so far."""

    turn_id: int
    spec_id: int
    audio: np.ndarray | None
    audio_t0: float  # start of the first frame of `audio`
    audio_end: float  # end of its last frame


@dataclass(frozen=True)
class _Piece:
    """One decode: the audio from `base` (the committed point then) to `end`."""

    base: float
    end: float
    before: str  # the words committed before `base` (the decode's prompt)
    tr: Transcript


@dataclass
class _Turn:
    turn_id: int
    prefix: StablePrefix
    language: str | None = None
    decodes: dict[int, asyncio.Task[_Piece]] = field(default_factory=dict)
    resumed: dict[int, float] = field(default_factory=dict)  # spec id -> when speech resumed
    offered: set[int] = field(default_factory=set)
    confirm: asyncio.Task[None] | None = None
    confirming: asyncio.Task[_Piece | None] | None = None
    splitter: asyncio.Task[None] | None = None


class IncrementalSTT:
    def __init__(self, ctx: SessionContext, audio: InputAudio) -> None:
        self._ctx = ctx
        self._audio = audio
        self._turn: _Turn | None = None
        self.commits = 0  # pieces committed, all turns (for tests and benchmarks)
        self.decoded_s = 0.0  # audio seconds sent to STT by this module, all turns
        self.last_tail_s = 0.0  # audio seconds of the latest pause's decode (at a turn's end: the tail)
        self.last_wait_s = 0.0  # ... the time its model calls waited in the model's queue
        self.last_model_busy = False  # ... whether the model was decoding something else when it began
        self.candidates = 0  # pieces ending in an internal pause offered for confirmation, all turns
        self.tries = 0  # split tries started (each one or two decodes), all turns
        self.gave_way = 0  # background decodes (tries, confirmations) seen giving way to a live decode
        # (not those of a split try cancelled by the pause meanwhile: the thread gives way unseen)
        self.overlap_misses = 0  # final decodes whose re-heard overlap did not match: decoded twice
        # called on the event loop after each commit with (turn id, all the words committed in
        # that turn so far); they never change later in the turn. Must not block or raise.
        self.on_commit: Callable[[int, str], None] | None = None

    @property
    def enabled(self) -> bool:
        cfg = self._ctx.cfg
        return cfg.stt_incremental and cfg.turn.mode != "manual" and self._ctx.stt.caps.incremental

    # -------------------------------------------------------------- turn lifecycle

    def begin(self, turn_id: int, onset: float) -> None:
        """Speech started: a new turn, nothing committed."""
        self.end_turn()
        if self.enabled:
            start = onset - self._ctx.cfg.turn.prefix_padding_ms / 1000
            self._turn = _Turn(turn_id, StablePrefix(start=start))
            self._start_splitter(self._turn)

    def end_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        self.commits += turn.prefix.commits
        for task in (turn.confirm, turn.splitter):
            if task is not None and not task.done():
                task.cancel()

    def resumed(self, turn_id: int, spec_id: int) -> None:
        """The user spoke again after pause `spec_id`: its decode ends in an internal pause."""
        turn = self._current(turn_id)
        if turn is None:
            return
        turn.resumed[spec_id] = self._ctx.clock.now()
        self._start_splitter(turn)
        task = turn.decodes.get(spec_id)
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            self._offer(turn, spec_id, task.result())

    # -------------------------------------------------------------- decoding

    async def transcribe(self, spec: SpecAudio) -> Transcript:
        """The turn's transcript as of this pause: committed words + a decode of the rest."""
        turn = self._current(spec.turn_id)
        if turn is None:
            raise RuntimeError("incremental STT has no such turn")
        if turn.splitter is not None and not turn.splitter.done():
            turn.splitter.cancel()  # a pause: its decode goes first (the split resumes with the speech)
        meter = QueueMeter()
        task = self._ctx.spawn(self._decode_spec(turn, spec, meter), f"stt-inc-{spec.turn_id}.{spec.spec_id}",
                               context=context_with_meter(meter))
        turn.decodes[spec.spec_id] = task
        task.add_done_callback(lambda t: self._decoded(turn, spec.spec_id, t))
        # shielded: a cancelled speculation (the user resumed) still leaves its decode as a candidate
        piece = await asyncio.shield(task)
        tr = piece.tr
        text = " ".join(p for p in (piece.before.strip(), tr.text.strip()) if p)
        return Transcript(text=text, language=tr.language, final=True, audio_seconds=tr.audio_seconds,
                          no_speech_prob=tr.no_speech_prob, language_prob=tr.language_prob)

    async def partial(self, turn_id: int) -> Transcript | None:
        """A live partial transcript: committed words + a decode of the audio after them (which
        also serves as the confirming decode of a pending candidate). None: not incremental."""
        turn = self._current(turn_id)
        if turn is None:
            return None
        base, prompt = turn.prefix.start, turn.prefix.text
        audio, t0, t1 = self._audio.span(base, self._ctx.clock.now())
        audio = _from(audio, t0, base)
        tr = await self._stt_or_none(turn, audio, prompt, preemptible=self._ctx.cfg.partial_yield)
        if tr is None:  # it gave way to a live turn's decode (engine/partials.py)
            return Transcript("", turn.language or self._ctx.last_language, False)
        if self._turn is turn and turn.prefix.candidate is not None:
            self._settled(turn, turn.prefix.observe(base, t1, tr.text))
        text = " ".join(p for p in (prompt.strip(), tr.text.strip()) if p)
        return Transcript(text=text, language=tr.language, final=False, audio_seconds=tr.audio_seconds)

    def _start_splitter(self, turn: _Turn) -> None:
        if turn.splitter is None or turn.splitter.done():
            turn.splitter = self._ctx.spawn(self._split_loop(turn), f"stt-split-{turn.turn_id}")

    async def _split_loop(self, turn: _Turn) -> None:
        """While the user speaks without pausing: every ~second, cut the uncommitted audio at its
        quietest point and commit the words before the cut if two decodes agree on the rest."""
        set_background()  # the turn's own final decode (interactive) goes first in the model's queue
        ctx = self._ctx
        last_try = float("-inf")
        while self._turn is turn:
            await ctx.clock.sleep(0.25)
            now = ctx.clock.now()
            base = turn.prefix.start
            if now - base < SPLIT_PIECE_MIN_S + RIGHT_CONTEXT_S or now - last_try < SPLIT_EVERY_S:
                continue
            last_try = now
            audio, t0, _ = self._audio.span(base, now)
            audio = _from(audio, t0, base)
            i = quiet_point(audio, int(SPLIT_PIECE_MIN_S * VAD_RATE), len(audio) - int(RIGHT_CONTEXT_S * VAD_RATE))
            if i is None:
                continue
            self.tries += 1
            whole = await self._try_stt(turn, audio, turn.prefix.text)
            if whole is None or self._turn is not turn or turn.prefix.start != base:
                continue
            if turn.prefix.candidate is not None and self._settled(turn, turn.prefix.observe(base, now, whole.text)):
                continue  # it heard past a pause's candidate and confirmed it: no split needed
            tail = await self._try_stt(turn, audio[i:], "")
            if tail is not None and self._turn is turn:
                self._settled(turn, turn.prefix.split(base, base + i / VAD_RATE, whole.text, tail.text))

    def owns(self, turn_id: int) -> bool:
        return self._current(turn_id) is not None

    async def _decode_spec(self, turn: _Turn, spec: SpecAudio, meter: QueueMeter) -> _Piece:
        full = spec.audio if spec.audio is not None else np.zeros(0, dtype=np.float32)
        base, prompt = turn.prefix.start, turn.prefix.text
        audio = _from(full, spec.audio_t0, base)
        self.last_tail_s = len(audio) / VAD_RATE
        executor = getattr(self._ctx.stt, "executor", None)  # WhisperSTT's (a split try's thread
        self.last_model_busy = bool(getattr(executor, "running", 0))  # runs on when its task is cancelled)
        try:
            if prompt and OVERLAP_S > 0:
                # Whisper on a short tail without the sound before it misses its first words: decode
                # from a little before the committed point and drop the words it repeats
                tr = await self._stt(turn, _from(full, spec.audio_t0, max(spec.audio_t0, base - OVERLAP_S)), "")
                rest = strip_overlap(prompt, tr.text)
                if rest is not None:
                    return _Piece(base, spec.audio_end, prompt, replace(tr, text=rest))
                self.overlap_misses += 1
            return _Piece(base, spec.audio_end, prompt, await self._stt(turn, audio, prompt))
        finally:
            self.last_wait_s = meter.total

    async def _stt(self, turn: _Turn, audio: np.ndarray, prompt: str) -> Transcript:
        tr = await self._stt_or_none(turn, audio, prompt)
        return tr or Transcript("", self._ctx.stt_language() or turn.language or self._ctx.last_language, True)

    async def _stt_or_none(self, turn: _Turn, audio: np.ndarray, prompt: str, *,
                           preemptible: bool = False) -> Transcript | None:
        """The decode's final transcript; None if none came (a preemptible decode gave way)."""
        ctx = self._ctx
        lang = ctx.stt_language() or turn.language
        # the client's prompt, then the words committed so far (Whisper reads both as what came before)
        prompt = " ".join(p for p in (ctx.cfg.stt_prompt, prompt) if p)
        opts = STTOptions(language=lang, languages=ctx.cfg.languages, prompt=prompt or None, preemptible=preemptible)
        final: Transcript | None = None
        self.decoded_s += len(audio) / VAD_RATE
        async for tr in ctx.stt.transcribe(one_chunk(audio), opts):
            if tr.final:
                final = tr
        if final is not None and final.text.strip() and turn.language is None:
            turn.language = final.language
        return final

    def _decoded(self, turn: _Turn, spec_id: int, task: asyncio.Task[_Piece]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        if spec_id in turn.resumed:
            self._offer(turn, spec_id, task.result())

    def _offer(self, turn: _Turn, spec_id: int, piece: _Piece) -> None:
        """A finished decode of an internal pause: a candidate (or the confirmation of one)."""
        if self._turn is not turn or spec_id in turn.offered \
                or turn.resumed[spec_id] - piece.end < MIN_SILENCE_AFTER_CUT_S \
                or piece.end - piece.base < PIECE_MIN_S:
            return  # too short a piece: Whisper hears too little of it, and of what follows
        turn.offered.add(spec_id)
        self.candidates += 1
        self._settled(turn, turn.prefix.propose(piece.base, piece.end, piece.tr.text))
        if turn.prefix.candidate is not None and (turn.confirm is None or turn.confirm.done()):
            turn.confirm = self._ctx.spawn(self._confirm_later(turn), f"stt-confirm-{turn.turn_id}")

    async def _confirm_later(self, turn: _Turn) -> None:
        """Once enough speech is heard past the candidate, decode from the committed point again."""
        set_background()
        ctx = self._ctx
        while self._turn is turn and turn.prefix.candidate is not None:
            cand = turn.prefix.candidate
            wait = cand.cut + CONFIRM_AFTER_S - ctx.clock.now()
            if wait > 0:
                await ctx.clock.sleep(wait)
                continue
            if any(not t.done() for t in turn.decodes.values()):
                await asyncio.wait([t for t in turn.decodes.values() if not t.done()])
                continue  # a pause's decode may have settled it
            if any(sid not in turn.resumed for sid in turn.decodes):
                # the user is in a pause (perhaps the turn's end): its decode, offered if they
                # resume, hears past the cut; a decode now would only compete with the reply
                await ctx.clock.sleep(0.1)
                continue
            base, prompt = turn.prefix.start, turn.prefix.text
            audio, t0, t1 = self._audio.span(base, ctx.clock.now())
            audio = _from(audio, t0, base)
            turn.confirming = asyncio.ensure_future(self._decode_audio(turn, audio, base, t1, prompt))
            piece = await turn.confirming
            if piece is None:  # it gave way to a pause's decode, which may settle the candidate
                await ctx.clock.sleep(0.25)
                continue
            if self._turn is turn and turn.prefix.candidate is cand:
                self._settled(turn, turn.prefix.observe(piece.base, piece.end, piece.tr.text))
            return

    async def _decode_audio(self, turn: _Turn, audio: np.ndarray, base: float, end: float,
                            prompt: str) -> _Piece | None:
        tr = await self._try_stt(turn, audio, prompt)
        return None if tr is None else _Piece(base, end, prompt, tr)

    async def _try_stt(self, turn: _Turn, audio: np.ndarray, prompt: str) -> Transcript | None:
        """A background decode (a split try, a confirmation) that gives way between its steps to
        a pause's decode (`stt.partial_yield`): None then, and the try is dropped. So a try still
        running when the user stops costs the turn's final decode at most one step."""
        tr = await self._stt_or_none(turn, audio, prompt, preemptible=self._ctx.cfg.partial_yield)
        if tr is None:
            self.gave_way += 1
        return tr

    def _settled(self, turn: _Turn, committed: bool) -> bool:
        if committed and self.on_commit is not None:
            self.on_commit(turn.turn_id, turn.prefix.text)
        return committed

    def _current(self, turn_id: int) -> _Turn | None:
        t = self._turn
        return t if t is not None and t.turn_id == turn_id and self.enabled else None


def _from(audio: np.ndarray, t0: float, t: float) -> np.ndarray:
    """`audio` (starting at session time t0) from time t on."""
    return audio[max(0, int(round((t - t0) * VAD_RATE))):]


def quiet_point(audio: np.ndarray, lo: int, hi: int) -> int | None:
    """The sample index in [lo, hi) at the centre of the quietest 64 ms (a likely gap between
    words), or None if the range is too short."""
    win, hop = VAD_RATE * 64 // 1000, VAD_RATE * 16 // 1000
    if hi - lo < win:
        return None
    x = np.asarray(audio[lo:hi], dtype=np.float32) ** 2
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    starts = np.arange(0, len(x) - win + 1, hop)
    energy = c[starts + win] - c[starts]
    return lo + int(starts[int(np.argmin(energy))]) + win // 2
