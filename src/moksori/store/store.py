"""The store: migrations, the background writer, and the read side (history, the Conversations
API's queries, usage, erasure, retention). Every read is scoped to a tenant: a conversation or
user of another tenant is simply not found."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from moksori.accounting import PriceTable, TurnUsage
from moksori.store import db as dbmod
from moksori.store import edits, identity, orphans
from moksori.store.models import conversations, items, usage, users
from moksori.store.records import Record
from moksori.store.spool import Spool, database_key
from moksori.store.writer import StoreWriter
from moksori.text.tokens import TokenCounter, estimate_tokens

log = logging.getLogger("moksori.store")

Order = Literal["asc", "desc"]
ITEM_OVERHEAD_TOKENS = 4  # role markers and separators per message in a chat template


class UnknownCursor(LookupError):
    """A list's `after` cursor names nothing in that list (deleted, or never in it). Answering with
    the first page instead would send an auto-paging client round the list forever."""

    def __init__(self, after: str) -> None:
        super().__init__(after)
        self.after = after


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    id: str
    tenant: str
    user: str | None
    channel: str
    created_at: float
    updated_at: float
    metadata: dict[str, Any] | None
    summary: str | None = None


@dataclass(frozen=True, slots=True)
class StoredItem:
    seq: int
    id: str
    conversation_id: str
    type: Literal["message", "function_call", "function_call_output", "mcp_call"]
    role: Literal["user", "assistant", "system"] | None
    status: str
    text: str
    heard_text: str | None
    interrupted: bool
    audio: bool
    language: str | None
    call_id: str | None
    name: str | None
    arguments: str | None
    output: str | None
    response_id: str | None
    created_at: float
    started_at: float | None
    latency: dict[str, Any] | None
    server_label: str | None = None  # mcp_call: the MCP server

    @property
    def spoken_text(self) -> str:
        """What the other side actually got: the heard part of an interrupted reply."""
        return self.heard_text if self.heard_text is not None else self.text

    def content_for_budget(self) -> str:
        if self.type == "function_call":
            return f"{self.name or ''}({self.arguments or ''})"
        if self.type == "function_call_output":
            return self.output or ""
        if self.type == "mcp_call":
            return f"{self.name or ''}({self.arguments or ''}) {self.output or ''}"
        return self.spoken_text


@dataclass(frozen=True, slots=True)
class History:
    """A user's most recent items, oldest first, within a token budget.

    `items` never starts inside a tool exchange; when older items exist that did not fit
    (`truncated`), it starts at a user message, and `summary` is the newest running summary of
    the user's conversations (None if there is none). A message longer than the whole budget
    (`skipped` of them) is left out on its own: the items before and after it still count."""

    items: list[StoredItem] = field(default_factory=list)
    summary: str | None = None
    tokens: int = 0
    truncated: bool = False
    last_conversation_id: str | None = None
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class UsageBucket:
    user: str | None
    day: str
    turns: int
    usage: TurnUsage
    cost_usd: float


def _item(row: Any) -> StoredItem:
    return StoredItem(seq=row.seq, id=row.id, conversation_id=row.conversation_id, type=row.type, role=row.role,
                      status=row.status, text=row.text or "", heard_text=row.heard_text,
                      interrupted=bool(row.interrupted), audio=bool(row.audio), language=row.language,
                      call_id=row.call_id, name=row.name, arguments=row.arguments, output=row.output,
                      response_id=row.response_id, created_at=row.created_at, started_at=row.started_at,
                      latency=row.latency, server_label=row.server_label)


_USAGE_SUMS = ("input_tokens", "cached_tokens", "output_tokens", "input_audio_tokens", "cached_audio_tokens",
               "output_audio_tokens", "stt_seconds", "tts_characters", "tts_seconds")


def _summed_usage(row: Any) -> TurnUsage:
    """A row of `_USAGE_SUMS` sums (NULL when nothing was summed) as a TurnUsage."""
    sums: dict[str, Any] = {k: (float if k.endswith("seconds") else int)(getattr(row, k) or 0) for k in _USAGE_SUMS}
    return TurnUsage(**sums)


class Store:
    def __init__(self, url: str, *, hash_secret: bytes, prices: PriceTable | None = None,
                 max_pending: int = 50_000, flush_interval_s: float = 0.05, retention_days: int = 0,
                 spool_dir: Path | None = None) -> None:
        self.url = dbmod.normalise_url(url)
        self.prices = prices or PriceTable()
        self.retention_days = retention_days
        self._secret = hash_secret
        self.writer = StoreWriter(self.url, max_pending=max_pending, flush_interval_s=flush_interval_s,
                                  pricer=lambda u: self.prices.cost(u).usd,
                                  spool=Spool(spool_dir, database_key(self.url)) if spool_dir is not None else None)
        self._engines: dict[asyncio.AbstractEventLoop, AsyncEngine] = {}
        self.started = False  # migrated and writing; before that, `submit` only queues
        self._local: orphans.LocalOwner | None = None
        self.finalized = 0  # replies left in progress by dead processes, finalized here

    def __repr__(self) -> str:
        return f"Store({dbmod.redacted(self.url)!r})"

    @classmethod
    def from_settings(cls, settings) -> Store | None:  # noqa: ANN001 - moksori.settings.Settings
        """The configured store, or None when storage is off (`MOKSORI_STORE_URL=none`)."""
        from moksori.settings import store_url

        url = store_url(settings)
        if url is None:
            return None
        s = settings.store
        secret = identity.hash_secret(s.hash_secret.get_secret_value() if s.hash_secret else None, settings.data_dir)
        return cls(url, hash_secret=secret, prices=PriceTable.load(settings.prices_file),
                   max_pending=s.max_pending, flush_interval_s=s.flush_interval_ms / 1000,
                   retention_days=s.retention_days, spool_dir=Path(settings.data_dir).expanduser() / "store-spool")

    # ------------------------------------------------------------------ who writes

    @property
    def owner(self) -> str | None:
        """This process, as stamped on the replies it has in progress (None: not stamped)."""
        return self.writer.owner

    def set_owner(self, owner: str) -> None:
        """A cluster worker: its worker id (the registry tells the others when it is gone)."""
        self.writer.owner = owner[:160]

    def claim_local_owner(self, data_dir: Path) -> str:
        """A server on its own: `<instance>/<boot>`; at start, the replies earlier runs of this
        instance left in progress are finalized (`orphans.py`)."""
        if self._local is None:
            self._local = orphans.local_owner(data_dir)
            self.writer.owner = self._local.owner
        return self._local.owner

    async def finalize_orphans(self, live: set[str]) -> int:
        """Cluster mode: finalize the replies in progress of owners not in `live` (the registry's
        workers), and the unowned ones long untouched. Idempotent."""
        engine = self._engine()
        dead = orphans.dead_owners(await orphans.in_progress_owners(engine), live | {self.owner or ""})
        n = await orphans.finalize_owners(engine, dead)
        self.finalized += n
        return n

    async def finalize_earlier_runs(self) -> int:
        """One server: finalize the replies in progress that earlier runs of it left (see
        `claim_local_owner`). Idempotent; nothing without an exclusive instance."""
        if self._local is None or not self._local.exclusive:
            return 0
        engine = self._engine()
        n = await orphans.finalize_owners(engine, orphans.earlier_runs(await orphans.in_progress_owners(engine),
                                                                      self._local))
        self.finalized += n
        return n

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, migrate: bool = True) -> Store:
        """Migrate, write (records an earlier run spooled first), and finalize the replies an
        earlier run of this server left in progress. Raises if the database does not answer
        (records keep queueing; call it again)."""
        self.writer.load_spool()
        if migrate:
            from moksori.store.migrate import upgrade

            await upgrade(self.url)
        await asyncio.to_thread(self.writer.start)
        self.started = True
        try:
            await self.finalize_earlier_runs()
        except Exception as e:  # noqa: BLE001 - the store is up; the next start tries again
            log.warning("store: replies left in progress by an earlier run not finalized: %s: %s",
                        type(e).__name__, " ".join(str(e).split())[:200])
        return self

    async def close(self, timeout_s: float = 10.0) -> None:
        await self.writer.aclose(timeout_s)
        if self._local is not None:
            self._local.close()
        engine = self._engines.pop(asyncio.get_running_loop(), None)
        if engine is not None:
            await engine.dispose()

    async def close_reads(self) -> None:
        """Dispose of this event loop's read connections (a loop that ends before the store does)."""
        engine = self._engines.pop(asyncio.get_running_loop(), None)
        if engine is not None:
            await engine.dispose()

    def submit(self, record: Record) -> bool:
        """Hand a record to the writer (never blocks; see `StoreWriter.submit`). Before `start()`
        (a database still down when the server started) records queue, in order, up to
        `max_pending`, and are written once `start()` has migrated the database."""
        return self.writer.submit(record)

    async def flush(self, timeout_s: float | None = 10.0) -> bool:
        return await self.writer.flush(timeout_s)

    def write_now(self) -> None:
        """Write what is queued now, without waiting for the batch to gather (never blocks)."""
        self.writer.write_now()

    def phone_user_id(self, number: str) -> str:
        return identity.phone_user_id(number, self._secret)

    def _engine(self) -> AsyncEngine:
        loop = asyncio.get_running_loop()
        engine = self._engines.get(loop)
        if engine is None:
            engine = self._engines[loop] = dbmod.make_engine(self.url)
        return engine

    # ------------------------------------------------------------------ users

    async def _user_pk(self, conn: AsyncConnection, tenant: str, user: str) -> int | None:
        return (await conn.execute(select(users.c.pk).where(users.c.tenant_id == tenant,
                                                            users.c.external_id == user))).scalar()

    # ------------------------------------------------------------------ history

    async def load_history(self, tenant: str, user: str, *, max_tokens: int, count: TokenCounter = estimate_tokens,
                           max_items: int = 2000) -> History:
        """The user's latest items across their conversations, oldest first, within `max_tokens`
        (each item costs `count(text)` plus a small per-message overhead)."""
        async with self._engine().connect() as conn:
            pk = await self._user_pk(conn, tenant, user)
            if pk is None:
                return History()
            summary_row = (await conn.execute(
                select(conversations.c.summary).where(conversations.c.tenant_id == tenant,
                                                      conversations.c.user_pk == pk,
                                                      conversations.c.summary.is_not(None))
                .order_by(conversations.c.updated_at.desc()).limit(1))).first()
            last_conv = (await conn.execute(
                select(conversations.c.id).where(conversations.c.tenant_id == tenant, conversations.c.user_pk == pk)
                .order_by(conversations.c.updated_at.desc()).limit(1))).scalar()
            summary = summary_row.summary if summary_row is not None else None
            summary_cost = count(summary) + ITEM_OVERHEAD_TOKENS if summary else 0
            budget = max_tokens - summary_cost if summary_cost < max_tokens else max_tokens
            picked: list[StoredItem] = []
            used = skipped = 0
            truncated = False
            cursor: int | None = None
            page = 200
            while not truncated:
                q = (select(items).join(conversations, conversations.c.id == items.c.conversation_id)
                     .where(conversations.c.tenant_id == tenant, conversations.c.user_pk == pk)
                     .order_by(items.c.seq.desc()).limit(page))
                if cursor is not None:
                    q = q.where(items.c.seq < cursor)
                rows = (await conn.execute(q)).all()
                if not rows:
                    break
                for row in rows:
                    cursor = row.seq
                    it = _item(row)
                    content = it.content_for_budget()
                    if it.type == "message" and not content.strip():
                        continue  # a reply interrupted before a word was heard
                    cost = count(content) + ITEM_OVERHEAD_TOKENS
                    if cost > budget and it.type in ("message", "mcp_call"):
                        # one item that could never fit (a pasted or seeded document) is left
                        # out alone, not with everything older; a tool call or result is not
                        # (its other half would be left without it): the walk stops there
                        skipped += 1
                        continue
                    if used + cost > budget or len(picked) >= max_items:
                        truncated = True
                        break
                    picked.append(it)
                    used += cost
                if len(rows) < page:
                    break
        picked.reverse()
        # never start inside a tool exchange; after a cut, start at a user message
        while picked and (picked[0].type not in ("message", "mcp_call") or (truncated and picked[0].role != "user")):
            used -= count(picked[0].content_for_budget()) + ITEM_OVERHEAD_TOKENS
            picked.pop(0)
        if not truncated:
            summary, summary_cost = None, 0
        if skipped:
            log.info("store: %d item(s) of a user's history longer than the whole history budget (%d tokens) "
                     "left out", skipped, budget)
        return History(items=picked, summary=summary, tokens=used + summary_cost, truncated=truncated,
                       last_conversation_id=last_conv, skipped=skipped)

    # ------------------------------------------------------------------ conversations

    async def get_conversation(self, tenant: str, conversation_id: str) -> ConversationInfo | None:
        async with self._engine().connect() as conn:
            return await self._read_conversation(conn, tenant, conversation_id)

    async def _read_conversation(self, conn: AsyncConnection, tenant: str, conversation_id: str
                                 ) -> ConversationInfo | None:
        row = (await conn.execute(
            select(conversations, users.c.external_id)
            .join(users, users.c.pk == conversations.c.user_pk, isouter=True)
            .where(conversations.c.id == conversation_id, conversations.c.tenant_id == tenant))).first()
        return None if row is None else self._conversation(row)

    @staticmethod
    def _conversation(row: Any) -> ConversationInfo:
        return ConversationInfo(id=row.id, tenant=row.tenant_id, user=row.external_id, channel=row.channel,
                                created_at=row.created_at, updated_at=row.updated_at, metadata=row.metadata,
                                summary=row.summary)

    async def list_conversations(self, tenant: str, user: str | None = None, *, limit: int = 20,
                                 after: str | None = None, order: Order = "desc"
                                 ) -> tuple[list[ConversationInfo], bool] | None:
        """Conversations of `tenant` (of one `user` if given), newest first by default.
        None if `user` is given and unknown. `after` is a conversation id of `tenant` (pagination):
        `UnknownCursor` when there is none such."""
        async with self._engine().connect() as conn:
            q = (select(conversations, users.c.external_id)
                 .join(users, users.c.pk == conversations.c.user_pk, isouter=True)
                 .where(conversations.c.tenant_id == tenant))
            if user is not None:
                pk = await self._user_pk(conn, tenant, user)
                if pk is None:
                    return None
                q = q.where(conversations.c.user_pk == pk)
            key = (conversations.c.created_at, conversations.c.id)
            if after is not None:
                ref = (await conn.execute(select(conversations.c.created_at).where(
                    conversations.c.id == after, conversations.c.tenant_id == tenant))).scalar()
                if ref is None:
                    raise UnknownCursor(after)
                from sqlalchemy import tuple_

                cmp = tuple_(*key) < tuple_(ref, after) if order == "desc" else tuple_(*key) > tuple_(ref, after)
                q = q.where(cmp)
            q = q.order_by(*(k.desc() if order == "desc" else k.asc() for k in key)).limit(limit + 1)
            rows = (await conn.execute(q)).all()
        return [self._conversation(r) for r in rows[:limit]], len(rows) > limit

    async def list_items(self, tenant: str, conversation_id: str, *, after: str | None = None, limit: int = 20,
                         order: Order = "desc") -> tuple[list[StoredItem], bool] | None:
        """A page of items; None if the conversation does not exist for this tenant, `UnknownCursor`
        if `after` is not an item of it."""
        async with self._engine().connect() as conn:
            owner = (await conn.execute(select(conversations.c.id).where(
                conversations.c.id == conversation_id, conversations.c.tenant_id == tenant))).scalar()
            if owner is None:
                return None
            q = select(items).where(items.c.conversation_id == conversation_id)
            if after is not None:
                ref = (await conn.execute(select(items.c.seq).where(items.c.conversation_id == conversation_id,
                                                                    items.c.id == after))).scalar()
                if ref is None:
                    raise UnknownCursor(after)
                q = q.where(items.c.seq < ref if order == "desc" else items.c.seq > ref)
            q = q.order_by(items.c.seq.desc() if order == "desc" else items.c.seq.asc()).limit(limit + 1)
            rows = (await conn.execute(q)).all()
        return [_item(r) for r in rows[:limit]], len(rows) > limit

    async def get_item(self, tenant: str, conversation_id: str, item_id: str) -> StoredItem | None:
        async with self._engine().connect() as conn:
            row = (await conn.execute(
                select(items).join(conversations, conversations.c.id == items.c.conversation_id)
                .where(items.c.conversation_id == conversation_id, items.c.id == item_id,
                       conversations.c.tenant_id == tenant))).first()
        return None if row is None else _item(row)

    async def delete_conversation(self, tenant: str, conversation_id: str) -> bool:
        async with self._engine().begin() as conn:
            found = (await conn.execute(select(conversations.c.id).where(
                conversations.c.id == conversation_id, conversations.c.tenant_id == tenant))).scalar()
            if found is None:
                return False
            await self._delete_conversations(conn, [conversation_id])
        return True

    # ------------------------------------------------------------------ a client's edits (`edits.py`)

    async def _writes_so_far(self) -> None:
        """Records of live sessions still queued in this process go first (up to 1 s), so that
        an edit lands after what was said before it, and can delete an item just recorded."""
        if self.started and not self.writer.failing:
            await self.flush(1.0)

    async def create_conversation(self, tenant: str, user: str | None, *, metadata: dict[str, str],
                                  messages: Sequence[edits.NewMessage]) -> ConversationInfo:
        """A new conversation (channel `api`) of `tenant` and `user` (None: anonymous) holding
        `messages`: the user's next session loads them as their history."""
        engine = self._engine()
        async with engine.begin() as conn:
            conversation_id = await edits.create_conversation(conn, engine.dialect.name, tenant=tenant, user=user,
                                                              metadata=metadata, messages=messages, at=time.time())
            conv = await self._read_conversation(conn, tenant, conversation_id)
        assert conv is not None
        return conv

    async def add_messages(self, tenant: str, conversation_id: str,
                           messages: Sequence[edits.NewMessage]) -> list[StoredItem] | None:
        """Append `messages` to a conversation of `tenant`: the stored items, in order; None if
        the conversation does not exist for this tenant."""
        await self._writes_so_far()
        async with self._engine().begin() as conn:
            ids = await edits.add_messages(conn, tenant=tenant, conversation_id=conversation_id, messages=messages,
                                           at=time.time())
            if ids is None:
                return None
            return await self._items_by_id(conn, conversation_id, ids)

    async def replace_metadata(self, tenant: str, conversation_id: str,
                               metadata: dict[str, str]) -> ConversationInfo | None:
        async with self._engine().begin() as conn:
            if not await edits.replace_metadata(conn, tenant=tenant, conversation_id=conversation_id,
                                                metadata=metadata, at=time.time()):
                return None
            return await self._read_conversation(conn, tenant, conversation_id)

    async def delete_item(self, tenant: str, conversation_id: str, item_id: str
                          ) -> tuple[ConversationInfo | None, bool]:
        """(the conversation, None if it is not the tenant's; whether the item was there and is gone)."""
        await self._writes_so_far()
        async with self._engine().begin() as conn:
            outcome = await edits.delete_item(conn, tenant=tenant, conversation_id=conversation_id, item_id=item_id,
                                              at=time.time())
            if outcome == "no_conversation":
                return None, False
            return await self._read_conversation(conn, tenant, conversation_id), outcome == "deleted"

    @staticmethod
    async def _items_by_id(conn: AsyncConnection, conversation_id: str, ids: Sequence[str]) -> list[StoredItem]:
        """These items of the conversation, oldest first."""
        q = select(items).where(items.c.conversation_id == conversation_id, items.c.id.in_(list(ids)))
        return [_item(r) for r in (await conn.execute(q.order_by(items.c.seq))).all()]

    @staticmethod
    async def _delete_conversations(conn: AsyncConnection, ids: Sequence[str], *, forget_user: bool = False) -> None:
        """Content goes; usage rows stay (for per-key totals) without the conversation link."""
        values: dict[str, Any] = {"conversation_id": None, "item_id": None}
        if forget_user:
            values["user_pk"] = None
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            await conn.execute(update(usage).where(usage.c.conversation_id.in_(chunk)).values(**values))
            await conn.execute(delete(items).where(items.c.conversation_id.in_(chunk)))
            await conn.execute(delete(conversations).where(conversations.c.id.in_(chunk)))

    async def erase_user(self, tenant: str, user: str) -> dict[str, int] | None:
        """Delete a user, their conversations and items; their usage stays, anonymous.
        None if the user is unknown to this tenant."""
        await self.flush(5.0)  # records still queued for this user would recreate them
        async with self._engine().begin() as conn:
            pk = await self._user_pk(conn, tenant, user)
            if pk is None:
                return None
            ids = list((await conn.execute(select(conversations.c.id).where(
                conversations.c.tenant_id == tenant, conversations.c.user_pk == pk))).scalars())
            n_items = (await conn.execute(select(func.count()).select_from(items).where(
                items.c.conversation_id.in_(ids)))).scalar() if ids else 0
            await self._delete_conversations(conn, ids, forget_user=True)
            await conn.execute(update(usage).where(usage.c.tenant_id == tenant, usage.c.user_pk == pk)
                               .values(user_pk=None))
            await conn.execute(delete(users).where(users.c.pk == pk))
        return {"conversations": len(ids), "items": int(n_items or 0)}

    async def purge(self, *, older_than_days: float | None = None, now: float | None = None) -> int:
        """Retention: delete conversations untouched for `older_than_days` (default: the
        configured retention; 0 keeps everything), and users left without any. Returns how many
        conversations went."""
        days = self.retention_days if older_than_days is None else older_than_days
        if not days or days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - days * 86400
        total = 0
        while True:
            async with self._engine().begin() as conn:
                ids = list((await conn.execute(select(conversations.c.id).where(
                    conversations.c.updated_at < cutoff).limit(500))).scalars())
                if not ids:
                    break
                await self._delete_conversations(conn, ids)
                total += len(ids)
        async with self._engine().begin() as conn:
            orphans = select(users.c.pk).where(users.c.last_seen_at < cutoff, ~select(conversations.c.id).where(
                conversations.c.user_pk == users.c.pk).exists())
            pks = list((await conn.execute(orphans)).scalars())
            for start in range(0, len(pks), 500):
                chunk = pks[start:start + 500]
                await conn.execute(update(usage).where(usage.c.user_pk.in_(chunk)).values(user_pk=None))
                await conn.execute(delete(users).where(users.c.pk.in_(chunk)))
        if total:
            log.info("store: retention removed %d conversations older than %g days", total, days)
        return total

    # ------------------------------------------------------------------ usage

    async def usage(self, tenant: str, *, user: str | None = None, day_from: str | None = None,
                    day_to: str | None = None) -> list[UsageBucket] | None:
        """Usage per user and UTC day (inclusive range of YYYY-MM-DD). None if `user` is unknown."""
        async with self._engine().connect() as conn:
            q = (select(users.c.external_id, usage.c.day, func.count().label("turns"),
                        func.sum(usage.c.cost_usd).label("cost_usd"),
                        *(func.sum(getattr(usage.c, k)).label(k) for k in _USAGE_SUMS))
                 .select_from(usage.outerjoin(users, users.c.pk == usage.c.user_pk))
                 .where(usage.c.tenant_id == tenant)
                 .group_by(users.c.external_id, usage.c.day)
                 .order_by(usage.c.day, users.c.external_id))
            if user is not None:
                pk = await self._user_pk(conn, tenant, user)
                if pk is None:
                    return None
                q = q.where(usage.c.user_pk == pk)
            if day_from:
                q = q.where(usage.c.day >= day_from)
            if day_to:
                q = q.where(usage.c.day <= day_to)
            rows = (await conn.execute(q)).all()
        return [UsageBucket(user=r.external_id, day=r.day, turns=int(r.turns), cost_usd=float(r.cost_usd or 0),
                            usage=_summed_usage(r))
                for r in rows]

    async def conversation_usage(self, tenant: str, conversation_id: str
                                 ) -> tuple[TurnUsage, float, list[dict[str, Any]]] | None:
        """(total, total cost, per-turn rows) of one conversation; None if not found."""
        async with self._engine().connect() as conn:
            owner = (await conn.execute(select(conversations.c.id).where(
                conversations.c.id == conversation_id, conversations.c.tenant_id == tenant))).scalar()
            if owner is None:
                return None
            rows = (await conn.execute(select(usage).where(usage.c.conversation_id == conversation_id)
                                       .order_by(usage.c.seq))).all()
        total, cost, turns = TurnUsage(), 0.0, []
        for r in rows:
            u = TurnUsage(llm_model=r.llm_model, stt_model=r.stt_model, tts_model=r.tts_model,
                          **{k: getattr(r, k) for k in _USAGE_SUMS})
            total, cost = total + u, cost + float(r.cost_usd)
            turns.append({"item_id": r.item_id, "kind": r.kind, "created_at": r.created_at,
                          "cost_usd": float(r.cost_usd), **u.to_dict()})
        return total, cost, turns
