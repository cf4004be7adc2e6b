"""`WavSoundCard`: a stand-in for the `sounddevice` module (these machines have no sound card),
for `moksori chat`'s voice loop (`chat_cmd._voice_chat(..., sd=WavSoundCard(...))`).

It is a test double for the hardware only: one input and one output device; the microphone
stream calls its callback from its own thread every block, at real-time pace, with a recording
(real speech) followed by silence; the speaker stream calls its callback at the same pace and
keeps what it was given. Everything behind the callbacks (the session, the models, the store)
is the real thing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np


class _Stream:
    def __init__(self, card: WavSoundCard, kind: str, samplerate: int, blocksize: int, callback: Any,
                 channels: int = 1, dtype: str = "int16", device: Any = None) -> None:
        self.card, self.kind, self.rate, self.block, self.callback = card, kind, samplerate, blocksize, callback
        self.dtype = dtype
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sound-{kind}", daemon=True)

    def __enter__(self) -> _Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        t0, n = time.monotonic(), 0
        while not self._stop.is_set():
            if self.kind == "input":
                self.callback(self.card.next_input(self.block), self.block, None, None)
            else:
                out = np.zeros((self.block, 1), dtype=np.float32)
                self.callback(out, self.block, None, None)
                self.card.played(out[:, 0])
            n += 1
            delay = t0 + n * self.block / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)


class WavSoundCard:
    def __init__(self, speech: np.ndarray, rate: int) -> None:
        self.rate = rate
        self._speech = speech.astype(np.int16)
        self._pos = 0
        self._lock = threading.Lock()
        self.output: list[np.ndarray] = []
        self.loud_at: float | None = None  # when the speakers last got sound (monotonic)

    # the parts of the sounddevice API that `moksori chat` uses
    def query_devices(self, device: Any = None, kind: str | None = None) -> Any:
        both = {"name": "wav sound card (test)", "max_input_channels": 1, "max_output_channels": 1,
                "default_samplerate": float(self.rate)}
        return both if kind is not None else [both]

    def InputStream(self, **kw: Any) -> _Stream:
        return _Stream(self, "input", kw["samplerate"], kw["blocksize"], kw["callback"])

    def OutputStream(self, **kw: Any) -> _Stream:
        return _Stream(self, "output", kw["samplerate"], kw["blocksize"], kw["callback"])

    # the recording in, the speakers out
    def next_input(self, n: int) -> np.ndarray:
        with self._lock:
            chunk = self._speech[self._pos:self._pos + n]
            self._pos += len(chunk)
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros(n - len(chunk), dtype=np.int16)])
        return chunk.reshape(-1, 1)

    @property
    def input_done(self) -> bool:
        return self._pos >= len(self._speech)

    def played(self, samples: np.ndarray) -> None:
        self.output.append(samples.copy())
        if np.abs(samples).max() > 0.01:
            self.loud_at = time.monotonic()

    @property
    def played_seconds(self) -> float:
        return sum(float(np.count_nonzero(np.abs(s) > 0.01)) for s in self.output) / self.rate
