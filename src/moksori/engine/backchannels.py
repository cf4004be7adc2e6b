"""A session's backchannels: when to say "mm-hmm" in a pause, playing it, stopping it.

`BackchannelPolicy` (engine/backchannel.py) decides; this module is the session's side of it:
it feeds the policy the turn-taker's news (speech, pauses, the end-of-turn analysis, the agent
speaking), watches a pause while it lasts, plays the acknowledgement as an out-of-band reply
(not in memory, not "the agent speaking", so the user going on is no barge-in), and stops it the
moment the user speaks again.
"""

from __future__ import annotations

import asyncio

from moksori.engine import events as E
from moksori.engine import turns as T
from moksori.engine.backchannel import Backchannel, BackchannelConfig, BackchannelPolicy
from moksori.engine.config import SessionConfig
from moksori.engine.responses import Responses
from moksori.engine.session_context import SessionContext

__all__ = ["Backchannels"]


class Backchannels:
    def __init__(self, ctx: SessionContext, responses: Responses, taker: T.TurnTaker) -> None:
        self._ctx, self._responses, self._taker = ctx, responses, taker
        self._policy: BackchannelPolicy | None = None
        self._watch: asyncio.Task[None] | None = None
        self._rid: str | None = None

    @property
    def on(self) -> bool:
        return self._policy is not None

    def configure(self, cfg: SessionConfig) -> None:
        kit = self._ctx.kit
        if kit is None or not cfg.backchannel or cfg.turn.mode == "manual":
            self._policy = None
            self._cancel_watch()
            return
        after = kit.backchannel_after_ms
        self._policy = BackchannelPolicy(BackchannelConfig(
            after_ms=after, latest_ms=max(after + 100, int(cfg.turn.max_pause_ms) - 300),
            min_gap_s=kit.backchannel_min_gap_s))

    # ------------------------------------------------------------------ the turn-taker's news

    def on_speech(self, turn_id: int, t_start: float, t_end: float) -> None:
        """The user is (confirmed) speaking: a backchannel still playing stops, never over the user."""
        if self._policy is None:
            return
        self._policy.on_speech(turn_id, t_start, t_end)
        if self._rid is not None:
            self._stop()
        self._cancel_watch()

    def on_pause(self, turn_id: int, voice_end: float) -> None:
        policy = self._policy
        if policy is None:
            return
        policy.on_pause(turn_id, voice_end)
        self._cancel_watch()
        self._watch = self._ctx.spawn(self._wait(turn_id, voice_end + policy.cfg.latest_ms / 1000),
                                      f"backchannel-{turn_id}")

    def on_turn_end(self, turn_id: int) -> None:
        if self._policy is not None:
            self._policy.on_turn_end(turn_id)
            self._cancel_watch()

    def on_analysis(self, turn_id: int, eot_prob: float | None, text_cue: T.TextCue) -> None:
        if self._policy is not None:
            self._policy.on_analysis(turn_id, eot_prob=eot_prob, text_cue=text_cue)

    def set_agent_speaking(self, audible: bool) -> None:
        if self._policy is not None:
            self._policy.set_agent_speaking(audible)

    def close(self) -> None:
        self._cancel_watch()

    # ------------------------------------------------------------------ inside

    def _cancel_watch(self) -> None:
        if self._watch is not None and not self._watch.done():
            self._watch.cancel()
        self._watch = None

    def _stop(self) -> None:
        rid, self._rid = self._rid, None
        resp = self._responses.get(rid) if rid is not None else None
        if resp is not None and not resp.done.is_set():
            self._ctx.speaker.cancel(resp.id)
            resp.cancel("turn_detected", heard="")
            self._responses.forget(resp.id)

    async def _wait(self, turn_id: int, until: float) -> None:
        """Ask the policy while the pause lasts (it wants the end-of-turn analysis first)."""
        ctx, clock = self._ctx, self._ctx.clock
        while self._policy is not None and not ctx.closed and self._taker.turn_id == turn_id:
            now = clock.now()
            if now > until or self._taker.state != "paused":
                return
            lang = ctx.cfg.language if ctx.cfg.language != "auto" else ctx.last_language
            due = self._policy.due(now, lang)
            if due is not None:
                self._say(due)
                return
            deadline = self._policy.next_deadline(now)
            await clock.sleep(deadline - now if deadline is not None else 0.05)

    def _say(self, bc: Backchannel) -> None:
        """Play it as an out-of-band reply, through the speaker's hold (the turn is still open)."""
        if "audio" not in self._ctx.cfg.modalities:
            return
        opts = self._responses.options(fixed_text=bc.text, in_conversation=False, backchannel=True,
                                       metadata={"moksori": "backchannel"}, tools=())
        resp = self._responses.start(opts, None, bc.language, release=True)
        self._rid = resp.id
        self._ctx.publish(E.AgentBackchannel(t=self._ctx.clock.now(), turn_id=bc.turn_id, response_id=resp.id,
                                             text=bc.text, language=bc.language))
