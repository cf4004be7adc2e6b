"""The one table `make bench` ends with: end of speech -> first reply audio on each path, p50/p95,
and where the time went, with the machine and its load (the figures mean nothing without them).

`table()` is a pure function over the benchmarks' result dicts (as they write them to
benchmarks/results/*.json) and a description of the run; `machine()` and `loadavg()` read the
machine it runs on.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

# the per-stage columns, each as the result key per benchmark (None: that benchmark cannot see it)
STAGES = ("STT done", "LLM first token", "first clause audio")
ENGINE_KEYS = ("stt_done", "llm_first_token", "tts_first_audio")  # ms after user.speech_stopped
MOKSORI_PHONE_KEYS = ("stt_done", "llm_first_token", "tts_first_audio")  # s after the true end of speech
PIPECAT_PHONE_KEYS = ("transcript", "llm_first_token", "tts_first_audio")
SIMD = ("avx512f", "avx512_vnni", "avx512_bf16", "avx2", "fma", "amx_tile")

Row = tuple[str, str, float | None, float | None, str, tuple[float | None, ...]]


def _num(v: Any) -> float | None:
    """A figure in seconds, or None for a missing one (absent, null, NaN)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def _ms(v: Any) -> float | None:
    f = _num(v)
    return None if f is None else f / 1000


def _cell(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f} s"


def rows(results: dict[str, dict | None]) -> tuple[list[Row], list[str]]:
    """One row per path that has results, and the notes that go under the table."""
    out: list[Row] = []
    notes: list[str] = []
    eng = results.get("engine_latency")
    if eng and "summary" in eng:
        s = eng["summary"]
        st = s.get("stages_p50_ms") or {}
        out.append(("engine (`engine_latency.py`)", "`user.speech_stopped` → `agent.audio_started`",
                    _ms(s.get("p50_ms")), _ms(s.get("p95_ms")), str(s.get("samples", "?")),
                    tuple(_ms(st.get(k)) for k in ENGINE_KEYS)))
    srv = results.get("server_latency")
    if srv and "summary" in srv:
        s = srv["summary"]
        st = s.get("stages_p50_ms") or {}
        out.append(("Realtime WebSocket, `openai` client (`server_latency.py`)",
                    "true end of speech → first `response.output_audio.delta`",
                    _ms(s.get("p50_ms")), _ms(s.get("p95_ms")), str(s.get("n", "?")),
                    tuple(_ms(st.get(k)) for k in ("stt_done", "llm_first_token", "tts_first_audio"))))
        seen = [(label, _ms(st.get(k))) for k, label in (
            ("speech_stopped", "`speech_stopped`"), ("transcribed", "transcription completed"),
            ("first_text", "first transcript delta"))]
        if any(v is not None for _, v in seen):
            notes.append("Realtime WebSocket, what the client sees (p50 after the true end of speech): "
                         + ", ".join(f"{label} {_cell(v)}" for label, v in seen)
                         + " (the transcript is sent once the turn has ended).")
    tel = results.get("telephony_latency")
    if tel:
        # an older file had Moksori's figures at the top level
        m = tel.get("moksori") or {"p50_s": tel.get("p50_s"), "p95_s": tel.get("p95_s"), "n": tel.get("n")}
        for name, side, keys in (("Moksori", m, MOKSORI_PHONE_KEYS), ("Pipecat", tel.get("pipecat"), PIPECAT_PHONE_KEYS)):
            if not side:
                continue
            st = side.get("stages_p50_s") or {}
            n = side.get("n")
            ok = "?" if n is None else str(n - (side.get("missing") or 0))
            if name == "Moksori":
                label = "Twilio stream, simulated carrier (`telephony_latency.py`)"
            else:
                version = ("Pipecat " + str((side.get("setup") or {}).get("version", ""))).strip()
                label = f"Twilio stream, **{version}** on the same models, same caller"
            out.append((label, "true end of speech → first reply `media` frame", _num(side.get("p50_s")),
                        _num(side.get("p95_s")), ok, tuple(_num(st.get(k)) for k in keys)))
        others = _num(tel.get("others_cores_p50"))
        busy = "" if others is None else f"other processes kept {others:.2f} cores busy (p50 over the calls)"
        if tel.get("pipecat"):
            notes.append(f"Moksori and Pipecat calls interleaved in one run ({tel.get('order', 'interleaved')})"
                         + (f"; {busy}." if busy else "."))
        elif busy:
            notes.append(f"Twilio stream: {busy}.")
    return out, notes


def table(results: dict[str, dict | None], run: dict) -> str:
    """The markdown table of the end-of-speech figures, with the machine and the load of the run.

    `results` maps a benchmark's name (engine_latency, server_latency, telephony_latency) to what
    it wrote; `run` describes the run: machine (from `machine()`), load_start/load_end (from
    `loadavg()`), date, quick, seconds.
    """
    body, notes = rows(results)
    if not body:
        return "No end-of-speech benchmark results to show."
    head = ["path", "measured from → to", "p50", "p95", "n", *(f"{s} (p50)" for s in STAGES)]
    lines = ["## End of speech → first reply audio", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for path, span, p50, p95, n, stages in body:
        lines.append("| " + " | ".join([path, span, _cell(p50), _cell(p95), n, *(_cell(v) for v in stages)]) + " |")
    lines.append("")
    lines.append("- Stages are p50 seconds after the same start as the row (engine: `user.speech_stopped`, "
                 "the end of the VAD's last voiced frame; the other rows: the true end of speech in the file); "
                 "– where the benchmark did not record the stage.")
    lines += [f"- {note}" for note in notes]
    lines.append("")
    lines.append(describe_run(run))
    return "\n".join(lines) + "\n"


def describe_run(run: dict) -> str:
    mach = run.get("machine") or {}
    simd = mach.get("simd") or []
    isa = "AVX-512" if any(f.startswith("avx512") for f in simd) else "AVX2" if "avx2" in simd else "no AVX2"
    flags = ", ".join(f for f in simd) or "?"

    def load(v: Any) -> str:
        return "?" if not v else " / ".join(f"{x:.2f}" for x in v)

    parts = [f"Machine: {mach.get('cpu_model', '?')}, {mach.get('cores', '?')} cores, {isa} ({flags})."]
    if run.get("load_start") or run.get("load_end"):
        parts.append(f"Load average (1/5/15 min) at the start of the run {load(run.get('load_start'))}, "
                     f"at the end {load(run.get('load_end'))}.")
    else:
        parts.append("Load average: not recorded with these results (no run_all.json), so read them with care.")
    when = []
    if run.get("date"):
        when.append(str(run["date"]))
    if run.get("seconds") is not None:
        when.append(f"run took {run['seconds'] / 60:.1f} min")
    if run.get("quick"):
        when.append("`--quick` (1 rep each, Moksori only)")
    if run.get("benchmarks"):
        when.append("ran " + ", ".join(run["benchmarks"]))
    if when:
        parts.append("Run: " + ", ".join(when) + ".")
    return " ".join(parts)


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """CPU model, the SIMD flags that matter for the models, and the core count."""
    info: dict = {"cores": os.cpu_count(), "cpu_model": "?", "simd": []}
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and info["cpu_model"] == "?":
                info["cpu_model"] = value.strip()
            elif key == "flags" and not info["simd"]:
                have = set(value.split())
                info["simd"] = [f for f in SIMD if f in have]
    return info


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
