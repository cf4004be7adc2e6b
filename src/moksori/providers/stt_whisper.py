"""Whisper (CTranslate2 via faster-whisper) with a short encoder window.

Whisper is trained on 30 s windows, and faster-whisper always pads to 30 s, so a 3 s turn
costs as much as 30 s of audio (~0.9 s on 2 cores). CTranslate2 accepts a shorter encoder
input: we encode only the audio plus 3 s of padding, which is 3-4x faster for conversational
turns. Without that padding (or without timestamps) Whisper loops, repeating the sentence;
with timestamp tokens on, any segment that starts past the real end of the audio is dropped.
If the result still looks like a loop (gzip compression ratio > 2.4) we decode again with the
standard 30 s window. Measured on the LibriVox and telephone sets (see benchmarks/): the same
WER as the 30 s window. Stage by stage: benchmarks/whisper_stages.py.

A preemptible decode (a live partial) gives way between its steps; with `abandon` its decoder
step runs asynchronously on one of two replicas and is abandoned, not waited for, once a live
turn's decode is queued (`_await`). A decode cannot be split into calls that continue from the
tokens so far: CTranslate2 forces a timestamp token where a continuation starts.
Nor does forcing known words as the decoder's prefix save time: CTranslate2 runs one decoder
step per forced token, as for a generated one (benchmarks/whisper_prefix.py).
"""

from __future__ import annotations

import os
import threading
import zlib
import time
from dataclasses import replace
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any
from pathlib import Path

import numpy as np

from moksori.errors import ModelError, ProviderError
from moksori.providers.base import STT, STTCaps, STTOptions, Transcript
from moksori.providers.threads import ModelExecutor, run_blocking, should_yield

RATE = 16000
FULL_FRAMES = 3000  # 30 s of 10 ms frames
PAD_FRAMES = 300  # 3 s of context after the speech keeps Whisper from looping
MAX_CHUNK_S = 27.0
SILENCE_PEAK = 0.004  # about -48 dBFS
# Languages the multilingual model knows well enough to pin; detection is limited to opts.languages.
LANGUAGES = ("en", "ko", "ja", "zh", "de", "es", "fr", "it", "pt", "ru", "nl", "pl", "tr", "vi", "id", "th", "ar", "hi")


class WhisperSTT(STT):
    name = "whisper"

    def __init__(self, model_dir: str | Path, *, threads: int = 1, beam_size: int = 1,
                 compute_type: str = "int8", abandon: bool = False) -> None:
        if compute_type == "float32":
            # CTranslate2 uses oneDNN, not MKL, on AMD CPUs. oneDNN's float32 GEMMs on 2 threads
            # were 5-20x slower on a loaded 2-core VM (its OpenMP barriers against other busy
            # threads); MKL's were not (and MKL int8 on AMD is 15x slower, so only for float32).
            # Read once per process, when CTranslate2 is first imported; an explicit setting wins.
            os.environ.setdefault("CT2_USE_MKL", "1")
        from faster_whisper import WhisperModel  # heavy import, only when used
        from faster_whisper.tokenizer import Tokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "model.bin").is_file():
            raise ModelError(f"no Whisper model at {self.model_dir} (expected model.bin, config.json, tokenizer.json)",
                             hint="run `moksori models prepare`, or point MOKSORI_STT_MODEL at a CTranslate2 Whisper folder")
        try:
            # abandon: a second replica (CTranslate2 shares the weights between them), so that a
            # decode can start while an abandoned one is still finishing on the first
            self._wm = WhisperModel(str(self.model_dir), device="cpu", compute_type=compute_type,
                                    cpu_threads=threads, num_workers=2 if abandon else 1, local_files_only=True)
        except Exception as e:  # CTranslate2 raises RuntimeError/ValueError with long texts
            raise ModelError(f"cannot load Whisper model from {self.model_dir}: corrupt or incompatible files",
                             hint="run `moksori models verify`") from e
        self._Tokenizer = Tokenizer
        self.multilingual = self._wm.model.is_multilingual
        self.beam_size = beam_size
        self.abandon = abandon
        self.abandoned = 0  # preemptible decoder steps left to finish in the background (for tests)
        self._lock = threading.Lock()
        self.executor = ModelExecutor(f"stt:{self.model_dir.name}")
        langs = LANGUAGES if self.multilingual else ("en",)
        self.caps = STTCaps(streaming=False, languages=langs, sample_rate=RATE, detects_language=self.multilingual,
                            incremental=True)
        from faster_whisper.transcribe import get_suppressed_tokens
        self._suppress = get_suppressed_tokens(self._tokenizer("en"), [-1])

    def _tokenizer(self, language: str) -> Any:
        return self._Tokenizer(self._wm.hf_tokenizer, self.multilingual, task="transcribe",
                               language=language if self.multilingual else "en")

    # ------------------------------------------------------------------ blocking core

    def _encode(self, feats: np.ndarray) -> Any:  # a ctranslate2 StorageView
        import ctranslate2

        return self._wm.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None])),
                                     to_cpu=False)

    def _detect(self, enc: Any, allowed: tuple[str, ...]) -> tuple[str, float]:
        if not self.multilingual:
            return "en", 1.0
        probs = self._wm.model.detect_language(enc)[0]
        scored = [(tok[2:-2], p) for tok, p in probs if tok[2:-2] in allowed]
        if not scored:
            return allowed[0] if allowed else "en", 0.0
        total = sum(p for _, p in scored) or 1.0
        lang, p = max(scored, key=lambda kv: kv[1])
        return lang, p / total

    def _decode(self, enc: Any, language: str, n_frames: int, prompt_text: str | None,
                opts: STTOptions | None = None) -> "_Decoded | None":
        """None: a preemptible decode was abandoned (only with `abandon`, see `_await`)."""
        tok = self._tokenizer(language)
        prompt = list(tok.sot_sequence)
        if prompt_text:
            prompt = [tok.sot_prev] + tok.encode(" " + prompt_text.strip())[-100:] + prompt
        # CTranslate2 generates at most min(max_length / 2, max_length - prompt) new tokens: this
        # caps a decode at ~12 + 4.5 tokens per second of audio (read speech: ~4 per second, so a
        # fast speaker's long turn could reach it; a loop in the padding runs up to it)
        max_len = min(440, 24 + int(n_frames / 100 * 9))
        asynchronous = self.abandon and opts is not None and opts.preemptible
        out = self._wm.model.generate(
            enc, [prompt], beam_size=self.beam_size, max_length=max_len, return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._suppress,
            max_initial_timestamp_index=50, asynchronous=asynchronous)[0]
        res = self._await(out, opts) if asynchronous else out
        if res is None:
            return None
        ids = res.sequences_ids[0]
        segments = parse_segments(ids, tok, n_frames / 100.0)
        avg_logprob = res.scores[0] * (len(ids) or 1) / ((len(ids) or 1) + 1) if res.scores else 0.0
        return _Decoded(segments, float(res.no_speech_prob), float(avg_logprob))

    def _await(self, pending: Any, opts: STTOptions | None) -> Any:
        """The result of an asynchronous `generate`, or None once a live turn's decode waits for
        the model (`_give_way`): CTranslate2 cannot stop a decoder midway, so it finishes this one
        on its replica, unread, while the live decode starts on the other replica at once."""
        while not pending.done():
            if opts is not None and _give_way(opts):
                self.abandoned += 1
                return None
            time.sleep(0.002)
        return pending.result()

    def _transcribe_window(self, audio: np.ndarray, opts: STTOptions) -> Transcript | None:
        """One window -> its transcript; None: a preemptible decode gave way (see _give_way)."""
        fe = self._wm.feature_extractor
        n_frames = max(1, len(audio) // 160)
        if float(np.max(np.abs(audio))) < SILENCE_PEAK:  # digital silence: Whisper would invent "you"
            return Transcript("", opts.language or "en", True, len(audio) / RATE, no_speech_prob=1.0)
        if _give_way(opts):
            return None
        window = min(FULL_FRAMES, n_frames + PAD_FRAMES)
        # features only for the window we encode (silence-padded), not a full 30 s
        feats = fe(audio, padding=160 * (window - n_frames) + 160)
        with self._lock:
            enc = self._encode(feats[:, :window])
            if _give_way(opts):
                return None
            allowed = tuple(lang for lang in (opts.languages or LANGUAGES) if lang in self.caps.languages) or ("en",)
            if opts.language and opts.language in self.caps.languages:
                lang, lang_p = opts.language, 1.0
            else:
                lang, lang_p = self._detect(enc, allowed)
            out = self._decode(enc, lang, n_frames, opts.prompt, opts)
            if out is None:
                return None
            if out.degenerate and window < FULL_FRAMES and not _give_way(opts):
                # a short window can make Whisper repeat itself: decode the standard 30 s window
                feats = fe(audio, padding=160 * FULL_FRAMES)
                enc = self._encode(feats[:, :FULL_FRAMES])
                out = self._decode(enc, lang, n_frames, opts.prompt, opts)
                if out is None:
                    return None
        text, no_speech, avg_lp = out.text(), out.no_speech, out.avg_logprob
        if (no_speech > 0.6 and avg_lp < -1.0) or no_speech > 0.9 or _looks_looped(text):
            text = ""  # silence, noise, or a loop that survived the retry: nothing reliable was said
        return Transcript(text=text, language=lang, final=True, audio_seconds=len(audio) / RATE,
                          no_speech_prob=no_speech, language_prob=lang_p)

    def transcribe_array(self, audio: np.ndarray, opts: STTOptions) -> Transcript:
        """Blocking: the whole buffer -> one final transcript (long audio in ~27 s pieces)."""
        tr = self._transcribe_array(audio, replace(opts, preemptible=False))
        assert tr is not None  # only a preemptible decode gives way
        return tr

    def _transcribe_array(self, audio: np.ndarray, opts: STTOptions) -> Transcript | None:
        """`transcribe_array`, or None: a preemptible decode gave way to a live turn's decode."""
        audio = np.asarray(audio, dtype=np.float32)
        if len(audio) < RATE // 10:
            return Transcript("", opts.language or "en", True, len(audio) / RATE)
        if len(audio) <= MAX_CHUNK_S * RATE:
            return self._transcribe_window(audio, opts)
        texts, lang, lang_p, pos = [], opts.language, 1.0, 0
        while pos < len(audio):
            end = _cut_point(audio, pos, int(MAX_CHUNK_S * RATE))
            piece = self._transcribe_window(audio[pos:end], replace(opts, language=lang))
            if piece is None:
                return None
            lang, lang_p = piece.language, piece.language_prob
            if piece.text:
                texts.append(piece.text)
            pos = end
        return Transcript(" ".join(texts), lang or "en", True, len(audio) / RATE, language_prob=lang_p)

    # ------------------------------------------------------------------ contract

    async def transcribe(self, audio: AsyncIterable[np.ndarray], opts: STTOptions) -> AsyncIterator[Transcript]:
        chunks = [np.asarray(c, dtype=np.float32) async for c in audio]
        buf = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        try:
            result = await run_blocking(self._transcribe_array, buf, opts, executor=self.executor)
        except (RuntimeError, ValueError) as e:
            raise ProviderError(f"whisper failed: {e}", retryable=False, provider=self.name) from e
        if result is not None:
            yield result


class _Decoded:
    def __init__(self, segments: list[str], no_speech: float, avg_logprob: float) -> None:
        self.segments, self.no_speech, self.avg_logprob = segments, no_speech, avg_logprob

    @property
    def repeated(self) -> bool:
        """A segment that says exactly what an earlier one said: Whisper looping, not the speaker."""
        seen = set()
        for seg in self.segments:
            key = "".join(ch for ch in seg.lower() if ch.isalnum())
            if key and key in seen:
                return True
            seen.add(key)
        return False

    @property
    def degenerate(self) -> bool:
        return self.repeated or _looks_looped(" ".join(self.segments))

    def text(self) -> str:
        kept, seen = [], set()
        for seg in self.segments:  # keep the first of any repeated segment
            key = "".join(ch for ch in seg.lower() if ch.isalnum())
            if key not in seen:
                kept.append(seg)
                seen.add(key)
        return " ".join(kept).strip()


def parse_segments(ids: list[int], tok: Any, duration: float) -> list[str]:
    """A decode's token ids -> the text of each timestamped segment that starts inside the audio
    (`duration` seconds; a segment starting in the last 0.15 s or in the padding is Whisper
    inventing words for silence). Ids without timestamps make one segment."""
    segments: list[str] = []
    segment: list[int] = []
    seg_start: float | None = None
    for i in ids:
        if i >= tok.timestamp_begin:
            t = (i - tok.timestamp_begin) * 0.02
            if seg_start is None:
                seg_start = t
            else:
                if seg_start < duration - 0.15 and segment:
                    segments.append(tok.decode(segment).strip())
                segment, seg_start = [], None
        elif i < tok.eot:
            segment.append(i)
    if segment and (seg_start is None or seg_start < duration - 0.15):
        segments.append(tok.decode(segment).strip())
    return [s for s in segments if s]


def _give_way(opts: STTOptions) -> bool:
    """A preemptible (background) decode stops between its steps once a live turn's decode waits
    for the model: the encoder and the decoder each run to their end (CTranslate2 cannot be
    interrupted), but the next step is not started. With `abandon`, its decoder step is not
    waited for either (`WhisperSTT._await`)."""
    return opts.preemptible and should_yield()


def _looks_looped(text: str) -> bool:
    data = text.encode("utf-8")
    return len(data) > 40 and len(data) / len(zlib.compress(data)) > 2.4


def _cut_point(audio: np.ndarray, start: int, max_len: int) -> int:
    """End of a chunk: the quietest 100 ms in the last 3 s before start+max_len."""
    end = start + max_len
    if end >= len(audio):
        return len(audio)
    lo = end - 3 * RATE
    block = RATE // 10
    region = audio[lo:end]
    energies = [float(np.mean(region[i:i + block] ** 2)) for i in range(0, len(region) - block, block // 2)]
    best = int(np.argmin(energies)) if energies else len(region) // block
    return lo + best * (block // 2) + block // 2
