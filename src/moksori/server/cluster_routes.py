"""What the server shares with the other workers, and the routes that read it.

    GET  /v1/cluster                              any valid key -> {"workers": [{"id", "pid", "sessions", "draining", ...}]}
    GET  /v1/conversations/{id}/events            Server-Sent Events: the live events of a conversation,
                                                  on any worker (only the key that owns it; ?api-key= for EventSource);
                                                  a call's also by its call id (carrier's, or rtc_...)
    POST /v1/telephony/calls/{call_id}/hangup     hang up a phone call, whichever worker holds it
    POST /v1/telephony/calls/{call_id}/transfer   {"to": "+15551234567"}: transfer it (a MOKSORI_TELEPHONY_TRANSFER_NUMBERS one)

One process (no `MOKSORI_REDIS_URL`): the same routes over this process alone (live events in
memory, /v1/cluster lists this worker). Cluster mode: `moksori.cluster.ClusterNode` joins the
registry when the app starts and leaves when it stops, ephemeral keys move to Redis, and
sessions are admitted against the limits of the whole cluster.

Hooks for the session routes (each a no-op beyond the local bookkeeping in one process):

    ticket = await admit(state, owner)            # a SessionTicket, or a Refusal (refuse_ws / 429)
    ticket.opened("realtime", session_id, session)  # registry + live events from the session's bus
    ticket.closed("client_closed")                # registry, lease, conversation.ended
    ticket = track(state, "phone", call_id, session, conversation_id=session.id)  # no per-key limits
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse

from moksori.cluster import (Admitted, ClusterNode, Held, MemoryLive, RedisUnavailable, Refusal, RpcError,
                             check_cluster_settings, cluster_enabled)
from moksori.cluster.limits import Lease
from moksori.cluster.reaper import reap_forever
from moksori.server.auth import extract_key, key_label, key_ok
from moksori.server.live_events import publish_session
from moksori.text.unencodable import json_text
from moksori.server.load import DRAINING
from moksori.server.load import Refusal as LocalRefusal
from moksori.server.webhook_guard import read_body

log = logging.getLogger("moksori.cluster")

MAX_BODY = 16 * 1024
DRAIN_POLL_S = 0.25  # a live-events stream looks this often whether its worker began to drain
DRAINING_COMMENT = ": this worker is draining; reconnect to follow on (another worker)\n\n"
ANY_KEY = "*"  # owner of phone calls: they belong to the server, so any valid key may follow them
RPC_STATUS = {"call_not_found": 404, "invalid_request": 400, "not_allowed": 403, "worker_unreachable": 503,
              "worker_timeout": 504, "unknown_method": 501, "call_control_failed": 502}


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error",
           headers: dict[str, str] | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": param}}, status,
                        headers=headers)


def _unavailable(e: Exception) -> JSONResponse:
    return _error(503, f"the cluster's shared state is unreachable ({e})", "cluster_unavailable", "server_error",
                  {"Retry-After": "5"})


# --------------------------------------------------------------------------- session hooks


class SessionTicket:
    """One session's place in the cluster: its limit lease, its registry entry, its live events."""

    def __init__(self, state: Any, owner: str, lease: Lease | None = None) -> None:
        self.state = state
        self.owner = owner
        self.lease = lease
        self.kind: str | None = None
        self.ident: str | None = None
        self.conversation_id: str | None = None

    def opened(self, kind: str, ident: str, session: Any | None = None, *, conversation_id: str | None = None) -> None:
        """The session exists: register it, and publish its live events under `conversation_id`
        (default: the session id). A call's live events can also be followed by its call id."""
        self.kind, self.ident = kind, ident
        cid = (conversation_id or ident) if session is not None else None
        node: ClusterNode | None = self.state.cluster
        if node is not None:
            node.opened(Held(kind, ident, self.owner, time.time(), cid if cid != ident else None))
        if session is not None and cid is not None:
            self.conversation_id = cid
            if cid != ident:
                _aliases(self.state)[ident] = cid
            self.state.live.begin(cid, self.owner, channel=kind)
            publish_session(session, self.state.live, cid)

    def closed(self, reason: str = "closed") -> None:
        """Idempotent."""
        node: ClusterNode | None = self.state.cluster
        cid = self.conversation_id
        if cid is not None:
            self.state.live.end(cid, reason)
            self.conversation_id = None
            if self.ident is not None and _aliases(self.state).get(self.ident) == cid:
                del _aliases(self.state)[self.ident]
        if node is not None:
            if self.kind is not None and self.ident is not None:
                node.closed(self.kind, self.ident, self.lease)
            elif self.lease is not None:
                node.release(self.lease)
        self.kind = self.ident = None
        self.lease = None


def _aliases(state: Any) -> dict[str, str]:
    """This worker's calls whose live events go under another id: call id -> conversation id."""
    aliases = getattr(state, "live_aliases", None)
    if aliases is None:
        aliases = state.live_aliases = {}
    return aliases


async def _conversation_of_call(state: Any, call_id: str) -> str | None:
    """The conversation id of a call (phone: the carrier's call id; WebRTC: `rtc_...`) held by
    any worker."""
    cid = _aliases(state).get(call_id)
    node: ClusterNode | None = getattr(state, "cluster", None)
    if cid is not None or node is None:
        return cid
    for kind in ("phone", "webrtc"):
        worker = await node.registry.locate(kind, call_id)
        if worker is not None:
            return (await node.registry.held_by(worker)).get(f"{kind}:{call_id}", {}).get("conversation")
    return None


async def admit(state: Any, owner: str) -> SessionTicket | Refusal:
    """May a session of `owner` (the key's label, or "anonymous" without keys) start? Per-key
    limits across the cluster apply when the server has API keys. A draining worker (SIGTERM)
    refuses with the refusal of local admission (`draining`), also when the drain began while
    the cluster was asked (the place taken meanwhile is given back)."""
    if _draining(state):
        return _refuse_draining(state)
    node: ClusterNode | None = getattr(state, "cluster", None)
    if node is None:
        return SessionTicket(state, owner)
    verdict = await node.admit(owner if state.auth_required else None)
    if isinstance(verdict, Refusal):
        return verdict
    assert isinstance(verdict, Admitted)
    if _draining(state):
        if verdict.lease is not None:
            node.release(verdict.lease)
        return _refuse_draining(state)
    return SessionTicket(state, owner, verdict.lease)


def _draining(state: Any) -> bool:
    admission = getattr(state, "admission", None)
    node: ClusterNode | None = getattr(state, "cluster", None)
    return bool(getattr(admission, "draining", False) or (node is not None and node.draining))


def _refuse_draining(state: Any) -> Refusal:
    admission = getattr(state, "admission", None)
    if admission is not None:  # counted with local admission's refusals (/metrics)
        admission.counted(DRAINING)
    return Refusal(DRAINING.code, DRAINING.message, DRAINING.retry_after_s)


async def admit_ws(ws: WebSocket, state: Any, owner: str) -> SessionTicket | None:
    """`admit` for a WebSocket that is not accepted yet: None when refused (the refusal is sent)."""
    ticket = await admit(state, owner)
    if isinstance(ticket, Refusal):
        await refuse_ws(ws, ticket)
        return None
    return ticket


def track(state: Any, kind: str, ident: str, session: Any | None = None, *, owner: str = ANY_KEY,
          conversation_id: str | None = None) -> SessionTicket:
    """A session that no per-key limit applies to (a phone call): registered, and followed by
    any valid key unless `owner` names one."""
    ticket = SessionTicket(state, owner)
    ticket.opened(kind, ident, session, conversation_id=conversation_id)
    return ticket


async def refuse_ws(ws: WebSocket, refusal: Refusal | LocalRefusal) -> None:
    """Turn a WebSocket away before the handshake: HTTP 503 (429 for a rate limit) with
    `Retry-After` and a JSON error; without the denial-response extension, accept and close 1013."""
    status = 429 if refusal.code == "rate_limited" else 503
    response = _error(status, refusal.message, refusal.code, "server_error" if status == 503 else "rate_limit_error",
                      {"Retry-After": str(refusal.retry_after_s)})
    try:
        await ws.send_denial_response(response)
    except RuntimeError:
        await ws.accept()
        await ws.close(code=1013, reason=refusal.message[:120])


# --------------------------------------------------------------------------- install


def _finalizer(state: Any) -> Any:
    """The store's `finalize_orphans` while the store is up (replies dead workers left in progress)."""
    store = getattr(state, "store", None)
    return store.finalize_orphans if store is not None else None


def _reap_every(settings: Any) -> float:
    """How often a worker looks for dead workers' replies: about as often as one expires."""
    return max(1.0, min(30.0, settings.cluster.ttl_s))


def install(app: FastAPI, state: Any) -> None:
    settings = state.settings
    state.cluster = None
    state.live = MemoryLive()
    if cluster_enabled(settings):
        check_cluster_settings(settings, warn=False)  # `moksori serve` checked (and warned) already
        from moksori.cluster.keystore import RedisKeyStore
        from moksori.server.ephemeral_keys import EphemeralKey, StoreFull

        address = f"{settings.server.host}:{settings.server.port}"
        node = ClusterNode.from_settings(settings, address=address)
        state.cluster = node
        state.live = node.live
        state.ephemeral = RedisKeyStore(node.redis, node.keys, EphemeralKey, state.ephemeral, node.breaker,
                                        full=StoreFull)
        for method, fn in _handlers(app, state).items():
            node.rpc.handle(method, fn)

        inner = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
            async with inner(a) as value:  # models warm, store open: then join the cluster
                await node.start()
                reaper = asyncio.create_task(reap_forever(node, lambda: _finalizer(state), _reap_every(settings)),
                                             name="cluster-reaper")
                try:
                    yield value
                finally:
                    reaper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reaper
                    await node.close()

        app.router.lifespan_context = lifespan

    def auth(request: Request) -> tuple[str | None, JSONResponse | None]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = extract_key(headers, (), dict(request.query_params))
        if state.auth_required and not key_ok(key, state.keys):
            state.metrics.auth_failures += 1
            return None, _error(401, "invalid or missing API key", "invalid_api_key")
        return (key if state.auth_required else None), None

    @app.get("/v1/cluster")
    async def cluster_view(request: Request) -> Response:
        _, refused = auth(request)
        if refused is not None:
            return refused
        node: ClusterNode | None = state.cluster
        if node is None:
            return JSONResponse({"workers": [{"id": "local", "pid": os.getpid(), "sessions": state.sessions,
                                              "draining": _draining(state)}]})
        try:
            workers = await node.workers()
        except RedisUnavailable as e:
            return _unavailable(e)
        return JSONResponse({"workers": [w.to_json() for w in workers], "worker": node.worker_id})

    @app.get("/v1/conversations/{conversation_id}/events")
    async def conversation_events(conversation_id: str, request: Request) -> Response:
        key, refused = auth(request)
        if refused is not None:
            return refused
        return await _events(state, request, conversation_id, key)

    @app.post("/v1/telephony/calls/{call_id}/hangup")
    async def phone_hangup(call_id: str, request: Request) -> Response:
        _, refused = auth(request)
        if refused is not None:
            return refused
        return await _control(state, app, "phone", call_id, "phone.hangup", {"call_id": call_id})

    @app.post("/v1/telephony/calls/{call_id}/transfer")
    async def phone_transfer(call_id: str, request: Request) -> Response:
        _, refused = auth(request)
        if refused is not None:
            return refused
        body = await read_body(request, MAX_BODY)  # None too when the client hung up mid-body
        if body is None:
            return _error(413, "the request is too large", "request_too_large")
        try:
            to = json.loads(body or b"{}").get("to")
        except (ValueError, AttributeError, RecursionError):
            to = None
        if not isinstance(to, str) or not to.strip():
            return _error(400, 'send {"to": "+15551234567"}: the number to transfer the caller to', "invalid_value")
        return await _control(state, app, "phone", call_id, "phone.transfer", {"call_id": call_id, "to": to})


# --------------------------------------------------------------------------- live events (SSE)


def _sse(ev: dict[str, Any]) -> str:
    data = json_text(ev, separators=(",", ":"))  # the stream's UTF-8 encode takes it, lone surrogates too
    return f"id: {ev.get('seq', 0)}\nevent: {ev.get('type', 'message')}\ndata: {data}\n\n"


async def _events(state: Any, request: Request, conversation_id: str, key: str | None) -> Response:
    owner = key_label(key) if state.auth_required else "anonymous"
    try:
        follow = await state.live.follow(conversation_id)
        if follow is None:  # a call, named by its call id
            cid = await _conversation_of_call(state, conversation_id)
            if cid is not None:
                follow = await state.live.follow(cid)
                conversation_id = cid if follow is not None else conversation_id
    except RedisUnavailable as e:
        return _unavailable(e)
    if follow is not None and state.auth_required and follow.owner not in (owner, ANY_KEY):
        await follow.close()
        follow = None  # another key's conversation: as if it did not exist
    snapshot: dict[str, Any]
    if follow is None:
        if not await _stored(state, conversation_id, key):
            return _error(404, f"conversation {conversation_id[:64]} is not live here and was not found",
                          "conversation_not_found")
        snapshot = {"state": "ended"}
    else:
        snapshot = follow.snapshot
    keepalive = state.settings.cluster.sse_keepalive_s

    async def stream() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        try:
            yield "retry: 3000\n\n"
            yield _sse({"type": "conversation.state", "conversation_id": conversation_id, "seq": 0, **snapshot})
            if follow is None or snapshot.get("state") == "ended":
                yield _sse({"type": "conversation.ended", "conversation_id": conversation_id, "seq": 0,
                            "reason": "not_live"})
                return
            quiet_until = loop.time() + keepalive
            while True:
                if _draining(state):  # SIGTERM: end cleanly now; EventSource reconnects (`retry`) elsewhere
                    yield DRAINING_COMMENT
                    return
                ev = await follow.next(timeout=max(0.0, min(DRAIN_POLL_S, quiet_until - loop.time())))
                if ev is None:
                    if follow.over:  # this worker's pub/sub shut down: nothing more will come
                        return
                    if loop.time() >= quiet_until:
                        yield ": keepalive\n\n"
                        quiet_until = loop.time() + keepalive
                    continue
                quiet_until = loop.time() + keepalive
                yield _sse(ev)
                if ev.get("type") == "conversation.ended":
                    return
        finally:
            if follow is not None:
                await follow.close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stored(state: Any, conversation_id: str, key: str | None) -> bool:
    store = getattr(state, "store", None)
    if store is None:
        return False
    from moksori.store import tenant_id

    try:
        return await store.get_conversation(tenant_id(key), conversation_id) is not None
    except Exception as e:  # noqa: BLE001 - a dead database: the conversation is simply not found here
        log.info("live events: store lookup failed: %s", type(e).__name__)
        return False


# --------------------------------------------------------------------------- call control


def _handlers(app: FastAPI, state: Any) -> dict[str, Any]:
    """What this worker does when asked (by itself or another worker) about a call it holds."""

    def phone_call(params: dict[str, Any]) -> Any:
        tel = getattr(app.state, "telephony", None)
        call_id = params.get("call_id")
        for call in list(tel.calls.values()) if tel is not None else []:
            if call.info is not None and call.info.call_id == call_id and not call.ended.is_set():
                return call
        raise RpcError("call_not_found", f"call {str(call_id)[:64]} does not exist or has ended")

    async def phone_hangup(params: dict[str, Any]) -> dict[str, Any]:
        call = phone_call(params)
        return {"hung_up_via": await call.hang_up()}

    async def phone_transfer(params: dict[str, Any]) -> dict[str, Any]:
        from moksori.errors import MoksoriError

        call = phone_call(params)
        try:
            number = await call.transfer(str(params.get("to") or ""))
        except PermissionError as e:
            raise RpcError("not_allowed", str(e)) from None
        except MoksoriError as e:
            raise RpcError("call_control_failed", str(e)[:300]) from None
        return {"transferred_to": number}

    async def webrtc_hangup(params: dict[str, Any]) -> dict[str, Any]:
        webrtc = getattr(state, "webrtc", None)
        call = webrtc.find(str(params.get("call_id")), str(params.get("owner"))) if webrtc is not None else None
        if call is None:
            raise RpcError("call_not_found", f"call {str(params.get('call_id'))[:64]} does not exist or has ended")
        await call.close("hung up")
        return {}

    return {"phone.hangup": phone_hangup, "phone.transfer": phone_transfer, "webrtc.hangup": webrtc_hangup}


async def hangup_elsewhere(state: Any, call_id: str, owner: str) -> Response:
    """`POST /v1/realtime/calls/{id}/hangup` for a WebRTC call this worker does not hold: ask
    the worker that does (the key must own the call there too). 404 in one process."""
    node: ClusterNode | None = getattr(state, "cluster", None)
    if node is None:
        return _error(404, f"call {call_id[:64]} does not exist or has ended", "call_not_found", param="call_id")
    try:
        await node.forward("webrtc", call_id, "webrtc.hangup", {"call_id": call_id, "owner": owner})
    except RpcError as e:
        status = RPC_STATUS.get(e.code, 500)
        return _error(status, e.message, e.code, "server_error" if status >= 500 else "invalid_request_error",
                      param="call_id" if e.code == "call_not_found" else None)
    except RedisUnavailable as e:
        return _unavailable(e)
    return Response(status_code=200)


async def _control(state: Any, app: FastAPI, kind: str, ident: str, method: str, params: dict[str, Any]) -> Response:
    node: ClusterNode | None = state.cluster
    try:
        if node is not None:
            result = await node.forward(kind, ident, method, params)
        else:
            result = await _handlers(app, state)[method](params)
    except RpcError as e:
        return _error(RPC_STATUS.get(e.code, 500), e.message, e.code,
                      "server_error" if RPC_STATUS.get(e.code, 500) >= 500 else "invalid_request_error")
    except RedisUnavailable as e:
        return _unavailable(e)
    return JSONResponse({"ok": True, "call_id": ident, **result})
