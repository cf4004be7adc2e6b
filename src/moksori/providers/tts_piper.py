"""Piper neural TTS (ONNX) with any Piper voice file; the packaged en_US "joe" by default."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path



from moksori.audio.frames import Frame, float_to_pcm16
from moksori.errors import ModelError, ProviderError
from moksori.providers import models
from moksori.providers.base import TTS, TTSCaps, TTSOptions
from moksori.providers.onnx import open_session
from moksori.providers.threads import ModelExecutor, iterate_blocking


class PiperTTS(TTS):
    name = "piper"

    def __init__(self, voice_path: str | Path | None = None, *, threads: int = 1, language: str | None = None) -> None:
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
        session = open_session(self.path, threads=threads, what="Piper voice")
        self._voice = PiperVoice(config=PiperConfig.from_dict(cfg), session=session,
                                 espeak_data_dir=Path(ESPEAK_DATA_DIR), download_dir=self.path.parent)
        lang = language or (cfg.get("language", {}).get("code") or cfg.get("espeak", {}).get("voice", "en"))[:2]
        voice_name = self.path.name.removesuffix(".onnx")
        self.caps = TTSCaps(sample_rate=self._voice.config.sample_rate, languages=(lang,), voices=(voice_name,))
        self._lock = threading.Lock()
        self.executor = ModelExecutor(f"tts:{voice_name}")

    def _run(self, text: str, opts: TTSOptions, stop: threading.Event) -> Iterator[Frame]:
        from piper.config import SynthesisConfig

        syn = SynthesisConfig(length_scale=1.0 / max(0.25, opts.speed))
        with self._lock:
            for chunk in self._voice.synthesize(text, syn_config=syn):
                if stop.is_set():
                    return
                yield Frame(float_to_pcm16(chunk.audio_float_array), self.caps.sample_rate)

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        if not text.strip():
            return
        try:
            async for frame in iterate_blocking(lambda stop: self._run(text, opts, stop), executor=self.executor):
                yield frame
        except (RuntimeError, ValueError) as e:
            raise ProviderError(f"piper failed: {e}", retryable=False, provider=self.name) from e


