"""HTTP routes of the Realtime API over WebRTC, ephemeral keys, and the call sideband.

    POST /v1/realtime/client_secrets        real key -> {"value": "ek_...", "expires_at", "session"}
    POST /v1/realtime/calls                 SDP offer (application/sdp, or multipart sdp + session)
                                            -> 201 application/sdp answer, Location: /v1/realtime/calls/rtc_...
    POST /v1/realtime/calls/{id}/hangup     real key -> 200
    POST /session                           the browser app's own minting endpoint (same origin); its
                                            answer also carries `ice_servers` for the page's peer
    WS   /v1/realtime?call_id=rtc_...       sideband (real key): the call's events, both ways
    GET  /webrtc/debug/stats                only with MOKSORI_WEBRTC_DEBUG=1 (tests)

Ephemeral keys start sessions (these calls and the Realtime WebSocket) and nothing else: every
other route checks the real keys only. Errors are OpenAI-shaped JSON
(`{"error": {"message", "type", "code", "param"}}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import weakref
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from moksori.cluster import RedisUnavailable
from moksori.engine.memory import new_id
from moksori.errors import ProtocolError
from moksori.protocols import realtime as rt
from moksori.recording import Who
from moksori.server import cluster_routes, recording_hooks
from moksori.server.auth import extract_key, key_label, key_ok
from moksori.server.cluster_routes import Refusal
from moksori.server.ephemeral_keys import (EphemeralKey, StoreFull, check_session_size, is_ephemeral,
                                           new_key, parse_expires_after)
from moksori.server.webrtc import ice_servers
from moksori.server.webrtc.offer_body import multipart_offer, session_kind
from moksori.server.realtime_config import initial_session
from moksori.text.unencodable import surrogates_replaced
from moksori.server.webhook_guard import read_body
from moksori.store import DEFAULT_TENANT
from moksori.transport import receive_loop

log = logging.getLogger("moksori.webrtc")

WEB_SESSION_TTL_S = 60  # the page uses its key at once
RELAY_WARNING_EVERY_S = 60.0  # a TURN server that keeps failing is logged once a minute, not per call


def error(status: int, message: str, code: str, *, param: str | None = None,
          kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": param}}, status,
                        headers=headers)


class WebRTC:
    """Server-wide WebRTC state: the live calls and the peers they own."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.settings = state.settings
        self.calls: dict[str, Any] = {}
        self.tickets: dict[str, Any] = {}  # call id -> cluster_routes.SessionTicket
        self.peers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._relay_warned = -RELAY_WARNING_EVERY_S

    # ------------------------------------------------------------------ auth and limits

    async def grant_for(self, token: str | None, *, ephemeral_ok: bool) -> tuple[EphemeralKey | None, str, JSONResponse | None]:
        """(ephemeral grant or None, owner label, refusal or None)."""
        state = self.state
        if is_ephemeral(token):
            if not ephemeral_ok:
                state.metrics.auth_failures += 1
                return None, "", error(403, "an ephemeral key can only start a session", "invalid_api_key")
            grant = await state.ephemeral.get(token)
            if grant is None:
                state.metrics.auth_failures += 1
                return None, "", error(401, "the ephemeral key is invalid or has expired", "invalid_api_key")
            return grant, grant.owner, None
        if state.auth_required and not key_ok(token, state.keys):
            state.metrics.auth_failures += 1
            return None, "", error(401, "invalid or missing API key", "invalid_api_key")
        return None, key_label(token if state.auth_required else None), None

    def admit(self, label: str) -> JSONResponse | None:
        """None: admitted and counted. Else the refusal (503, as for WebSocket sessions:
        `server/load.py`), distinct from auth failures."""
        state = self.state
        refusal = state.admit(self._limited(label))
        if refusal is not None:
            return JSONResponse({"error": {"message": refusal.message, "type": "server_error", "code": refusal.code}},
                                503, headers={"Retry-After": str(refusal.retry_after_s)})
        state.opened(self._limited(label))
        return None

    def release(self, label: str) -> None:
        self.state.closed(self._limited(label))

    def _limited(self, label: str) -> str | None:
        """Sessions count per key only on a server with keys (a keyless server has one owner)."""
        return label if self.state.auth_required else None

    # ------------------------------------------------------------------ ephemeral keys

    async def mint(self, body: Any, owner: str, *, default_ttl: int | None = None,
                   tenant: str | None = None, extra: dict[str, Any] | None = None) -> JSONResponse:
        """`extra`: more fields for the answer (the browser app's `ice_servers`)."""
        if body is None:
            body = {}
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object", "invalid_request_error")
        try:
            if body.get("expires_after") is None and default_ttl is not None:
                ttl = default_ttl
            else:
                ttl = parse_expires_after(body.get("expires_after"))
        except ValueError as e:
            return error(400, str(e), "invalid_value", param="expires_after")
        session = body.get("session")
        if session is None:
            session = {}
        if not isinstance(session, dict):  # `[]`, `""`, `0`, `false` too: none of them is "no session"
            return error(400, "session must be an object", "invalid_type", param="session")
        try:
            kind = session_kind(session)
        except ProtocolError as e:
            return error(400, e.message, e.code, param=e.param)
        payload = {k: v for k, v in session.items() if k != "type"}
        try:
            check_session_size(payload)  # before validating it: the key would hold it for up to 2 h
        except ValueError as e:
            return error(400, str(e), "invalid_value", param="session")
        try:
            cfg, _ = rt.apply_session_update(initial_session(self.settings), payload, rt.Flavor.GA)
        except ProtocolError as e:
            return error(400, e.message, e.code, param=e.param)
        key = new_key(ttl, payload, transcription=kind == "transcription", owner=owner, tenant=tenant)
        try:
            await self.state.ephemeral.put(key)
        except StoreFull as e:
            return error(429, f"too many live ephemeral keys ({e}); mint shorter-lived ones", "rate_limit_exceeded")
        wire = rt.session_to_wire(cfg, rt.Flavor.GA, session_id=new_id("sess"),
                                  model=str(session.get("model") or "moksori"))
        if kind == "transcription":
            wire = {"type": "transcription", "object": "realtime.transcription_session", "id": wire["id"],
                    "audio": {"input": wire["audio"]["input"]}}
        return JSONResponse({"value": key.value, "expires_at": key.expires_at, "session": wire, **(extra or {})})

    # ------------------------------------------------------------------ calls

    async def create_call(self, request: Request) -> Response:
        from moksori.server.realtime_conn import RealtimeConnection
        from moksori.server.webrtc import ice
        from moksori.server.webrtc.call import Call, wire
        from moksori.server.webrtc.sdp import OfferError, check_offer, keep_candidates, mid_problem, no_way_in

        cfg = self.settings.webrtc
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = extract_key(headers)
        grant, label, refused = await self.grant_for(key, ephemeral_ok=True)
        if refused is not None:
            return refused
        try:
            user = recording_hooks.user_of(headers, request.query_params)
        except recording_hooks.InvalidUser as e:
            return error(400, str(e), "invalid_user", param="user")
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/sdp", "multipart/form-data"):
            return error(415, "send the SDP offer as application/sdp, or as multipart/form-data with an 'sdp' "
                              "part (and an optional 'session' part)", "unsupported_content_type")
        limit = cfg.max_offer_bytes if ctype == "application/sdp" else cfg.max_offer_bytes + \
            self.settings.server.max_message_bytes
        body = await read_body(request, limit)
        if body is None:
            return error(413, f"the request is larger than {limit} bytes", "request_too_large")
        session_part: Any = None
        try:
            if ctype == "application/sdp":
                offer_text = body.decode("utf-8")
            else:
                offer_text, session_part = await multipart_offer(request, body)
        except UnicodeDecodeError:
            return error(400, "the SDP offer is not UTF-8 text", "invalid_offer", param="sdp")
        except ProtocolError as e:
            return error(400, e.message, e.code, param=e.param)
        try:
            offer = check_offer(offer_text)
        except OfferError as e:
            return error(400, str(e), "invalid_offer", param="sdp")
        unbundled = mid_problem(offer.sdp)
        if unbundled is not None:
            return error(400, unbundled, "invalid_offer", param="sdp")
        addresses = ice.addresses_for(cfg.ice_addresses, (request.scope.get("server") or (None,))[0])
        offer_sdp = keep_candidates(offer.sdp, ice.remote_filter(addresses, relay_only=cfg.ice_transport_policy == "relay"))
        hopeless = no_way_in(offer.sdp, offer_sdp)
        if hopeless is not None:
            return error(400, hopeless, "invalid_offer", param="sdp")
        refused = self.admit(label)
        if refused is not None:
            return refused
        ticket = await cluster_routes.admit(self.state, label)  # limits across the cluster
        if isinstance(ticket, Refusal):
            self.release(label)
            status = 429 if ticket.code == "rate_limited" else 503  # as cluster_routes.refuse_ws
            return JSONResponse({"error": {"message": ticket.message, "type": "server_error", "code": ticket.code}},
                                status, headers={"Retry-After": str(ticket.retry_after_s)})

        call_id = "rtc_" + secrets.token_hex(12)
        peer = ice_servers.for_peer(cfg, user=label, now=time.time(), loopback_only=ice.loopback_only(addresses))
        call = Call(call_id, owner=label, connect_timeout_s=cfg.connect_timeout_s,
                    idle_timeout_s=cfg.idle_timeout_s, on_closed=self._closed,
                    max_message_size=offer.max_message_size if offer.data_channel else None, peer=peer,
                    session_idle_timeout_s=self.settings.server.session_idle_timeout_s)
        self.peers.add(call.pc)
        query = request.query_params
        model = (session_part or {}).get("model") if isinstance(session_part, dict) else None
        conn = RealtimeConnection(
            self.state.stack, self.settings, rt.Flavor.GA, call.send, model=str(model or query.get("model") or "moksori"),
            timeline=query.get("moksori_timeline") in ("1", "true"), audio_sink=call.track,
            output_lead_ms=cfg.output_lead_ms, kit=self.state.kit)
        self.state.track(conn.session)  # metrics, and the unclosed-session count
        who = Who(recording_hooks.tenant_of(self.state, key, grant), user, "webrtc",
                  load_history=recording_hooks.wants_history(query))
        recorded = recording_hooks.record(self.state, conn.session, who)
        conn.recorder = recorded.recorder if recorded is not None else None

        async def fatal(reason: str) -> None:
            await call.close(reason)

        conn.on_fatal = fatal
        call.attach_connection(conn)
        self.calls[call_id] = call
        self.tickets[call_id] = ticket
        ticket.opened("webrtc", call_id, conn.session, conversation_id=conn.session_id)
        try:
            if grant is not None:
                conn.preset(grant.session, transcription_only=grant.transcription)
            if session_part is not None:
                conn.preset({k: v for k, v in session_part.items() if k != "type"},
                            transcription_only=session_part.get("type") == "transcription")
        except ProtocolError as e:
            await call.close("invalid session")
            return error(400, e.message, e.code, param=("session." + e.param.removeprefix("session.")) if e.param else None)
        # as conn.start() will send it (a spare ServerEvents: the connection's own counts its event ids)
        created = wire(rt.ServerEvents(rt.Flavor.GA).session_created(conn.wire_session())).size
        if call.too_large(created):  # its first event could never reach the client
            await call.close("session config too large for the data channel")
            return error(400, f"the session config makes session.created {created} bytes, more than the "
                              f"{call.max_message_size} bytes this peer's data channel takes (its a=max-message-size): "
                              "shorten the instructions or tools", "session_too_large", param="session")
        try:
            answer = await asyncio.wait_for(call.answer(offer_sdp, addresses), 15)
        except asyncio.TimeoutError:
            await call.close("answering timed out")
            return error(500, "could not answer the offer in time", "server_error", kind="server_error")
        except Exception as e:  # noqa: BLE001 - aiortc's parser and negotiation errors: the offer's fault
            await call.close("unusable offer")
            log.info("call %s: unusable offer: %s", call_id, e)
            return error(400, f"the SDP offer could not be used: {type(e).__name__}: {e}"[:300], "invalid_offer",
                         param="sdp")
        if call.relay_failure is not None:
            refused = await self._relay_failed(call)
            if refused is not None:
                return refused
        call.start()
        log.info("call %s started (%s)", call_id, "ephemeral key" if grant else "API key")
        return Response(answer, 201, media_type="application/sdp",
                        headers={"Location": f"/v1/realtime/calls/{call_id}"})

    async def _relay_failed(self, call: Any) -> JSONResponse | None:
        """A call whose TURN allocation failed: refused if it may only relay (it could never
        connect), else it goes on with its other candidates. Either way the log says why, with
        the settings to check (once a minute at most while it keeps failing: a TURN server that is
        down would otherwise write a line per call)."""
        now = time.monotonic()
        if now - self._relay_warned >= RELAY_WARNING_EVERY_S:
            self._relay_warned = now
            log.warning("call %s: no TURN relay from %s%s; check the TURN server and its credentials "
                        "(MOKSORI_WEBRTC_ICE_SERVERS, MOKSORI_WEBRTC_TURN_SECRET = coturn's static-auth-secret)",
                        call.id, call.relay_failure,
                        " (relay-only: call refused)" if call.peer.relay_only else " (going on without it)")
        if not call.peer.relay_only:
            return None
        await call.close("no TURN relay")
        return error(502, f"this server could not get a TURN relay ({call.relay_failure}) and is set to relay "
                          "every call (MOKSORI_WEBRTC_ICE_TRANSPORT_POLICY=relay)", "turn_failed",
                     kind="server_error")

    def _closed(self, call: Any) -> None:
        if self.calls.pop(call.id, None) is not None:
            self.release(call.owner)
        ticket = self.tickets.pop(call.id, None)
        if ticket is not None:
            ticket.closed("call_ended")

    def find(self, call_id: str, owner: str) -> Any:
        call = self.calls.get(call_id)
        if call is None or call.closed:
            return None
        if self.state.auth_required and call.owner != owner:
            return None  # another key's call: as if it did not exist
        return call

    async def close_all(self) -> None:
        await asyncio.gather(*[c.close("server shutting down") for c in list(self.calls.values())],
                             return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"calls": len(self.calls), "peers": sum(1 for pc in list(self.peers) if pc.connectionState != "closed"),
                "tasks": len(asyncio.all_tasks()), "ephemeral_keys": len(self.state.ephemeral)
                if hasattr(self.state.ephemeral, "__len__") else None,
                "detail": [c.summary() for c in self.calls.values()]}


def install(app: FastAPI, state: Any) -> None:
    if not state.settings.webrtc.enabled:
        return
    from moksori.server.webrtc import call as _call  # noqa: F401 - aiortc + PyAV load now, not on the first call

    webrtc = WebRTC(state)
    state.webrtc = webrtc
    cfg = state.settings.webrtc
    if cfg.open_web_sessions and any(s.has_credentials and s.is_turn for s in cfg.ice_servers):
        log.warning("MOKSORI_WEBRTC_OPEN_WEB_SESSIONS hands the TURN credentials of MOKSORI_WEBRTC_ICE_SERVERS to "
                    "anyone who loads the page: list the TURN server without them and set "
                    "MOKSORI_WEBRTC_TURN_SECRET (coturn's use-auth-secret) for time-limited ones")

    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with original(a) as value:
            try:
                yield value
            finally:
                await webrtc.close_all()

    app.router.lifespan_context = lifespan

    @app.post("/v1/realtime/client_secrets")
    async def client_secrets(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = extract_key(headers)
        _, label, refused = await webrtc.grant_for(key, ephemeral_ok=False)
        if refused is not None:
            return refused
        body, bad = await _json_body(request)
        return bad or await webrtc.mint(body, label, tenant=recording_hooks.tenant_of(state, key))

    @app.post("/session")
    async def web_session(request: Request) -> Response:
        """The browser app's server side: mint a short-lived key for the page."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = extract_key(headers)
        if state.settings.webrtc.open_web_sessions:
            label, tenant = key_label(None), DEFAULT_TENANT  # open pages: one tenant for all of them
        else:
            _, label, refused = await webrtc.grant_for(key, ephemeral_ok=False)
            if refused is not None:
                return refused
            tenant = recording_hooks.tenant_of(state, key)
        body, bad = await _json_body(request)
        # the page's RTCPeerConnection gets the STUN/TURN servers too (TURN credentials minted
        # now with webrtc.turn_secret), along with its key: guarded as the key is
        servers = ice_servers.for_page(state.settings.webrtc, user=label, now=time.time())
        return bad or await webrtc.mint(body, label, default_ttl=WEB_SESSION_TTL_S, tenant=tenant,
                                        extra={"ice_servers": servers})

    @app.post("/v1/realtime/calls")
    async def create_call(request: Request) -> Response:
        return await webrtc.create_call(request)

    @app.post("/v1/realtime/calls/{call_id}/hangup")
    async def hangup(call_id: str, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        _, label, refused = await webrtc.grant_for(extract_key(headers), ephemeral_ok=False)
        if refused is not None:
            return refused
        call = webrtc.find(call_id, label)
        if call is None:  # maybe another worker holds it
            return await cluster_routes.hangup_elsewhere(state, call_id, label)
        await call.close("hung up")
        return Response(status_code=200)

    @app.get("/webrtc/debug/stats")
    async def debug_stats() -> JSONResponse:
        if not state.settings.webrtc.debug:
            return JSONResponse({"error": "not found"}, 404)
        return JSONResponse(webrtc.stats())


async def _json_body(request: Request, limit: int = 1024 * 1024) -> tuple[Any, JSONResponse | None]:
    body = await read_body(request, limit)
    if body is None:
        return None, error(413, f"the request is larger than {limit} bytes", "request_too_large")
    if not body.strip():
        return {}, None
    try:
        return surrogates_replaced(json.loads(body), body.decode("utf-8", "replace")), None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, error(400, "the request body is not valid JSON", "invalid_json")


async def _not_here(state: Any, call_id: str, owner: str) -> Response:
    """The answer to a sideband for a call this worker does not hold. In a cluster the call may
    live on another worker (a sideband is one WebSocket, and the balancer picks a worker for it
    as for any other): then a 503 the balancer retries on the next worker (nginx:
    `proxy_next_upstream http_503`), as for a full worker. Otherwise (another key's call, or
    Redis away) 404."""
    node = getattr(state, "cluster", None)
    if node is not None:
        try:
            holder = await node.registry.locate("webrtc", call_id)
            held = await node.registry.held_by(holder) if holder not in (None, node.worker_id) else {}
        except RedisUnavailable:
            held = {}
        if held.get(f"webrtc:{call_id}", {}).get("owner") == owner:  # this key's call (another's: as if none)
            return error(503, f"call {call_id[:64]} is held by another worker: connect again (a load balancer "
                              "retries this on its next worker)", "call_on_another_worker", param="call_id",
                         kind="server_error", headers={"Retry-After": "0"})
    return error(404, f"call {call_id[:64]} does not exist or has ended", "call_not_found", param="call_id")


async def serve_sideband(ws: WebSocket, state: Any, key: str | None, call_id: str) -> None:
    """`/v1/realtime?call_id=...`: join a running call with a real key."""
    webrtc: WebRTC | None = getattr(state, "webrtc", None)
    if webrtc is None:
        await ws.send_denial_response(error(404, "WebRTC is disabled on this server", "call_not_found"))
        return
    _, label, refused = await webrtc.grant_for(key, ephemeral_ok=False)
    if refused is not None:
        await ws.send_denial_response(refused)
        return
    call = webrtc.find(call_id, label)
    if call is None or call.conn is None:
        await ws.send_denial_response(await _not_here(state, call_id, label))
        return
    offered = list(ws.scope.get("subprotocols") or [])
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    conn = call.conn
    sb = call.attach(ws.send_text)
    sb.push(json.dumps(conn.ev.session_created(conn.wire_session()), ensure_ascii=False))

    async def deliver(message: str | bytes) -> None:
        call.deliver(message)

    reader = asyncio.create_task(receive_loop(ws, deliver), name=f"sideband-{call_id}")
    ended = asyncio.create_task(call.ended.wait(), name=f"sideband-end-{call_id}")
    try:
        await asyncio.wait({reader, ended, sb.task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        call.detach(sb)
        for t in (reader, ended):
            t.cancel()
        await asyncio.gather(reader, ended, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sb.task, 2)
        with contextlib.suppress(Exception):
            await ws.close(1000 if call.closed else (1011 if sb.overflowed else 1000),
                           "call ended" if call.closed else ("sideband too slow" if sb.overflowed else ""))
