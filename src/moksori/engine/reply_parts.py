"""A reply's assistant message items, when it has more than one.

A Realtime client is shown a reply as output items. When the reply calls a tool the client is
shown (an MCP call: its `mcp_call` item goes out in the middle of the reply), the message item
open so far ends there, and the words said after it are a new message item, after the tool item
in the conversation. Each such message item is a `MessagePart` of the reply: it has its own
memory item (what the LLM reads, what a client retrieves and truncates) and its share of the
reply's text and audio. The reply itself stays one (one `agent.response_done`, one stored reply
whose heard text is all of its parts').

The words of a part are those the reply generated from its `text_start`; its audio, the reply's
samples from `sample_start`. The tool call is parsed as soon as the LLM wrote it, often while the
words before it are still being synthesised or paced out: those words and their audio stay in the
part before (`Response.split` marks the place in the clause queue, and the speaker tells the
transport when the part's last audio has gone out, so the tool item is shown after it). Until then
the new part's starts are None: not known yet, after everything so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from typing import Literal

from moksori.engine.memory import Item, Memory, heard_text

__all__ = ["MessagePart", "PlayedParts", "heard_split", "part_at", "part_words", "settle_parts", "start_ms"]

ItemStatus = Literal["in_progress", "completed", "incomplete"]


@dataclass
class MessagePart:
    item_id: str
    text_start: int | None  # where its words begin in the reply's text (None: not known yet)
    sample_start: int | None  # reply audio before it (samples; None: the part before still speaks)
    item: Item | None = None  # its memory item (a reply in the conversation, once public)


def part_at(parts: Sequence[MessagePart], ms: int, rate: int) -> tuple[MessagePart, int]:
    """The part whose audio holds the reply's `ms`, and how far into it (ms)."""
    found, start = parts[0], 0
    for p in parts:
        at = start_ms(p, rate)
        if at is not None and at <= ms:
            found, start = p, at
    return found, ms - start


def start_ms(part: MessagePart, rate: int) -> int | None:
    """Where the part's audio starts in the reply's (ms); None: not known yet."""
    if part.sample_start is None:
        return None
    return part.sample_start * 1000 // rate if rate else 0


def _start(p: MessagePart, text: str) -> int:
    return len(text) if p.text_start is None else p.text_start


def part_words(text: str, parts: Sequence[MessagePart], i: int) -> str:
    """The words of part `i` of a reply whose text is `text` (so far)."""
    end = _start(parts[i + 1], text) if i + 1 < len(parts) else len(text)
    return text[_start(parts[i], text):end].strip()


def heard_split(parts: Sequence[MessagePart], text: str, heard: str) -> list[tuple[str, bool]]:
    """Per part: (its words the listener heard, all of them?), `heard` being the first words of
    the reply's `text` (what a cut left of it)."""
    words = heard.split()
    out: list[tuple[str, bool]] = []
    for i in range(len(parts)):
        own = part_words(text, parts, i)
        n = len(own.split())
        taken, words = words[:n], words[n:]
        out.append((own, True) if len(taken) == n else (" ".join(taken), False))
    return out


def settle_parts(parts: Sequence[MessagePart], text: str, heard: str, sent: int, rate: int, memory: Memory,
                 last_status: ItemStatus) -> None:
    """The parts' memory items as the reply ends or is cut: the words of each the listener heard,
    their status, how much audio each was sent (a later truncate cannot pass it). A part with
    no words and no audio (nothing came after the tool) leaves the conversation."""
    for i, (p, (words, whole)) in enumerate(zip(parts, heard_split(parts, text, heard), strict=True)):
        if p.item is None:
            continue
        nxt = parts[i + 1].sample_start if i + 1 < len(parts) else None
        end = sent if nxt is None else nxt  # (a part whose start is not known has none of the audio sent)
        samples = max(0, min(end, sent) - (sent if p.sample_start is None else p.sample_start))
        if i > 0 and not part_words(text, parts, i) and not samples:
            memory.delete(p.item.id)
            continue
        p.item.text = words
        p.item.audio_ms = samples * 1000 // rate if rate else 0
        last = i == len(parts) - 1
        p.item.status = last_status if last and whole else "completed" if whole else "incomplete"


@dataclass
class PlayedParts:
    """What a finished reply with several message items played: for a late truncate of one."""

    parts: list[MessagePart]
    text: str
    segments: list[tuple[str, int]]
    rate: int
    sent: int
    heard_to: int | None = None  # the shortest cut so far (samples): a later one never lengthens it

    def truncate(self, item_id: str, audio_end_ms: int, memory: Memory) -> str:
        """The client played `audio_end_ms` of part `item_id`: the reply was heard up to there
        (its later parts not at all), in memory. Returns what was heard of the whole reply."""
        part = next(p for p in self.parts if p.item_id == item_id)
        start = self.sent if part.sample_start is None else part.sample_start
        end = min(self.sent, start + audio_end_ms * self.rate // 1000)
        self.heard_to = end if self.heard_to is None else min(self.heard_to, end)
        heard = heard_text(self.segments, self.heard_to)
        settle_parts(self.parts, self.text, heard, self.sent, self.rate, memory, "incomplete")
        if part.item is not None:
            part.item.status = "incomplete"
            part.item.truncated_at_ms = audio_end_ms
        return heard
