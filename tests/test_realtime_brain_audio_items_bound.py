"""The realtime brain's memory of audio items is bounded (brains/realtime/audio_items.py).

A logic test: the brain around `AudioItems` is a stand-in (`_Brain`) that records what goes
upstream; no server or upstream runs. What it checks is the bound the module's docstring and the
README promise: at most `KEEP` items are remembered (the oldest forgotten first), and an item's
audio is let go once it has been sent upstream, so a session's memory does not grow with the
audio its client sends.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np

from moksori.audio.frames import Frame
from moksori.brains.realtime.audio_items import KEEP, MAX_UPSTREAM_ID, AudioItems

RATE = 24000


class _Brain:
    """Stand-in for `RealtimeSession`: every item is in memory with its words already known
    (local STT), and the upstream records the content it is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []
        self.transcription = True
        memory = SimpleNamespace(get=lambda item_id: object(), words_pending=lambda item_id: True)
        self.memory = memory

        async def add_user_audio(content: list[Any], *, item_id: str, previous_item_id: str | None) -> str:
            self.sent.append((item_id, content))
            return item_id

        self.upstream = SimpleNamespace(add_user_audio=add_user_audio)

    def upstream_previous(self, item_id: str) -> str | None:
        return None


def _frame(seconds: float) -> Frame:
    return Frame(np.full(int(RATE * seconds), 1000, dtype=np.int16), RATE)


def _items(brain: _Brain) -> AudioItems:
    return AudioItems(brain, SimpleNamespace())  # type: ignore[arg-type]


def test_at_most_keep_items_are_remembered_oldest_forgotten_first() -> None:
    items = _items(_Brain())
    extra = 7
    for i in range(KEEP + extra):
        items.add(f"item_{i}", ["hello", np.zeros(160, dtype=np.float32)], [_frame(0.01)], local=True)
    remembered = [f"item_{i}" for i in range(KEEP + extra) if f"item_{i}" in items]
    assert len(remembered) == KEEP
    assert remembered[0] == f"item_{extra}" and remembered[-1] == f"item_{KEEP + extra - 1}"
    assert all(f"item_{i}" not in items for i in range(extra))


def test_an_item_s_audio_is_let_go_once_sent_and_the_upstream_got_all_of_it() -> None:
    brain = _Brain()
    items = _items(brain)
    audio = _frame(2.0)
    up = items.add("item_long", ["before", np.zeros(32000, dtype=np.float32), "after"], [audio], local=True)
    held = items._items["item_long"]  # the bound is on what this record keeps
    assert held.frames and held.parts[1].size == 32000  # premise: held until sent

    asyncio.run(items.send("item_long"))

    assert brain.sent and brain.sent[0][0] == up
    content = brain.sent[0][1]
    assert content[0] == "before" and content[2] == "after"
    assert isinstance(content[1], Frame) and np.array_equal(content[1].samples, audio.samples)
    assert held.frames == [] and held.parts[1].size == 0  # let go
    assert [type(p) for p in held.parts] == [str, np.ndarray, str]  # its parts' order and kinds kept
    assert held.sent


def test_a_long_client_id_gets_a_short_upstream_id() -> None:
    items = _items(_Brain())
    long_id = "item_" + "x" * 60
    up = items.add(long_id, [np.zeros(160, dtype=np.float32)], [_frame(0.01)], local=True)
    assert len(up) <= MAX_UPSTREAM_ID and up != long_id
    assert items.add("item_short", [np.zeros(160, dtype=np.float32)], [_frame(0.01)], local=True) == "item_short"
