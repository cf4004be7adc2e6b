"""The replies of one session: which are in flight, and what was played of those that ended.

A reply is tracked from `start` until it is done (completed, cancelled or failed); the clause
segments of a finished reply are kept for a while so that a late `truncate` (a Realtime client
reporting how much it played) can still cut its text to what was heard.

With `interrupt_response` off, the user may speak over a reply without stopping it. Their turn
is committed and answered, once the reply playing is done: its reply waits, not started and not
public (`WaitingReply`), then starts and reads the conversation as it is then (the whole reply
before it, their words). Until 2026-12 it started at once beside the one playing: two responses
in progress in one conversation (OpenAI has at most one), the second's prompt holding the
first's words so far. A later turn supersedes a waiting reply (the newest one answers both
turns: memory merges consecutive user items), and so does a client's cancel or in-conversation
response (`drop_waiting`). The pipeline's replies only: the realtime brain's upstream answers on
its own schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from moksori.engine import events as E
from moksori.engine.memory import heard_text
from moksori.engine.reply_parts import PlayedParts
from moksori.engine.session_context import SessionContext
from moksori.engine.response import Response, ResponseOptions

KEEP_SEGMENTS = 32  # finished replies whose clause timing is kept for `truncate`

# (context, options, turn id, language) -> a reply: `Response` (LLM -> TTS), or the realtime
# brain's `UpstreamReply`, which has the same face
ReplyFactory = Callable[[SessionContext, ResponseOptions, "int | None", str], Response]


@dataclass
class WaitingReply(Response):
    """A turn's reply that waits for the reply playing (see the module's doc). Until `go()` it
    is neither started nor public: `start()` does nothing, and `release()` (its turn ended) is
    remembered; a cancel then is quiet (nothing of it was announced)."""

    waiting: bool = True
    release_wanted: bool = False

    def start(self) -> None:
        if not self.waiting:
            super().start()

    def release(self) -> None:
        if self.waiting:
            self.release_wanted = True
            return
        super().release()

    def go(self) -> None:
        """The reply before it is done: start now, and go public if its turn has ended."""
        if not self.waiting or self.done.is_set():
            return
        self.waiting = False
        self.on_first_audio = None  # its wait is not the reply pace a speculation learns from
        super().start()
        if self.release_wanted:
            super().release()


class Responses:
    def __init__(self, ctx: SessionContext, factory: ReplyFactory = Response) -> None:
        self._ctx = ctx
        self.factory = factory  # the brain's seam: what a reply is
        self._active: dict[str, Response] = {}
        self._segments_by_item: dict[str, list[tuple[str, int]]] = {}
        # finished replies with several message items (`reply_parts`): each item's id -> the reply's
        self._parts_by_item: dict[str, PlayedParts] = {}
        self._waiting: list[WaitingReply] = []  # oldest first
        self._closing = self._advancing = False

    def options(self, **overrides: Any) -> ResponseOptions:
        """The session's reply options, with per-reply overrides (Realtime `response.create`)."""
        c = self._ctx.cfg
        base = ResponseOptions(instructions=c.instructions, modalities=c.modalities, voice=c.voice, tools=c.tools,
                               tool_choice=c.tool_choice, temperature=c.temperature,
                               max_output_tokens=c.max_output_tokens,
                               first_clause_max_chars=c.first_clause_max_chars,
                               first_clause_ramp=c.first_clause_ramp, first_clause_pause=c.first_clause_pause)
        return replace(base, **overrides) if overrides else base

    def start(self, opts: ResponseOptions, turn_id: int | None, language: str, *, release: bool) -> Response:
        """Start a reply; unreleased, it is speculative (held back) until `Response.release()`.
        A turn's reply while another plays, with `interrupt_response` off, waits for it."""
        resp: Response
        if self._waits(opts, turn_id):
            waiting = WaitingReply(self._ctx, opts, turn_id, language)
            waiting.llm_answered.set()  # a speculation judging the pause has no first token to wait for
            self._waiting.append(waiting)
            resp = waiting
        else:
            resp = self.factory(self._ctx, opts, turn_id, language)
        self._active[resp.id] = resp
        resp.on_finished = self._finished
        resp.start()
        if release:
            resp.release()
        return resp

    def _waits(self, opts: ResponseOptions, turn_id: int | None) -> bool:
        return (self.factory is Response and turn_id is not None and not self._ctx.cfg.turn.interrupt_response
                and opts.in_conversation and not opts.backchannel and opts.fixed_text is None
                and self._playing() is not None)

    def _playing(self) -> Response | None:
        """The public reply in the conversation still in progress (generating or being heard)."""
        return next((r for r in self._active.values() if r.released and r.opts.in_conversation
                     and not r.opts.backchannel and not r.done.is_set()), None)

    def _next(self) -> None:
        """Nothing plays any more: the newest waiting reply whose turn ended starts (older ones
        are superseded: it answers their turns too); waiting speculations (a turn not over yet)
        start as speculations."""
        if self._closing or self._advancing or not self._waiting or self._playing() is not None:
            return
        ended = [r for r in self._waiting if r.release_wanted]
        go, superseded = ended[-1:] or list(self._waiting), ended[:-1]
        self._waiting = [r for r in self._waiting if not any(r is x for x in go + superseded)]
        self._advancing = True  # (a cancel below finishes a reply, which calls this again)
        try:
            for old in superseded:
                old.cancel("superseded")  # (quiet: it was never public)
            for r in go:
                r.go()
        finally:
            self._advancing = False

    def drop_waiting(self, reason: str = "superseded") -> None:
        """A client's cancel, or a reply it asked for in the conversation: the turns' replies
        still waiting are not wanted any more (quietly: they were never public)."""
        waiting, self._waiting = self._waiting, []
        for r in waiting:
            r.cancel(reason)

    def _finished(self, r: Response) -> None:
        self._active.pop(r.id, None)
        if r.playback is not None and r.playback.segments:
            self._segments_by_item[r.item_id] = r.playback.segments
            while len(self._segments_by_item) > KEEP_SEGMENTS:
                self._segments_by_item.pop(next(iter(self._segments_by_item)))
            if r.parts:
                played = PlayedParts(r.parts, r.text, r.playback.segments, r.playback.rate, r.playback.sent)
                for p in r.parts:
                    self._parts_by_item[p.item_id] = played
                while len(self._parts_by_item) > 4 * KEEP_SEGMENTS:
                    self._parts_by_item.pop(next(iter(self._parts_by_item)))
        self._waiting = [w for w in self._waiting if w is not r]
        self._next()
        self._ctx.on_change()

    # -------------------------------------------------------------- queries

    def get(self, response_id: str) -> Response | None:
        return self._active.get(response_id)

    def active(self) -> list[Response]:
        return list(self._active.values())

    def forget(self, response_id: str) -> None:
        self._active.pop(response_id, None)

    def thinking(self) -> bool:
        """A public reply is being generated."""
        return any(r.released and r.status == "in_progress" for r in self._active.values())

    def busy(self) -> bool:
        return any(not r.done.is_set() for r in self._active.values())

    def split(self, response_id: str, item_id: str, said: Callable[[], None] | None = None) -> bool:
        """A tool item comes inside reply `response_id`: its words from now on are message item
        `item_id` (`Response.split`: True while the words before it are still going out, `said()`
        once they have). The pipeline's replies only: the realtime brain splits its own
        (`RealtimeSession.split_reply`, `UpstreamReply.split`)."""
        resp = self._active.get(response_id)
        if resp is not None and self.factory is Response:
            return resp.split(item_id, said)
        return False

    def truncate_ended(self, item_id: str, audio_end_ms: int) -> bool:
        """A late truncate of a message item of a finished reply that had several: the reply was
        heard up to there (memory; `agent.reply_heard` tells what was heard of the whole reply,
        filed under its first item). False: not such an item."""
        played = self._parts_by_item.get(item_id)
        if played is None or self._ctx.memory.get(item_id) is None:
            return False
        heard = played.truncate(item_id, audio_end_ms, self._ctx.memory)
        self._ctx.publish(E.AgentReplyHeard(t=self._ctx.clock.now(), item_id=played.parts[0].item_id,
                                            part_item_id=item_id, text=heard))
        return True

    def segments_for(self, item_id: str) -> list[tuple[str, int]] | None:
        """(clause text, samples) of the reply that produced assistant item `item_id`."""
        resp = next((r for r in self._active.values() if r.item_id == item_id), None)
        if resp is not None and resp.playback is not None:
            return resp.playback.segments
        return self._segments_by_item.get(item_id)

    def heard_so_far(self) -> list[tuple[str, str, str]]:
        """(response id, item id, text heard so far) of each public reply being played now."""
        now = self._ctx.clock.now()
        out = []
        for resp in self._active.values():
            pb = resp.playback
            if resp.released and resp.opts.in_conversation and resp.status == "in_progress" and pb is not None:
                out.append((resp.id, resp.item_id, heard_text(pb.segments, min(pb.heard(now), pb.sent))))
        return out

    # -------------------------------------------------------------- lifecycle

    def close(self) -> list[Any]:
        """Cancel every reply, each keeping what the listener heard of it (a client that leaves
        mid-reply heard only part of it); returns their tasks to await."""
        self._closing = True
        self._waiting = []
        now = self._ctx.clock.now()
        replies = list(self._active.values())  # (a cancel takes the reply out of `_active`)
        for resp in replies:
            pb, heard = resp.playback, None
            if resp.released and pb is not None:
                heard = heard_text(pb.segments, min(pb.heard(now), pb.sent))
            resp.cancel("session_closed", heard=heard)
        return [r.task for r in replies if r.task]
