"""The engine's events: the timeline users read must not change by accident.

`tests/data/timeline_golden.jsonl` holds the timelines of the scripted sessions in
`tests/timeline_scenarios.py` (ids replaced by placeholders), as the code wrote them before the
events became typed. A difference here is a change of the public timeline: `converse --timeline`,
the `moksori.event` messages the browser's latency bars read, and anything users built on them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from timeline_scenarios import SCENARIOS, record

GOLDEN = Path(__file__).parent / "data" / "timeline_golden.jsonl"


def _golden() -> dict[str, list[str]]:
    import json

    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in GOLDEN.read_text(encoding="utf-8").splitlines():
        head = json.loads(line)
        if set(head) == {"scenario"}:
            current = out.setdefault(head["scenario"], [])
        else:
            current.append(line)
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_timeline_is_byte_identical_to_the_golden_file(name: str) -> None:
    expected = _golden()[name]
    got = record(name)
    assert got == expected
