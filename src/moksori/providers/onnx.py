"""Opening ONNX models with explicit thread counts and one-line errors."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from moksori.errors import ModelError


def open_session(path: Path | str, *, threads: int = 1, what: str = "model") -> ort.InferenceSession:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{what} file not found: {p}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Idle ORT worker threads would otherwise spin and steal the cores Whisper/llama.cpp need.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ModelError(f"cannot load {what} {p}: the file is corrupt or not an ONNX model",
                         hint="run `moksori models verify`") from e
