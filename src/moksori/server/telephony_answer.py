"""Answer webhooks for Plivo and Vonage: a call comes in, and we tell the carrier to open a
media stream to us, with a per-call stream token (the Twilio one is in telephony_routes.py).

    GET|POST /telephony/plivo/answer    Plivo answer URL -> <Stream> XML   (X-Plivo-Signature-V3)
    GET|POST /telephony/vonage/answer   Vonage answer URL -> NCCO websocket connect (signed webhook JWT)

Unsigned or tampered requests get 403 and no stream instructions; a carrier that is not
configured (no credentials or no MOKSORI_PUBLIC_URL) gets 503 (`webhook_guard.py`, as for Twilio).
Telnyx: point a TeXML application's `<Connect><Stream>` at /telephony/telnyx/stream with a token
from `moksori.telephony.make_stream_token(secret, call_control_id, carrier="telnyx", now=...)` (see telephony_routes.py).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from moksori.server.webhook_guard import guard_webhook
from moksori.telephony.signatures import verify_plivo_v3, verify_vonage
from moksori.telephony.twiml import plivo_stream_xml, vonage_stream_ncco

def _clip(value: str | None) -> str:
    return "".join(ch for ch in (value or "")[:64] if ch.isalnum() or ch in "+-_.:@")


def install_answers(app: FastAPI, state: Any, tel: Any) -> None:
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
        form = dict(hook.params)
        call_id = form.get("CallUUID", "")
        if not call_id:
            return PlainTextResponse("CallUUID is missing", 400)
        headers = {"token": tel.token(call_id, "plivo"), "from": _clip(form.get("From")), "to": _clip(form.get("To"))}
        tel.warm()
        return Response(plivo_stream_xml(tel.stream_url("plivo"), {k: v for k, v in headers.items() if v}),
                        media_type="application/xml")

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
