"""`moksori doctor`: CPU features, the numeric path of each engine, warnings for paths known to differ.

The rules are a pure function of a CPU description and the engines' setup, tested here with the
flag sets of real CPUs; the command itself runs as a subprocess on this machine.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from moksori.providers import cpu, numerics

# /proc/cpuinfo flags (the parts that matter) of three real machines
EPYC_ROME = "fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c avx2 bmi1 bmi2 sha_ni"
EPYC_GENOA = EPYC_ROME + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 avx_vnni"
SAPPHIRE_RAPIDS = EPYC_GENOA + " amx_tile amx_int8 amx_bf16"
CASCADE_LAKE = EPYC_ROME + " avx512f avx512bw avx512vl avx512_vnni"
SKYLAKE_SP = EPYC_ROME + " avx512f avx512bw avx512vl"
NEHALEM = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"
LLAMA_NATIVE_AVX512 = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
                       "BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | ")
LLAMA_AVX2 = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "


def machine(flags: str, **kw) -> cpu.CpuInfo:
    return cpu.from_flags(set(flags.split()), model=kw.pop("model", "test CPU"), **kw)


def warnings(info: cpu.CpuInfo, **cfg) -> list[numerics.Finding]:
    return [f for f in numerics.assess(info, numerics.EngineConfig(**cfg))[1] if f.level == "warning"]


# --------------------------------------------------------------------------- CPU features


def test_int8_kernel_class_per_cpu():
    assert machine(SAPPHIRE_RAPIDS).int8_dot == "AMX"
    assert machine(EPYC_GENOA).int8_dot == "AVX-512 VNNI"
    assert machine(CASCADE_LAKE).int8_dot == "AVX-512 VNNI"
    assert machine(SKYLAKE_SP).int8_dot == "AVX-512 without VNNI"
    assert machine(EPYC_ROME).int8_dot == "AVX2 without VNNI"
    assert machine(EPYC_ROME + " avx_vnni").int8_dot == "AVX-VNNI"
    assert machine(NEHALEM).int8_dot == "SSE"


def test_whisper_threads_auto_per_cpu(monkeypatch):
    # one thread where an int8 dot-product instruction makes a decoder step cheap, two where not
    assert cpu.whisper_threads(machine(EPYC_GENOA, cores=2)) == 1
    assert cpu.whisper_threads(machine(SAPPHIRE_RAPIDS, cores=8)) == 1
    assert cpu.whisper_threads(machine(EPYC_ROME + " avx_vnni", cores=4)) == 1
    assert cpu.whisper_threads(machine(EPYC_ROME, cores=2)) == 2
    assert cpu.whisper_threads(machine(SKYLAKE_SP, cores=16)) == 2
    assert cpu.whisper_threads(machine(EPYC_ROME, cores=1)) == 1
    from moksori.settings import Settings

    monkeypatch.delenv("MOKSORI_STT_THREADS", raising=False)
    assert Settings().stt.threads == "auto"
    monkeypatch.setenv("MOKSORI_STT_THREADS", "3")
    assert Settings().stt.threads == 3
    monkeypatch.setenv("MOKSORI_STT_THREADS", "0")
    with pytest.raises(ValueError):
        Settings()


def test_features_the_process_cannot_use_are_dropped():
    """qemu-user shows the host's /proc/cpuinfo: what CPUID denies is unusable, and so is what
    numpy cannot check (AVX-VNNI, AMX) once the list has been caught lying."""
    runtime = {"avx2": True, "fma": True, "f16c": True, "avx512f": False, "avx512bw": False, "avx512vl": False,
               "avx512_vnni": False, "avx512_bf16": False}
    info = cpu.from_flags(set(SAPPHIRE_RAPIDS.split()), runtime=runtime)
    assert info.flags == {"avx2", "fma", "f16c"}
    assert {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8"} <= info.unusable
    assert info.int8_dot == "AVX2 without VNNI"
    # an honest list keeps what numpy cannot check
    honest = cpu.from_flags(set(SAPPHIRE_RAPIDS.split()), runtime={k: True for k in runtime})
    assert {"avx_vnni", "amx_int8"} <= honest.flags and not honest.unusable


def test_detect_on_this_machine():
    info = cpu.detect()
    assert info.model and info.cores == os.cpu_count()
    if os.path.exists("/proc/cpuinfo") and info.x86:
        listed = set()
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    listed = set(line.split(":", 1)[1].split())
                    break
        # the process's view is the OS list, less only what it cannot execute
        assert info.flags | info.unusable == listed & {n for n, _ in cpu.FEATURES}
        print("\n", info.summary(), "| int8:", info.int8_dot)


def test_parse_llama_system_info():
    assert numerics.parse_llama_system_info(LLAMA_NATIVE_AVX512) == {
        "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"}
    assert numerics.parse_llama_system_info(LLAMA_AVX2) == {"avx2", "fma", "f16c"}
    assert numerics.parse_llama_system_info("CPU : AVX2 = 0 | FMA = 0 |") == set()


# --------------------------------------------------------------------------- the rules


def test_defaults_have_no_warning_on_any_avx2_cpu():
    for flags in (EPYC_ROME, EPYC_GENOA, SAPPHIRE_RAPIDS, CASCADE_LAKE, SKYLAKE_SP):
        info = machine(flags)
        assert warnings(info, llama_build=numerics.parse_llama_system_info(LLAMA_AVX2)) == [], flags
        paths, _ = numerics.assess(info, numerics.EngineConfig())
        assert [p.models for p in paths if not p.same_everywhere] == ["Whisper (int8)"]  # a note, within tolerance


def test_fused_int8_onnx_warns_where_the_kernel_saturates():
    for flags in (EPYC_ROME, SKYLAKE_SP, NEHALEM):
        found = [f for f in warnings(machine(flags), onnx_graph="all") if f.model == "smart-turn"]
        assert found and "saturate" in found[0].text, flags
    for flags in (EPYC_GENOA, SAPPHIRE_RAPIDS):  # exact integer kernels, still off the reference
        found = [f for f in warnings(machine(flags), onnx_graph="all") if f.model == "smart-turn"]
        assert found and "saturate" not in found[0].text and "1.3 logits" in found[0].text, flags


def test_whisper_int8_is_a_note_float32_is_the_same_everywhere():
    for flags in (EPYC_ROME, EPYC_GENOA):
        info = machine(flags)
        paths, findings = numerics.assess(info, numerics.EngineConfig(whisper_compute_type="int8"))
        assert [(f.level, f.model) for f in findings] == [("note", "whisper")]
        assert info.int8_dot in findings[0].text and "float32" in findings[0].text
        assert not [p for p in paths if p.models.startswith("Whisper")][0].same_everywhere
        paths, findings = numerics.assess(info, numerics.EngineConfig(whisper_compute_type="float32"))
        assert not findings and all(p.same_everywhere for p in paths)
    assert not numerics.assess(machine(EPYC_ROME), numerics.EngineConfig(whisper_compute_type=None))[1]


def test_llama_build_for_a_newer_cpu_warns():
    avx512_build = numerics.parse_llama_system_info(LLAMA_NATIVE_AVX512)
    found = warnings(machine(EPYC_ROME), llama_build=avx512_build)
    assert [f.model for f in found] == ["llm"] and "Illegal instruction" in found[0].text
    assert "AVX-512F" in found[0].text
    assert not warnings(machine(EPYC_GENOA), llama_build=avx512_build)
    # a build without what the CPU has: a note (slower), not a warning
    notes = numerics.assess(machine(EPYC_GENOA), numerics.EngineConfig(
        llama_build=numerics.parse_llama_system_info(LLAMA_AVX2)))[1]
    assert any("slower" in f.text and f.level == "note" for f in notes)
    assert warnings(machine(EPYC_ROME), llama_probe_error="it died")[0].model == "llm"


def test_llama_amx_is_off_unless_asked_and_then_warned():
    amx_build = numerics.parse_llama_system_info(
        "CPU : SSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | "
        "AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 |")
    assert "amx_int8" in amx_build
    paths, _ = numerics.assess(machine(SAPPHIRE_RAPIDS), numerics.EngineConfig(llama_build=amx_build))
    assert any("plain CPU kernels" in p.path for p in paths)
    assert not warnings(machine(SAPPHIRE_RAPIDS), llama_build=amx_build)
    found = warnings(machine(SAPPHIRE_RAPIDS), llama_build=amx_build, llama_extra_buffers=True)
    assert [f.model for f in found] == ["llm"] and "AMX" in found[0].text
    # the same setting on a CPU without AMX: nothing to warn about
    assert not warnings(machine(EPYC_GENOA), llama_build=amx_build - {"amx_int8"}, llama_extra_buffers=True)


def test_llama_models_load_without_extra_buffers(monkeypatch):
    import llama_cpp.llama_cpp as lib

    from moksori.providers import llama_cpu

    monkeypatch.delenv(llama_cpu.ENV, raising=False)
    assert llama_cpu.use_portable_kernels()
    assert lib.llama_model_default_params().use_extra_bufts is False
    monkeypatch.setenv(llama_cpu.ENV, "1")
    assert not llama_cpu.use_portable_kernels()


def test_old_and_foreign_cpus():
    assert [f.model for f in warnings(machine(NEHALEM))] == ["all"]
    arm = cpu.from_flags({"asimd", "asimddp"}, arch="aarch64")
    findings = numerics.assess(arm, numerics.EngineConfig(whisper_compute_type="float32"))[1]
    assert [f.level for f in findings] == ["note"] and "aarch64" in findings[0].text
    emulated = cpu.from_flags(set(EPYC_GENOA.split()), runtime={"avx2": True, "fma": True, "f16c": True,
                                                                 "avx512f": False})
    assert any("cannot use" in f.text for f in numerics.assess(emulated, numerics.EngineConfig())[1])
    assert emulated.int8_dot == "AVX2 without VNNI"


def test_probe_llama_survives_an_illegal_instruction(tmp_path):
    """A llama.cpp built for a newer CPU kills the process loading it with SIGILL."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nkill -ILL $$\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    build, error = numerics.probe_llama(python=str(fake))
    assert build is None and "Illegal instruction" in error


def test_probe_llama_reads_the_installed_build():
    build, error = numerics.probe_llama()
    assert error is None and build and "avx2" in build  # installed, and built with at least AVX2 here


# --------------------------------------------------------------------------- the command


def run_doctor(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOKSORI_")}
    return subprocess.run([sys.executable, "-m", "moksori", "doctor", *args], capture_output=True, text=True,
                          timeout=120, env={**clean, "COLUMNS": "200", "NO_COLOR": "1", **env},
                          stdin=subprocess.DEVNULL)


def test_doctor_on_this_machine():
    proc = run_doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    print("\n" + out)
    info = cpu.detect()
    assert f"CPU: {info.model}" in out
    for _, label in cpu.FEATURES:
        assert label in out
    assert "graph basic" in out and "Whisper (int8)" in out and "llama.cpp" in out
    assert "no warnings" in out and "warning (" not in out


def test_doctor_json_float32():
    proc = run_doctor("--json", MOKSORI_STT_COMPUTE_TYPE="float32")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data["cpu"]["features"]) == set(cpu.detect().flags)
    assert data["cpu"]["int8_dot"] == cpu.detect().int8_dot
    whisper = [e for e in data["engines"] if e["models"].startswith("Whisper")]
    assert [(e["models"], e["same_everywhere"]) for e in whisper] == [("Whisper (float32)", True)]
    assert not [f for f in data["findings"] if f["model"] == "whisper"]


def test_doctor_warns_and_exits_1_on_an_avx2_only_cpu(monkeypatch):
    """This machine's llama.cpp build (AVX-512 here) seen from an AVX2-only EPYC: the wheel would die."""
    from typer.testing import CliRunner

    from moksori.cli import main as cli_main

    build, _ = numerics.probe_llama()
    if not build or "avx512f" not in build:
        pytest.skip("this machine's llama.cpp is not an AVX-512 build")
    monkeypatch.setattr(cpu, "detect", lambda: machine(EPYC_ROME, model="AMD EPYC 7B12"))
    cli_main._register()
    result = CliRunner().invoke(cli_main.app, ["doctor"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    print("\n" + result.output)
    assert result.exit_code == 1, result.output
    assert "AMD EPYC 7B12" in result.output and "Illegal instruction" in " ".join(result.output.split())
    assert "warning (llm)" in result.output


@pytest.mark.parametrize("setting", [{"MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": "http://127.0.0.1:9/v1",
                                      "MOKSORI_STT_PROVIDER": "openai", "MOKSORI_STT_BASE_URL": "http://127.0.0.1:9/v1"}])
def test_doctor_with_remote_engines_skips_them(setting):
    proc = run_doctor("--json", **setting)
    assert proc.returncode == 0, proc.stderr
    engines = {e["models"] for e in json.loads(proc.stdout)["engines"]}
    assert not any(m.startswith(("Whisper", "LLM")) for m in engines)
