#!/usr/bin/env python
"""Record the embedded models' reference outputs into tests/reference/*.json.

Run once per model change (new weights, a new engine version), never to make a failing test
pass: tests/test_model_references.py compares every machine's outputs with these files.

Each model is run on its reference path, not on the path Moksori uses for speed:
* smart-turn, Silero VAD, Piper: ONNX Runtime with ORT_DISABLE_ALL, i.e. the graph exactly as
  shipped, no fusions; for the int8 smart-turn that is the QDQ model computed in float, as the
  ONNX spec defines it. (Moksori runs them at ORT_ENABLE_BASIC, which gave identical numbers.)
* Whisper: CTranslate2 float32 (the same tokens on every instruction set measured).
* llama.cpp: there is no engine-independent path for a Q4 GGUF; the build on the recording
  machine is the reference (its features are written into the file), and the comparison's
  tolerance covers the measured AVX2-vs-AVX-512 differences.

    PYTHONPATH=src python scripts/record_model_references.py [smart-turn silero piper whisper llm]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import model_outputs as mo


def _onnx_reference_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _header(model: str, path: str) -> dict:
    import platform

    from moksori.providers import cpu
    from moksori.providers.numerics import versions

    return {"model": model, "reference_path": path, "recorded_on": cpu.detect().summary(),
            "python": platform.python_version(), "versions": versions(),
            "script": "scripts/record_model_references.py"}


def record_smart_turn() -> dict:
    import onnxruntime as ort

    from moksori.providers import models
    from moksori.providers.turn_smart import SmartTurn

    turn = SmartTurn()
    turn.session = _onnx_reference_session(models.path_of("smart-turn-v3.2"))
    return {**_header("smart-turn-v3.2", f"onnxruntime {ort.__version__}, ORT_DISABLE_ALL (QDQ int8 in float)"),
            "outputs": mo.smart_turn_outputs(turn._predict)}


def record_silero() -> dict:
    import onnxruntime as ort

    from moksori.providers import models
    from moksori.providers.vad_silero import SileroVAD

    vad = SileroVAD()
    vad.session = _onnx_reference_session(models.path_of("silero-vad"))
    out = mo.silero_outputs(vad)
    return {**_header("silero-vad", f"onnxruntime {ort.__version__}, ORT_DISABLE_ALL"),
            "outputs": {k: [round(p, 7) for p in v] for k, v in out.items()}}


def record_piper() -> dict:
    import onnxruntime as ort

    from moksori.providers import models
    from moksori.providers.tts_piper import PiperTTS

    tts = PiperTTS()
    tts._voice.session = _onnx_reference_session(models.path_of("piper-en-joe"))
    return {**_header("piper-en-joe", f"onnxruntime {ort.__version__}, ORT_DISABLE_ALL, noise_scale=noise_w=0"),
            "outputs": mo.piper_outputs(tts._voice)}


def record_whisper() -> dict:
    import ctranslate2

    from moksori.providers.models import prepare_whisper
    from moksori.providers.stt_whisper import WhisperSTT

    with tempfile.TemporaryDirectory() as d:
        stt = WhisperSTT(prepare_whisper(Path(d)), compute_type="float32")
        return {**_header("whisper-base", f"ctranslate2 {ctranslate2.__version__}, float32, beam 1"),
                "outputs": mo.whisper_outputs(stt)}


def record_llm() -> dict:
    import llama_cpp

    from moksori.providers import models
    from moksori.providers.llm_llamacpp import LlamaCppLLM

    llm = LlamaCppLLM(models.path_of("smollm2-135m"))
    info = llama_cpp.llama_print_system_info().decode().strip()
    return {**_header("smollm2-135m", f"llama.cpp as built here ({info}), greedy"),
            "outputs": mo.llm_outputs(llm)}


RECORDERS = {"smart-turn": record_smart_turn, "silero": record_silero, "piper": record_piper,
             "whisper": record_whisper, "llm": record_llm}


def main() -> None:
    which = sys.argv[1:] or list(RECORDERS)
    unknown = [w for w in which if w not in RECORDERS]
    if unknown:
        raise SystemExit(f"unknown: {unknown}; choose from {list(RECORDERS)}")
    mo.REFERENCE_DIR.mkdir(exist_ok=True)
    for name in which:
        data = RECORDERS[name]()
        path = mo.REFERENCE_DIR / f"{name}.json"
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}: {data['reference_path']}")


if __name__ == "__main__":
    main()
