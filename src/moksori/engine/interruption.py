"""What happens when the user interrupts: hold, interrupt, settle, reoffer, truncate, ack.

The decision that speech is a barge-in is the `TurnTaker`'s (pure: `BargeIn` once speech has
lasted `interrupt_min_speech_ms` while the agent is audible). Everything after it is here:

1. **hold**: from the first word of the user, no reply starts playing over them.
2. **interrupt** (barge-in, or a client's cancel): the speaker stops and drops what is queued
   (`agent.audio_cleared`), then for each reply cut: `agent.interrupted` (what was heard, how
   long it took) and its `agent.response_done` (cancelled); memory keeps only the heard words.
3. **settle**, once the user's words are known: with words, replies held back while they
   talked are stale and dropped; with no words (a noise), the unheard rest of the reply they
   interrupted is offered again (`agent.reoffer`). Either way the hold ends.
4. **truncate / ack**: a transport that knows what was played (a Realtime client's
   `conversation.item.truncate`, telephony marks) corrects the speaker's estimate. A truncate of
   a reply still in progress (being generated, or played out) also cuts it there: the listener
   stopped hearing it, so nothing more is generated or sent, and it ends as a cut reply
   (`agent.interrupted` at the client's `audio_end_ms`, reason `client_truncated`, then its
   `agent.response_done`, whose heard text is the truncated one).
"""

from __future__ import annotations

from collections.abc import Callable

from moksori.engine import events as E
from moksori.engine.session_context import SessionContext
from moksori.engine.memory import Item, heard_text
from moksori.engine.response import Response
from moksori.engine.responses import Responses
from moksori.engine.speaker import Playback


class Interruptions:
    def __init__(self, ctx: SessionContext, responses: Responses, current_turn: Callable[[], int]) -> None:
        self._ctx = ctx
        self._responses = responses
        self._current_turn = current_turn
        self._reoffer: tuple[int, str, str] | None = None  # (turn id, unheard text, language)

    # -------------------------------------------------------------- 1. hold

    def user_started(self) -> None:
        """The user's speech is confirmed: no new reply starts while they talk."""
        if self._ctx.cfg.turn.interrupt_response:
            self._ctx.speaker.hold = True

    def release_hold(self) -> None:
        self._ctx.speaker.hold = False

    # -------------------------------------------------------------- 2. interrupt

    def interrupt(self, reason: str = "turn_detected", *, onset: float | None = None) -> list[str]:
        """Stop audio now, cancel LLM and TTS, keep only what was heard. Returns the replies cut."""
        ctx = self._ctx
        now = ctx.clock.now()
        played = {pb.response_id: (pb, n) for pb, n in ctx.speaker.interrupt()}
        stopped = [resp.id for resp in self._responses.active() if self._cuttable(resp)]
        for rid in stopped:
            resp = self._responses.get(rid)
            assert resp is not None
            self._cut(resp, played.get(rid), reason, onset, now)
        ctx.on_change()
        return stopped

    def cancel(self, response_id: str, reason: str = "client_cancelled") -> list[str]:
        """A client cancels one reply by id (Realtime `response.cancel`); others go on. (Also
        the realtime brain's output guardrail, reason `guardrail`.)"""
        resp = self._responses.get(response_id)
        if resp is None or not self._cuttable(resp):
            return []
        ctx = self._ctx
        now = ctx.clock.now()
        self._cut(resp, ctx.speaker.cancel(response_id), reason, None, now)
        ctx.on_change()
        return [response_id]

    @staticmethod
    def _cuttable(resp: Response) -> bool:
        return resp.released and resp.status in ("in_progress", "pending")

    def _cut(self, resp: Response, played: tuple[Playback, int] | None, reason: str, onset: float | None,
             now: float, *, heard_ms: int | None = None, item: tuple[str, int] | None = None) -> None:
        """Publish what was heard of `resp` (`agent.interrupted`), then cancel it (`agent.response_done`).
        `heard_ms`: what a client said it played (a truncate), instead of the samples' count;
        `item`: the message item it named, and its ms."""
        pb, n = resp.playback, 0
        if played is not None:
            pb, n = played
        elif pb is not None:  # all of it was sent; the listener may still be hearing the end
            n = min(pb.heard(now), pb.sent)
        heard = heard_text(pb.segments, n) if pb is not None else resp.text
        if heard_ms is None:
            heard_ms = int(1000 * n / pb.rate) if pb is not None else 0
        if reason == "turn_detected" and pb is not None:
            rest = resp.text.split()[len(heard.split()):]
            self._reoffer = (self._current_turn(), " ".join(rest), resp.language)
        # the message item cut (a reply with several: the one the cut falls in), and where in it
        item_id, item_ms = item if item is not None else resp.message_at(heard_ms)
        self._ctx.publish(E.AgentInterrupted(
            t=now, response_id=resp.id, item_id=item_id, reason=reason, heard_ms=item_ms, text=heard,
            onset=None if onset is None else round(onset, 4),
            reaction_ms=None if onset is None else round(1000 * (now - onset))))
        resp.cancel(reason, heard=heard)
        if resp.item is not None:
            resp.item.truncated_at_ms = heard_ms
        self._responses.forget(resp.id)

    # -------------------------------------------------------------- 3. settle

    def settle(self, turn_id: int, words: bool) -> None:
        """The user's words of turn `turn_id` are known: decide the fate of replies held while they talked."""
        ctx = self._ctx
        if words and ctx.cfg.turn.interrupt_response:
            for resp in self._responses.active():
                pb = resp.playback
                stale = resp.released and resp.turn_id is not None and resp.turn_id < turn_id
                if stale and resp.status == "in_progress" and (pb is None or pb.started_at is None):
                    if pb is not None:
                        ctx.speaker.cancel(resp.id)
                    ctx.publish(E.AgentInterrupted(t=ctx.clock.now(), response_id=resp.id, item_id=resp.item_id,
                                                   reason="turn_detected", heard_ms=0, text="", onset=None,
                                                   reaction_ms=None))
                    resp.cancel("turn_detected", heard="")
                    self._responses.forget(resp.id)
        elif not words and self._reoffer and self._reoffer[0] == turn_id and self._reoffer[1].strip():
            # the "interruption" was a noise with no words: offer the rest of the reply again
            _, rest, lang = self._reoffer
            ctx.publish(E.AgentReoffer(t=ctx.clock.now(), turn_id=turn_id, text=rest))
            self._responses.start(self._responses.options(fixed_text=rest), turn_id, lang, release=True)
        if self._reoffer and self._reoffer[0] <= turn_id:
            self._reoffer = None
        self.release_hold()

    # -------------------------------------------------------------- 4. what was heard

    def truncate(self, item_id: str, audio_end_ms: int) -> Item | None:
        """The client reports it played only `audio_end_ms` of an assistant item (at most what
        the item sent: the caller checks). A reply still in progress is cut there (see 4. above)."""
        ctx = self._ctx
        item = ctx.memory.get(item_id)
        if item is None or item.role != "assistant":
            return None
        playing = next((r for r in self._responses.active()
                        if r.message_start_ms(item_id) is not None and self._cuttable(r)), None)
        if playing is not None and playing.playback is not None:
            self._cut_at(playing, playing.playback, audio_end_ms, item_id)
            return item
        if self._responses.truncate_ended(item_id, audio_end_ms):  # a finished reply's later message item
            return item
        segments = self._responses.segments_for(item_id)
        if segments:
            text = heard_text(segments, int(audio_end_ms * ctx.cfg.output_rate / 1000))
        else:
            ratio = min(1.0, audio_end_ms / max(1, item.audio_ms)) if item.audio_ms else 1.0
            words = item.text.split()
            text = " ".join(words[: int(len(words) * ratio)])
        ctx.memory.truncate(item_id, text, audio_end_ms)
        return item

    def _cut_at(self, resp: Response, pb: Playback, audio_end_ms: int, item_id: str) -> None:
        """Cut a reply in progress at what the client says it played of its message item
        `item_id`: its word replaces the speaker's estimate (`acked`), its audio stops, and it
        ends as a cut reply."""
        ctx = self._ctx
        start = resp.message_start_ms(item_id) or 0  # (a later message item of the reply: after a tool item)
        n = (start + audio_end_ms) * pb.rate // 1000
        if n > pb.sent:  # (never past what it sent)
            n, audio_end_ms = pb.sent, max(0, int(1000 * pb.sent / pb.rate) - start)
        pb.acked = n
        self._cut(resp, ctx.speaker.cancel(resp.id), "client_truncated", None, ctx.clock.now(),
                  heard_ms=start + audio_end_ms, item=(item_id, audio_end_ms))
        ctx.on_change()

    def ack(self, response_id: str, ms: int) -> None:
        """A transport confirms the listener has heard `ms` of a response (telephony marks)."""
        self._ctx.speaker.ack(response_id, int(ms * self._ctx.cfg.output_rate / 1000))
