"""Answer webhooks for Plivo, Vonage and Telnyx: a call comes in, and we tell the carrier to open a
media stream to us, with a per-call stream token (the Twilio one is in telephony_routes.py).

    GET|POST /telephony/plivo/answer    Plivo answer URL -> <Stream> XML   (X-Plivo-Signature-V3)
    GET|POST /telephony/vonage/answer   Vonage answer URL -> NCCO websocket connect (signed webhook JWT)
    POST /telephony/telnyx/answer       TeXML voice URL -> <Connect><Stream> TeXML (telnyx-signature-ed25519)

Unsigned or tampered requests get 403 and no stream instructions; a carrier that is not
configured (no credentials or no MOKSORI_PUBLIC_URL) gets 503 (`webhook_guard.py`, as for Twilio).

Telnyx signs a TeXML request like its other webhooks: Ed25519 over "{telnyx-timestamp}|{raw body}"
with the account key (`MOKSORI_TELNYX_PUBLIC_KEY`), and we take it for `MAX_AGE_S` either way of
now. The signature covers neither the URL nor, for a GET, the query (a GET's body is empty): a
POST voice URL binds the call's fields to the signature, a GET would bind only the second it was
sent in (Ed25519 is deterministic: every GET Telnyx signs in that second carries the same
signature, whatever its call), so anyone holding one fresh GET header could fetch a token for any
CallSid. A GET is therefore refused (405: set the TeXML application's voice method to POST), and a
signature is taken once per call (`TakenOnce` in `webhook_guard.py`, per process): a copied POST
cannot fetch the call a second token while it is fresh. The token is made for `CallSid`, which Telnyx's
TeXML API describes as the call's call control id (`v3:...`), the id a Telnyx stream's `start`
carries in `call_control_id`. That the two are equal on a live call was not checked here (no
network); were they not, every stream would be refused as `bad_token` (1008).

Plivo and Vonage are taken once too (per process: one server's memory, not a cluster's), a copy
refused with 403 and a JSON `replayed_request` error:
- Plivo V3 signs no time at all, so a signed request would verify for ever: its nonce (which
  Plivo makes at random for each request) is taken once and remembered for `PLIVO_NONCE_MEMORY_S`
  (and at most 65,536 at once); a copy sent later than that is not caught.
- Vonage's JWT is taken for `VONAGE_MAX_AGE_S` after its `iat`, and its `jti` (unique per request)
  once, remembered until then. That matters most for a GET answer URL (Vonage's default): the
  JWT's `payload_hash` is checked against a POST's body only, so nothing here binds a GET's query
  (`uuid`, `from`, `to`) to the JWT, and a copied fresh JWT could name another call. Once its
  `jti` is taken, it cannot; but whoever holds one before Vonage's own request arrives still
  could, so prefer `answer_method: POST` (the body, and so the call, is then signed).
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from moksori.errors import ConfigError
from moksori.server.webhook_guard import TakenOnce, Webhook, guard_webhook, secret_text
from moksori.telephony.signatures import (
    PLIVO_NONCE_HEADER,
    TELNYX_SIGNATURE_HEADER,
    TELNYX_TIMESTAMP_HEADER,
    telnyx_public_key,
    verify_plivo_v3,
    verify_telnyx,
    vonage_claims,
)
from moksori.telephony.twiml import plivo_stream_xml, telnyx_stream_texml, vonage_stream_ncco

log = logging.getLogger("moksori.telephony")

MAX_AGE_S = 300  # a Telnyx signature's timestamp may be this far from now (the Telnyx SDKs' tolerance)
VONAGE_MAX_AGE_S = 300  # a Vonage JWT is taken this long after its `iat`
PLIVO_NONCE_MEMORY_S = 24 * 3600  # Plivo signs no time: a nonce is remembered this long


def _clip(value: str | None) -> str:
    return "".join(ch for ch in (value or "")[:64] if ch.isalnum() or ch in "+-_.:@")


def _texml_fields(hook: Webhook) -> dict[str, str]:
    """A TeXML request's fields: its (signed) body. Its query is not signed, so it is not read."""
    return dict(hook.form)


def _stream_xml(tel: Any, carrier: str, form: dict[str, str], id_field: str,
                render: Callable[[str, dict[str, str]], str]) -> Response:
    """An answer URL's reply: the carrier's XML opening a stream, its parameters the call's stream
    token and numbers (clipped); 400 when the request names no call (`id_field`)."""
    call_id = form.get(id_field, "")
    if not call_id:
        return PlainTextResponse(f"{id_field} is missing", 400)
    params = {"token": tel.token(call_id, carrier), "from": _clip(form.get("From")), "to": _clip(form.get("To"))}
    tel.warm()
    return Response(render(tel.stream_url(carrier), {k: v for k, v in params.items() if v}),
                    media_type="application/xml")


def _plivo_nonce(hook: Webhook, now: int) -> tuple[str, int] | None:
    nonce = hook.headers.get(PLIVO_NONCE_HEADER)
    return (nonce, now + PLIVO_NONCE_MEMORY_S) if nonce else None


def _vonage_claims(hook: Webhook, now: int) -> dict[str, Any] | None:
    """The checked JWT's claims (a POST's body checked against its `payload_hash`; a GET's query
    is not covered), or None."""
    return vonage_claims(hook.secret, hook.headers.get("authorization"),
                         body=hook.body if hook.method == "POST" and hook.body else None,
                         now=now, max_age_s=VONAGE_MAX_AGE_S)


def _vonage_jti(hook: Webhook, now: int) -> tuple[str, int] | None:
    claims = _vonage_claims(hook, now) or {}
    jti, iat = claims.get("jti"), claims.get("iat")
    if not isinstance(jti, str) or not jti or isinstance(iat, bool) or not isinstance(iat, (int, float)):
        return None
    return jti, math.ceil(iat) + VONAGE_MAX_AGE_S  # after that, the JWT is too old to be taken anyway


def _telnyx_signature(hook: Webhook, now: int) -> tuple[tuple[bytes, str], int]:
    """Keyed by call too: two requests signed in the same second share their signature."""
    signature = base64.b64decode(hook.headers.get(TELNYX_SIGNATURE_HEADER, ""))  # checked by now: valid base64
    return (signature, _texml_fields(hook).get("CallSid", "")), now + 2 * MAX_AGE_S  # it may be MAX_AGE_S ahead


def install_answers(app: FastAPI, state: Any, tel: Any) -> None:
    plivo_once = TakenOnce("nonce", _plivo_nonce)
    vonage_once = TakenOnce("JWT id (jti)", _vonage_jti)
    telnyx_once = TakenOnce("signature", _telnyx_signature)

    @app.api_route("/telephony/plivo/answer", methods=["GET", "POST"])
    async def plivo_answer(request: Request) -> Response:
        # a POST signs its query and body fields as the params, a GET only its URL
        hook = await guard_webhook(
            request, state, name="plivo answer", secret=state.settings.plivo.auth_token,
            base=tel.public_base() if tel.stream_url("plivo") is not None else None,
            verify=lambda h: verify_plivo_v3(h.secret, h.url, request.headers.get("x-plivo-signature-v3-nonce"),
                                             request.headers.get("x-plivo-signature-v3"),
                                             h.params if h.method == "POST" else [], method=h.method),
            once=plivo_once)
        if isinstance(hook, Response):
            return hook
        return _stream_xml(tel, "plivo", dict(hook.params), "CallUUID", plivo_stream_xml)

    @app.api_route("/telephony/vonage/answer", methods=["GET", "POST"])
    async def vonage_answer(request: Request) -> Response:
        hook = await guard_webhook(
            request, state, name="vonage answer", secret=state.settings.vonage.signature_secret,
            base=tel.public_base() if tel.stream_url("vonage") is not None else None,
            verify=lambda h: _vonage_claims(h, int(time.time())) is not None, once=vonage_once)
        if isinstance(hook, Response):
            return hook
        form = dict(hook.params)
        call_id = form.get("uuid", "")
        if not call_id:
            return PlainTextResponse("uuid is missing", 400)
        headers = {"call_uuid": call_id, "token": tel.token(call_id, "vonage"), "from": _clip(form.get("from")),
                   "to": _clip(form.get("to"))}
        tel.warm()
        return JSONResponse(vonage_stream_ncco(tel.stream_url("vonage"), {k: v for k, v in headers.items() if v}))

    @app.api_route("/telephony/telnyx/answer", methods=["GET", "POST"])
    async def telnyx_answer(request: Request) -> Response:
        if request.method == "GET":  # its query is signed nowhere: anyone holding one fresh header could name any call
            log.warning("telnyx answer refused: a GET (set the TeXML application's voice method to POST)")
            return PlainTextResponse("use POST: Telnyx does not sign a GET's query (set the TeXML application's "
                                     "voice method to POST)", 405, headers={"Allow": "POST"})
        key = secret_text(state.settings.telnyx.public_key)
        if key is not None:
            try:
                telnyx_public_key(key)
            except ConfigError as e:
                log.error("telnyx answer refused: MOKSORI_TELNYX_PUBLIC_KEY: %s", e)
                return PlainTextResponse("telephony is not configured", 503)

        def verify(h: Webhook) -> bool:
            now = int(time.time())
            signature = request.headers.get(TELNYX_SIGNATURE_HEADER)
            return signature is not None and verify_telnyx(h.secret, h.body, signature,
                                                           request.headers.get(TELNYX_TIMESTAMP_HEADER),
                                                           now=now, tolerance_s=MAX_AGE_S)

        hook = await guard_webhook(
            request, state, name="telnyx answer", secret=key,
            base=tel.public_base() if tel.stream_url("telnyx") is not None else None, verify=verify,
            once=telnyx_once)
        if isinstance(hook, Response):
            return hook
        return _stream_xml(tel, "telnyx", _texml_fields(hook), "CallSid", telnyx_stream_texml)
