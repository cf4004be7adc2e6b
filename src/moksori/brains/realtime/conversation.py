"""The client's own ordered view of the upstream conversation, kept across reconnects.

Pure data: items in the upstream's order (placed by `previous_item_id`, so a user transcript that
arrives late still sits before the reply to it), with what each assistant item generated and
what of it was heard, so a truncate can be clamped and a new connection can be re-seeded.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from moksori.audio.frames import Frame

from .options import ReseedBudget

__all__ = ["ItemRecord", "HistoryItem", "Conversation", "InputRing"]

MAX_ITEMS = 2000  # older items are forgotten (they are past any re-seed budget long before)


@dataclass
class ItemRecord:
    id: str
    kind: str = "message"  # message | function_call | function_call_output
    role: str | None = None  # user | assistant | system (messages)
    final: bool = False
    response_id: str | None = None
    audio_ms: float = 0.0  # assistant audio received, over the item's life
    live_audio_ms: float = 0.0  # ... on the current connection (0 after a re-seed as text)
    content_index: int = 0  # of the audio part
    truncated_ms: int | None = None  # what was heard, when cut (sent upstream or only recorded)
    upstream_cut_ms: int | None = None  # where the upstream says its copy ends (a later truncate must not pass it)
    heard_text: str | None = None  # set by the engine when it knows better than the estimate
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""
    output: str | None = None
    user_audio: Frame | None = None  # a user turn's audio, kept until its transcript arrives
    transcription_failed: bool = False
    call_reported: bool = False
    text_chars: int = 0  # len(text), known without joining its pieces
    _parts: list[str] = field(default_factory=list, repr=False)  # the text, in pieces until read

    @property
    def text(self) -> str:
        """The transcript or text so far (final once `final`)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @text.setter
    def text(self, value: str) -> None:
        self._parts = [value] if value else []
        self.text_chars = len(value)

    def add_text(self, delta: str) -> None:
        """Append a delta. Linear in the text's length however many deltas come (`+=` on a long
        string copies all of it every time); the pieces are joined when the text is read."""
        if delta:
            self._parts.append(delta)
            self.text_chars += len(delta)

    def reseed_text(self) -> str:
        """The words this item contributes when re-seeded: for a cut assistant reply only the
        part heard (the engine's own text if it set one, else the share of words matching the
        share of audio heard)."""
        if self.heard_text is not None:
            return self.heard_text
        if self.truncated_ms is not None and self.audio_ms > 0:
            words = self.text.split()
            n = round(len(words) * min(1.0, self.truncated_ms / self.audio_ms))
            return " ".join(words[:n])
        return self.text


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """A read-only snapshot of one item, in conversation order."""

    id: str
    kind: str
    role: str | None
    text: str
    heard_text: str
    interrupted: bool
    audio_ms: int
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None


class Conversation:
    def __init__(self) -> None:
        self.items: dict[str, ItemRecord] = {}
        self.order: list[str] = []
        # items kept here that the current connection does not hold (a re-seed left them out, or
        # the upstream refused them there)
        self.absent: set[str] = set()

    def get(self, item_id: str | None) -> ItemRecord | None:
        return self.items.get(item_id) if item_id else None

    def holds(self, item_id: str) -> bool:
        """The upstream's conversation has this item now (as far as its events say)."""
        return item_id in self.items and item_id not in self.absent

    def ensure(self, item_id: str, **fields: object) -> ItemRecord:
        rec = self.items.get(item_id)
        if rec is None:
            rec = self.items[item_id] = ItemRecord(item_id)
            self.order.append(item_id)
            self.absent.discard(item_id)
            self._prune()
        for k, v in fields.items():
            if v is not None:
                setattr(rec, k, v)
        return rec

    def place(self, item_id: str, previous_item_id: str | None) -> None:
        """Put `item_id` right after `previous_item_id` when that is known (else leave it where it is)."""
        if previous_item_id is None or previous_item_id == item_id or previous_item_id not in self.items:
            return
        if item_id in self.items:
            idx = self.order.index(item_id)
            if idx > 0 and self.order[idx - 1] == previous_item_id:
                return
            self.order.pop(idx)
        self.order.insert(self.order.index(previous_item_id) + 1, item_id)

    def previous(self, item_id: str) -> str | None:
        try:
            idx = self.order.index(item_id)
        except ValueError:
            return None
        return self.order[idx - 1] if idx > 0 else None

    def last(self) -> str | None:
        return self.order[-1] if self.order else None

    def delete(self, item_id: str) -> None:
        self.absent.discard(item_id)
        if self.items.pop(item_id, None) is not None:
            self.order.remove(item_id)

    def _prune(self) -> None:
        while len(self.order) > MAX_ITEMS:
            self.items.pop(self.order.pop(0), None)

    def history(self) -> list[HistoryItem]:
        out = []
        for iid in self.order:
            r = self.items[iid]
            out.append(HistoryItem(r.id, r.kind, r.role, r.text, r.reseed_text(), r.truncated_ms is not None,
                                   int(r.audio_ms), r.call_id, r.name,
                                   r.arguments if r.kind == "function_call" else None, r.output))
        return out

    def reseed_plan(self, budget: ReseedBudget) -> list[ItemRecord]:
        """The newest items that fit the budget, oldest first. Items with nothing to say are
        skipped; the plan never starts with a tool result whose call is left out."""
        chosen: list[ItemRecord] = []
        chars = 0
        for iid in reversed(self.order):
            r = self.items[iid]
            size = _reseed_size(r)
            if size is None:
                continue
            if len(chosen) >= budget.max_items or chars + size > budget.max_chars:
                break
            chosen.append(r)
            chars += size
        chosen.reverse()
        calls = {r.call_id for r in chosen if r.kind == "function_call"}
        while chosen and chosen[0].kind == "function_call_output" and chosen[0].call_id not in calls:
            chosen.pop(0)
        return chosen


def _reseed_size(r: ItemRecord) -> int | None:
    if r.kind == "function_call":
        return len(r.name or "") + len(r.arguments) if r.call_id and r.name else None
    if r.kind == "function_call_output":
        return len(r.output or "") if r.call_id and r.output is not None else None
    if r.role == "user" and not r.text and r.user_audio is not None:
        return 200  # audio of an unanswered turn whose transcript never came: a nominal size
    text = r.reseed_text()
    return len(text) if text.strip() else None


class InputRing:
    """The input audio sent on the current connection, addressable by ms since it opened
    (the upstream's `audio_start_ms`/`audio_end_ms` are on this axis)."""

    def __init__(self, rate: int, keep_s: float) -> None:
        self.rate = rate
        self.keep_ms = 1000.0 * keep_s
        self.sent_ms = 0.0
        self._chunks: deque[tuple[float, np.ndarray]] = deque()
        self._kept_ms = 0.0

    def add(self, frame: Frame) -> None:
        ms = 1000.0 * len(frame) / self.rate
        self._chunks.append((self.sent_ms, frame.samples))
        self.sent_ms += ms
        self._kept_ms += ms
        while self._chunks and self._kept_ms - 1000.0 * len(self._chunks[0][1]) / self.rate >= self.keep_ms:
            self._kept_ms -= 1000.0 * len(self._chunks.popleft()[1]) / self.rate

    def slice(self, start_ms: float, end_ms: float | None = None) -> Frame | None:
        """Audio between the two positions (as much as is still kept), or None."""
        end_ms = self.sent_ms if end_ms is None else min(end_ms, self.sent_ms)
        parts = []
        for t0, samples in self._chunks:
            t1 = t0 + 1000.0 * len(samples) / self.rate
            if t1 <= start_ms or t0 >= end_ms:
                continue
            a = max(0, int(round((start_ms - t0) * self.rate / 1000.0)))
            b = min(len(samples), int(round((end_ms - t0) * self.rate / 1000.0)))
            if b > a:
                parts.append(samples[a:b])
        if not parts:
            return None
        return Frame(np.concatenate(parts).astype(np.int16, copy=False), self.rate)
