"""benchmarks/ct2_step.py's pure parts: arm specs, the per-step summary, the JSON layout.

No model is loaded (the benchmark itself runs under the benchmark lock)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ct2_step


def test_parse_arm_splits_environment_and_model_options() -> None:
    assert ct2_step.parse_arm("base") == ("base", {}, {})
    name, env, model = ct2_step.parse_arm("x:GOMP_SPINCOUNT=1000;threads=1;compute_type=int8_float32")
    assert name == "x"
    assert env == {"GOMP_SPINCOUNT": "1000"}
    assert model == {"threads": 1, "compute_type": "int8_float32"}
    assert ct2_step.parse_arm("s:dec_threads=1")[2] == {"dec_threads": 1}


@pytest.mark.parametrize("spec", [":threads=1", "x:threads", "x:=3", "x:threads=0", "x:threads=two"])
def test_parse_arm_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        ct2_step.parse_arm(spec)


def _row(arm: str, file: str, full: float, one: float, tokens: int, ids: list[int]) -> dict:
    return {"arm": arm, "variant": "today", "file": file, "full_ms": full, "one_ms": one, "tokens": tokens,
            "ids": ids, "encoder_ms": 30.0}


def test_summary_steps_exclude_the_first_step_and_count_changed_ids() -> None:
    rows = [_row("a", "f1", 70.0, 20.0, 10, [1, 2]), _row("b", "f1", 60.0, 20.0, 10, [1, 2]),
            _row("a", "f2", 40.0, 10.0, 6, [3]), _row("b", "f2", 40.0, 16.0, 6, [4])]
    out = ct2_step.summarise(rows, ["a", "b"], ["today"])
    assert out["a/today"]["step_ms_p50"] == pytest.approx(5.0)  # (70-20)/10 and (40-10)/6
    assert out["b/today"]["step_ms_p50"] == pytest.approx(4.0)
    assert out["b/today"]["same_ids"] == 1
    assert out["b/today"]["ids_differ_files"] == ["f2"]
    text = ct2_step.dump({"n": 1}, rows)
    assert json.loads(text)["rows"] == rows
    assert text.count("\n") > len(rows)  # one row per line
