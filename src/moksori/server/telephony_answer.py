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
signature is taken once per call (`_SeenSignatures`, per process): a copied POST cannot fetch the
call a second token while it is fresh. The token is made for `CallSid`, which Telnyx's
TeXML API describes as the call's call control id (`v3:...`), the id a Telnyx stream's `start`
carries in `call_control_id`. That the two are equal on a live call was not checked here (no
network); were they not, every stream would be refused as `bad_token` (1008).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from moksori.errors import ConfigError
from moksori.server.webhook_guard import Webhook, guard_webhook, secret_text
from moksori.telephony.signatures import (
    TELNYX_SIGNATURE_HEADER,
    TELNYX_TIMESTAMP_HEADER,
    telnyx_public_key,
    verify_plivo_v3,
    verify_telnyx,
    verify_vonage,
)
from moksori.telephony.twiml import plivo_stream_xml, telnyx_stream_texml, vonage_stream_ncco

log = logging.getLogger("moksori.telephony")

MAX_AGE_S = 300  # a Telnyx signature's timestamp may be this far from now (the Telnyx SDKs' tolerance)


def _clip(value: str | None) -> str:
    return "".join(ch for ch in (value or "")[:64] if ch.isalnum() or ch in "+-_.:@")


class _SeenSignatures:
    """Telnyx signatures already taken for a call, until they are too old to verify anyway (one
    process). Keyed by call too: two GETs sent in the same second share their signature."""

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self.expiry: dict[tuple[bytes, str], int] = {}

    def first(self, signature: bytes, call_id: str, now: int) -> bool:
        """True the first time `signature` (its decoded bytes) is seen for `call_id`."""
        if len(self.expiry) >= self.limit:
            self.expiry = {k: t for k, t in self.expiry.items() if t >= now}
            while len(self.expiry) >= self.limit:  # a flood of fresh ones: forget the oldest
                del self.expiry[next(iter(self.expiry))]
        if (signature, call_id) in self.expiry:
            return False
        self.expiry[signature, call_id] = now + 2 * MAX_AGE_S  # its timestamp may be MAX_AGE_S ahead of us
        return True


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


def install_answers(app: FastAPI, state: Any, tel: Any) -> None:
    seen = _SeenSignatures()

    @app.api_route("/telephony/plivo/answer", methods=["GET", "POST"])
    async def plivo_answer(request: Request) -> Response:
        # a POST signs its query and body fields as the params, a GET only its URL
        hook = await guard_webhook(
            request, state, name="plivo answer", secret=state.settings.plivo.auth_token,
            base=tel.public_base() if tel.stream_url("plivo") is not None else None,
            verify=lambda h: verify_plivo_v3(h.secret, h.url, request.headers.get("x-plivo-signature-v3-nonce"),
                                             request.headers.get("x-plivo-signature-v3"),
                                             h.params if h.method == "POST" else [], method=h.method))
        if isinstance(hook, Response):
            return hook
        return _stream_xml(tel, "plivo", dict(hook.params), "CallUUID", plivo_stream_xml)

    @app.api_route("/telephony/vonage/answer", methods=["GET", "POST"])
    async def vonage_answer(request: Request) -> Response:
        hook = await guard_webhook(
            request, state, name="vonage answer", secret=state.settings.vonage.signature_secret,
            base=tel.public_base() if tel.stream_url("vonage") is not None else None,
            verify=lambda h: verify_vonage(h.secret, request.headers.get("authorization"),
                                           body=h.body if h.method == "POST" and h.body else None,
                                           now=int(time.time()), max_age_s=300))
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
            if signature is None or not verify_telnyx(h.secret, h.body, signature,
                                                      request.headers.get(TELNYX_TIMESTAMP_HEADER),
                                                      now=now, tolerance_s=MAX_AGE_S):
                return False
            if not seen.first(base64.b64decode(signature), _texml_fields(h).get("CallSid", ""), now):
                log.warning("telnyx answer: a signature already used for this call")
                return False
            return True

        hook = await guard_webhook(
            request, state, name="telnyx answer", secret=key,
            base=tel.public_base() if tel.stream_url("telnyx") is not None else None, verify=verify)
        if isinstance(hook, Response):
            return hook
        return _stream_xml(tel, "telnyx", _texml_fields(hook), "CallSid", telnyx_stream_texml)
