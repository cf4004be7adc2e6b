"""Silero VAD (v5/v6 ONNX) on onnxruntime: no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moksori.providers import models
from moksori.providers.base import VAD, VADCaps
from moksori.providers.onnx import open_session

_CONTEXT = 64  # the model sees the last 64 samples of the previous frame


class SileroStream:
    def __init__(self, owner: "SileroVAD") -> None:
        self._owner = owner
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        x = np.concatenate([self._context, frame.astype(np.float32, copy=False)])[None, :]
        prob, self._state = self._owner.session.run(
            None, {"input": x, "state": self._state, "sr": self._owner.sr})
        self._context = x[0, -_CONTEXT:]
        return float(prob[0, 0])


class SileroVAD(VAD):
    name = "silero"
    caps = VADCaps(sample_rate=16000, frame_samples=512)

    def __init__(self, model_path: str | Path | None = None) -> None:
        self.path = Path(model_path) if model_path else models.path_of("silero-vad")
        self.session = open_session(self.path, threads=1, what="Silero VAD model")
        self.sr = np.array(16000, dtype=np.int64)

    def stream(self) -> SileroStream:
        return SileroStream(self)
