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
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
from typing import Any

ENV = "MOKSORI_LLAMA_EXTRA_BUFFERS"
_lock = threading.Lock()
_patched = False


def extra_buffers_wanted() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def use_portable_kernels() -> bool:
    """Make every llama.cpp model this process loads from now on skip the extra buffer types.
    Idempotent; returns whether the portable kernels are in use."""
    global _patched
    if extra_buffers_wanted():
        return False
    with _lock:
        if _patched:
            return True
        import llama_cpp.llama_cpp as lib

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
    use_portable_kernels()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
