"""Which numeric path each embedded engine takes on a CPU, and which paths are known to differ.

What was measured (tests/test_model_references.py, benchmarks/models.py; AMD EPYC with
AVX-512 VNNI natively, and the same machine emulating an AVX2-only CPU with qemu-user):

* ONNX Runtime (smart-turn, Silero, Piper) runs at graph optimisation BASIC (providers/onnx.py):
  the int8 smart-turn model runs on the float QDQ path and matches its float reference on both
  CPUs; at ALL, the fused u8s8 kernels of an AVX2 CPU without VNNI saturate (a cut sentence:
  0.84 instead of 0.07).
* CTranslate2 (Whisper) at int8, the default, gives a slightly different result per ISA class
  (oneDNN on AMD, MKL on Intel): the same words on all 44 clips tried, but between AVX-512 VNNI
  and AVX2 10 token sequences (mostly timestamps), 2 punctuation marks and no-speech
  probabilities (by up to 0.24) changed. At float32 every oneDNN ISA tried (AVX-512 VNNI,
  AVX-512, AVX2, AVX, SSE4.1) and MKL gave the same tokens (scores within 2e-6), at 1.4-2x the
  time. The references tolerate int8's differences in punctuation, not in words.
* llama.cpp is compiled for the machine that built it. Its AVX-512 and AVX2 builds moved
  SmolLM2 Q4_1's token log-probabilities by up to 0.36 (the margin between the two best tokens by
  0.51); greedy text agreed except after a near-tie token (margin 0.0007).
  A build for instructions the CPU lacks dies with "Illegal instruction". On an Intel Xeon with
  AMX (AMX-INT8, AVX-512 VNNI/BF16), its AMX buffers crashed the process (SIGSEGV in
  ggml_backend_amx_mul_mat) on the first reply, so models load without llama.cpp's extra buffer
  types (providers/llama_cpu.py) unless MOKSORI_LLAMA_EXTRA_BUFFERS=1.

`assess()` is pure (a CPU description and the engines' configuration in, findings out), so the
rules are tested with given flag sets; `probe()` gathers the real configuration.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Literal

from moksori.providers.cpu import FEATURES, CpuInfo

# llama.cpp's system-info names -> canonical feature names (providers/cpu.py)
_LLAMA_FEATURES = {"AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "AVX512": "avx512f", "AVX512_VNNI": "avx512_vnni",
                   "AVX_VNNI": "avx_vnni", "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8"}
_LABEL = dict(FEATURES)


@dataclass(frozen=True)
class EngineConfig:
    """How the embedded engines are set up (None: that engine is not used locally)."""

    onnx_graph: str | None = "basic"  # ONNX Runtime graph optimisation level for the embedded ONNX models
    whisper_compute_type: str | None = "int8"
    llama_build: frozenset[str] | None = None  # features llama.cpp was compiled for
    llama_probe_error: str | None = None  # loading llama.cpp failed (e.g. SIGILL)
    llama_extra_buffers: bool = False  # MOKSORI_LLAMA_EXTRA_BUFFERS: AMX / repacked weights allowed
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EnginePath:
    engine: str
    models: str
    path: str
    same_everywhere: bool


@dataclass(frozen=True)
class Finding:
    level: Literal["warning", "note"]
    model: str
    text: str


def _labels(names: AbstractSet[str]) -> str:
    order = [n for n, _ in FEATURES if n in names]
    return ", ".join(_LABEL.get(n, n) for n in order)


def parse_llama_system_info(text: str) -> frozenset[str]:
    """`llama_print_system_info()` ("CPU : AVX2 = 1 | AVX512 = 1 | ...") -> canonical feature names."""
    found = set()
    for name, value in re.findall(r"([A-Z0-9_]+)\s*=\s*(\d+)", text):
        if value != "0" and name in _LLAMA_FEATURES:
            found.add(_LLAMA_FEATURES[name])
    return frozenset(found)


def assess(cpu: CpuInfo, cfg: EngineConfig) -> tuple[list[EnginePath], list[Finding]]:
    paths: list[EnginePath] = []
    findings: list[Finding] = []
    v = cfg.versions

    if cpu.x86 and not cpu.has("avx2", "fma"):
        findings.append(Finding("warning", "all", "no AVX2/FMA: every engine falls back to SSE kernels, several times "
                                "slower, on numeric paths Moksori has not measured"))
    elif not cpu.x86:
        findings.append(Finding("note", "all", f"{cpu.arch}: the numeric paths were measured on x86 only; run "
                                "`pytest -m models tests/test_model_references.py` to compare with the references"))
    if cpu.unusable:
        findings.append(Finding("note", "all", f"the OS lists {_labels(cpu.unusable)} but this process cannot use "
                                "them (an emulator, or a register state the OS disabled)"))

    # ONNX Runtime: smart-turn (int8 QDQ), Silero and Piper (float)
    if cfg.onnx_graph is not None:
        onnx = f"ONNX Runtime {v.get('onnxruntime', '')}".strip()
        graph = cfg.onnx_graph.lower()
        if graph in ("disable", "basic"):
            paths.append(EnginePath(onnx, "smart-turn v3.2 (int8)", f"graph {graph}: QDQ int8 run in float (reference)",
                                    True))
        else:
            exact = cpu.int8_dot in ("AMX", "AVX-512 VNNI", "AVX-VNNI")
            paths.append(EnginePath(onnx, "smart-turn v3.2 (int8)", f"graph {graph}: fused int8 kernels "
                                    f"({cpu.int8_dot})", False))
            findings.append(Finding("warning", "smart-turn",
                                    f"graph optimisation '{graph}' fuses the int8 model into {cpu.int8_dot} kernels"
                                    + (", which requantize in other places than the graph (measured: up to 1.3 "
                                       "logits from the float reference)" if exact else
                                       ", which saturate: cut sentences score as complete")
                                    + "; use 'basic'"))
        sgemm = "AVX-512F" if cpu.has("avx512f") else "AVX2+FMA" if cpu.has("avx2", "fma") else "SSE"
        paths.append(EnginePath(onnx, "Silero VAD, Piper (float)", f"float kernels ({sgemm}): differ only by rounding",
                                True))

    # CTranslate2: Whisper
    if cfg.whisper_compute_type is not None:
        ct2 = f"CTranslate2 {v.get('ctranslate2', '')}".strip()
        if cfg.whisper_compute_type == "int8":
            paths.append(EnginePath(ct2, "Whisper (int8)", f"int8 kernels for {cpu.int8_dot}", False))
            findings.append(Finding("note", "whisper",
                                    f"int8: CTranslate2's kernels for {cpu.int8_dot} round differently from other "
                                    "CPUs' (measured: the same words, but punctuation, which the end-of-turn cue "
                                    "reads, and no-speech scores can change); MOKSORI_STT_COMPUTE_TYPE=float32 gives "
                                    "the same transcript on every CPU at 1.4-2x Whisper's time"))
        else:
            paths.append(EnginePath(ct2, f"Whisper ({cfg.whisper_compute_type})",
                                    "float kernels: same tokens on every ISA measured", True))

    # llama.cpp
    pin = f"llama-cpp-python=={v['llama_cpp']}" if v.get("llama_cpp") else "llama-cpp-python"
    rebuild = f"pip install --force-reinstall --no-cache-dir --no-binary llama-cpp-python {pin}"
    if cfg.llama_probe_error:
        findings.append(Finding("warning", "llm", f"llama.cpp cannot load on this CPU: {cfg.llama_probe_error}; "
                                f"rebuild it here: {rebuild}"))
    elif cfg.llama_build is not None:
        lcpp = f"llama.cpp (llama-cpp-python {v.get('llama_cpp', '')})".strip()
        built = cfg.llama_build
        isa = "AVX-512" if "avx512f" in built else "AVX2" if "avx2" in built else "SSE"
        kernels = "extra buffer types on (AMX, repacked weights)" if cfg.llama_extra_buffers else "plain CPU kernels"
        paths.append(EnginePath(lcpp, "LLM (GGUF)", f"compiled for {_labels(built) or 'no SIMD extensions'}; "
                                f"{kernels}", False))
        if cfg.llama_extra_buffers and "amx_int8" in built and "amx_int8" in cpu.flags:
            findings.append(Finding("warning", "llm", "MOKSORI_LLAMA_EXTRA_BUFFERS is on and llama.cpp will use AMX: "
                                    "its AMX path crashed the process (SIGSEGV) on the first reply on a Xeon with "
                                    "AMX; unset it unless you have checked this CPU"))
        missing = built - cpu.flags if cpu.x86 else frozenset()
        unused = {f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f in cpu.flags} - built
        if missing:
            findings.append(Finding("warning", "llm", f"llama.cpp was compiled for {_labels(missing)}, which this CPU "
                                    f"lacks: the LLM will die with 'Illegal instruction'; rebuild it on this machine "
                                    f"({rebuild})"))
        elif unused:
            findings.append(Finding("note", "llm", f"llama.cpp was compiled without {_labels(unused)}, which this CPU "
                                    "has: slower than it could be"))
        findings.append(Finding("note", "llm", f"llama.cpp's {isa} kernels round differently from other builds "
                                "(measured between AVX-512 and AVX2: token log-probabilities within 0.4): greedy "
                                "replies can part after a near-tie token; sampled replies differ anyway"))
    return paths, findings


# --------------------------------------------------------------------------- probing the real setup


def probe_llama(timeout: float = 60.0, python: str = sys.executable) -> tuple[frozenset[str] | None, str | None]:
    """llama.cpp's compiled features, read in a child process: a build for a newer CPU kills the
    process that loads it (SIGILL), and the doctor must survive to say so."""
    code = "import llama_cpp, sys; sys.stdout.write(llama_cpp.llama_print_system_info().decode())"
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "loading llama_cpp timed out"
    except OSError as e:
        return None, f"cannot start Python: {e}"
    if proc.returncode == -4:  # SIGILL
        return None, "it died with 'Illegal instruction' (compiled for a newer CPU)"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named" in last:
            return None, None
        return None, f"import failed: {last}"
    return parse_llama_system_info(proc.stdout), None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for key, dist in (("onnxruntime", "onnxruntime"), ("ctranslate2", "ctranslate2"), ("llama_cpp", "llama-cpp-python")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def probe(settings) -> EngineConfig:  # noqa: ANN001 - moksori.settings.Settings
    from moksori.providers.llama_cpu import extra_buffers_wanted
    from moksori.providers.onnx import GRAPH_OPTIMIZATION_NAME

    local_llm = settings.llm.provider == "llamacpp"
    build, error = probe_llama() if local_llm else (None, None)
    return EngineConfig(
        onnx_graph=GRAPH_OPTIMIZATION_NAME,
        whisper_compute_type=settings.stt.compute_type if settings.stt.provider == "whisper" else None,
        llama_build=build if local_llm else None,
        llama_probe_error=error,
        llama_extra_buffers=extra_buffers_wanted(),
        versions=versions(),
    )
