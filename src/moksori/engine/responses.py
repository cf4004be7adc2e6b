"""The replies of one session: which are in flight, and what was played of those that ended.

A reply is tracked from `start` until it is done (completed, cancelled or failed); the clause
segments of a finished reply are kept for a while so that a late `truncate` (a Realtime client
reporting how much it played) can still cut its text to what was heard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from moksori.engine.memory import heard_text
from moksori.engine.session_context import SessionContext
from moksori.engine.response import Response, ResponseOptions

KEEP_SEGMENTS = 32  # finished replies whose clause timing is kept for `truncate`

# (context, options, turn id, language) -> a reply: `Response` (LLM -> TTS), or the realtime
# brain's `UpstreamReply`, which has the same face
ReplyFactory = Callable[[SessionContext, ResponseOptions, "int | None", str], Response]


class Responses:
    def __init__(self, ctx: SessionContext, factory: ReplyFactory = Response) -> None:
        self._ctx = ctx
        self.factory = factory  # the brain's seam: what a reply is
        self._active: dict[str, Response] = {}
        self._segments_by_item: dict[str, list[tuple[str, int]]] = {}

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
        """Start a reply; unreleased, it is speculative (held back) until `Response.release()`."""
        resp = self.factory(self._ctx, opts, turn_id, language)
        self._active[resp.id] = resp
        resp.on_finished = self._finished
        resp.start()
        if release:
            resp.release()
        return resp

    def _finished(self, r: Response) -> None:
        self._active.pop(r.id, None)
        if r.playback is not None and r.playback.segments:
            self._segments_by_item[r.item_id] = r.playback.segments
            while len(self._segments_by_item) > KEEP_SEGMENTS:
                self._segments_by_item.pop(next(iter(self._segments_by_item)))
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
        now = self._ctx.clock.now()
        for resp in list(self._active.values()):
            pb, heard = resp.playback, None
            if resp.released and pb is not None:
                heard = heard_text(pb.segments, min(pb.heard(now), pb.sent))
            resp.cancel("session_closed", heard=heard)
        return [r.task for r in self._active.values() if r.task]
