"""The Realtime outbound's order of a reply's items when tool items split it (hermetic).

`tests/test_realtime_tool_item_audio.py` checks one tool item end to end (a real server, Piper,
the MCP SDK, the openai client). Here the cases a real run cannot be steered into are driven
event by event through `Outbound` (`server/realtime_outbound.py`) with a recording host, the
engine's side scripted: `split_reply` answers that the words before a tool item are still going
out, and its `said()` callback is called when the script says their audio has gone out.

* two tool items while the words before the first are still going out, with words between them:
  each message item's words and audio go out in their place, each item ends after its last
  audio, the tool items after the message item before them, every output index is the item's
  place in `response.done`;
* the reply cut while the words before a tool item still go out: that item ends as cut, then the
  tool item's events that waited, then `response.done`;
* the words before the tool all gone out already: the tool item goes out at once.

Every event sent is validated against the official `openai` SDK's union of server events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from test_realtime_clients import GA_ADAPTER

from moksori.audio.frames import Frame
from moksori.engine import events as E
from moksori.engine.memory import Item, Memory
from moksori.protocols import realtime as rt
from moksori.providers.base import Usage
from moksori.server.realtime_outbound import Outbound

RID = "resp_1"
FIRST = "item_first"


class FakeSession:
    """The engine's side of a split, scripted: `owed` says whether the words before the tool
    item are still going out; the `said` callbacks are kept for the script to call."""

    def __init__(self) -> None:
        self.memory = Memory()
        self.owed = True
        self.splits: list[tuple[str, Callable[[], None] | None]] = []

    def split_reply(self, response_id: str, item_id: str, said: Callable[[], None] | None = None) -> bool:
        self.splits.append((item_id, said))
        return self.owed


class FakeMCP:
    resumed: set[str] = set()

    def owns(self, name: str) -> bool:
        return False


class Host:
    """What `Outbound` reads of its connection; every event it sends is kept."""

    def __init__(self) -> None:
        self.ev = rt.ServerEvents(rt.Flavor.GA)
        self.flavor = rt.Flavor.GA
        self.cfg = rt.SessionConfig()
        self.transcription_only = False
        self.timeline = False
        self.session_id = "sess_1"
        self.session = FakeSession()
        self.audio_sink = None
        self.mcp = FakeMCP()
        self.sent: list[dict[str, Any]] = []

    def send(self, event: dict[str, Any] | None) -> None:
        if event is not None:
            GA_ADAPTER.validate_python(event)
            self.sent.append(event)

    def error(self, message: str, **_: Any) -> None:  # pragma: no cover - not expected
        raise AssertionError(message)

    def upstream_failed(self, detail: str) -> None:  # pragma: no cover - not expected
        raise AssertionError(detail)

    def input_ms_at(self, t: float) -> int:  # pragma: no cover - not used
        return 0


def words(out: Outbound, item_id: str, text: str) -> None:
    out.on_engine_event(E.AgentTextDelta(t=0.0, response_id=RID, item_id=item_id, delta=text))


def audio(out: Outbound, item_id: str, n: int = 240) -> None:
    frame = Frame(np.zeros(n, dtype=np.int16), 24000)
    out.on_engine_event(E.AgentAudio(t=0.0, response_id=RID, item_id=item_id, frame=frame, offset=0, play_at=0.0))


def tool(host: Host, out: Outbound, item_id: str) -> int:
    """An MCP call item's life as `realtime_mcp` tells it: added, in progress, completed, done."""
    idx = out.output_item_added(RID, rt.mcp_call_item(item_id, "wx", "weather", ""))
    assert idx is not None
    out.send_in(RID, host.ev.mcp_call_in_progress(item_id, idx))
    out.send_in(RID, host.ev.mcp_call_completed(item_id, idx))
    out.output_item_done(RID, idx, rt.mcp_call_item(item_id, "wx", "weather", "{}", output="sunny"))
    return idx


def done(out: Outbound, *, interrupted: bool = False, text: str = "") -> None:
    out.on_engine_event(E.AgentResponseDone(
        t=0.0, response_id=RID, item_id=FIRST, turn_id=None, text=text, generated_text=text,
        interrupted=interrupted, status="cancelled" if interrupted else "completed",
        reason="turn_detected" if interrupted else None, language="en", function_calls=(), usage=Usage(),
        modalities=("audio",), in_conversation=True))


def start() -> tuple[Host, Outbound]:
    host = Host()
    out = Outbound(host)  # type: ignore[arg-type]
    out.on_engine_event(E.AgentResponseStarted(t=0.0, response_id=RID, item_id=FIRST, turn_id=None,
                                               modalities=("audio",)))
    return host, out


def wire(host: Host) -> list[tuple[str, str | None]]:
    return [(e["type"].removeprefix("response."), e.get("item_id") or (e.get("item") or {}).get("id"))
            for e in host.sent if e["type"] != "response.created"]


def message(item_id: str, *middle: tuple[str, str | None]) -> list[tuple[str, str | None]]:
    return [("output_item.added", item_id), ("conversation.item.added", item_id), ("content_part.added", item_id),
            *middle, ("output_audio.done", item_id), ("output_audio_transcript.done", item_id),
            ("content_part.done", item_id), ("output_item.done", item_id), ("conversation.item.done", item_id)]


def mcp(item_id: str) -> list[tuple[str, str | None]]:
    return [("output_item.added", item_id), ("conversation.item.added", item_id), ("mcp_call.in_progress", item_id),
            ("mcp_call.completed", item_id), ("output_item.done", item_id), ("conversation.item.done", item_id)]


def test_two_tool_items_while_the_words_before_the_first_still_go_out() -> None:
    host, out = start()
    words(out, FIRST, "Let me check.")
    audio(out, FIRST)
    tool(host, out, "mcp_1")  # the words before it are still going out
    (second, said_first), = host.session.splits
    audio(out, FIRST)  # the rest of the first item's audio
    words(out, second, "Found it.")  # the next LLM round already speaks (not heard yet)
    tool(host, out, "mcp_2")
    (third, said_second) = host.session.splits[1]
    audio(out, FIRST)
    assert said_first is not None and said_second is not None
    said_first()  # the first item's last audio has gone out
    audio(out, second)
    said_second()
    words(out, third, "Done.")
    audio(out, third)
    done(out, text="Let me check. Found it. Done.")

    T, A = "output_audio_transcript.delta", "output_audio.delta"
    assert wire(host) == [
        *message(FIRST, (T, FIRST), (A, FIRST), (A, FIRST), (A, FIRST)),
        *mcp("mcp_1"),
        *message(second, (T, second), (A, second)),
        *mcp("mcp_2"),
        *message(third, (T, third), (A, third)),
        ("done", None)]
    final = host.sent[-1]["response"]
    assert [o["id"] for o in final["output"]] == [FIRST, "mcp_1", second, "mcp_2", third]
    assert [o["content"][0]["transcript"] for o in final["output"] if o["type"] == "message"] == \
        ["Let me check.", "Found it.", "Done."]
    places = {o["id"]: i for i, o in enumerate(final["output"])}
    for e in host.sent:  # every event's output index is its item's place in the response
        item_id = e.get("item_id") or (e.get("item") or {}).get("id")
        if "output_index" in e and item_id in places:
            assert e["output_index"] == places[item_id], e


def test_the_reply_cut_while_the_words_before_a_tool_item_still_go_out() -> None:
    host, out = start()
    words(out, FIRST, "Let me check the weather.")
    audio(out, FIRST, 2400)
    tool(host, out, "mcp_1")
    (second, _said), = host.session.splits
    words(out, second, "The tool says sunny.")
    assert out.audio_sent_ms(Item(id=FIRST, role="assistant", text="", audio=True)) == 100  # (truncatable)
    audio(out, FIRST, 2400)
    before_cut = len(wire(host))
    done(out, interrupted=True, text="Let me check")  # a barge-in: the speaker never reached the mark
    assert wire(host)[:before_cut] == [("output_item.added", FIRST), ("conversation.item.added", FIRST),
                                       ("content_part.added", FIRST), ("output_audio_transcript.delta", FIRST),
                                       ("output_audio.delta", FIRST), ("output_audio.delta", FIRST)]
    assert wire(host)[before_cut - 1:] == [
        ("output_audio.delta", FIRST),
        *message(FIRST)[3:], *mcp("mcp_1"), *message(second, ("output_audio_transcript.delta", second)),
        ("done", None)]
    final = host.sent[-1]["response"]
    assert final["status"] == "cancelled"
    assert [(o["id"], o.get("status"), o.get("output")) for o in final["output"]] == [
        (FIRST, "incomplete", None), ("mcp_1", None, "sunny"), (second, "incomplete", None)]


def test_a_tool_item_after_the_words_before_it_went_out_goes_at_once() -> None:
    host, out = start()
    host.session.owed = False
    words(out, FIRST, "Let me check.")
    audio(out, FIRST)
    tool(host, out, "mcp_1")
    (second, _said), = host.session.splits
    words(out, second, "Sunny.")
    audio(out, second)
    done(out, text="Let me check. Sunny.")
    assert wire(host) == [*message(FIRST, ("output_audio_transcript.delta", FIRST), ("output_audio.delta", FIRST)),
                          *mcp("mcp_1"),
                          *message(second, ("output_audio_transcript.delta", second), ("output_audio.delta", second)),
                          ("done", None)]
