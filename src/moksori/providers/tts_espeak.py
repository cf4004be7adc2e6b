"""espeak-ng as a separate process (it is GPL; we talk to it over a pipe). Korean by default."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator

from moksori.audio.frames import Frame
from moksori.audio.wav import read_wav_bytes
from moksori.errors import AudioFormatError, ModelError, ProviderError
from moksori.providers.base import TTS, TTSCaps, TTSOptions
from moksori.providers.threads import ModelExecutor, run_blocking

_BASE_WPM = 165


class EspeakTTS(TTS):
    name = "espeak-ng"

    def __init__(self, *, voice: str = "ko", binary: str | None = None) -> None:
        self.binary = binary or shutil.which("espeak-ng") or ""
        if not self.binary:
            raise ModelError("espeak-ng is not installed (needed for Korean speech)",
                             hint="run `make setup` or `sudo apt-get install espeak-ng`")
        self.voice = voice
        self.executor = ModelExecutor(f"tts:espeak-{voice}")
        self.caps = TTSCaps(sample_rate=22050, languages=(voice[:2],), voices=(f"espeak-{voice}",))

    def _run(self, text: str, speed: float) -> bytes:
        # Text goes through stdin, never the command line: no option injection, no length limit.
        proc = subprocess.run([self.binary, "-v", self.voice, "-s", str(int(_BASE_WPM * speed)), "--stdout"],
                              input=text.encode("utf-8"), capture_output=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise ProviderError(f"espeak-ng failed: {proc.stderr.decode(errors='replace')[:200]}",
                                retryable=False, provider=self.name)
        return proc.stdout

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        if not text.strip():
            return
        try:
            data = await run_blocking(self._run, text, opts.speed, executor=self.executor)
        except subprocess.TimeoutExpired:
            raise ProviderError("espeak-ng timed out", retryable=True, provider=self.name) from None
        except OSError as e:
            raise ProviderError(f"cannot run espeak-ng: {e.strerror}", retryable=False, provider=self.name) from None
        try:
            frame = read_wav_bytes(data, name="espeak-ng output")
        except AudioFormatError as e:
            raise ProviderError(str(e), retryable=False, provider=self.name) from None
        self.caps = TTSCaps(sample_rate=frame.rate, languages=self.caps.languages, voices=self.caps.voices)
        yield frame
