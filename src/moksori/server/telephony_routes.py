"""Telephony routes: phone calls through Twilio, Telnyx, Plivo and Vonage media streams.

    POST /telephony/twilio/voice       Twilio voice webhook -> TwiML <Connect><Stream> (signed)
    GET|POST /telephony/plivo/answer   Plivo answer URL -> <Stream> XML (signed; telephony_answer.py)
    GET|POST /telephony/vonage/answer  Vonage answer URL -> NCCO websocket connect (signed)
    GET|POST /telephony/telnyx/answer  Telnyx TeXML voice URL -> TeXML <Connect><Stream> (signed)
    WS   /telephony/twilio/stream      Twilio Media Streams (μ-law 8 kHz)
    WS   /telephony/telnyx/stream      Telnyx media streaming (PCMU/PCMA 8 kHz, rtp bidirectional mode)
    WS   /telephony/plivo/stream       Plivo audio streams (bidirectional, μ-law 8 kHz)
    WS   /telephony/vonage/stream      Vonage Voice API WebSocket (L16 16 kHz)
    GET|POST /telephony/plivo/transfer Plivo XML dialing a transfer target (the aleg_url of a transfer)
    GET  /telephony/debug/calls|stats  only with MOKSORI_TELEPHONY_DEBUG=1 (tests)

Every stream must present a stream token made for its call id (`make_stream_token`): the
Twilio webhook puts it in a `<Parameter name="token">`, the Plivo and Vonage answer URLs in
`extraHeaders` / the NCCO endpoint `headers`, the Telnyx TeXML voice URL in a `<Parameter>`. A Telnyx
Call Control app that starts the stream itself passes it as `token` in `custom_parameters` or as
`?token=` on the stream URL; set
`MOKSORI_TELEPHONY_STREAM_SECRET` so both sides share the key. A token is made for one carrier
and opens one stream, and a call has one stream at a time (a second one is closed 1008 until
the first has closed; in cluster mode on whichever worker it reaches: the call id is claimed in
the registry, `ClusterNode.claim`, and given back when the call ends). A `start` naming a codec
or a sample rate Moksori does not take, or no call id, is closed 1008 at once; the close frame's
reason says why.

With API keys configured, `/telephony/debug/*` needs a key like every other route; the
webhooks are exempt from keys (the carriers sign them) and the streams use their tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from collections import deque
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from moksori.protocols.telephony import codec_for
from moksori.server import cluster_routes, recording_hooks
from moksori.server.webhook_guard import guard_webhook, secret_text
from moksori.telephony.call import PhoneCall
from moksori.telephony.call_tools import normalize_number
from moksori.telephony.phrases import stack_for_calls, warm_phrases
from moksori.telephony.signatures import make_stream_token, stream_token_expiry, verify_plivo_v3, verify_twilio
from moksori.telephony.twiml import connect_stream_twiml, plivo_dial_xml
from moksori.transport import receive_loop

log = logging.getLogger("moksori.telephony")

CARRIERS = ("twilio", "telnyx", "plivo", "vonage")
RECENT_CALLS = 16


class Telephony:
    """Server-wide telephony state: the stream-token key, the phrase cache, the open calls."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.settings = state.settings
        configured = secret_text(self.settings.telephony.stream_secret)
        self.secret = configured.encode("utf-8") if configured else os.urandom(32)
        self.stack, self.tts = stack_for_calls(state.stack)
        self.calls: dict[int, PhoneCall] = {}
        self.claims: dict[str, object] = {}  # call id -> the stream holding it, from its `start` to its end
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_CALLS)
        self.used_tokens: dict[str, int] = {}  # stream tokens that opened a stream -> their expiry
        self.pending = 0  # accepted stream sockets that have not started a call yet
        self._warm_task: asyncio.Task | None = None

    def warm(self) -> asyncio.Task:
        if self._warm_task is None:
            self._warm_task = asyncio.create_task(warm_phrases(self.state.stack, self.settings, self.tts),
                                                  name="telephony-warm")
        return self._warm_task

    @property
    def warmed(self) -> bool:
        """The carriers' phrases are synthesised (`warm()` ran to its end)."""
        return self._warm_task is not None and self._warm_task.done()

    def public_base(self) -> str | None:
        url = self.settings.public_url
        return url.rstrip("/") if url else None

    def stream_url(self, carrier: str) -> str | None:
        base = self.public_base()
        if base is None:
            return None
        if base.startswith("https://"):
            base = "wss://" + base[len("https://"):]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://"):]
        return f"{base}/telephony/{carrier}/stream"

    def token(self, call_id: str, carrier: str) -> str:
        return make_stream_token(self.secret, call_id, carrier=carrier, now=int(time.time()),
                                 ttl_s=self.settings.telephony.stream_token_ttl_s)

    def claim(self, token: str, call_id: str) -> bool:
        """One token, one stream: False if `token` opened a stream before (until it expires)."""
        now = int(time.time())
        if len(self.used_tokens) > 4096 or any(exp < now for exp in list(self.used_tokens.values())[:64]):
            self.used_tokens = {t: exp for t, exp in self.used_tokens.items() if exp >= now}
        if token in self.used_tokens:
            return False
        self.used_tokens[token] = stream_token_expiry(token) or now
        return True

    async def claim_call(self, call_id: str, owner: object) -> bool:
        """One stream per call: `owner` (a stream) takes `call_id`, or False when another stream of
        that call is live, on this worker or (cluster mode) on another. A True claim, or one whose
        caller was cancelled, is given back by `release_call`."""
        if call_id in self.claims:
            return False
        self.claims[call_id] = owner
        node = getattr(self.state, "cluster", None)
        if node is None:
            return True
        holder = await node.claim("phone", call_id)
        if holder is None:
            return True
        if self.claims.get(call_id) is owner:
            del self.claims[call_id]
        log.info("call %s has a live stream on worker %s", call_id[:64], holder[:64])
        return False

    async def release_call(self, call_id: str, owner: object) -> None:
        """`owner`'s stream of `call_id` has ended: another stream of the call may start (anywhere)."""
        if self.claims.get(call_id) is not owner:
            return
        try:
            node = getattr(self.state, "cluster", None)
            if node is not None:
                await node.unclaim("phone", call_id)
        finally:
            if self.claims.get(call_id) is owner:
                del self.claims[call_id]


def install(app: FastAPI, state: Any) -> None:
    """Add the telephony routes to the app."""
    tel = Telephony(state)
    app.state.telephony = tel

    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with original(a) as value:
            task = tel.warm()  # the greeting is ready before the first call
            try:
                yield value
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    app.router.lifespan_context = lifespan

    # ------------------------------------------------------------------ Twilio webhook

    @app.post("/telephony/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        hook = await guard_webhook(
            request, state, name="twilio webhook", secret=state.settings.twilio.auth_token, base=tel.public_base(),
            verify=lambda h: verify_twilio(h.secret, h.url, h.form, request.headers.get("x-twilio-signature")))
        if isinstance(hook, Response):
            return hook
        form = dict(hook.form)
        call_sid = form.get("CallSid", "")
        if not call_sid:
            return PlainTextResponse("CallSid is missing", 400)
        stream_params = {"token": tel.token(call_sid, "twilio")}
        for key, name in (("From", "from"), ("To", "to"), ("CallSid", "call_sid")):
            if form.get(key):
                stream_params[name] = form[key][:128]
        try:
            twiml = connect_stream_twiml(tel.stream_url("twilio") or "", stream_params)
        except ValueError:  # a number with characters XML cannot carry
            twiml = connect_stream_twiml(tel.stream_url("twilio") or "", {"token": stream_params["token"]})
        tel.warm()
        return Response(twiml, media_type="application/xml")

    # ------------------------------------------------------------------ Plivo transfer XML

    @app.api_route("/telephony/plivo/transfer", methods=["GET", "POST"])
    async def plivo_transfer(request: Request) -> Response:
        hook = await guard_webhook(
            request, state, name="plivo transfer", secret=state.settings.plivo.auth_token, base=tel.public_base(),
            verify=lambda h: verify_plivo_v3(h.secret, h.url, request.headers.get("x-plivo-signature-v3-nonce"),
                                             request.headers.get("x-plivo-signature-v3"), h.form, method=h.method))
        if isinstance(hook, Response):
            return hook
        number = normalize_number(request.query_params.get("to"))
        allowed = {normalize_number(n) for n in state.settings.telephony.transfer_numbers}
        if number not in allowed:
            return PlainTextResponse("not an allowed transfer number", 403)
        return Response(plivo_dial_xml(number), media_type="application/xml")

    # ------------------------------------------------------------------ Plivo / Vonage answer URLs

    from moksori.server.telephony_answer import install_answers

    install_answers(app, state, tel)

    # ------------------------------------------------------------------ media streams

    for carrier in CARRIERS:
        _add_stream_route(app, state, tel, carrier)

    # ------------------------------------------------------------------ debug (tests only)

    @app.get("/telephony/debug/calls")
    async def debug_calls() -> JSONResponse:
        if not state.settings.telephony.debug:
            return JSONResponse({"error": "not found"}, 404)
        return JSONResponse({"active": [c.summary() for c in tel.calls.values()], "recent": list(tel.recent)})

    @app.get("/telephony/debug/stats")
    async def debug_stats() -> JSONResponse:
        if not state.settings.telephony.debug:
            return JSONResponse({"error": "not found"}, 404)
        from moksori.engine.session import Session

        await asyncio.sleep(0)
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, (Session, PhoneCall))]
        return JSONResponse({
            "tasks": len(asyncio.all_tasks()), "rss_kb": _rss_kb(), "active_calls": len(tel.calls),
            "sessions": state.sessions, "warm": tel.warmed,
            "live_sessions": sum(isinstance(o, Session) for o in alive),
            "live_calls": sum(isinstance(o, PhoneCall) for o in alive),
            "py_blocks": sys.getallocatedblocks(),
        })


def _add_stream_route(app: FastAPI, state: Any, tel: Telephony, carrier: str) -> None:
    @app.websocket(f"/telephony/{carrier}/stream")
    async def stream(ws: WebSocket) -> None:
        await serve_stream(ws, state, tel, carrier)


async def serve_stream(ws: WebSocket, state: Any, tel: Telephony, carrier: str) -> None:
    # Until its `start` (and the token in it) arrives, a stream is unauthenticated: such sockets
    # are counted, capped and closed START_TIMEOUT_S after they open, whatever they send.
    from moksori.server.app import refuse
    from moksori.server.load import Refusal

    refusal = state.admit(None)
    if refusal is None and tel.pending >= state.settings.server.max_pending_streams:
        refusal = state.admission.counted(Refusal(
            "server_busy", f"{tel.pending} media streams are waiting for their start (MOKSORI_SERVER_MAX_PENDING_STREAMS)"))
    if refusal is not None:
        await refuse(ws, refusal)
        return
    await ws.accept()
    tel.pending += 1
    codec = codec_for(carrier)
    counted = False
    ticket = None
    pending = True
    owner = object()  # this stream, as the holder of its call id
    claimed: str | None = None

    async def send(wire: str | bytes) -> None:
        if isinstance(wire, bytes):
            await ws.send_bytes(wire)
        else:
            await ws.send_text(wire)

    async def claim_call(call_id: str) -> bool:  # one stream per call, until the first has closed
        nonlocal claimed
        claimed = call_id  # given back at the end whatever the claim's outcome (a no-op unless this stream got it)
        return await tel.claim_call(call_id, owner)

    def admit() -> str | None:  # asked again at `start`: streams waiting for theirs are not sessions yet
        refused = state.admit(None)
        return None if refused is None else f"{refused.code}: {refused.message}"

    def on_session(call: PhoneCall) -> None:
        nonlocal counted, pending, ticket
        counted, pending = True, False
        tel.pending -= 1
        if call.info is not None and call.session is not None:  # registry + live events (cluster_routes)
            ticket = cluster_routes.track(state, "phone", call.info.call_id, call.session,
                                          conversation_id=call.session.id)
        state.opened(None, call.session)
        if call.session is not None:  # the store: the caller's number, hashed, is the user
            recording_hooks.record(state, call.session, recording_hooks.phone_who(
                state, call.info.from_number if call.info is not None else None, carrier))
        tel.calls[id(call)] = call
        tel.warm()

    call = PhoneCall(carrier, codec, stack=tel.stack, settings=state.settings, send=send, secret=tel.secret,
                     url_token=ws.query_params.get("token"), admit=admit, on_session=on_session, claim_token=tel.claim,
                     claim_call=claim_call, start_timeout_s=state.settings.telephony.start_timeout_s, kit=state.kit)
    reader = asyncio.create_task(_read(ws, call), name=f"{carrier}-call-read")
    ended = asyncio.create_task(call.ended.wait(), name=f"{carrier}-call-ended")
    try:
        await asyncio.wait({reader, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if pending:
            tel.pending -= 1
        for t in (reader, ended):
            t.cancel()
        await asyncio.gather(reader, ended, return_exceptions=True)
        if counted and state.settings.telephony.debug:
            tel.recent.append(call.summary())
        try:
            await call.close()
        finally:
            if ticket is not None:
                ticket.closed(call.end_reason or "ended")
            tel.calls.pop(id(call), None)
            if counted:
                state.closed(None)
            if claimed is not None:
                await tel.release_call(claimed, owner)
        if call.info is not None:
            log.info("%s call %s ended: %s", carrier, call.info.call_id[:64], call.end_reason)
        with contextlib.suppress(Exception):
            await ws.close(code=call.close_code, reason=_close_reason(call.close_text))


def _close_reason(text: str) -> str:
    """`text` as a close frame's reason: valid UTF-8 of at most 123 bytes."""
    data = text.encode("utf-8", "replace")[:123]
    return data.decode("utf-8", "ignore")


class _Receiver:
    """The socket's `receive` for `receive_loop`, keeping the close code of its disconnect."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.close_code: int | None = None

    async def receive(self) -> Any:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            self.close_code = message.get("code")
        return message


async def _read(ws: WebSocket, call: PhoneCall) -> None:
    receiver = _Receiver(ws)
    try:
        end = await receive_loop(receiver, call.feed)  # `feed` never raises and ignores what comes after the end
    except Exception:  # a bug in handling a message: it ends the call, never the server
        log.exception("%s stream: handling a message failed", call.carrier)
        end = "socket_error"
    if end == "disconnected":
        call.carrier_disconnected(receiver.close_code)
    else:
        log.info("%s stream read failed: the socket broke", call.carrier)
        call.end("socket_error")


def _rss_kb() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
