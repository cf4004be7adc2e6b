"""Recording one live session: who it belongs to, its recorder, and the user's history loaded in.

    rec = record_session(session, store, Who(tenant, user, "realtime"))

opens the conversation (its id is the session's id: the `conversation_id` a Realtime client
sees in every `response`), puts a `Recorder` on the session's bus, hands the context window's
running summaries to the store, and, for a known user, loads their earlier turns into
`session.memory.history` in the background. Replies wait for that load (`Memory.history_ready`,
bounded), so the first answer already knows the user; a slow or dead database costs at most
`HISTORY_TIMEOUT_S` once, and the session goes on without history (a warning says why).

A session that started without the history because the store was away (not up since the server
started, or the load failed) loads it when the store answers again, and the next reply waits for
that (bounded as above). The earlier items go where they would have gone at the start: before this
session's items, inside the same token budget, which keeps this session's newest turns first (a
window that has already cut keeps its cut; the earlier items then only fill room it has). A
speech-to-speech upstream (the realtime brain) was seeded at its start and does not get them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moksori.accounting import TurnUsage
from moksori.engine import events as E
from moksori.engine.memory import Item
from moksori.engine.session import Session
from moksori.providers.base import Usage
from moksori.recording.recorder import Models, Recorder
from moksori.store import History, Store, StoredItem

log = logging.getLogger("moksori.recording")

__all__ = ["Who", "Recording", "record_session", "fetch_history", "models_of", "history_items"]

HISTORY_TIMEOUT_S = 3.0  # loading a user's history, at most (a dead database: the session goes on without)
HISTORY_SHARE = 0.7  # of the context budget, at most, for earlier conversations
FLUSH_BEFORE_LOAD_S = 1.0  # records of the user's last session still queued in this process
PROGRESS_EVERY_S = 1.0  # a reply in flight: what was heard of it so far is written this often
HISTORY_RETRY_S = 1.0  # the store was away at the start: look this often whether it answers again...
HISTORY_RETRY_MAX_S = 30.0  # ...backing off to this after failed loads


@dataclass(frozen=True)
class Who:
    """Whose conversation this is. `tenant`: `store.tenant_id(api key)`; `user`: the caller's
    id (a phone number already hashed), None for anonymous; `channel`: realtime | voice-live |
    webrtc | browser | phone | cli."""

    tenant: str
    user: str | None
    channel: str
    load_history: bool = True
    metadata: dict[str, str] | None = None


class Recording:
    def __init__(self, session: Session, store: Store, who: Who, recorder: Recorder) -> None:
        self.session, self.store, self.who, self.recorder = session, store, who, recorder
        self.history_task: asyncio.Task[None] | None = None
        self.history_items = 0
        self.late_history = False  # loaded after the start (the store was away then)

    @property
    def conversation_id(self) -> str:
        return self.recorder.conversation_id

    async def load_history(self) -> None:
        mem = self.session.memory
        try:
            window = mem.window
            budget = window.policy.budget_tokens if window is not None else 2048
            count = window.counter.count if window is not None else None
            async with asyncio.timeout(HISTORY_TIMEOUT_S):
                h = await fetch_history(self.store, self.who, budget, count)
            self.use_history(h)
        except asyncio.CancelledError:
            mem.history_done()
            raise
        except Exception as e:  # noqa: BLE001 - a dead database: the session goes on without history
            log.warning("session %s: the user's history could not be loaded (%s: %s); going on without it "
                        "until the store answers", self.session.id, type(e).__name__,
                        " ".join(str(e).split())[:200] or "timed out")
            mem.history_done()
            self.history_task = asyncio.get_running_loop().create_task(self.load_history_later(),
                                                                       name=f"history-later-{self.session.id}")

    async def load_history_later(self) -> None:
        """The store was away when the session started: once it takes writes again, load the
        user's history (the next reply waits for it, as at a start); retried, backing off."""
        mem, store = self.session.memory, self.store
        delay = HISTORY_RETRY_S
        while True:
            await asyncio.sleep(delay)
            if not store.started or store.writer.failing:
                continue
            window = mem.window
            budget = window.policy.budget_tokens if window is not None else 2048
            count = window.counter.count if window is not None else None
            mem.expect_history()
            try:
                async with asyncio.timeout(HISTORY_TIMEOUT_S):
                    h = await fetch_history(store, self.who, budget, count)
            except asyncio.CancelledError:
                mem.history_done()
                raise
            except Exception as e:  # noqa: BLE001 - still away: later
                mem.history_done()
                delay = min(HISTORY_RETRY_MAX_S, 2 * delay)
                log.info("session %s: the user's history is still not loadable (%s); retrying in %g s",
                         self.session.id, type(e).__name__, delay)
                continue
            self.late_history = True
            self.use_history(h)
            log.warning("session %s: the store answers again; the user's history (%d earlier items) is in from "
                        "the next reply", self.session.id, self.history_items)
            return

    def use_history(self, h: History) -> None:
        """Put the user's earlier items (`fetch_history`) into the session's memory."""
        items = history_items(h.items, self.conversation_id)
        self.history_items = len(items)
        self.session.memory.set_history(items, h.summary)
        if items:
            log.info("session %s: %d earlier items of the user loaded", self.session.id, len(items))


async def fetch_history(store: Store, who: Who, budget_tokens: int,
                        count: Callable[[str], int] | None = None) -> History:
    """`who.user`'s latest items within HISTORY_SHARE of a context budget of `budget_tokens`
    (records of theirs still queued in this process are written first, for up to 1 s)."""
    assert who.user is not None
    await store.flush(FLUSH_BEFORE_LOAD_S)
    kw: dict[str, Any] = {"count": count} if count is not None else {}
    return await store.load_history(who.tenant, who.user, max_tokens=int(budget_tokens * HISTORY_SHARE), **kw)


def history_items(stored: list[StoredItem], current_conversation: str | None = None) -> list[Item]:
    """Stored items as memory items (an interrupted reply as what was heard)."""
    out: list[Item] = []
    for it in stored:
        if it.conversation_id == current_conversation:
            continue
        role = it.role if it.role in ("user", "assistant", "system") else \
            ("assistant" if it.type in ("function_call", "mcp_call") else "user")
        cut = it.interrupted or it.status == "in_progress"  # (a reply still playing elsewhere: heard so far)
        out.append(Item(id=it.id, type=it.type, role=role,
                        text=it.spoken_text if it.type == "message" else "", audio=it.audio,
                        status="incomplete" if cut else "completed", language=it.language,
                        call_id=it.call_id, name=it.name, arguments=it.arguments, output=it.output,
                        server_label=it.server_label, error=it.output if it.status == "failed" else None))
    return out


def models_of(stack: Any) -> Models:
    """The model names usage is priced by: the LLM's model (or file name), STT's and TTS's."""
    def name(provider: Any) -> str | None:
        if provider is None:
            return None
        inner = getattr(provider, "providers", (provider,))[0]
        model = getattr(inner, "model", None)
        if isinstance(model, str) and model:
            return model
        path = getattr(inner, "path", None)
        return getattr(path, "name", None) or getattr(inner, "name", None)

    return Models(llm=name(stack.llm), stt=name(stack.stt), tts=name(stack.tts))


async def _progress(recorder: Recorder, heard_so_far: Callable[[], list[tuple[str, str, str]]],
                    store: Store) -> None:
    """Every PROGRESS_EVERY_S, what was heard so far of each reply in flight (a few dictionary
    look-ups on the audio loop; a record only when it changed). A user who reconnects to another
    worker before this one notices they left (its keepalive: up to 10 s) then finds the reply
    with what they heard of it, give or take a second. Not while the database is away: progress
    is worth something only at once, and it must not eat the outage's queue."""
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        if not store.started or store.writer.failing:
            continue
        try:
            for response_id, item_id, heard in heard_so_far():
                recorder.progress(response_id, item_id, heard)
        except Exception:  # a recording bug must never end the session (nor flood the log)
            log.exception("recording: the progress of replies in conversation %s is no longer written",
                          recorder.conversation_id)
            return


def record_session(session: Session, store: Store, who: Who, *,
                   on_record: Callable[[str], None] | None = None, history: History | None = None) -> Recording:
    """Record `session` into `store` from now on (see the module's doc). `history`: the user's
    earlier items, already fetched (`fetch_history`; `moksori converse --fast` reads them before
    its virtual-time loop starts), instead of loading them in the background."""
    models = models_of(session.stack)
    recorder = Recorder(store.submit, conversation_id=session.id, tenant=who.tenant, user=who.user,
                        channel=who.channel, models=models, clock_now=session.clock.now, metadata=who.metadata,
                        on_record=on_record, redact=session.store_redactor())
    recorder.start()
    session.bus.listen(recorder)
    rec = Recording(session, store, who, recorder)
    window = session.memory.window
    if window is not None:
        window.on_summary = recorder.summary

        def summary_usage(u: Usage) -> None:
            recorder.summary_usage(TurnUsage(llm_model=models.llm, input_tokens=u.input_tokens,
                                             cached_tokens=u.cached_tokens, output_tokens=u.output_tokens))

        window.on_usage = summary_usage

    def on_end(e: E.Event) -> None:
        # the session's last records (an interrupted reply's heard part) go out at once, not after
        # the batch's gather wait: the user may reconnect to another worker and load them there
        if isinstance(e, E.SessionClosed):
            store.write_now()

    session.bus.listen(on_end)
    heard_so_far = getattr(session, "heard_so_far", None)
    if heard_so_far is not None:
        progress = asyncio.get_running_loop().create_task(_progress(recorder, heard_so_far, store),
                                                          name=f"progress-{session.id}")

        def stop_progress(e: E.Event) -> None:
            if isinstance(e, E.SessionClosed):
                progress.cancel()

        session.bus.listen(stop_progress)
    if history is not None:
        rec.use_history(history)
    elif who.user is not None and who.load_history:
        if not store.started:
            # the database has not answered since the server started: nothing to load now (and
            # no reason to make the first reply wait); loaded when it answers, before the next reply
            log.warning("session %s: the store is not up yet; starting without the user's history (loaded "
                        "when it answers)", session.id)
            rec.history_task = asyncio.get_running_loop().create_task(rec.load_history_later(),
                                                                      name=f"history-later-{session.id}")
        else:
            session.memory.expect_history()
            rec.history_task = asyncio.get_running_loop().create_task(rec.load_history(),
                                                                      name=f"history-{session.id}")

        def on_close(e: E.Event) -> None:
            if isinstance(e, E.SessionClosed) and rec.history_task is not None and not rec.history_task.done():
                rec.history_task.cancel()

        session.bus.listen(on_close)
    return rec
