"""One reply of the realtime brain: what the upstream says, with the face of `engine.Response`.

The engine's parts (`Responses`, `Interruptions`, the `Speaker`, the transports) only know a
reply by what `Response` offers: an id and item id, a status, a `Playback`, `release()`,
`cancel(reason, heard)` and the events it publishes. `UpstreamReply` keeps that face and swaps
the inside: instead of LLM -> clause chunker -> TTS, it asks the upstream for a response (or is
bound to one the upstream started by itself, e.g. after its own VAD ended a turn) and feeds the
upstream's audio into its playback, where the speaker paces it and knows what was heard.

    request  ─▶ response.create (in order with audio and commits, through the brain's op queue)
    upstream ─▶ audio deltas ─▶ resampled once to the session's output rate ─▶ Playback ─▶ Speaker
             ─▶ transcript deltas ─▶ agent.text_delta; the final transcript replaces the text
             ─▶ function calls: a client tool ends the reply (agent.function_call); a server-side
                tool runs here, its output goes back up and a follow-up response continues the
                same reply (several upstream responses, one reply, as the pipeline's tool rounds).
                As in the pipeline (`ToolCalls.run`, the same timeouts and threshold): a
                slow tool gets a short filler, an out-of-band response (`conversation: "none"`,
                nothing added upstream) whose audio plays in this reply; the follow-up waits
                until the upstream is done with it. A failed tool's error output goes up and the
                follow-up says the pipeline's apology: never a hung turn.
             ─▶ response.done: usage (text, audio, cached tokens) -> agent.response_done
    a tool item the client is shown (an MCP call) ─▶ `split`: the words after it are a message
                item of their own, as the pipeline's (`engine/reply_parts.py`); the audio of the
                words before it, sent by the upstream before the call but still queued here to
                be paced out, stays theirs (a mark in the playback: the transport shows the tool
                item once it has all gone out)
    cancel   ─▶ (the speaker already stopped) response.cancel + truncate at the samples heard,
                per upstream audio item; `agent.response_done` waits, briefly, for the
                upstream's own response.done so its usage is counted

Guardrails (the server's, `[guardrails]`): before asking the upstream, the input check runs on
the words of the user turn when they are known (typed text, the local STT's words of moksori
turns): blocked, the reply asks the upstream to say the safe sentence instead and the turn leaves
the conversation, here and upstream (`RealtimeSession.check_input`). With an output check, the
upstream's transcript goes out clause by clause once checked (`agent.text_delta`), as in the
pipeline; a blocked clause cannot be unsaid, only stopped: the reply is cut at once (the speaker
stops, the upstream response is cancelled and its audio truncated at what was heard, the heard
text ending before the blocked clause), `guardrail.tripped` is published, and a new reply has the
upstream say the safe sentence (`RealtimeSession.output_blocked`).

What was heard, in words: the upstream's transcript is not aligned with its audio, and text
usually runs ahead of audio. The playback's one segment is (text so far, the larger of the audio
so far and the audio that text would take at a speaking pace), so `heard_text` takes the share
of words matching the share of audio heard without running ahead of the voice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moksori.accounting import TurnUsage
from moksori.audio.frames import Frame
from moksori.audio.resample import StreamResampler
from moksori.engine import events as E
from moksori.engine.memory import Item, new_id
from moksori.engine.reply_guardrails import check_clause
from moksori.engine.reply_parts import MessagePart, part_words
from moksori.engine.reply_request import offered_tools
from moksori.engine.response import Response
from moksori.engine.tools import Tool, ToolRun
from moksori.providers.base import Message, ToolCall, Usage
from moksori.text.chunker import ClauseChunker

from . import events as ev
from .audio_items import HeardMessage, ReferencedMessage
from .protocol import TEXT_LIMIT, InputEntry, InputRef

if TYPE_CHECKING:
    from moksori.guardrails.events import GuardrailTripped

    from .session import RealtimeSession

log = logging.getLogger("moksori.brains.realtime")

CHARS_PER_SECOND = 14.0  # speaking pace used to keep the heard-text estimate behind the voice
USAGE_WAIT_S = 2.0  # a cancelled reply's `agent.response_done` waits at most this for the upstream's usage

__all__ = ["UpstreamReply", "estimated_samples", "say_exactly"]


def say_exactly(instructions: str, words: str) -> str:
    """Instructions that make the upstream say `words` and nothing else (greetings, the safe
    sentence, a slow tool's filler, a failed tool's apology)."""
    return f"{instructions}\n\nNow say exactly the following words, in their language, and nothing else:\n{words}".strip()


def _spoken_weight(text: str) -> int:
    return sum(2 if "\uac00" <= ch <= "\ud7a3" else 1 for ch in text if not ch.isspace())


def estimated_samples(text: str, rate: int) -> int:
    """Samples `text` would take spoken at an ordinary pace (Korean syllables count double)."""
    return int(rate * _spoken_weight(text) / CHARS_PER_SECOND)


@dataclass(frozen=True)
class _WordsEnd:
    """In the output check's queue: the clauses before it are the words of the message item before
    a tool item, those after it `part`'s (`UpstreamReply.split`); `shown()` once they all are."""

    part: MessagePart
    shown: Callable[[], None]


def _after_both(fn: Callable[[], None]) -> Callable[[], None]:
    """A callable that calls `fn` the second time it is called (its words shown, its audio sent)."""
    left = 2

    def one() -> None:
        nonlocal left
        left -= 1
        if left == 0:
            fn()
    return one


@dataclass(eq=False)
class UpstreamReply(Response):
    brain: RealtimeSession | None = None
    upstream_initiated: bool = False  # the upstream started it (its VAD, a resume after a reconnect)
    upstream_ids: list[str] = field(default_factory=list)
    upstream_usage: TurnUsage | None = None
    audio_items: list[tuple[str, int]] = field(default_factory=list)  # (upstream item id, first sample)
    samples: int = 0  # reply audio received, at the output rate
    failure: str | None = None  # why the upstream ended it early (upstream_lost, failed, ...)
    cut_short: str | None = None  # why it ended incomplete (the upstream's text went past the limit)
    _weight: int = 0  # `_spoken_weight(self.text)`, kept as deltas come (not recounted each time)
    _texts: dict[str, str] = field(default_factory=dict)  # upstream item -> its text
    _open_rounds: int = 0  # upstream responses asked for or running, not done yet
    _tools_running: int = 0
    _round_done: asyncio.Event = field(default_factory=asyncio.Event)  # set as each upstream response ends
    _runs: list[ToolRun] = field(default_factory=list)  # this round's tool calls that ended
    _stop_after: bool = False  # a call of this round ends the reply (`Tool.final`: no follow-up)
    _filler_next: bool = False  # the next upstream response bound is a slow tool's filler
    filler_responses: set[str] = field(default_factory=set)  # upstream responses that were fillers (out of band)
    _generated: asyncio.Event = field(default_factory=asyncio.Event)
    _resampler: StreamResampler | None = None
    _deferred_reason: str | None = None
    _announce_task: asyncio.Task[None] | None = None
    # the output guardrail: transcript clauses waiting for their check, and what passed it
    _checks: asyncio.Queue[str | _WordsEnd | None] | None = None
    _checker: asyncio.Task[None] | None = None
    _chunker: ClauseChunker | None = None
    _shown: str = ""
    _cut_at_check: bool = False  # the output guardrail cut it: its segments end before the blocked clause
    # its message items after the first (`split`): item id -> the upstream text items there were before it
    _part_items: dict[str, int] = field(default_factory=dict)
    _calls_of: str = ""  # the upstream response whose function calls came last

    # -------------------------------------------------------------- the pipeline, swapped

    def start(self) -> None:
        self._gate = self._output_guard()
        if self._gate is not None:
            self._checks = asyncio.Queue()
            self._chunker = ClauseChunker(first_min_chars=4, first_max_chars=50)
            self._checker = asyncio.get_running_loop().create_task(self._check_clauses(), name=f"guard-{self.id}")
        # at once, not in the task: the upstream's first audio may arrive before the task runs
        self.emit(E.AgentResponseStarted(t=self.now(), response_id=self.id, item_id=self.item_id,
                                         turn_id=self.turn_id, modalities=tuple(self.opts.modalities)))
        super().start()

    async def _run(self) -> None:
        brain = self.brain
        assert brain is not None
        host = self.host
        if not self.upstream_initiated:
            if self.opts.reply_tools is not None:  # e.g. the MCP servers a `response.create` names
                self._box = host.toolbox.with_tools(await self.opts.reply_tools(self.id))
            if self.opts.in_conversation:  # a client's audio item still being transcribed goes up first
                await host.memory.words_ready()
            safe = await brain.check_input(self)
            if safe is not None:  # the input guardrail blocked the turn: the upstream says the safe sentence
                self.opts = dataclasses.replace(self.opts, fixed_text=safe)
            self._open_rounds += 1
            brain.request(self)
        await self._generated.wait()
        await self._drain_checks()
        self._flush_resampler()
        if self.playback is not None:
            self.playback.end()
            await self.playback.finished.wait()
            # still "speaking" until the listener has heard the last chunk
            await host.clock.sleep(self.playback.play_end - host.clock.now())
        brain.reply_finished(self)
        await brain.transcript_of(self.turn_id)  # the user turn this answers is stored first
        if self.failure is None and self.cut_short is not None:
            self.status = "incomplete"
            self._finish_public(reason=self.cut_short)
        elif self.failure is None:
            self.status = "completed"
            self._finish_public()
        else:
            self.status = "failed"
            self._finish_public(reason=self.failure)

    def cancel(self, reason: str, heard: str | None = None) -> None:
        if self.status in ("completed", "cancelled", "failed"):
            return
        if self._checker is not None and self._checker is not asyncio.current_task():
            self._checker.cancel()
        pb = self.playback
        heard_samples = min(pb.heard(self.now()), pb.sent) if pb is not None else 0
        if self._checks is not None and self.parts:  # its message items' words are those shown
            self.text = self._shown
        super().cancel(reason, heard)
        if self.brain is not None:
            self.brain.reply_cancelled(self, heard_samples, heard if heard is not None else self.text)

    def _announce_cancel(self, reason: str) -> None:
        brain = self.brain
        if brain is None or brain.closing or (self._open_rounds <= 0 and self._tools_running <= 0):
            super()._announce_cancel(reason)
            return
        self._deferred_reason = reason
        self._announce_task = asyncio.get_running_loop().create_task(self._announce_later(),
                                                                     name=f"reply-done-{self.id}")

    async def _announce_later(self) -> None:
        try:
            await asyncio.wait_for(self._generated.wait(), USAGE_WAIT_S)
        except asyncio.TimeoutError:
            pass
        self.flush_done()

    def flush_done(self) -> None:
        """Publish a held-back `agent.response_done` now (the next reply starts, or the session closes)."""
        reason, self._deferred_reason = self._deferred_reason, None
        if reason is not None:
            self.host.publish(self._done_event(reason))
        if self._announce_task is not None and self._announce_task is not asyncio.current_task():
            self._announce_task.cancel()
        self._announce_task = None

    @property
    def done_pending(self) -> bool:
        return self._deferred_reason is not None

    def _done_event(self, reason: str | None = None) -> E.AgentResponseDone:
        ev_ = super()._done_event(reason)
        return dataclasses.replace(ev_, upstream_usage=self.upstream_usage) if self.upstream_usage else ev_

    # -------------------------------------------------------------- the upstream's side

    def bind(self, response_id: str) -> None:
        self.upstream_ids.append(response_id)
        if self._filler_next:
            self._filler_next = False
            self.filler_responses.add(response_id)
        if self.upstream_initiated and len(self.upstream_ids) == 1:
            self._open_rounds += 1

    @property
    def live(self) -> bool:
        return self.status in ("pending", "in_progress")

    def on_audio(self, upstream_item: str, frame: Frame) -> None:
        pb = self.playback
        if not self.live or pb is None or pb.cancelled:
            return
        if not self.audio_items or self.audio_items[-1][0] != upstream_item:
            self.audio_items.append((upstream_item, self.samples))
        rate = self.host.output_rate
        if frame.rate != rate:
            if self._resampler is None or self._resampler.src_rate != frame.rate:
                self._flush_resampler()
                self._resampler = StreamResampler(frame.rate, rate)
            samples = self._resampler.process(frame.samples)
            if len(samples) == 0:
                return
            frame = Frame(samples, rate)
        self._queue(frame)

    def _flush_resampler(self) -> None:
        rs = self._resampler
        if rs is None:
            return
        tail = rs.flush()
        if len(tail) and self.live and self.playback is not None and not self.playback.cancelled:
            self._queue(Frame(tail, rs.dst_rate))

    def _queue(self, frame: Frame) -> None:
        pb = self.playback
        assert pb is not None
        if self.samples == 0:
            self.emit(E.TtsFirstAudio(t=self.now(), response_id=self.id, item_id=self.item_id, samples=len(frame)))
        pb.queue.put_nowait(frame)
        self.samples += len(frame)
        self._resegment()

    def _resegment(self) -> None:
        pb = self.playback
        if pb is None or self._cut_at_check:
            return
        ahead = not self._generated.is_set()  # the words may still run ahead of the audio
        if not self.parts:
            est = int(pb.rate * self._weight / CHARS_PER_SECOND) if ahead else 0
            pb.segments[:] = [(self.text, max(self.samples, est, 1))]
            return
        # one segment per message item: its words, its audio (the open one's as the whole's)
        segments = []
        text = self.text if self._checks is None else self._shown
        for i, p in enumerate(self.parts):
            words = part_words(text, self.parts, i)
            start = self.samples if p.sample_start is None else p.sample_start
            end = self.parts[i + 1].sample_start if i + 1 < len(self.parts) else None
            n = end - start if end is not None else \
                max(self.samples - start, estimated_samples(words, pb.rate) if ahead else 0)
            segments.append((words, max(n, 1)))
        pb.segments[:] = segments

    # -------------------------------------------------------------- message items

    @property
    def message_item_id(self) -> str:
        """The message item the upstream's words and audio go in now (after a tool item, its own)."""
        return self.parts[-1].item_id if self.parts else self.item_id

    def _show_text(self) -> None:
        """The words so far into its message items; with an output check, those shown (checked)."""
        if self._checks is None:
            super()._show_text()
            return
        text, self.text = self.text, self._shown
        try:
            super()._show_text()
        finally:
            self.text = text

    def message_items(self) -> list[str]:
        """Its message items' ids, in order (one, unless tool items came between its words)."""
        return [p.item_id for p in self.parts] or [self.item_id]

    def message_start(self, item_id: str) -> int | None:
        """Where message item `item_id` starts in the reply's audio (samples); None: not one of its."""
        if item_id == self.item_id:
            return 0
        part = next((p for p in self.parts if p.item_id == item_id), None)
        if part is None:
            return None
        return self.samples if part.sample_start is None else part.sample_start

    def split(self, item_id: str, said: Callable[[], None] | None = None) -> bool:
        """A tool item the client is shown comes inside this reply (`Response.split`, the
        Realtime wire ends the message item open so far there): the words from now on are
        message item `item_id`. The upstream sent the words before the call, and their audio,
        before the call itself, usually much faster than they play: that audio is all in the
        playback, and a mark after it puts the audio after it in the new item. True while some
        of the earlier audio is still to be sent (`said()` once it has all gone out, never if
        the reply is cut first); False: it all had, the new item starts now."""
        if not self.released or self.done.is_set() or not self.live:
            return False
        self._flush_resampler()  # (the audio before the call, all of it, is in the playback now)
        self._resampler = None
        if not self.parts:
            self.parts.append(MessagePart(self.item_id, 0, 0, self.item))
        before = self.parts[-1]
        part = MessagePart(item_id, None, None)
        if self.opts.in_conversation:
            part.item = self.host.memory.add(Item(id=item_id, role="assistant", status="in_progress",
                                                  audio=self.audio, language=self.language))
        self.parts.append(part)
        self._part_items[item_id] = len(self._texts)
        tell = self._part_said(before, said)
        pb = self.playback
        checking = self._checks is not None and self._checker is not None and not self._checker.done()
        if checking:  # its words start after the clauses still being checked (`_check_clauses`)
            assert self._checks is not None and self._chunker is not None
            for clause in self._chunker.flush():
                self._checks.put_nowait(clause)
            part.sample_start = self.samples
            if before.item is not None and pb is not None and pb.rate:
                before.item.audio_ms = (self.samples - (before.sample_start or 0)) * 1000 // pb.rate
            tell = _after_both(tell)
            self._checks.put_nowait(_WordsEnd(part, tell))
        else:
            self._split_at(before, part, self.samples)
        self._resegment()
        if pb is not None and not pb.cancelled and pb.sent < self.samples:
            pb.mark(item_id, tell)
            return True
        tell()
        return checking

    def on_text_delta(self, upstream_item: str, delta: str) -> None:
        if not self.live or not delta:
            return
        if not self.text:
            self.emit(E.LlmFirstToken(t=self.now(), response_id=self.id, item_id=self.item_id))
        prefix = " " if self.text and upstream_item not in self._texts and not self.text.endswith(" ") else ""
        self._texts[upstream_item] = self._texts.get(upstream_item, "") + delta
        self.text += prefix + delta
        self._weight += _spoken_weight(delta)
        if self._checks is not None and self._chunker is not None:  # shown once checked (`_check_clauses`)
            self._raw += prefix + delta
            for clause in self._chunker.push(prefix + delta):
                self._checks.put_nowait(clause)
        else:
            self._show_text()
            self.emit(E.AgentTextDelta(t=self.now(), response_id=self.id, item_id=self.message_item_id,
                                       delta=prefix + delta))
        self._resegment()

    def on_text_done(self, upstream_item: str, text: str) -> None:
        if not self.live:
            return
        before = self._texts.get(upstream_item, "")
        if self._checks is not None and self._chunker is not None and text.startswith(before) and text != before:
            tail = text[len(before):]  # words the deltas did not bring: checked too
            if not before and self.text and not self.text.endswith(" "):
                tail = " " + tail
            self._raw += tail
            for clause in self._chunker.push(tail):
                self._checks.put_nowait(clause)
        self._texts[upstream_item] = text
        self._rejoin()
        self._weight = _spoken_weight(self.text)
        if self._checks is None:
            self._show_text()
        self._resegment()

    def _rejoin(self) -> None:
        """The reply's words anew from its upstream items' (an item's final transcript replaces
        its deltas); a message item after a tool item starts where the words of the first
        upstream item after that tool item do."""
        text, at = "", []  # at[n]: where upstream item n's words start
        for t in self._texts.values():
            at.append(len(text))
            if t.strip():
                text = f"{text} {t.strip()}" if text else t.strip()
        at.append(len(text))
        if self._checks is None:  # (checked words are split where the checks reach the tool item: `_words_end`)
            for p in self.parts[1:]:
                n = self._part_items.get(p.item_id)
                if n is not None and p.text_start is not None:
                    p.text_start = at[min(n, len(at) - 1)]
        self.text = text

    # -------------------------------------------------------------- the output guardrail

    async def _check_clauses(self) -> None:
        """Each clause of the upstream's transcript, in order: shown when it passes; the first
        blocked one cuts the reply (`RealtimeSession.output_blocked`)."""
        assert self._checks is not None and self._gate is not None
        while True:
            clause = await self._checks.get()
            if clause is None:
                return
            if isinstance(clause, _WordsEnd):
                self._words_end(clause)
                continue
            if self.blocked:
                continue
            check = await check_clause(self._gate, clause, self.language, self._raw_shown)
            self._raw_shown = check.checked
            if check.replacement is None:
                self._show_checked(clause)
                continue
            for trip in check.trips:
                self._trip(trip)
            self.blocked = True
            if self.live and self.brain is not None:
                self.brain.output_blocked(self, check.replacement)
            return

    def tripped(self, trip: GuardrailTripped) -> None:
        """A guardrail trip about this reply (`guardrail.tripped`, held back while speculative)."""
        self._trip(trip)

    def _show_checked(self, clause: str) -> None:
        delta = (" " if self._shown and not self._shown.endswith((" ", "\n")) else "") + clause
        self._shown += delta
        self._show_text()
        self.emit(E.AgentTextDelta(t=self.now(), response_id=self.id, item_id=self._spoken_item or self.item_id,
                                   delta=delta))

    def _words_end(self, end: _WordsEnd) -> None:
        """The checks reached a tool item: the words shown so far are the message items' before it,
        those from now on its next message item's (`split`)."""
        end.part.text_start = len(self._shown)
        self._spoken_item = end.part.item_id
        self._show_text()
        end.shown()

    def cut_before_blocked(self) -> None:
        """The output guardrail blocked a clause: from now on the reply's words are those shown,
        and what was heard is counted against them (the audio of the blocked clause, if any was
        heard, maps to no word)."""
        pb = self.playback
        raw_words, shown_words = len(self.text.split()), len(self._shown.split())
        if pb is not None:
            total = max(self.samples, estimated_samples(self.text, pb.rate), 1)
            share = int(total * shown_words / raw_words) if raw_words else 0
            pb.segments[:] = [(self._shown, max(share, 1)), ("", max(total - share, 1))]
        self._cut_at_check = True
        self.text = self._shown

    async def _drain_checks(self) -> None:
        """Generation is over: the last clauses are checked before the reply ends."""
        if self._checks is None or self._chunker is None or self._checker is None:
            return
        for clause in self._chunker.flush():
            self._checks.put_nowait(clause)
        self._checks.put_nowait(None)
        await asyncio.shield(self._checker)
        if not self.blocked:
            self.text = self._shown or self.text

    def on_function_call(self, e: ev.FunctionCall) -> str:
        """A function call item of this reply; returns its local item id."""
        assert self.brain is not None
        call = ToolCall(e.call_id, e.name, e.arguments)
        item_id = new_id("item")
        self.function_calls.append(call)
        if e.response_id != self._calls_of:  # the first call of an upstream response: its tool items
            self._calls_of = e.response_id  # go before the message item of the words after them
            self._tools_from = len(self.parts)
        if not self.live:
            return item_id
        tool = self.toolbox.get(e.name)
        if tool is None or e.name in {t.name for t in self.opts.tools}:
            self.tool_calls.to_client(call, item_id)  # a Realtime client of Moksori runs it: the reply ends here
            return item_id
        if tool.mcp_server is not None:
            item_id = new_id("mcp")  # one `mcp_call` item here (the upstream keeps a call and an output)
        self._tools_running += 1
        self.brain.spawn(self._run_tool(call, tool, item_id), f"tool-{call.name}")
        return item_id

    async def _run_tool(self, call: ToolCall, tool: Tool, item_id: str) -> None:
        """A server-side tool (hang up, transfer, the configured tools, MCP servers): run it
        here as the pipeline does (`ToolCalls.announce` / `record`: an MCP
        server's tool is one `mcp_call` item, and a Realtime client's MCP runner shows it and
        asks for approval inside the handler), give the upstream its output, and let a follow-up
        response continue this reply."""
        brain = self.brain
        assert brain is not None
        try:
            self.tool_calls.announce(call, tool, item_id)
            run = await self.tool_calls.run(call, tool, self._ask_filler)
            out_id = new_id("item")
            self.tool_calls.record(call, tool, run, item_id, out_id)
            brain.tool_output(call.id, run.output, out_id, local_id=item_id if tool.mcp_server is not None else None)
            self._runs.append(run)
            self._stop_after = self._stop_after or tool.final
            # the upstream takes one response at a time: the call's own response and any filler
            # end first (each ends: done, cancelled, or made up when the upstream is lost)
            while self._open_rounds > 0 and self.live:
                self._round_done.clear()
                await self._round_done.wait()
            if self._tools_running > 1:
                return  # another call of this round still runs: the last one to end asks for the follow-up
            runs, stop = self._runs, self._stop_after
            self._runs, self._stop_after = [], False
            if not stop and self.live:  # as the pipeline: every call of the round failed -> its apology
                self._open_rounds += 1
                brain.request(self, followup=True, say=self.tool_calls.apology(runs))
        finally:
            self._tools_running -= 1
            self._check_generated()

    def _ask_filler(self, words: str) -> bool:
        """A slow tool (`ToolCalls.run`): the upstream says `words` out of band, into this
        reply's audio. False when it cannot now (the upstream is still answering, the reply is cut)."""
        brain = self.brain
        if brain is None or not self.live or not brain.upstream_idle():
            return False
        self._open_rounds += 1
        self._filler_next = True
        brain.request_filler(self, words)
        return True

    def on_upstream_done(self, e: ev.ResponseDone) -> None:
        if e.usage is not None:
            self.upstream_usage = e.usage if self.upstream_usage is None else self.upstream_usage + e.usage
            u = self.upstream_usage
            self.usage = Usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens, cached_tokens=u.cached_tokens)
        if self.live:
            if e.synthetic:
                self.failure = e.reason or "upstream_lost"
            elif e.status == "failed":
                self.failure = e.reason or "upstream_failed"
            elif e.status == "incomplete" and e.reason == TEXT_LIMIT:
                self.cut_short = "upstream_text_limit"
            elif e.status == "cancelled" and not self.function_calls:
                # the upstream cut it (its own VAD heard the user); the session does the same
                self.failure = None
        self._open_rounds = max(0, self._open_rounds - 1)
        self._round_done.set()
        self._check_generated()

    def fail(self, why: str) -> None:
        """The upstream will never answer this reply (its request was refused, the upstream is gone)."""
        self.failure = why
        self._open_rounds = 0
        self._filler_next = False
        self._round_done.set()
        self._check_generated()

    def _check_generated(self) -> None:
        if self._open_rounds <= 0 and self._tools_running <= 0 and not self._generated.is_set():
            self._generated.set()
            self._resegment()
            if self._deferred_reason is not None:
                self.flush_done()

    def request_args(self, session_instructions: str, session_modalities: tuple[str, ...],
                     session_tools: tuple[Any, ...], session_tool_choice: str) -> dict[str, Any]:
        """What `response.create` needs to say beyond the session's own settings."""
        from moksori.engine.prompts import speech_model_prompt

        o = self.opts
        kw: dict[str, Any] = {}
        if o.fixed_text is not None:
            kw["instructions"] = say_exactly(session_instructions, o.fixed_text)
        elif o.instructions is not None and speech_model_prompt(o.instructions) != session_instructions:
            kw["instructions"] = speech_model_prompt(o.instructions)
        mods = ("audio",) if "audio" in o.modalities else ("text",)
        if mods != session_modalities:
            kw["modalities"] = mods
        if tuple(o.tools) != tuple(session_tools) or self._box is not None:  # this reply's own tools
            kw["tools"] = tuple({"name": t.name, "description": t.description, "parameters": t.parameters}
                                for t in offered_tools(o.tools, self.toolbox))
        if o.tool_choice != session_tool_choice:
            kw["tool_choice"] = o.tool_choice if o.tool_choice in ("auto", "none", "required") else \
                {"type": "function", "name": o.tool_choice}
        if o.metadata:
            kw["metadata"] = {str(k): str(v) for k, v in o.metadata.items()}
        if o.replace_input is not None or not o.in_conversation:
            kw["input"] = self._upstream_input(o.replace_input or ())
        return kw

    def _upstream_input(self, messages: Sequence[Message]) -> list[InputEntry]:
        """A response's own `input` for the upstream: a message whose audio it hears goes as its
        parts, audio and all; an item named goes as the upstream's ids of it (its words where the
        upstream does not have it: `UpstreamProtocol.input_items`); the rest as words."""
        out: list[InputEntry] = []
        for m in messages:
            role = m.role if m.role in ("user", "assistant", "system") else "user"
            if isinstance(m, ReferencedMessage) and self.brain is not None:
                # its words as memory has them now, for where the upstream no longer holds it:
                # an item it held was named before its local words came (realtime_responses)
                now = self.brain.memory.get(m.item_id)
                words = m.content or (now.text if now is not None and now.type == "message" else "")
                out.append(InputRef(self.brain.upstream_ids(m.item_id), role, words))
            elif isinstance(m, HeardMessage) and m.parts:
                out.append((role, m.parts))
            elif m.content:
                out.append((role, m.content))
        return out
