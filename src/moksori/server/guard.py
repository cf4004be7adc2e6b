"""The HTTP front door, as plain ASGI middleware: who may call what, and how much they may send.

* **Keys.** With API keys configured, every HTTP route needs one, except the browser page
  (`/` and `/static/*`), the bare liveness probe `/health`, the telephony webhooks (carriers
  sign those; `telephony_routes` checks the signatures) and the WebRTC routes that take
  ephemeral keys (`webrtc/routes.py` checks them). `/metrics` and `/ready` also take the
  scrape token `MOKSORI_METRICS_TOKEN`. WebSocket routes check their own credentials before
  the handshake (API key, or a carrier's stream token).
* **Bodies.** Every request body is capped *while it streams*, whatever `Content-Length`
  says (a chunked upload has none): past the route's limit the app sees the client as gone
  and the client gets `413`. A body that stops arriving for `body_idle_timeout_s` gets `408`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from moksori.server.auth import extract_key, key_ok

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = ("/", "/health", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
# carriers sign these requests; the routes verify the signatures
SIGNED_PATHS = ("/telephony/twilio/voice", "/telephony/plivo/answer", "/telephony/vonage/answer",
                "/telephony/telnyx/answer", "/telephony/plivo/transfer")
# these routes check credentials themselves: WebRTC calls take ephemeral keys (`ek_...`), and the
# browser page's /session may be open (`MOKSORI_WEBRTC_OPEN_WEB_SESSIONS`)
SELF_CHECKED_PATHS = ("/session", "/v1/realtime/client_secrets", "/v1/realtime/calls")
SELF_CHECKED_PREFIXES = ("/v1/realtime/calls/",)
SCRAPE_PATHS = ("/metrics", "/ready")

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class BodyLimits:
    default: int = 1 * MIB
    upload: int = 50 * MIB  # /v1/audio/transcriptions
    webhook: int = 64 * KIB  # carrier webhooks
    idle_timeout_s: float = 30.0

    def for_path(self, path: str) -> int:
        if path == "/v1/audio/transcriptions":
            return self.upload
        if path in SIGNED_PATHS:
            return self.webhook
        return self.default


def _json(status: int, message: str, code: str, kind: str = "invalid_request_error",
          headers: list[tuple[bytes, bytes]] | None = None, close: bool = True) -> tuple[dict, dict]:
    """A JSON error. `close`: the rest of the body will not be read, so the connection ends
    after it; otherwise uvicorn reads and drops the rest (a client still sending would get a
    reset instead of the answer), within the header deadline (`server/sockets.py`)."""
    body = json.dumps({"error": {"message": message, "type": kind, "code": code, "param": None}}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *([(b"connection", b"close")] if close else []), *(headers or [])]}
    return start, {"type": "http.response.body", "body": body}


class Guard:
    def __init__(self, app: ASGIApp, *, keys: Callable[[], list[str]], metrics_token: str | None,
                 limits: BodyLimits) -> None:
        self.app = app
        self.keys = keys
        self.metrics_token = metrics_token
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._auth(scope)
        if refusal is not None:
            start, body = refusal
            await send(start)
            await send(body)
            return
        await self._capped(scope, receive, send)

    # ------------------------------------------------------------------ keys

    def _auth(self, scope: Scope) -> tuple[dict, dict] | None:
        keys = self.keys()
        path = scope.get("path", "")
        if not keys or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or path in SIGNED_PATHS or \
                path in SELF_CHECKED_PATHS or path.startswith(SELF_CHECKED_PREFIXES):
            return None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = None
        if path.startswith("/v1/conversations/") and path.endswith("/events"):
            # Server-Sent Events: a browser's EventSource cannot set headers (cluster_routes.py)
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        key = extract_key(headers, (), query)
        if key_ok(key, keys):
            return None
        if path in SCRAPE_PATHS and self.metrics_token and key_ok(key, [self.metrics_token]):
            return None
        return _json(401, "invalid or missing API key", "invalid_api_key", close=False,
                     headers=[(b"www-authenticate", b'Bearer realm="moksori"')])

    # ------------------------------------------------------------------ bodies

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.for_path(scope.get("path", ""))
        for k, v in scope.get("headers", []):
            if k.lower() == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = -1
                if declared > limit or declared < 0:
                    start, body = _json(413, f"request body too large (limit {limit} bytes)", "request_too_large")
                    await send(start)
                    await send(body)
                    return
        state: dict[str, Any] = {"size": 0, "complete": False, "refused": None, "started": False}

        async def capped_receive() -> Message:
            if state["refused"] is not None:
                return {"type": "http.disconnect"}
            if state["complete"]:
                return await receive()  # e.g. a streaming response listening for the disconnect
            try:
                message = await asyncio.wait_for(receive(), self.limits.idle_timeout_s)
            except asyncio.TimeoutError:
                state["refused"] = _json(408, f"no request body data for {self.limits.idle_timeout_s:g} s",
                                         "request_timeout")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                state["size"] += len(message.get("body", b""))
                if state["size"] > limit:
                    state["refused"] = _json(413, f"request body too large (limit {limit} bytes)",
                                             "request_too_large")
                    return {"type": "http.disconnect"}
                if not message.get("more_body", False):
                    state["complete"] = True
            return message

        async def guarded_send(message: Message) -> None:
            if state["refused"] is not None:
                if not state["started"]:  # the app's own answer to the "disconnect" is replaced
                    state["started"] = True
                    start, body = state["refused"]
                    await send(start)
                    await send(body)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except Exception:
            if state["refused"] is None or state["started"]:
                raise
        if state["refused"] is not None and not state["started"]:
            start, body = state["refused"]
            await send(start)
            await send(body)
