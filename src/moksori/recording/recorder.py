"""A live session's timeline → the store's records, as it happens.

`Recorder` is a listener on one session's event bus (`session.bus.listen(recorder)`). It keeps
a little per-turn and per-reply bookkeeping (start times, latency stages, audio sent) and, when
something is final, builds one small record and hands it to `submit` (the store writer's
`submit`: a list append, about half a microsecond). Nothing here awaits, does I/O or imports
SQL: the listener runs inside `publish()` on the audio loop and must cost nothing.

What becomes a record:

* `user.transcript` (final, with words) → `UserTurn`: text, language, when the user started
  and stopped, STT seconds and the latency stages of the turn (`stt_ms`, `turn_end_ms`);
* `agent.tool_call` / `agent.function_call` → `ToolCallRecord`; `agent.tool_result` →
  `ToolResultRecord` (server tools, client tools; any brain); the call of an MCP server's tool
  (a `[[tools.mcp]]` server's or a Realtime client's: `server_label` on the call) → one
  `MCPCallRecord` at its result;
* `agent.response_done` (in the conversation) → `AgentReply`: everything generated, what was
  heard (`text` of the event), interrupted or not, status, latency stages measured from the end
  of the user's speech (`llm_first_token_ms`, `tts_first_audio_ms`, `first_audio_ms`), usage
  (LLM tokens, cached tokens, TTS characters and seconds; the upstream's own counts with audio
  tokens under the realtime brain). A reply with no words but some usage → `UsageRecord`.
* `guardrail.input_removed` (the input guardrail blocked a turn) → `UserTurnRemoved`: the turn's
  stored text becomes the placeholder the LLM sees (a turn recorded later is recorded so).
* A client's truncation (`truncated`): of a reply already recorded → `ReplyHeard` (when it
  changes what was heard; of a later message item of a reply that had several, `agent.reply_heard`
  tells the whole reply's heard text, under its first item); of one not recorded yet (its `agent.response_done` still to come, as
  the realtime brain's waits for the upstream's usage) → kept, and the reply's `AgentReply`
  carries it as the heard text. Items a Realtime client adds
  (`item_added`: its function outputs, its assistant or spoken user items) → the matching record;
  items it deletes (`item_deleted`) → `ItemDeleted`.

Times on the session clock become wall-clock seconds through one offset taken at start.

With a `redact` function (the guardrails' PII redactor, `guardrails.redact_pii`), every text a
record carries (transcripts, replies and what was heard of them, tool arguments and results,
summaries) is masked before it leaves for the store: phone numbers, e-mail addresses, card and
resident registration numbers are never written. The agent's memory of the live session keeps
them; a later session's history, read from the store, does not.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from moksori.accounting import TurnUsage
from moksori.engine import events as E
from moksori.engine.memory import BLOCKED_TEXT, Item, new_id
from moksori.store.records import (
    AgentReply,
    ConversationStarted,
    ItemDeleted,
    MCPCallRecord,
    Record,
    ReplyHeard,
    ReplyProgress,
    SummaryUpdated,
    ToolCallRecord,
    ToolResultRecord,
    UsageRecord,
    UserTurn,
    UserTurnRemoved,
)

__all__ = ["Recorder", "Models", "RecorderStats", "redact_record"]

log = logging.getLogger("moksori.recording")

Submit = Callable[[Record], bool]
Redact = Callable[[str], str]
# the record fields that carry what people said or tools returned
TEXT_FIELDS = frozenset({"text", "heard_text", "arguments", "output", "summary"})


def redact_record(rec: Record, redact: Redact) -> Record:
    """`rec` with each of its text fields passed through `redact` (the same object if nothing changed)."""
    changes: dict[str, Any] = {}
    for f in fields(rec):
        if f.name in TEXT_FIELDS:
            value = getattr(rec, f.name)
            if isinstance(value, str) and value:
                masked = redact(value)
                if masked != value:
                    changes[f.name] = masked
    return replace(rec, **changes) if changes else rec
KEEP = 64  # turns and replies whose bookkeeping is kept (a long call must not grow it)


@dataclass(frozen=True)
class Models:
    """Model names for usage rows (the price table is keyed by them)."""

    llm: str | None = None
    stt: str | None = None
    tts: str | None = None


@dataclass
class RecorderStats:
    user_turns: int = 0
    replies: int = 0
    interrupted: int = 0
    tool_calls: int = 0
    tool_results: int = 0
    refused: int = 0  # the writer's buffer was full: dropped (the writer logs it)


@dataclass
class _Turn:
    started: float | None = None  # speech onset (session clock)
    stopped: float | None = None  # end of voice
    ended: float | None = None  # the turn-end decision
    stt_started: float | None = None
    stt_finished: float | None = None


@dataclass
class _Reply:
    turn_id: int | None
    started: float
    first_token: float | None = None
    tts_first_audio: float | None = None
    audio_started: float | None = None
    audio_samples: int = 0
    audio_rate: int = 0
    stages: dict[str, float] = field(default_factory=dict)


class Recorder:
    def __init__(self, submit: Submit, *, conversation_id: str, tenant: str, user: str | None, channel: str,
                 models: Models = Models(), clock_now: Callable[[], float] | None = None,
                 metadata: dict[str, str] | None = None, on_record: Callable[[str], None] | None = None,
                 redact: Redact | None = None) -> None:
        self._submit = submit
        self._redact = redact
        self.conversation_id = conversation_id
        self.tenant, self.user, self.channel = tenant, user, channel
        self.models = models
        self.metadata = metadata
        self.stats = RecorderStats()
        self._on_record = on_record or (lambda kind: None)
        # session clock -> wall clock
        self._offset = time.time() - (clock_now() if clock_now is not None else time.monotonic())
        self._turns: OrderedDict[int, _Turn] = OrderedDict()
        self._replies: OrderedDict[str, _Reply] = OrderedDict()
        self._recorded_users: set[str] = set()
        self._removed_users: OrderedDict[str, bool] = OrderedDict()  # turns the input guardrail blocked
        # MCP calls waiting for their result: call id -> (item id, server label, arguments, response id)
        self._mcp_calls: OrderedDict[str, tuple[str, str, str, str]] = OrderedDict()
        # replies recorded: item id -> the heard text stored (None: all of it)
        self._recorded_replies: OrderedDict[str, str | None] = OrderedDict()
        # a client's truncation of a reply not recorded yet: item id -> heard text
        self._truncated_early: OrderedDict[str, str] = OrderedDict()
        # later message items of a stored reply (after a tool item): item id -> the reply's first item id
        self._later_parts: OrderedDict[str, str] = OrderedDict()
        self._progressed: dict[str, str] = {}  # item id -> heard text last written, replies in flight
        self.started = False

    # ------------------------------------------------------------------ records out

    def start(self) -> None:
        """Open the conversation (before any other record of it)."""
        if not self.started:
            self.started = True
            self._put(ConversationStarted(self.conversation_id, self.tenant, self.user, self.channel, time.time(),
                                          metadata=self.metadata), "conversation")

    def _put(self, rec: Record, kind: str) -> None:
        if self._redact is not None:
            rec = redact_record(rec, self._redact)
        if not self._submit(rec):
            self.stats.refused += 1
        self._on_record(kind)

    def _wall(self, t: float | None) -> float | None:
        return None if t is None else t + self._offset

    # ------------------------------------------------------------------ bookkeeping helpers

    def _turn(self, turn_id: int) -> _Turn:
        turn = self._turns.get(turn_id)
        if turn is None:
            turn = self._turns[turn_id] = _Turn()
            while len(self._turns) > KEEP:
                self._turns.popitem(last=False)
        return turn

    def _reply(self, e: Any) -> _Reply:
        rep = self._replies.get(e.response_id)
        if rep is None:
            rep = self._replies[e.response_id] = _Reply(turn_id=getattr(e, "turn_id", None), started=e.t)
            while len(self._replies) > KEEP:
                self._replies.popitem(last=False)
        return rep

    # ------------------------------------------------------------------ the listener

    def __call__(self, e: E.Event) -> None:
        try:
            self._on(e)
        except Exception:  # a recording bug must never reach the session's publish()
            log.exception("recording: %s of conversation %s not recorded", e.type, self.conversation_id)

    def _on(self, e: E.Event) -> None:
        match e:
            case E.AgentAudio(response_id=rid, frame=frame):  # stream: keep it to two additions
                rep = self._replies.get(rid)
                if rep is not None:
                    rep.audio_samples += len(frame)
                    rep.audio_rate = frame.rate
            case E.UserSpeechStarted(turn_id=turn_id):
                self._turn(turn_id).started = e.t
            case E.UserSpeechStopped(turn_id=turn_id):
                self._turn(turn_id).stopped = e.t
            case E.UserTurnEnded(turn_id=turn_id):
                self._turn(turn_id).ended = e.t
            case E.SttStarted(turn_id=turn_id):
                self._turn(turn_id).stt_started = e.t
            case E.SttFinished(turn_id=turn_id):
                self._turn(turn_id).stt_finished = e.t
            case E.UserTranscript(final=True):
                self._user_turn(e)
            case E.UserTranscriptionFailed(text=text) if text.strip():
                # the item's typed parts still reached the LLM: they are stored (its audio unheard)
                self._user_turn(E.UserTranscript(t=e.t, item_id=e.item_id, text=text, language="", final=True))
            case E.AgentResponseStarted():
                self._reply(e)
            case E.LlmFirstToken(response_id=rid) if rid in self._replies:
                rep = self._replies[rid]
                rep.first_token = rep.first_token or e.t
            case E.TtsFirstAudio(response_id=rid) if rid in self._replies:
                rep = self._replies[rid]
                rep.tts_first_audio = rep.tts_first_audio or e.t
            case E.AgentAudioStarted(response_id=rid) if rid in self._replies:
                rep = self._replies[rid]
                rep.audio_started = rep.audio_started or e.t
            case E.AgentToolCall(server_label=label, mcp_item_id=mcp_id) if label is not None:
                self._mcp_calls[e.call_id] = (mcp_id or new_id("mcp"), label, e.arguments, e.response_id)
                while len(self._mcp_calls) > KEEP:
                    self._mcp_calls.popitem(last=False)
            case E.AgentToolResult(call_id=cid) if cid in self._mcp_calls:
                item_id, label, arguments, rid = self._mcp_calls.pop(cid)
                self.stats.tool_calls += 1
                self.stats.tool_results += 1
                self._put(MCPCallRecord(self.conversation_id, item_id, cid, label, e.name, arguments, e.output,
                                        self._wall(e.t) or time.time(), ok=e.ok, response_id=rid), "tool_call")
            case E.AgentToolCall():
                self._tool_call(e.call_id, e.name, e.arguments, e.t, e.response_id, new_id("item"))
            case E.AgentFunctionCall():
                self._tool_call(e.call_id, e.name, e.arguments, e.t, e.response_id, e.call_item_id)
            case E.AgentToolResult():
                self.stats.tool_results += 1
                self._put(ToolResultRecord(self.conversation_id, new_id("item"), e.call_id, e.output,
                                           self._wall(e.t) or time.time(), name=e.name), "tool_result")
            case E.AgentResponseDone():
                self._reply_done(e)
            case E.AgentReplyHeard(item_id=item_id, part_item_id=part):
                if part != item_id:  # the client truncated a later item: the reply is filed under its first
                    self._later_parts[part] = item_id
                    while len(self._later_parts) > KEEP:
                        self._later_parts.popitem(last=False)
                self._heard(item_id, e.text)
            case E.GuardrailInputRemoved(item_ids=ids):
                for item_id in ids:
                    self._removed_users[item_id] = True
                    while len(self._removed_users) > KEEP:
                        self._removed_users.popitem(last=False)
                    if item_id in self._recorded_users:
                        self._put(UserTurnRemoved(self.conversation_id, item_id, BLOCKED_TEXT,
                                                  self._wall(e.t) or time.time()), "user_turn_removed")

    def _user_turn(self, e: E.UserTranscript) -> None:
        if not e.text.strip() or e.item_id in self._recorded_users:
            return  # an idle timeout's empty turn, a noise; or a repeat
        self._recorded_users.add(e.item_id)
        if len(self._recorded_users) > 4 * KEEP:
            self._recorded_users.clear()
            self._recorded_users.add(e.item_id)
        turn = self._turns.get(e.turn_id) if e.turn_id is not None else None
        latency: dict[str, float] = {}
        started = None
        if turn is not None:
            started = self._wall(turn.started)
            if turn.stt_started is not None and turn.stt_finished is not None:
                latency["stt_ms"] = _ms(turn.stt_finished - turn.stt_started)
            if turn.stopped is not None and turn.ended is not None:
                latency["turn_end_ms"] = _ms(turn.ended - turn.stopped)
        usage = None
        if not e.typed and e.audio_s:
            usage = TurnUsage(stt_model=self.models.stt, stt_seconds=float(e.audio_s))
        self.stats.user_turns += 1
        text = BLOCKED_TEXT if e.item_id in self._removed_users else e.text
        self._put(UserTurn(self.conversation_id, e.item_id, text, self._wall(e.t) or time.time(),
                           language=e.language or None, started_at=started, audio=not e.typed,
                           latency=latency or None, usage=usage), "user_turn")

    def _tool_call(self, call_id: str, name: str, arguments: str, t: float, response_id: str, item_id: str) -> None:
        self.stats.tool_calls += 1
        self._put(ToolCallRecord(self.conversation_id, item_id, call_id, name, arguments,
                                 self._wall(t) or time.time(), response_id=response_id), "tool_call")

    def _reply_done(self, e: E.AgentResponseDone) -> None:
        rep = self._replies.pop(e.response_id, None)
        progressed = self._progressed.pop(e.item_id, None) is not None
        truncated = self._truncated_early.pop(e.item_id, None)
        if not e.in_conversation or e.item_id in self._recorded_replies:
            return
        interrupted = e.interrupted or truncated is not None
        heard = truncated if truncated is not None else e.text if e.interrupted else None
        self._recorded_replies[e.item_id] = heard
        while len(self._recorded_replies) > KEEP:
            self._recorded_replies.popitem(last=False)
        usage = self._usage(e, rep)
        at = self._wall(e.t) or time.time()
        if not e.generated_text.strip():
            if progressed:  # (cannot be: something was heard of it) keep no in-progress row behind
                self._put(AgentReply(self.conversation_id, e.item_id, "", at, heard_text="", interrupted=True,
                                     status="incomplete", replaces_progress=True), "reply")
            if usage.total_tokens or usage.tts_seconds:  # tokens spent on a reply that said nothing
                self._put(UsageRecord(self.conversation_id, usage, at, kind="reply"), "usage")
            return
        latency = self._stages(rep)
        started = self._wall(rep.audio_started or rep.started) if rep is not None else None
        self.stats.replies += 1
        self.stats.interrupted += int(interrupted)
        status = e.status if e.status in ("completed", "cancelled", "failed") else "completed"
        self._put(AgentReply(self.conversation_id, e.item_id, e.generated_text, at, heard_text=heard,
                             interrupted=interrupted, status="incomplete" if interrupted else status,
                             response_id=e.response_id, language=e.language or None, started_at=started,
                             audio="audio" in e.modalities, latency=latency or None, usage=usage,
                             replaces_progress=progressed), "reply")

    def _stages(self, rep: _Reply | None) -> dict[str, float]:
        if rep is None:
            return {}
        turn = self._turns.get(rep.turn_id) if rep.turn_id is not None else None
        # from the end of the user's speech when the reply answers a spoken turn, else from its start
        base = turn.stopped if turn is not None and turn.stopped is not None else rep.started
        out: dict[str, float] = {}
        if turn is not None and turn.stt_started is not None and turn.stt_finished is not None:
            out["stt_ms"] = _ms(turn.stt_finished - turn.stt_started)
        for name, t in (("response_start_ms", rep.started), ("llm_first_token_ms", rep.first_token),
                        ("tts_first_audio_ms", rep.tts_first_audio), ("first_audio_ms", rep.audio_started)):
            if t is not None:
                out[name] = _ms(t - base)
        return out

    def _usage(self, e: E.AgentResponseDone, rep: _Reply | None) -> TurnUsage:
        tts_s = rep.audio_samples / rep.audio_rate if rep is not None and rep.audio_rate else 0.0
        audio = "audio" in e.modalities
        if e.upstream_usage is not None:  # the realtime brain: the upstream's own count, audio tokens too
            return e.upstream_usage
        u = e.usage
        return TurnUsage(llm_model=self.models.llm, tts_model=self.models.tts if audio else None,
                         input_tokens=u.input_tokens, cached_tokens=u.cached_tokens, output_tokens=u.output_tokens,
                         tts_characters=len(e.generated_text) if audio else 0, tts_seconds=round(tts_s, 3))

    # ------------------------------------------------------------------ what transports report

    def truncated(self, item_id: str, heard_text: str) -> None:
        """A client reported that it played only part of a reply (`heard_text` of it)."""
        if item_id in self._later_parts:  # (`agent.reply_heard` told the whole reply's heard text)
            return
        self._heard(item_id, heard_text)

    def _heard(self, item_id: str, heard_text: str) -> None:
        if item_id in self._recorded_replies:
            if self._recorded_replies[item_id] != heard_text:  # (a cut in progress recorded it so already)
                self._recorded_replies[item_id] = heard_text
                self._put(ReplyHeard(self.conversation_id, item_id, heard_text, time.time()), "heard")
            return
        # not recorded yet: its record, when it comes, carries this (replies in flight are one or two)
        self._truncated_early[item_id] = heard_text
        while len(self._truncated_early) > KEEP:
            self._truncated_early.popitem(last=False)

    def item_deleted(self, item_id: str) -> None:
        """A client deleted an item (`conversation.item.delete`): out of the store too."""
        self._recorded_replies.pop(item_id, None)
        self._truncated_early.pop(item_id, None)
        self._recorded_users.discard(item_id)
        self._put(ItemDeleted(self.conversation_id, item_id, time.time()), "deleted")

    def item_added(self, item: Item) -> None:
        """An item a client put in the conversation (`conversation.item.create`). Typed user
        text arrives as a `user.transcript` event and is recorded there."""
        now = time.time()
        if item.type == "function_call":
            self._tool_call(item.call_id or item.id, item.name or "", item.arguments or "{}", now - self._offset,
                            "", item.id)
        elif item.type == "function_call_output":
            self.stats.tool_results += 1
            self._put(ToolResultRecord(self.conversation_id, item.id, item.call_id or "", item.output or "", now,
                                       name=item.name), "tool_result")
        elif item.type == "message" and item.role == "assistant" and item.text.strip():
            self._recorded_replies[item.id] = None
            self._put(AgentReply(self.conversation_id, item.id, item.text, now, audio=item.audio), "reply")
        elif item.type == "message" and item.role == "user" and item.audio and item.text.strip():
            self._recorded_users.add(item.id)
            self._put(UserTurn(self.conversation_id, item.id, item.text, now, language=item.language,
                               audio=True), "user_turn")

    def progress(self, response_id: str, item_id: str, heard_text: str) -> None:
        """A reply still playing: what was heard of it so far (only when that changed)."""
        if not heard_text.strip() or item_id in self._recorded_replies or self._progressed.get(item_id) == heard_text \
                or item_id in self._truncated_early:
            return
        if item_id not in self._progressed and len(self._progressed) >= KEEP:
            return  # (replies in flight are one or two; never let this grow)
        self._progressed[item_id] = heard_text
        self._put(ReplyProgress(self.conversation_id, item_id, heard_text, time.time(), response_id=response_id),
                  "progress")

    def summary(self, summary: str, upto_item_id: str | None) -> None:
        """The context window folded old turns into a running summary (summarize strategy)."""
        self._put(SummaryUpdated(self.conversation_id, summary, upto_item_id, time.time()), "summary")

    def summary_usage(self, usage: TurnUsage) -> None:
        self._put(UsageRecord(self.conversation_id, usage, time.time(), kind="summary"), "usage")


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 1)
