"""Opening ONNX models with explicit thread counts, one numeric path on every CPU, one-line errors.

Graph optimisation stops at BASIC (constant folding, redundant-node removal: exact rewrites).
Above it (EXTENDED/ALL) ONNX Runtime fuses an int8 model's QuantizeLinear/DequantizeLinear
pairs into integer kernels chosen per CPU, and on AVX2 CPUs without VNNI the u8s8 kernel
saturates its 16-bit intermediate sums: smart-turn v3.2 then scored a sentence cut at 55 %
0.84 "complete" (0.07 on the unfused path). With BASIC the QDQ model runs as the ONNX spec
defines it, in float, and gives the same numbers on every instruction set (checked under an
emulated AVX2-only CPU, tests/test_model_references.py). It costs smart-turn ~40 ms per call
on a 2-core AMD EPYC (42 -> 84 ms; benchmarks/models.py); the float models (Silero, Piper)
measured no difference between BASIC and ALL.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from moksori.errors import ModelError

GRAPH_OPTIMIZATION = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
GRAPH_OPTIMIZATION_NAME = {ort.GraphOptimizationLevel.ORT_DISABLE_ALL: "disable",
                           ort.GraphOptimizationLevel.ORT_ENABLE_BASIC: "basic",
                           ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED: "extended",
                           ort.GraphOptimizationLevel.ORT_ENABLE_ALL: "all"}.get(GRAPH_OPTIMIZATION, "all")


def session_options(threads: int = 1) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = GRAPH_OPTIMIZATION
    so.log_severity_level = 3
    # Idle ORT worker threads would otherwise spin and steal the cores Whisper/llama.cpp need.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def open_session(path: Path | str, *, threads: int = 1, what: str = "model") -> ort.InferenceSession:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{what} file not found: {p}")
    so = session_options(threads)
    try:
        return ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ModelError(f"cannot load {what} {p}: the file is corrupt or not an ONNX model",
                         hint="run `moksori models verify`") from e
