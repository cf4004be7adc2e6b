"""The carriers' webhooks, checked one way before a route looks at them.

    no secret or no MOKSORI_PUBLIC_URL  -> 503 "telephony is not configured"
    body over MAX_WEBHOOK_BYTES         -> 413 "request too large"
    body that is not UTF-8 form/JSON    -> 403 (it cannot be what the carrier signed)
    signature missing or wrong          -> 403 "forbidden", counted in `auth_failures`
    a signed request seen before        -> 403 JSON {"error": {"code": "replayed_request", ...}}, counted

The signed URL is `MOKSORI_PUBLIC_URL` + our own path and query: behind a proxy the Host header
is not the URL the carrier called. Each route passes its carrier's check (`verify`) and which
fields it signs; `moksori.telephony.signatures` holds the algorithms.

A route that mints something (an answer URL's stream token) also passes `once` (`TakenOnce`): what
in a signed request the carrier makes unique (Telnyx's signature for a call, Plivo's nonce,
Vonage's JWT id), taken once, so a copy of a signed request gets nothing more. The memory is
per process (`SeenOnce`): several processes or nodes behind one URL each remember only what they
saw, so a copy sent to another of them is not caught.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
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
    headers: Mapping[str, str] = field(default_factory=dict)  # the request's (any letter case)

    @property
    def params(self) -> Params:
        """Query and body fields together (what the route reads, e.g. the call id)."""
        return self.query + self.form


Verify = Callable[[Webhook], bool]


class SeenOnce:
    """Keys taken once each (a signature, a nonce, a JWT id), each remembered until `until`, when
    its request would fail its signature check anyway. Per process, not shared: see the module
    docstring. At most `limit` at once: when full, the expired ones go, then the oldest (only
    requests that passed their signature check get here, so only the carrier can fill it)."""

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self.expiry: dict[Hashable, int] = {}

    def first(self, key: Hashable, until: int, now: int) -> bool:
        """True the first time `key` is seen (while it is remembered); it is remembered until `until`."""
        if key in self.expiry:  # before making room: a full memory must not forget the key asked about
            return False
        if len(self.expiry) >= self.limit:
            self.expiry = {k: t for k, t in self.expiry.items() if t >= now}
            while len(self.expiry) >= self.limit:  # a flood of fresh ones: forget the oldest
                del self.expiry[next(iter(self.expiry))]
        self.expiry[key] = until
        return True


@dataclass(frozen=True, slots=True)
class TakenOnce:
    """A route's replay check: `key` gives a checked request's once-only key and the unix time
    until which to remember it, or None when the request carries none (then it is refused: a
    request that cannot be checked for replay is not taken). `what` names the key in the refusal."""

    what: str
    key: Callable[[Webhook, int], tuple[Hashable, int] | None]  # (hook, now) -> (key, until)
    seen: SeenOnce = field(default_factory=SeenOnce)


def replayed(name: str, what: str) -> JSONResponse:
    """The refusal of a signed request seen before."""
    return JSONResponse({"error": {"code": "replayed_request", "message": f"{name}: a replayed request "
                                   f"(its {what} was already used); the carrier sends each request once"}}, 403)


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
                        verify: Verify, once: TakenOnce | None = None) -> Webhook | Response:
    """The checked request, or the response that refuses it (503, 413 or 403); with `once`, a
    request whose key was taken before is refused as a replay."""
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
                   body=body, query=list(request.query_params.multi_items()), form=form or [], headers=request.headers)
    if form is None or not verify(hook):
        state.metrics.auth_failures += 1
        log.warning("%s: bad or missing signature", name)
        return PlainTextResponse("forbidden", 403)
    if once is not None:
        now = int(time.time())
        taken = once.key(hook, now)
        if taken is None:
            state.metrics.auth_failures += 1
            log.warning("%s: a signed request without a %s: refused (it cannot be checked for replay)", name, once.what)
            return PlainTextResponse("forbidden", 403)
        if not once.seen.first(taken[0], taken[1], now):
            state.metrics.auth_failures += 1
            log.warning("%s: a replayed request (its %s was already used)", name, once.what)
            return replayed(name, once.what)
    return hook
