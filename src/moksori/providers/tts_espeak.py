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
_FAILED = "espeak-ng failed: "


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
            reason = " ".join(proc.stderr.decode(errors="replace").split())[:200] or f"exit status {proc.returncode}"
            raise ProviderError(f"{_FAILED}{reason}", retryable=False, provider=self.name)
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

    async def warm(self, text: str, opts: TTSOptions) -> None:
        """Speak `text` once before the first caller. espeak-ng that runs but cannot speak (its
        data missing or unreadable) is a ModelError naming the voice: start-up stops, as it does
        when espeak-ng is not installed."""
        try:
            async for _ in self.synthesize(text, opts):
                pass
        except ProviderError as e:
            raise ModelError(f"espeak-ng voice '{self.voice}' ({self.binary}) cannot speak: "
                             f"{e.message.removeprefix(_FAILED)}") from e
