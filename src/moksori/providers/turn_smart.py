"""smart-turn v3.x end-of-turn model: P(turn complete) from the last 8 s of the user's audio."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from moksori.audio.features import log_mel
from moksori.providers import models
from moksori.providers.base import TurnCaps, TurnDetector
from moksori.providers.onnx import open_session
from moksori.providers.threads import ModelExecutor, run_blocking

_WINDOW = 8 * 16000


class SmartTurn(TurnDetector):
    name = "smart-turn-v3.2"
    caps = TurnCaps(sample_rate=16000, max_seconds=8.0, languages=None)

    def __init__(self, model_path: str | Path | None = None, *, threads: int = 1) -> None:
        self.path = Path(model_path) if model_path else models.path_of("smart-turn-v3.2")
        self.session = open_session(self.path, threads=threads, what="smart-turn model")
        self._lock = threading.Lock()
        self.executor = ModelExecutor("turn:smart-turn")

    def features(self, audio: np.ndarray) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32)[-_WINDOW:]
        x = np.pad(x, (_WINDOW - len(x), 0))  # left-pad: the end of the turn is what matters
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        return log_mel(x)[None]

    def _predict(self, audio: np.ndarray) -> float:
        feats = self.features(audio)
        with self._lock:
            out = self.session.run(None, {"input_features": feats})[0]
        return float(out.reshape(-1)[0])

    async def complete_probability(self, audio: np.ndarray, *, language: str | None = None) -> float:
        if len(audio) < 1600:  # under 0.1 s: nothing to judge
            return 0.0
        return await run_blocking(self._predict, audio, executor=self.executor)
