"""A GGUF model's weights in another llama.cpp type, written once into a cache folder.

llama.cpp evaluates a prompt's tokens as one batch with its tiled matrix kernels (llamafile's
tinyBLAS) only for some weight types (F32, F16, BF16, Q8_0, Q4_0, ...). The packaged SmolLM2 is
Q4_1, which they do not cover, so its prompt evaluation goes row by row. `llm.weights` asks for
the same weights in a covered type: Q8_0 moves each Q4_1 weight by at most half a Q8_0 step; F16
holds them exactly, but each generated token reads 2.7 times the bytes (slower on 2 cores).
benchmarks/llm_quant.py measures how close each stays to the shipped file, benchmarks/llm_speed.py
and engine_latency.py the speed.

The copy is written with `llama_model_quantize` under a temporary name and renamed into place, so
two processes starting at once both end with a whole file. Its name carries the source's size
and modification time: a changed source gets a new copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from moksori.errors import ModelError

# llama.cpp's `llama_ftype` values for the types `llm.weights` accepts
FTYPES = {"q8_0": 7, "f16": 1}


def weights_file(source: Path, kind: str, cache_dir: Path) -> Path:
    """`source` itself for kind "as_is", else its weights as `kind` in `cache_dir` (made once)."""
    if kind == "as_is" or not source.is_file():  # a missing file: LlamaCppLLM says so
        return source
    if kind not in FTYPES:
        raise ModelError(f"unknown LLM weight type {kind!r}", hint=f"use as_is or one of {', '.join(FTYPES)}")
    st = source.stat()
    target = cache_dir / f"{source.stem}.{kind}.{st.st_size}-{int(st.st_mtime)}.gguf"
    if target.is_file():
        return target
    from moksori.providers.llama_cpu import import_llama

    llama_cpp = import_llama()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create {cache_dir} for the LLM's {kind} weights: {e}",
                         hint="set MOKSORI_DATA_DIR to a writable folder, or MOKSORI_LLM_WEIGHTS=as_is") from e
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    try:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ModelError(f"llama.cpp could not write {source.name}'s weights as {kind} (code {rc})",
                             hint="MOKSORI_LLM_WEIGHTS=as_is loads the file as it is")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
