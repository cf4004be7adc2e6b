"""llama.cpp's machine-specific CPU paths, turned off for every model Moksori loads.

llama.cpp (llama-cpp-python, compiled on each machine with `-march=native`) moves weights into
"extra buffer types" when the CPU has them: Intel AMX tiles (Sapphire Rapids and newer Xeons)
and repacked layouts for AVX2/AVX-512. Measured here on an AMX Xeon (llama-cpp-python 0.3.36,
SmolLM2 Q4_1): the AMX path crashes the process (SIGSEGV in `ggml_backend_amx_mul_mat`) on the
first reply. The plain CPU kernels give the same answers on every x86 machine we tried and are
what the other machines run anyway, so they are used everywhere; `MOKSORI_LLAMA_EXTRA_BUFFERS=1`
turns the extra buffer types back on for whoever has checked them on their own CPU.

llama-cpp-python has no keyword for it: `Llama()` reads `llama_model_default_params()` while it
loads, so the default is wrapped, for this process, before any model loads.

llama.cpp's own OpenMP spin-wait (`MOKSORI_LLAMA_SPINCOUNT`, default 1000). llama.cpp (built with
OpenMP) synchronises its threads with an OpenMP barrier after every operation of the graph,
~750 per evaluation of SmolLM2. With `GOMP_SPINCOUNT=0` (Moksori's process default, which keeps
Whisper's and llama.cpp's idle threads off each other's cores) every one of those barriers puts
the waiting thread to sleep and wakes it again: generation went from ~8.5 to ~17-26 ms per token
and 24 prompt tokens from ~90 to ~150 ms on 2 cores (benchmarks/llm_speed.py). llama.cpp loads
the system's libgomp and CTranslate2 its own copy, and each reads GOMP_SPINCOUNT once, when it
loads: so `import_llama()` loads llama.cpp with its own short spin (1000 spins, tens of
microseconds: enough to bridge one operation, too short to hold a core that another runtime
needs) and puts the variable back for everything loaded later.

libgomp spins far less (100, its "throttled" count, unless OMP_WAIT_POLICY=ACTIVE) whenever it
manages more threads than there are CPUs: a second llama.cpp context used from another thread
(an A/B's second model, the batched provider beside the one-at-a-time one) is enough on 2 cores,
and generation then ran at ~30 instead of ~10 ms per token (benchmarks/llm_parallel.py, 2026-12-06,
Intel Xeon with AMX). So llama.cpp's libgomp also loads with `OMP_WAIT_POLICY=ACTIVE` (unless
the environment sets a policy), which makes the throttled count the same short spin.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
from types import ModuleType
from typing import Any

from moksori.errors import ConfigError

ENV = "MOKSORI_LLAMA_EXTRA_BUFFERS"
SPIN_ENV = "MOKSORI_LLAMA_SPINCOUNT"
DEFAULT_SPINCOUNT = 1000
_lock = threading.Lock()
_patched = False


def llama_spincount() -> int:
    """The spin count llama.cpp's libgomp gets: MOKSORI_LLAMA_SPINCOUNT, else DEFAULT_SPINCOUNT."""
    raw = os.environ.get(SPIN_ENV, "").strip()
    if not raw:
        return DEFAULT_SPINCOUNT
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{SPIN_ENV} must be a whole number of spins, not {raw!r}",
                          hint="e.g. 1000 (the default), or 0: no spinning") from None
    if value < 0:
        raise ConfigError(f"{SPIN_ENV} must be 0 or more, not {value}")
    return value


def import_llama() -> ModuleType:
    """Import llama_cpp (its C libraries) with llama.cpp's libgomp reading `llama_spincount()` and
    an active wait policy; both variables are put back for whatever loads later. A no-op once
    llama_cpp is loaded."""
    with _lock:
        loaded = sys.modules.get("llama_cpp.llama_cpp")
        if loaded is not None:
            return loaded
        before = {name: os.environ.get(name) for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
        os.environ["GOMP_SPINCOUNT"] = str(llama_spincount())
        os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")  # the throttled spin: min(1000, the count)
        try:
            import llama_cpp.llama_cpp as lib
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return lib


def extra_buffers_wanted() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def use_portable_kernels() -> bool:
    """Make every llama.cpp model this process loads from now on skip the extra buffer types.
    Idempotent; returns whether the portable kernels are in use."""
    global _patched
    lib: Any = import_llama()
    if extra_buffers_wanted():
        return False
    with _lock:
        if _patched:
            return True
        default = lib.llama_model_default_params

        def portable() -> Any:
            params = default()
            params.use_extra_bufts = False
            return params

        lib.llama_model_default_params = portable
        _patched = True
    return True


def main() -> None:
    """`python -m moksori.providers.llama_cpu ARGS`: `python -m llama_cpp.server ARGS` with the
    portable kernels (what `make cluster` and the tests run as the shared inference server)."""
    use_portable_kernels()  # imports llama_cpp with its spin count (import_llama)
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
