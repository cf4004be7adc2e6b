"""Which CPU this process runs on, and the instruction sets that change a model's arithmetic.

The kernels ONNX Runtime, CTranslate2 and llama.cpp pick at run time depend on AVX2, FMA,
AVX-512 and the int8 dot-product extensions (AVX-512 VNNI, AVX-VNNI, AMX): the same model
can give different numbers on two machines (see `providers/numerics.py`).

Two sources, intersected:
* `/proc/cpuinfo` (Linux): the model name and what the kernel lists, including AVX-VNNI and AMX;
* numpy's run-time dispatch table (CPUID + XGETBV in this process): what this process can
  really execute. They disagree under an emulator (qemu-user shows the host's /proc/cpuinfo)
  or when the OS has disabled a register state; a feature the process cannot use is dropped
  and listed in `unusable`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

# The features that matter here, in display order: (canonical name, label).
FEATURES: tuple[tuple[str, str], ...] = (
    ("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"),
    ("avx512f", "AVX-512F"), ("avx512bw", "AVX-512BW"), ("avx512vl", "AVX-512VL"),
    ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "AVX-512 BF16"),
    ("amx_tile", "AMX"), ("amx_int8", "AMX-INT8"),
)
_CANONICAL = {name for name, _ in FEATURES}
# numpy's names for the features it can check at run time
_NUMPY_NAMES = {"AVX2": "avx2", "FMA3": "fma", "F16C": "f16c", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                "AVX512VL": "avx512vl", "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16"}
_NEEDS_AVX512 = {"avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # platform.machine(): x86_64, aarch64, ...
    model: str
    vendor: str = ""
    cores: int = 1
    flags: frozenset[str] = field(default_factory=frozenset)  # usable features (canonical names)
    unusable: frozenset[str] = frozenset()  # listed by the OS but not executable by this process

    @property
    def x86(self) -> bool:
        return self.arch.lower() in ("x86_64", "amd64", "i386", "i686")

    def has(self, *names: str) -> bool:
        return all(n in self.flags for n in names)

    @property
    def int8_dot(self) -> str:
        """The int8 matrix-multiply instructions this CPU offers, best first (x86 only)."""
        if self.has("amx_int8"):
            return "AMX"
        if self.has("avx512_vnni"):
            return "AVX-512 VNNI"
        if self.has("avx_vnni"):
            return "AVX-VNNI"
        if self.has("avx512bw"):
            return "AVX-512 without VNNI"
        if self.has("avx2"):
            return "AVX2 without VNNI"
        return "SSE"

    @property
    def has_int8_dot(self) -> bool:
        """An int8 dot-product instruction (VNNI or AMX) for quantized GEMMs (Whisper's int8 decode of a
        LibriVox turn: p50 226 ms on an AVX-512 VNNI machine, 498 ms on an AVX2-only one)."""
        return self.has("amx_int8") or self.has("avx512_vnni") or self.has("avx_vnni")

    def summary(self) -> str:
        feats = ", ".join(label for name, label in FEATURES if name in self.flags) or "none of the tracked ones"
        return f"{self.model} ({self.arch}, {self.cores} cores): {feats}"


def _proc_cpuinfo(text: str) -> tuple[str, str, set[str]]:
    model = vendor = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 "flags", ARM "Features"
            flags = set(value.split())
    return model, vendor, flags


def _runtime_features() -> dict[str, bool] | None:
    """numpy's CPUID-based dispatch table for this process (None if numpy does not expose it)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats  # numpy >= 2
    except ImportError:
        try:
            # the same table under numpy 1.x's module name
            from numpy.core._multiarray_umath import __cpu_features__ as feats  # type: ignore[no-redef]
        except ImportError:
            return None
    return {ours: bool(feats.get(theirs, False)) for theirs, ours in _NUMPY_NAMES.items()}


def from_flags(listed: set[str] | frozenset[str], *, model: str = "unknown CPU", arch: str = "x86_64",
               vendor: str = "", cores: int = 1, runtime: dict[str, bool] | None = None) -> CpuInfo:
    """A CpuInfo from a flag list (as /proc/cpuinfo spells them) and an optional run-time check."""
    listed = {f.lower() for f in listed}
    aliases = {"avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "fma3": "fma"}
    listed = {aliases.get(f, f) for f in listed}
    usable = listed & _CANONICAL
    if runtime is not None:
        checked = {f for f in usable if f in runtime}
        if any(not runtime[f] for f in checked):
            # the OS's list is contradicted (an emulator shows the host's list): keep only what
            # this process verified, and drop the features numpy cannot check (AVX-VNNI, AMX)
            usable = {f for f in checked if runtime[f]}
        if "avx512f" not in usable:
            usable -= _NEEDS_AVX512
        if "avx2" not in usable:
            usable.discard("avx_vnni")
    unusable = (listed & _CANONICAL) - usable
    return CpuInfo(arch=arch, model=model, vendor=vendor, cores=cores, flags=frozenset(usable),
                   unusable=frozenset(unusable))


def detect(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    try:
        model, vendor, listed = _proc_cpuinfo(cpuinfo_path.read_text(errors="replace"))
    except OSError:
        model, vendor, listed = "", "", set()
    runtime = _runtime_features()
    if not listed and runtime:  # no /proc (macOS, containers without it): trust CPUID alone
        listed = {f for f, ok in runtime.items() if ok}
    return from_flags(listed, model=model or platform.processor() or "unknown CPU", arch=platform.machine(),
                      vendor=vendor, cores=os.cpu_count() or 1, runtime=runtime)


def whisper_threads(info: CpuInfo) -> int:
    """Whisper's intra-op threads when `stt.threads` is `auto`.

    With an int8 dot-product instruction a decoder step is ~5 ms and waking a second OpenMP thread
    for it costs more than it saves: 1 thread decoded a turn 28 ms sooner (paired median, AVX-512
    VNNI, 2 cores). Without one (AVX2 only) each step is about twice the arithmetic and the second
    thread pays: 2 threads decoded 56 ms sooner (paired median, AVX2-only, 2 cores). See
    docs/LATENCY.md. Never more than the cores there are. Not measured on AVX-VNNI, AMX or ARM CPUs
    (ARM falls under the 2-thread rule: none of its features are tracked here).
    """
    return 1 if info.has_int8_dot or info.cores < 2 else 2
