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
from launch import PipecatStack  # noqa: E402


def _write(d: Path, name: str, obj: dict) -> None:
    (d / f"{name}.json").write_text(json.dumps(obj))


def test_table_puts_moksori_and_pipecat_side_by_side(tmp_path: Path) -> None:
    _write(tmp_path, "engine_latency", {"summary": {"p50_ms": 835, "p95_ms": 1092, "samples": 15, "stages_p50_ms": {
        "turn_end": 601, "stt_done": 426, "eot_done": 518, "llm_first_token": 600, "tts_first_audio": 835}}})
    _write(tmp_path, "server_latency", {"summary": {"p50_ms": 1022.0, "p95_ms": 1248.6, "n": 10}})
    _write(tmp_path, "telephony_latency", {
        "date": "2026-12-02", "machine": {"cpu_model": "AMD EPYC", "cpu_count": 2}, "others_cores_p50": 0.1,
        "moksori": {"p50_s": 0.787, "p90_s": 1.0, "p95_s": 1.067, "n": 15, "missing": 0,
                    "stages_p50_s": {"vad_stopped": 0.09, "stt_done": 0.5, "turn_end": 0.6}},
        "pipecat": {"p50_s": 3.33, "p90_s": 4.1, "p95_s": 4.8, "n": 15, "missing": 1, "setup": {"version": "1.14.0"},
                    "stages_p50_s": {"transcript": 1.9, "turn_end": 2.0, "tts_first_audio": 3.3}}})
    text = run_all.table(tmp_path)
    lines = text.splitlines()
    engine = next(line for line in lines if line.startswith("engine"))
    assert "0.83 s" in engine and "1.09 s" in engine
    ws = next(line for line in lines if line.startswith("Realtime WebSocket"))
    assert "1.02 s" in ws and "1.25 s" in ws
    phone = next(line for line in lines if line.startswith("Twilio stream"))
    for figure in ("0.79 s", "1.07 s", "3.33 s", "4.80 s", "15 + 14"):
        assert figure in phone, (figure, phone)
    assert "STT done 0.43 s" in text and "TTS first audio 0.83 s" in text  # the engine's per-stage split
    assert "phone stages p50 (Pipecat)" in text and "STT done 1.90 s" in text
    assert "Pipecat 1.14.0" in text


def test_table_reads_an_older_moksori_only_file_and_an_empty_folder(tmp_path: Path) -> None:
    assert "no benchmark results" in run_all.table(tmp_path)
    _write(tmp_path, "telephony_latency", {"p50_s": 0.787, "p95_s": 1.067, "n": 30})
    phone = next(line for line in run_all.table(tmp_path).splitlines() if line.startswith("Twilio"))
    assert "0.79 s" in phone and "30" in phone and "Pipecat" not in phone


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
