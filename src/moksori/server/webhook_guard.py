"""The carriers' webhooks, checked one way before a route looks at them.

    no secret or no MOKSORI_PUBLIC_URL  -> 503 "telephony is not configured"
    body over MAX_WEBHOOK_BYTES         -> 413 "request too large"
    body that is not UTF-8 form/JSON    -> 403 (it cannot be what the carrier signed)
    signature missing or wrong          -> 403 "forbidden", counted in `auth_failures`

The signed URL is `MOKSORI_PUBLIC_URL` + our own path and query: behind a proxy the Host header
is not the URL the carrier called. Each route passes its carrier's check (`verify`) and which
fields it signs; `moksori.telephony.signatures` holds the algorithms.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import PlainTextResponse, Response
from starlette.requests import ClientDisconnect

log = logging.getLogger("moksori.telephony")

MAX_WEBHOOK_BYTES = 64 * 1024
MAX_FIELDS = 200

Params = list[tuple[str, str]]


def secret_text(value: Any) -> str | None:
    """A setting that may be a pydantic `SecretStr`, a plain string or unset -> its text or None."""
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook request that passed the guard."""

    secret: str  # the carrier's signing secret
    url: str  # the public URL the carrier signed
    method: str
    body: bytes
    query: Params
    form: Params  # the body's fields (form-encoded, or a JSON object's scalar values); [] for GET

    @property
    def params(self) -> Params:
        """Query and body fields together (what the route reads, e.g. the call id)."""
        return self.query + self.form


Verify = Callable[[Webhook], bool]


async def read_body(request: Request, limit: int = MAX_WEBHOOK_BYTES) -> bytes | None:
    """The body, or None if it is longer than `limit` (checked from `Content-Length` before
    reading, and while reading: never more than `limit` is read) or if the client hung up before
    sending all of it. A client that leaves is no error of ours: the caller's refusal then goes to
    nobody (the server drops a response to a closed connection), and no traceback is logged.
    Also the WebRTC routes' and the transfer route's reader."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    except ClientDisconnect:
        log.debug("%s %s: the client hung up mid-body (%d bytes read)", request.method, request.url.path, size)
        return None
    return b"".join(chunks)


def body_fields(body: bytes, content_type: str) -> Params | None:
    """A POST body's fields; None when it cannot be parsed (not UTF-8, too many fields)."""
    if not body:
        return []
    if "json" in content_type:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError included; RecursionError: nested too deep
            data = {}
        if not isinstance(data, dict):
            return []
        fields = [(str(k), str(v)) for k, v in data.items() if isinstance(v, (str, int, float))]
        try:
            for k, v in fields:  # "\ud800" escapes decode to lone surrogates, which no signature can encode
                k.encode("utf-8"), v.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return fields
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return None


async def guard_webhook(request: Request, state: Any, *, name: str, secret: Any, base: str | None,
                        verify: Verify) -> Webhook | Response:
    """The checked request, or the response that refuses it (503, 413 or 403)."""
    key = secret_text(secret)
    if not key or base is None:
        log.error("%s refused: the carrier's secret or MOKSORI_PUBLIC_URL is not set", name)
        return PlainTextResponse("telephony is not configured", 503)
    body = await read_body(request)
    if body is None:
        return PlainTextResponse("request too large", 413)
    form: Params | None = []
    if request.method == "POST":
        form = body_fields(body, request.headers.get("content-type", ""))
    query = request.url.query
    hook = Webhook(secret=key, url=base + request.url.path + (f"?{query}" if query else ""), method=request.method,
                   body=body, query=list(request.query_params.multi_items()), form=form or [])
    if form is None or not verify(hook):
        state.metrics.auth_failures += 1
        log.warning("%s: bad or missing signature", name)
        return PlainTextResponse("forbidden", 403)
    return hook
