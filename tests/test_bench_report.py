"""The benchmark report `make bench` ends with, and the reading of the Pipecat bot's timeline.

Runs in milliseconds on small files; needs neither the Pipecat virtualenv nor a benchmark run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH / "pipecat"))

import run_all  # noqa: E402
import summary_table  # noqa: E402
from launch import PipecatStack  # noqa: E402


ENGINE = {"summary": {"p50_ms": 835, "p95_ms": 1092, "samples": 15, "stages_p50_ms": {
    "turn_end": 601, "stt_done": 426, "eot_done": 518, "llm_first_token": 600, "tts_first_audio": 835}}}
SERVER = {"summary": {"p50_ms": 1022.0, "p95_ms": 1248.6, "n": 10, "stages_p50_ms": {
    "speech_stopped": 726.2, "transcribed": 726.3, "first_text": 780.0, "first_audio": 1022.0,
    "stt_done": 512.0, "llm_first_token": float("nan"), "tts_first_audio": 1011.0}}}
PHONE = {"date": "2026-12-02", "others_cores_p50": 0.1, "order": "interleaved",
         "moksori": {"p50_s": 0.787, "p90_s": 1.0, "p95_s": 1.067, "n": 15, "missing": 0,
                     "stages_p50_s": {"vad_stopped": 0.09, "stt_done": 0.5, "turn_end": 0.6,
                                      "llm_first_token": 0.61, "tts_first_audio": 0.78}},
         "pipecat": {"p50_s": 3.33, "p90_s": 4.1, "p95_s": 4.8, "n": 15, "missing": 1, "setup": {"version": "1.14.0"},
                     "stages_p50_s": {"transcript": 1.9, "turn_end": 2.0, "tts_first_audio": 3.3}}}
RUN = {"machine": {"cpu_model": "AMD EPYC 9R14", "cores": 2, "simd": ["avx512f", "avx2", "fma"]},
       "load_start": [2.04, 3.67, 4.09], "load_end": [5.5, 4.25, 4.0], "date": "2026-12-03 09:00 UTC",
       "seconds": 600, "quick": True}


def _cells(text: str, starts: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("| " + starts))
    return [c.strip() for c in line.strip("|").split("|")]


def test_one_markdown_row_per_path_with_the_stage_split() -> None:
    text = summary_table.table({"engine_latency": ENGINE, "server_latency": SERVER, "telephony_latency": PHONE}, RUN)
    header = _cells(text, "path")
    assert header[2:] == ["p50", "p95", "n", "STT done (p50)", "LLM first token (p50)", "first clause audio (p50)"]
    assert _cells(text, "engine")[2:] == ["0.83 s", "1.09 s", "15", "0.43 s", "0.60 s", "0.83 s"]
    # a NaN stage (no sample had it) is shown as missing, not as "nan s"
    assert _cells(text, "Realtime WebSocket")[2:] == ["1.02 s", "1.25 s", "10", "0.51 s", "–", "1.01 s"]
    assert _cells(text, "Twilio stream, simulated")[2:] == ["0.79 s", "1.07 s", "15", "0.50 s", "0.61 s", "0.78 s"]
    # Pipecat: 14 of 15 calls answered; its STT stage is the transcript frame; no LLM stage recorded
    assert _cells(text, "Twilio stream, **Pipecat 1.14.0**")[2:] == ["3.33 s", "4.80 s", "14", "1.90 s", "–", "3.30 s"]
    assert "AMD EPYC 9R14, 2 cores, AVX-512 (avx512f, avx2, fma)" in text
    assert "at the start of the run 2.04 / 3.67 / 4.09, at the end 5.50 / 4.25 / 4.00" in text
    assert "run took 10.0 min" in text and "`--quick`" in text
    assert "interleaved in one run (interleaved); other processes kept 0.10 cores busy" in text


def test_paths_without_results_are_left_out_and_an_avx2_machine_says_so() -> None:
    run = {"machine": {"cpu_model": "Intel Xeon", "cores": 4, "simd": ["avx2", "fma"]}}
    text = summary_table.table({"engine_latency": None, "server_latency": {}, "telephony_latency": {
        "p50_s": 0.787, "p95_s": 1.067, "n": 30}}, run)  # an older, Moksori-only telephony file
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| path")]
    assert len(rows) == 1 and _cells(text, "Twilio")[2:5] == ["0.79 s", "1.07 s", "30"]
    assert "Pipecat" not in text and "cores busy" not in text
    assert "Intel Xeon, 4 cores, AVX2" in text and "not recorded" in text
    assert "No end-of-speech benchmark results" in summary_table.table({}, run)


def test_machine_reads_the_model_and_the_simd_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n")
    got = summary_table.machine(cpuinfo)
    assert got["cpu_model"] == "AMD EPYC" and got["simd"] == ["avx512f", "avx2", "fma"]
    assert summary_table.machine(tmp_path / "absent")["cpu_model"] == "?"


def test_run_all_reports_from_the_saved_files(tmp_path: Path) -> None:
    (tmp_path / "engine_latency.json").write_text(json.dumps(ENGINE))
    (tmp_path / "run_all.json").write_text(json.dumps(RUN))
    (tmp_path / "server_latency.json").write_text("{not json")  # a broken file: that row is left out
    text = run_all.report(tmp_path)
    assert _cells(text, "engine")[2] == "0.83 s" and "Realtime WebSocket" not in text and "2.04 / 3.67" in text


def test_the_bot_timeline_gives_the_turn_that_led_to_the_reply(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    rows = [
        ("CA1", 9.0, "BotStartedSpeakingFrame", {}),  # the greeting, before the caller spoke
        ("CA1", 10.5, "VADUserStoppedSpeakingFrame", {}),  # a pause mid-sentence
        ("CA1", 12.2, "VADUserStoppedSpeakingFrame", {}),
        ("CA1", 12.4, "metric", {"kind": "TurnMetricsData", "is_complete": True, "probability": 0.97,
                                 "e2e_processing_time_ms": 70.0}),
        ("CA2", 12.5, "UserStoppedSpeakingFrame", {}),  # another call
        ("CA1", 13.6, "TranscriptionFrame", {"text": " The long journey home took a year. "}),
        ("CA1", 13.6, "UserStoppedSpeakingFrame", {}),
        ("CA1", 14.1, "LLMTextFrame", {}),
        ("CA1", 14.9, "TTSAudioRawFrame", {}),
        ("CA1", 14.95, "BotStartedSpeakingFrame", {}),
        ("CA1", 20.0, "UserStoppedSpeakingFrame", {}),  # after the reply: not this turn
    ]
    events.write_text("".join(json.dumps({"call": c, "t": t, "frame": f, **x}) + "\n" for c, t, f, x in rows)
                      + "{not json\n")
    got = PipecatStack(bot=None, llm=None, events=events).stages("CA1", t_from=10.0)  # type: ignore[arg-type]
    assert got["t"] == {"vad_stopped": 12.2, "turn_end": 13.6, "transcript": 13.6, "llm_first_token": 14.1,
                        "tts_first_audio": 14.9, "bot_started": 14.95}
    assert got["smart_turn"] == [{"complete": True, "p": 0.97, "ms": 70}]
    assert got["transcript"] == "The long journey home took a year."
    assert got["user_turns"] == 1
    nothing = PipecatStack(bot=None, llm=None, events=events).stages("CA9", t_from=0.0)  # type: ignore[arg-type]
    assert nothing["t"]["bot_started"] is None and nothing["user_turns"] == 0
