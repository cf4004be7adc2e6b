"""Piper neural TTS (ONNX) with any Piper voice file; the packaged en_US "joe" by default.

By default a sentence's audio streams out in windows (`piper_stream.py`: the voice's graph cut
before its flow and its decoder): the first ~0.19 s of a sentence is out after the text encoder
and one small window, not after the whole sentence. `stream=False`, or a voice whose graph
cannot be cut, runs Piper's one-shot path (one frame per sentence).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np

from moksori.audio.frames import Frame, float_to_pcm16
from moksori.errors import ModelError, MoksoriError, ProviderError
from moksori.providers import models
from moksori.providers.base import TTS, TTSCaps, TTSOptions
from moksori.providers.onnx import open_session, session_options
from moksori.providers.piper_stream import Leveller, StreamingVoice, split_voice
from moksori.providers.threads import ModelExecutor, iterate_blocking

log = logging.getLogger(__name__)
_FAILED = "piper failed: "


class PiperTTS(TTS):
    name = "piper"

    def __init__(self, voice_path: str | Path | None = None, *, threads: int = 1, language: str | None = None,
                 stream: bool = True) -> None:
        from piper.config import PiperConfig
        from piper.phonemize_espeak import ESPEAK_DATA_DIR
        from piper.voice import PiperVoice

        self.path = Path(voice_path) if voice_path else models.path_of("piper-en-joe")
        cfg_path = Path(str(self.path) + ".json")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"Piper voice config not found: {cfg_path}", hint="a Piper voice is a .onnx plus .onnx.json") from None
        except ValueError:
            raise ModelError(f"Piper voice config {cfg_path} is not valid JSON") from None
        if not self.path.is_file():
            raise ModelError(f"Piper voice file not found: {self.path}")
        try:
            if not isinstance(cfg, dict):
                raise TypeError(f"it holds a JSON {type(cfg).__name__}, not an object")
            config = PiperConfig.from_dict(cfg)
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # piper reads the dict as it finds it
            reason = f"no {e} entry" if isinstance(e, KeyError) else str(e) or type(e).__name__
            raise ModelError(f"Piper voice config {cfg_path} cannot be used: {reason}",
                             hint="a Piper voice's .onnx.json comes with its .onnx") from None
        self.streaming: StreamingVoice | None = None
        if stream:
            graphs = split_voice(self.path)
            if isinstance(graphs, str):
                log.warning("Piper voice %s: no streaming (%s); each sentence is made whole", self.path.name, graphs)
            else:
                try:
                    self.streaming = StreamingVoice(graphs, session_options(threads), hop=config.hop_length)
                except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
                    log.warning("Piper voice %s: no streaming (%s)", self.path.name, e)
        # the one-shot session only when it is used (the cut sessions hold the same weights)
        session = None if self.streaming else open_session(self.path, threads=threads, what="Piper voice")
        self._voice = PiperVoice(config=config, session=session,
                                 espeak_data_dir=Path(ESPEAK_DATA_DIR), download_dir=self.path.parent)
        self.leveller = Leveller()
        lang = language or (cfg.get("language", {}).get("code") or cfg.get("espeak", {}).get("voice", "en"))[:2]
        voice_name = self.path.name.removesuffix(".onnx")
        self.caps = TTSCaps(sample_rate=self._voice.config.sample_rate, languages=(lang,), voices=(voice_name,))
        self._lock = threading.Lock()
        self.executor = ModelExecutor(f"tts:{voice_name}")

    def scales(self, speed: float) -> np.ndarray:
        c = self._voice.config
        return np.asarray([c.noise_scale, c.length_scale / max(0.25, speed), c.noise_w_scale], dtype=np.float32)

    def _run(self, text: str, opts: TTSOptions, stop: threading.Event) -> Iterator[Frame]:
        rate = self.caps.sample_rate
        with self._lock:
            if self.streaming is None:
                from piper.config import SynthesisConfig

                syn = SynthesisConfig(length_scale=1.0 / max(0.25, opts.speed))
                for chunk in self._voice.synthesize(text, syn_config=syn):
                    if stop.is_set():
                        return
                    yield Frame(float_to_pcm16(chunk.audio_float_array), rate)
                return
            scales = self.scales(opts.speed)
            for phonemes in self._voice.phonemize(text):
                if not phonemes:
                    continue
                ids = self._voice.phonemes_to_ids(phonemes)
                gain, peak = self.leveller.gain(), 0.0
                for raw in self.streaming.audio(ids, scales, stop):
                    if stop.is_set():
                        return
                    peak = max(peak, float(np.max(np.abs(raw), initial=0.0)))
                    yield Frame(float_to_pcm16(self.leveller.apply(raw, gain)), rate)
                self.leveller.observe(peak)

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        if not text.strip():
            return
        try:
            async for frame in iterate_blocking(lambda stop: self._run(text, opts, stop), executor=self.executor):
                yield frame
        except MoksoriError:
            raise
        except Exception as e:  # piper, its espeak-ng bridge and onnxruntime raise their own types
            raise ProviderError(f"{_FAILED}{str(e) or type(e).__name__}", retryable=False, provider=self.name) from e

    async def warm(self, text: str, opts: TTSOptions) -> None:
        """Speak `text` once before the first caller. A voice that loads but cannot speak (its
        config names an espeak-ng voice that does not exist, its .onnx is another model's graph)
        is a ModelError naming the file: start-up stops, as it does for a voice that cannot load."""
        try:
            async for _ in self.synthesize(text, opts):
                pass
        except ProviderError as e:
            raise ModelError(f"Piper voice {self.path} cannot speak: {e.message.removeprefix(_FAILED)}") from e
