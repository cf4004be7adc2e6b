"""Answer webhooks for Plivo and Vonage: a call comes in, and we tell the carrier to open a
media stream to us, with a per-call stream token (the Twilio one is in telephony_routes.py).

    GET|POST /telephony/plivo/answer    Plivo answer URL -> <Stream> XML   (X-Plivo-Signature-V3)
    GET|POST /telephony/vonage/answer   Vonage answer URL -> NCCO websocket connect (signed webhook JWT)

Unsigned or tampered requests get 403 and no stream instructions; a carrier that is not
configured (no credentials or no MOKSORI_PUBLIC_URL) gets 503.
Telnyx: point a TeXML application's `<Connect><Stream>` at /telephony/telnyx/stream with a token
from `moksori.telephony.make_stream_token(secret, call_control_id, carrier="telnyx", now=...)` (see telephony_routes.py).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from moksori.telephony.signatures import verify_plivo_v3, verify_vonage
from moksori.telephony.twiml import plivo_stream_xml, vonage_stream_ncco

log = logging.getLogger("moksori.telephony")
MAX_BODY = 64 * 1024


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None


def _clip(value: str | None) -> str:
    return "".join(ch for ch in (value or "")[:64] if ch.isalnum() or ch in "+-_.:@")


async def _read_params(request: Request) -> tuple[bytes, list[tuple[str, str]]] | None:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    params = list(request.query_params.multi_items())
    ctype = request.headers.get("content-type", "")
    if request.method == "POST" and body:
        if "json" in ctype:
            try:
                data = json.loads(body)
            except ValueError:
                data = {}
            if isinstance(data, dict):
                params += [(str(k), str(v)) for k, v in data.items() if isinstance(v, (str, int, float))]
        else:
            params += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=200)
    return body, params


def install_answers(app: FastAPI, state: Any, tel: Any) -> None:
    @app.api_route("/telephony/plivo/answer", methods=["GET", "POST"])
    async def plivo_answer(request: Request) -> Response:
        token_secret = _secret(state.settings.plivo.auth_token)
        stream_url = tel.stream_url("plivo")
        if not token_secret or stream_url is None:
            return PlainTextResponse("telephony is not configured", 503)
        read = await _read_params(request)
        if read is None:
            return PlainTextResponse("request too large", 413)
        _, params = read
        signed_params = params if request.method == "POST" else []
        url = tel.public_base() + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if not verify_plivo_v3(token_secret, url, request.headers.get("x-plivo-signature-v3-nonce"),
                               request.headers.get("x-plivo-signature-v3"), signed_params, method=request.method):
            state.metrics.auth_failures += 1
            log.warning("plivo answer: bad or missing signature")
            return PlainTextResponse("forbidden", 403)
        form = dict(params)
        call_id = form.get("CallUUID", "")
        if not call_id:
            return PlainTextResponse("CallUUID is missing", 400)
        headers = {"token": tel.token(call_id, "plivo"), "from": _clip(form.get("From")), "to": _clip(form.get("To"))}
        tel.warm()
        return Response(plivo_stream_xml(stream_url, {k: v for k, v in headers.items() if v}),
                        media_type="application/xml")

    @app.api_route("/telephony/vonage/answer", methods=["GET", "POST"])
    async def vonage_answer(request: Request) -> Response:
        signature_secret = _secret(state.settings.vonage.signature_secret)
        stream_url = tel.stream_url("vonage")
        if not signature_secret or stream_url is None:
            return PlainTextResponse("telephony is not configured", 503)
        read = await _read_params(request)
        if read is None:
            return PlainTextResponse("request too large", 413)
        body, params = read
        if not verify_vonage(signature_secret, request.headers.get("authorization"),
                             body=body if request.method == "POST" and body else None,
                             now=int(time.time()), max_age_s=300):
            state.metrics.auth_failures += 1
            log.warning("vonage answer: bad or missing signed-webhook token")
            return PlainTextResponse("forbidden", 403)
        form = dict(params)
        call_id = form.get("uuid", "")
        if not call_id:
            return PlainTextResponse("uuid is missing", 400)
        headers = {"call_uuid": call_id, "token": tel.token(call_id, "vonage"), "from": _clip(form.get("from")),
                   "to": _clip(form.get("to"))}
        tel.warm()
        return JSONResponse(vonage_stream_ncco(stream_url, {k: v for k, v in headers.items() if v}))
