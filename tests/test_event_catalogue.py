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


# --------------------------------------------------------------------------- the catalogue itself

SRC = Path(__file__).parent.parent / "src" / "moksori"
PREFIXES = ("session.", "user.", "agent.", "stt.", "eot.", "llm.", "tts.", "call.", "brain.", "guardrail.")


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def test_every_event_class_is_in_the_catalogue_once() -> None:
    import importlib
    import pkgutil

    import moksori
    from moksori.engine import events as E

    for mod in pkgutil.walk_packages(moksori.__path__, "moksori."):
        if ".web" in mod.name or mod.name.endswith("__main__"):
            continue
        importlib.import_module(mod.name)  # an event class defined anywhere would be found below
    # (by name: `slots=True` makes a new class and the pre-slots original lingers in __subclasses__)
    defined = {(c.__module__, c.__qualname__) for c in _all_subclasses(E.Event)}
    assert defined == {(c.__module__, c.__qualname__) for c in E.CATALOGUE}
    types = [c.type for c in E.CATALOGUE]
    assert len(types) == len(set(types)) and all(t == "error" or t.startswith(PREFIXES) for t in types)
    assert E.BY_TYPE == {c.type: c for c in E.CATALOGUE}
    stream = {c.type for c in E.CATALOGUE if not c.timeline}
    assert stream == {"agent.audio", "agent.text_delta", "user.transcript_delta"}


def test_the_package_exports_every_event_class() -> None:
    """The classes live in one module per concern (`engine/events/*.py`); readers use `E.<Class>`."""
    from moksori.engine import events as E

    assert {c.__name__ for c in E.CATALOGUE} <= set(E.__all__)
    assert [name for name in E.__all__ if not hasattr(E, name)] == []


def test_nothing_publishes_an_untyped_event() -> None:
    """`publish` takes an event object: no string event types anywhere in the package."""
    import ast

    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("publish", "emit") and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_published_event_is_catalogued(name: str) -> None:
    from timeline_scenarios import SCENARIOS as S

    from moksori.engine import events as E
    from moksori.engine.session import Session
    from moksori.testing.virtual_time import run_virtual

    seen: list[E.Event] = []
    original = Session.__init__

    def spy(self, *a, **kw):  # listen from the very first event of every session the scenario opens
        original(self, *a, **kw)
        seen.extend(self.bus.history)
        self.bus.listen(seen.append)

    Session.__init__ = spy  # type: ignore[method-assign]
    try:
        run_virtual(S[name]())
    finally:
        Session.__init__ = original  # type: ignore[method-assign]
    assert seen and all(type(ev) in E.CATALOGUE for ev in seen)
    for ev in seen:
        wire = ev.to_json()
        assert wire["type"] == ev.type and "frame" not in wire


def test_the_browser_reads_only_catalogued_events() -> None:
    import re

    from moksori.engine import events as E

    web = SRC / "web" / "static"
    read = set()
    for js in ("app.js", "latency.js"):
        read |= set(re.findall(r'case "([a-z_]+\.[a-z_]+)"', (web / js).read_text(encoding="utf-8")))
    engine = {t for t in read if t.startswith(PREFIXES) and not t.startswith(("session.created", "session.updated"))}
    assert engine and engine <= set(E.BY_TYPE), engine - set(E.BY_TYPE)


def test_architecture_doc_lists_every_event() -> None:
    from moksori.engine import events as E

    doc = (Path(__file__).parent.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [c.type for c in E.CATALOGUE if f"`{c.type}`" not in doc or f"`{c.__name__}`" not in doc]
    assert missing == []


def test_optional_and_renamed_fields_on_the_wire() -> None:
    from moksori.engine import events as E

    typed = E.UserTranscript(t=1.23456, item_id="i", text="hi", language="en", typed=True)
    assert typed.to_json() == {"type": "user.transcript", "t": 1.2346, "item_id": "i", "text": "hi",
                               "language": "en", "final": True, "typed": True}
    spoken = E.UserTranscript(t=2, turn_id=3, item_id="i", text="hi", language="en", audio_s=1.5)
    assert list(spoken.to_json()) == ["type", "t", "turn_id", "item_id", "text", "language", "final", "audio_s"]
    call = E.CallStarted(t=0, carrier="twilio", call_id="c", stream_id="s", from_number="+1", to_number=None,
                         encoding="mulaw", rate=8000)
    assert call.to_json()["from"] == "+1" and call.to_json()["to"] is None and "from_number" not in call.to_json()


def test_one_barge_in_is_one_chain() -> None:
    """user.speech_started -> agent.audio_cleared -> agent.interrupted -> agent.response_done,
    back to back, then the new session state (docs/ARCHITECTURE.md, "One barge-in")."""
    import json

    lines = [json.loads(x) for x in record("barge_in")]
    types = [e["type"] for e in lines if e["type"] not in ("agent.text_delta",)]
    i = types.index("agent.audio_cleared")
    assert types[i - 1:i + 4] == ["user.speech_started", "agent.audio_cleared", "agent.interrupted",
                                  "agent.response_done", "session.state"]
    cleared, cut, done, state = [e for e in lines if e["type"] != "agent.text_delta"][i:i + 4]
    assert cleared["response_ids"] == [cut["response_id"]] == [done["response_id"]]
    assert done["interrupted"] and done["status"] == "cancelled" and done["text"] == cut["text"]
    assert cut["onset"] is not None and cut["reaction_ms"] == round(1000 * (cut["t"] - cut["onset"]))
    assert state["state"] == "user_speaking"
