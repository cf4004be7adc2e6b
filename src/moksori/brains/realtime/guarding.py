"""The server's guardrails around a speech-to-speech upstream (the realtime brain).

The pipeline brain checks a user turn before its LLM sees it and each clause before TTS speaks
it. A speech-to-speech upstream hears the user's audio itself and speaks as it thinks, so here:

* **input**, before the upstream is asked for a reply, on the words of the user turn when they
  are known then (typed text; the local STT's words of `moksori` turns, waited for at most
  `LOCAL_WORDS_WAIT_S` when they are still being transcribed): blocked, the reply asks
  the upstream to say the safe sentence instead. When the words come later (the upstream's own
  VAD answers at once; a manual commit waits for the upstream's transcript), they are checked
  when they come: blocked, a reply to that turn still going on is cut and the safe sentence said.
  Either way the turn leaves the conversation: its memory item says `memory.BLOCKED_TEXT`
  (`guardrail.input_removed`, so the store's copy is replaced too), and its item is deleted
  upstream, so no later reply hears it again.
* **output**, on the upstream's transcript, clause by clause (`UpstreamReply._check_clauses`):
  what was said cannot be unsaid, so a blocked clause stops the reply at once: the speaker stops,
  the upstream response is cancelled and its audio truncated at what was heard (the heard words
  end before the blocked clause), and a new reply has the upstream say the safe sentence.

Every trip is a `guardrail.tripped` event, as in the pipeline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from moksori.engine import events as E
from moksori.engine.memory import BLOCKED_TEXT, Item, Memory

from .reply import UpstreamReply

if TYPE_CHECKING:
    from moksori.engine.clock import Clock
    from moksori.guardrails.guard import Guardrails, InputVerdict

log = logging.getLogger("moksori.brains.realtime")

LINK_WAIT_S = 5.0  # how long a removal waits for the upstream to name the user's item
LOCAL_WORDS_WAIT_S = 1.5  # how long a reply waits for the local words of a moksori turn, to check them first


class GuardHost(Protocol):
    """What the realtime session gives this module."""

    @property
    def id(self) -> str: ...
    @property
    def memory(self) -> Memory: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def guard(self) -> Guardrails | None: ...
    @property
    def closed(self) -> bool: ...
    def publish(self, e: E.Event) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...
    def reply_language(self) -> str: ...
    def local_words_coming(self) -> bool:
        """The local STT transcribes the turns (moksori turns)."""
    def live_replies(self) -> list[UpstreamReply]:
        """Replies in the conversation going on now (released, not finished)."""
    def cut_reply(self, reply: UpstreamReply) -> None:
        """Stop `reply` where the listener is (reason `guardrail`)."""
    def say_safe(self, text: str, turn_id: int | None, language: str, *, in_conversation: bool = True) -> None:
        """A reply in which the upstream says exactly `text`."""
    def queue_upstream(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """A call to the upstream, in order with the others."""
    def upstream_id(self, item_id: str) -> str | None:
        """The upstream's id of our item once it is known."""
    async def delete_upstream(self, upstream_id: str) -> None: ...


class UpstreamGuard:
    def __init__(self, host: GuardHost) -> None:
        self.s = host
        self._checked: set[str] = set()  # user items whose words were checked already
        self._removed: set[str] = set()
        # the verdicts of the checks made as the words came (`words_known`), by user item, and
        # the items whose verdict a reply waiting to ask the upstream acts on instead (one check
        # per turn, however the words and the reply are ordered)
        self._verdicts: OrderedDict[str, asyncio.Future[InputVerdict]] = OrderedDict()
        self._claimed: set[str] = set()

    @property
    def guard(self) -> Guardrails | None:
        return self.s.guard

    # ------------------------------------------------------------------ input, before the reply

    async def check_input(self, reply: UpstreamReply) -> str | None:
        """The input hook on the turn `reply` answers, when its words are known: the safe
        sentence when blocked (the turn is removed), else None."""
        guard, o = self.guard, reply.opts
        if guard is None or o.fixed_text is not None or not o.in_conversation or o.replace_input is not None:
            return None
        items, text = self._last_turn()
        if not text and self.s.local_words_coming():
            # moksori turns: the local STT's words usually follow the turn's end by a few hundred
            # ms; worth waiting for them rather than checking after the upstream started speaking
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LOCAL_WORDS_WAIT_S
            while not text and loop.time() < deadline:
                await asyncio.sleep(0.02)
                items, text = self._last_turn()
        if not text:
            return None  # the words are not known yet: checked when they come (`words_known`)
        verdict = await self._verdict_of(items) or await self._check(items, text, reply.language)
        for trip in verdict.trips:
            reply.tripped(trip)
        if verdict.action != "block":
            return None  # a rewrite cannot change what the upstream heard: reported, not applied
        self._remove(items, reply.turn_id, reply.id)
        return verdict.reply or guard.safe_reply(reply.language)

    async def _check(self, items: list[Item], text: str, language: str) -> InputVerdict:
        assert self.guard is not None
        self._checked.update(i.id for i in items)
        return await self.guard.check_input(text, language)

    async def _verdict_of(self, items: list[Item]) -> InputVerdict | None:
        """The verdict on `items` from the checks made as their words came, claimed for this
        reply (those checks then leave the acting to it); None when some item was not checked so."""
        futs = [self._verdicts.get(i.id) for i in items]
        if not items or any(f is None for f in futs):
            return None
        ids = [i.id for i in items]
        self._claimed.update(ids)
        verdicts: list[InputVerdict] = []
        try:
            for f in futs:
                assert f is not None
                await asyncio.wait([f])
                if f.cancelled():
                    self._claimed.difference_update(ids)
                    return None
                verdicts.append(f.result())
        except asyncio.CancelledError:  # the reply went (a barge-in): the checks still count
            self._claimed.difference_update(ids)  # one still running acts itself
            done = [i for i, f in zip(items, futs) if f is not None and f.done() and not f.cancelled()
                    and f.result().action == "block"]
            if done:
                self._remove(done, None, None)
            raise
        for i in items:  # the checks that made them have seen the claim by now
            self._verdicts.pop(i.id, None)
            self._claimed.discard(i.id)
        blocked = next((v for v in verdicts if v.action == "block"), None)
        trips = tuple(t for v in verdicts for t in v.trips)
        return dataclasses.replace(blocked or verdicts[0], trips=trips)

    def _last_turn(self) -> tuple[list[Item], str]:
        items = self.s.memory.last_user_turn()
        return items, " ".join(i.text for i in items if i.text.strip() and i.text != BLOCKED_TEXT).strip()

    # ------------------------------------------------------------------ input, when the words come

    def words_known(self, item_id: str, text: str) -> None:
        """A user item's words arrived (the upstream's transcript, or the local fallback)."""
        if self.guard is None or item_id in self._checked or item_id in self._removed or not text.strip():
            return
        self._checked.add(item_id)
        if len(self._checked) > 256:
            self._checked.clear()
        self._verdicts[item_id] = asyncio.get_running_loop().create_future()
        while len(self._verdicts) > 256:
            _old, fut = self._verdicts.popitem(last=False)
            fut.cancel()
        self.s.spawn(self._check_late(item_id, text), f"guard-input-{item_id}")

    async def _check_late(self, item_id: str, text: str) -> None:
        guard, s = self.guard, self.s
        if guard is None:
            return
        lang = s.reply_language()
        fut = self._verdicts.get(item_id)
        try:
            verdict = await guard.check_input(text, lang)
        except BaseException:
            if fut is not None and not fut.done():
                fut.cancel()  # a reply waiting for this verdict checks the words itself
            raise
        if fut is not None and not fut.done():
            fut.set_result(verdict)
        if item_id in self._claimed:  # a reply waiting to ask the upstream acts on it (`check_input`)
            return
        item = s.memory.get(item_id)
        answering = [r for r in s.live_replies() if r.opts.fixed_text is None]
        turn_id = answering[0].turn_id if answering else None
        for trip in verdict.trips:
            s.publish(E.GuardrailTripped(t=s.clock.now(), stage=trip.stage, action=trip.action, policy=trip.policy,
                                         reason=trip.reason, language=trip.language,
                                         categories=tuple(trip.categories), turn_id=turn_id))
        if verdict.action != "block" or item is None:
            return
        self._remove([item], turn_id, answering[0].id if answering else None)
        if answering:  # a reply to the blocked words is going on: stop it, say the safe sentence
            for r in answering:
                self._cut(r)
            s.say_safe(verdict.reply or guard.safe_reply(lang), turn_id, lang)

    # ------------------------------------------------------------------ output

    def output_blocked(self, reply: UpstreamReply, safe: str) -> None:
        """A clause of `reply` was blocked: cut it where the listener is, say the safe sentence."""
        if not reply.live:
            return
        self._cut(reply)
        if reply.opts.fixed_text is None:  # the safe sentence itself is never re-said
            self.s.say_safe(safe, reply.turn_id, reply.language, in_conversation=reply.opts.in_conversation)

    def _cut(self, reply: UpstreamReply) -> None:
        reply.cut_before_blocked()
        self.s.cut_reply(reply)

    # ------------------------------------------------------------------ removal

    def _remove(self, items: list[Item], turn_id: int | None, response_id: str | None) -> None:
        s = self.s
        removed = s.memory.remove_user_turn(items)
        if not removed:
            return
        self._removed.update(i.id for i in removed)
        s.publish(E.GuardrailInputRemoved(t=s.clock.now(), item_ids=tuple(i.id for i in removed), turn_id=turn_id,
                                          response_id=response_id))
        for item in removed:
            s.queue_upstream(self._forget_upstream, item.id)

    async def _forget_upstream(self, item_id: str) -> None:
        """Delete the blocked turn's item upstream, once the upstream has named it (the commit
        that made it may still be on its way)."""
        s = self.s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINK_WAIT_S
        up = s.upstream_id(item_id)
        while up is None and loop.time() < deadline and not s.closed:
            await asyncio.sleep(0.02)
            up = s.upstream_id(item_id)
        if up is None:
            log.info("session %s: the blocked user item %s was never named upstream", s.id, item_id)
            return
        await s.delete_upstream(up)
