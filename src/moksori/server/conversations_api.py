"""OpenAI-compatible Conversations API over the store, plus Moksori's extensions.

OpenAI-compatible (the official `openai` SDK reads and writes it unchanged):
  POST   /v1/conversations                        client.conversations.create(items=, metadata=)
  GET    /v1/conversations/{id}                   client.conversations.retrieve(id)
  POST   /v1/conversations/{id}                   client.conversations.update(id, metadata=)
  DELETE /v1/conversations/{id}                   client.conversations.delete(id)
  GET    /v1/conversations/{id}/items             client.conversations.items.list(id, after=, limit=, order=)
  POST   /v1/conversations/{id}/items             client.conversations.items.create(id, items=)
  GET    /v1/conversations/{id}/items/{item_id}   client.conversations.items.retrieve(item_id, conversation_id=id)
  DELETE /v1/conversations/{id}/items/{item_id}   client.conversations.items.delete(item_id, conversation_id=id)
Extensions:
  GET    /v1/conversations?user=ID                a user's conversations (all of the key's without `user`)
  GET    /v1/conversations/{id}/usage             per-turn usage and the conversation's total
  DELETE /v1/users/{id}                           erase a user: conversations, items; usage stays, anonymous
  GET    /v1/usage?user=&from=&to=                usage per user and UTC day (dates YYYY-MM-DD or unix seconds)

Everything is scoped to the caller's API key: another key's conversation is 404, never 403.
A list's `after` cursor that names nothing in the list (its item deleted since the previous page,
or another list's id) is 400 `invalid_value`, param `after`: never the first page again.
User items come back as `input_text`, agent items as `output_text` holding what the user heard
(an interrupted reply is `incomplete`; one still playing is `in_progress`, heard so far), tool calls as
`function_call` / `function_call_output`, and a call of an MCP server's tool (a `[[tools.mcp]]`
server's, or one a Realtime client named) as one `mcp_call` item.

A client seeds or edits a user's history with the writes: a conversation created with
`metadata.user` (or `?user=` / `X-Moksori-User`, as a session gives it) belongs to that user of
the key, and the user's next session loads its messages as it loads recorded turns (a session
already running does not see them). Bodies are checked by `conversation_requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from moksori.accounting import TurnUsage, format_cost
from moksori.errors import ProtocolError
from moksori.server import conversation_requests as req
from moksori.server.auth import extract_key, key_ok
from moksori.server.guard import BodyLimits
from moksori.server.recording_hooks import InvalidUser, user_of
from moksori.server.webhook_guard import read_body
from moksori.store import API_CHANNEL, ConversationInfo, Store, StoredItem, UnknownCursor, tenant_id, valid_user_id
from moksori.text.unencodable import encodable

T = TypeVar("T")

log = logging.getLogger("moksori.server")
router = APIRouter()

RETENTION_EVERY_S = 3600.0
START_RETRY_S = 2.0  # a store that could not start is tried again after this, doubling...
START_RETRY_MAX_S = 30.0  # ...up to this


MAX_BODY = BodyLimits.default  # the HTTP guard's cap on a JSON body (1 MiB): also the writes' cap


class _Fail(Exception):
    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.response = JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": param}},
                                     status)


def install(app: FastAPI, state: Any) -> None:
    """Mount the routes and open/close the store with the app (around its own lifespan)."""
    state.store = None  # the store that serves reads: None while storage is off or the database is down
    state.store_pending = None  # a store whose database was down at start-up: sessions queue into it
    state.store_error = None
    app.include_router(router)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:  # the inner lifespan's state (None or a mapping)
        tasks: list[asyncio.Task[None]] = []
        store: Store | None = None
        try:
            store = Store.from_settings(state.settings)
        except Exception as e:  # noqa: BLE001 - a bad URL must not take the voice server down
            _unavailable(state, e)
        if store is not None:
            _own(state, store)
            if await _try_start(state, store):
                _open(state, store, tasks)
            else:
                # the database is down at start-up: sessions record into the writer's queue
                # (bounded: MOKSORI_STORE_MAX_PENDING), written in order once it answers
                state.store_pending = store
                tasks.append(asyncio.create_task(_start_later(state, store, tasks), name="store-start"))
        try:
            async with inner(a) as st:
                yield st
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if state.store is not None:
                await state.store.close()
            elif state.store_pending is not None:
                await state.store_pending.close()  # says how many queued records were lost

    app.router.lifespan_context = lifespan


def _own(state: Any, store: Store) -> None:
    """Who this process is on the replies it has in progress: its cluster worker id, or (one
    server) an id of its data dir and this run, so that a later run can finalize what a crash of
    this one leaves in progress (see `moksori.store.orphans`)."""
    node = getattr(state, "cluster", None)
    if node is not None:
        store.set_owner(node.worker_id)
        return
    try:
        store.claim_local_owner(state.settings.data_dir)
    except OSError as e:
        log.warning("store: replies a crash leaves in progress cannot be finalized by the next start: %s", e)


def _unavailable(state: Any, e: BaseException) -> None:
    state.store_error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    log.error("store: unavailable, conversations are not being stored (%s)", state.store_error)


async def _try_start(state: Any, store: Store) -> bool:
    try:
        await store.start()
    except Exception as e:  # noqa: BLE001 - a dead database must not take the voice server down
        _unavailable(state, e)
        return False
    return True


def _open(state: Any, store: Store, tasks: list[asyncio.Task[None]]) -> None:
    """The store is up: sessions record from now on; the retention loop runs (when set)."""
    state.store, state.store_pending, state.store_error = store, None, None
    if store.retention_days > 0:
        tasks.append(asyncio.create_task(_retention_loop(store), name="store-retention"))


async def _start_later(state: Any, store: Store, tasks: list[asyncio.Task[None]]) -> None:
    """Retry a store that could not start (every START_RETRY_S, doubling up to START_RETRY_MAX_S)."""
    wait = START_RETRY_S
    while True:
        await asyncio.sleep(wait)
        try:
            await store.start()
        except Exception as e:  # noqa: BLE001 - still down: try again later
            log.warning("store: still unavailable (%s: %s); retrying in %.0f s", type(e).__name__,
                        " ".join(str(e).split())[:200], min(2 * wait, START_RETRY_MAX_S))
            wait = min(2 * wait, START_RETRY_MAX_S)
            continue
        log.warning("store: available again; writing %d records queued while it was away", store.writer.pending)
        _open(state, store, tasks)
        return


async def _retention_loop(store: Store) -> None:
    while True:
        try:
            await store.purge()
        except Exception as e:  # noqa: BLE001 - try again next time
            log.warning("store: retention purge failed: %s", e)
        await asyncio.sleep(RETENTION_EVERY_S)


# --------------------------------------------------------------------------- helpers


def _scope(request: Request) -> tuple[Store, str]:
    state = request.app.state.moksori
    headers = {k.lower(): v for k, v in request.headers.items()}
    key = extract_key(headers)
    if state.auth_required and not key_ok(key, state.keys):
        state.metrics.auth_failures += 1
        raise _Fail(401, "invalid or missing API key", "invalid_api_key")
    store: Store | None = getattr(state, "store", None)
    if store is None:
        if getattr(state, "store_error", None):
            raise _Fail(503, f"the conversation store is unavailable ({state.store_error})", "store_unavailable",
                        "server_error")
        raise _Fail(501, "conversation storage is off on this server (MOKSORI_STORE_URL=none)", "store_disabled")
    return store, tenant_id(key if state.auth_required else None)


def _limit(request: Request, default: int = 20) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise _Fail(400, f"limit must be an integer between 1 and 100, got {raw!r}", "invalid_value") from None
    if not 1 <= n <= 100:
        raise _Fail(400, f"limit must be between 1 and 100, got {n}", "invalid_value")
    return n


def _order(request: Request) -> Literal["asc", "desc"]:
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise _Fail(400, f"order must be asc or desc, got {order!r}", "invalid_value")
    return "asc" if order == "asc" else "desc"


def _user(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not valid_user_id(raw):
        raise _Fail(400, "user ids are 1-255 letters, digits and _ . @ : + - = /", "invalid_user")
    return raw


def _not_found(what: str, ident: str) -> _Fail:
    return _Fail(404, f"{what} with id '{ident}' not found", "not_found")


def _existing(what: str, ident: str) -> str:
    """`ident`, or a 404 without asking the database when no stored id can look like it."""
    if not encodable(ident):  # never stored (PostgreSQL would fail on it: a 503, not a miss)
        raise _not_found(what, ident.encode("utf-8", "backslashreplace").decode("utf-8"))
    return ident


def _after(request: Request) -> str | None:
    """The `after` cursor; a 400 when no stored id can look like it (see `text.unencodable`). One
    that names nothing in the list (its item deleted since the last page) is a 400 from `_guard`."""
    after = request.query_params.get("after")
    if after is not None and not encodable(after):
        raise _Fail(400, "after must be an id from the previous page", "invalid_value", param="after")
    return after


def _unknown_cursor(after: str) -> _Fail:
    """OpenAI does not document what an unknown `after` gets; not the first page again, which would
    send an auto-paging client (the SDK's `for item in page`) round the list forever."""
    return _Fail(400, f"after: '{after}' is not in this list (deleted since the previous page?); "
                      "start again from the first page", "invalid_value", param="after")


async def _guard(coro: Awaitable[T]) -> T:
    """A dead database is a 503 with the reason, never a traceback."""
    try:
        return await coro
    except _Fail:
        raise
    except UnknownCursor as e:
        raise _unknown_cursor(e.after) from None
    except Exception as e:  # noqa: BLE001 - any driver error: the store is down, a 503 says so
        log.warning("store: a query failed: %s: %s", type(e).__name__, e)
        raise _Fail(503, f"the conversation store is unavailable ({type(e).__name__})", "store_unavailable",
                    "server_error") from None


def _handled(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    import functools

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except _Fail as f:
            return f.response
        except ProtocolError as e:  # a request body refused by `conversation_requests`
            return _Fail(400, str(e), e.code, param=e.param).response

    return wrapper


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object (`conversation_requests.parse_body`); 413 past MAX_BODY."""
    raw = await read_body(request, MAX_BODY)
    if raw is None:  # too long (or the client left: then nobody reads this)
        raise _Fail(413, f"request body too large (limit {MAX_BODY} bytes)", "request_too_large")
    return req.parse_body(raw)


def _owner(request: Request, said: str | None) -> str | None:
    """The user a new conversation belongs to: `metadata.user`, or `?user=` / `X-Moksori-User`
    as a session names its user (both: they must agree)."""
    try:
        given = user_of(request.headers, request.query_params)
    except InvalidUser as e:
        raise _Fail(400, str(e), "invalid_user", param="user") from None
    if said is not None and given is not None and said != given:
        raise _Fail(400, f"metadata.user ({said!r}) and the request's user ({given!r}) differ", "invalid_value",
                    param="metadata.user")
    return said if said is not None else given


def _kept(what: str, said: str | None, current: str | None, param: str) -> None:
    """`metadata.user` / `metadata.channel` may be sent back as they are, never changed."""
    if said is not None and said != current:
        shown = "not set" if current is None else repr(current)
        raise _Fail(400, f"{param} is {shown} and cannot change: a conversation's {what}", "invalid_value",
                    param=param)


def _item_list(its: list[StoredItem]) -> dict[str, Any]:
    data = [item_object(i) for i in its]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else "",
            "last_id": data[-1]["id"] if data else "", "has_more": False}


def conversation_object(c: ConversationInfo) -> dict[str, Any]:
    """The OpenAI `conversation` object. Moksori's own facts (user, channel) ride in metadata."""
    meta: dict[str, str] = {str(k): str(v) for k, v in (c.metadata or {}).items()}
    meta.setdefault("channel", c.channel)
    if c.user is not None:
        meta.setdefault("user", c.user)
    return {"id": c.id, "object": "conversation", "created_at": int(c.created_at), "metadata": meta}


def item_object(it: StoredItem) -> dict[str, Any]:
    if it.type == "mcp_call":
        failed = it.status == "failed"
        error = {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": it.output or ""}]} \
            if failed else None
        return {"type": "mcp_call", "id": it.id, "server_label": it.server_label or "", "name": it.name or "",
                "arguments": it.arguments or "", "output": None if failed else it.output, "error": error,
                "approval_request_id": None, "status": "failed" if failed else "completed"}
    if it.type == "function_call":
        return {"type": "function_call", "id": it.id, "call_id": it.call_id or it.id, "name": it.name or "",
                "arguments": it.arguments or "", "status": "completed"}
    if it.type == "function_call_output":
        return {"type": "function_call_output", "id": it.id, "call_id": it.call_id or "", "output": it.output or "",
                "status": "completed"}
    if it.role == "assistant":
        part: dict[str, Any] = {"type": "output_text", "text": it.spoken_text, "annotations": []}
    else:
        part = {"type": "input_text", "text": it.text}
    status = it.status if it.status in ("completed", "incomplete", "in_progress") else "completed"
    return {"type": "message", "id": it.id, "status": status, "role": it.role or "user", "content": [part]}


def _usage_fields(u: TurnUsage) -> dict[str, Any]:
    return {"input_tokens": u.input_tokens, "cached_tokens": u.cached_tokens, "output_tokens": u.output_tokens,
            "input_audio_tokens": u.input_audio_tokens, "output_audio_tokens": u.output_audio_tokens,
            "total_tokens": u.total_tokens, "stt_seconds": round(u.stt_seconds, 3),
            "tts_characters": u.tts_characters, "tts_seconds": round(u.tts_seconds, 3)}


def _day(raw: str | None, name: str) -> str | None:
    if raw is None or raw == "":
        return None
    try:
        if raw.replace(".", "", 1).isdigit():
            return dt.datetime.fromtimestamp(float(raw), dt.UTC).strftime("%Y-%m-%d")
        return dt.date.fromisoformat(raw).isoformat()
    except (ValueError, OverflowError, OSError):
        raise _Fail(400, f"{name} must be a date (YYYY-MM-DD) or unix seconds, got {raw!r}", "invalid_value") from None


# --------------------------------------------------------------------------- routes


@router.get("/v1/conversations")
@_handled
async def list_conversations(request: Request) -> Any:
    store, tenant = _scope(request)
    user = _user(request.query_params.get("user"))
    found = await _guard(store.list_conversations(tenant, user, limit=_limit(request),
                                                  after=_after(request), order=_order(request)))
    if found is None:
        raise _not_found("User", user or "")
    convs, more = found
    data = [conversation_object(c) for c in convs]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else "",
            "last_id": data[-1]["id"] if data else "", "has_more": more}


@router.post("/v1/conversations")
@_handled
async def create_conversation(request: Request) -> Any:
    store, tenant = _scope(request)
    new = req.new_conversation(await _body(request))
    user = _owner(request, new.user)
    _kept("channel is set by the server", new.channel, API_CHANNEL, "metadata.channel")
    conv = await _guard(store.create_conversation(tenant, user, metadata=new.metadata, messages=new.messages))
    return conversation_object(conv)


@router.post("/v1/conversations/{conversation_id}")
@_handled
async def update_conversation(conversation_id: str, request: Request) -> Any:
    store, tenant = _scope(request)
    conversation_id = _existing("Conversation", conversation_id)
    change = req.metadata_update(await _body(request))
    conv = await _guard(store.get_conversation(tenant, conversation_id))
    if conv is None:
        raise _not_found("Conversation", conversation_id)
    _kept("user is set when it is created", change.user, conv.user, "metadata.user")
    _kept("channel is set by the server", change.channel, conv.channel, "metadata.channel")
    updated = await _guard(store.replace_metadata(tenant, conversation_id, change.metadata))
    if updated is None:  # deleted meanwhile
        raise _not_found("Conversation", conversation_id)
    return conversation_object(updated)


@router.post("/v1/conversations/{conversation_id}/items")
@_handled
async def create_items(conversation_id: str, request: Request) -> Any:
    store, tenant = _scope(request)
    conversation_id = _existing("Conversation", conversation_id)
    messages = req.new_items(await _body(request))
    added = await _guard(store.add_messages(tenant, conversation_id, messages))
    if added is None:
        raise _not_found("Conversation", conversation_id)
    return _item_list(added)


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
@_handled
async def delete_item(conversation_id: str, item_id: str, request: Request) -> Any:
    store, tenant = _scope(request)
    conversation_id, item_id = _existing("Conversation", conversation_id), _existing("Item", item_id)
    conv, deleted = await _guard(store.delete_item(tenant, conversation_id, item_id))
    if conv is None:
        raise _not_found("Conversation", conversation_id)
    if not deleted:
        raise _not_found("Item", item_id)
    return conversation_object(conv)


@router.get("/v1/conversations/{conversation_id}")
@_handled
async def retrieve_conversation(conversation_id: str, request: Request) -> Any:
    store, tenant = _scope(request)
    conversation_id = _existing("Conversation", conversation_id)
    conv = await _guard(store.get_conversation(tenant, conversation_id))
    if conv is None:
        raise _not_found("Conversation", conversation_id)
    return conversation_object(conv)


@router.delete("/v1/conversations/{conversation_id}")
@_handled
async def delete_conversation(conversation_id: str, request: Request) -> Any:
    store, tenant = _scope(request)
    conversation_id = _existing("Conversation", conversation_id)
    if not await _guard(store.delete_conversation(tenant, conversation_id)):
        raise _not_found("Conversation", conversation_id)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


@router.get("/v1/conversations/{conversation_id}/items")
@_handled
async def list_items(conversation_id: str, request: Request) -> Any:
    store, tenant = _scope(request)
    conversation_id = _existing("Conversation", conversation_id)
    found = await _guard(store.list_items(tenant, conversation_id, after=_after(request),
                                          limit=_limit(request), order=_order(request)))
    if found is None:
        raise _not_found("Conversation", conversation_id)
    its, more = found
    data = [item_object(i) for i in its]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else "",
            "last_id": data[-1]["id"] if data else "", "has_more": more}


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
@_handled
async def retrieve_item(conversation_id: str, item_id: str, request: Request) -> Any:
    store, tenant = _scope(request)
    conversation_id, item_id = _existing("Conversation", conversation_id), _existing("Item", item_id)
    it = await _guard(store.get_item(tenant, conversation_id, item_id))
    if it is None:
        raise _not_found("Item", item_id)
    return item_object(it)


@router.get("/v1/conversations/{conversation_id}/usage")
@_handled
async def conversation_usage(conversation_id: str, request: Request) -> Any:
    store, tenant = _scope(request)
    conversation_id = _existing("Conversation", conversation_id)
    found = await _guard(store.conversation_usage(tenant, conversation_id))
    if found is None:
        raise _not_found("Conversation", conversation_id)
    total, cost, turns = found
    return {"object": "conversation.usage", "conversation_id": conversation_id,
            "total": {**_usage_fields(total), "cost_usd": round(cost, 8), "cost": format_cost(cost)},
            "turns": [{"item_id": t["item_id"], "kind": t["kind"], "created_at": int(t["created_at"]),
                       "cost_usd": round(t["cost_usd"], 8), **_usage_fields(TurnUsage.from_dict(t))}
                      for t in turns]}


@router.delete("/v1/users/{user_id:path}")  # user ids may hold "/" (see `valid_user_id`)
@_handled
async def erase_user(user_id: str, request: Request) -> Any:
    store, tenant = _scope(request)
    _user(user_id)
    counts = await _guard(store.erase_user(tenant, user_id))
    if counts is None:
        raise _not_found("User", user_id)
    return {"id": user_id, "object": "user.deleted", "deleted": True, **counts}


@router.get("/v1/usage")
@_handled
async def usage(request: Request) -> Any:
    store, tenant = _scope(request)
    q = request.query_params
    user = _user(q.get("user"))
    day_from, day_to = _day(q.get("from"), "from"), _day(q.get("to"), "to")
    buckets = await _guard(store.usage(tenant, user=user, day_from=day_from, day_to=day_to))
    if buckets is None:
        raise _not_found("User", user or "")
    total, cost, turns = TurnUsage(), 0.0, 0
    data = []
    for b in buckets:
        total, cost, turns = total + b.usage, cost + b.cost_usd, turns + b.turns
        data.append({"object": "usage.bucket", "user": b.user, "day": b.day, "turns": b.turns,
                     **_usage_fields(b.usage), "cost_usd": round(b.cost_usd, 8)})
    return {"object": "list", "data": data, "from": day_from, "to": day_to,
            "total": {"turns": turns, **_usage_fields(total), "cost_usd": round(cost, 8), "cost": format_cost(cost)}}
