"""The ASGI app: Realtime WebSocket (OpenAI + Azure paths), audio endpoints, web app, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from moksori import __version__
from moksori.protocols import realtime as rt
from moksori.providers.registry import Stack
from moksori.server import cluster_routes
from moksori.server.auth import extract_key, key_label, key_ok
from moksori.server.ephemeral_keys import MemoryKeyStore, is_ephemeral
from moksori.server.metrics import Metrics
from moksori.server.realtime_conn import RealtimeConnection
from moksori.settings import Settings

log = logging.getLogger("moksori.server")


class ServerState:
    def __init__(self, settings: Settings, stack: Stack) -> None:
        self.settings = settings
        self.stack = stack
        self.keys = settings.all_api_keys()
        self.sessions_by_key: Counter[str] = Counter()
        self.sessions = 0
        self.metrics = Metrics()
        self.ephemeral = MemoryKeyStore(settings.webrtc.max_ephemeral_keys)  # ek_ keys (server/ephemeral_keys.py)
        self.webrtc = None  # server/webrtc/routes.py installs it

    @property
    def auth_required(self) -> bool:
        return bool(self.keys)


def create_app(settings: Settings, stack: Stack, *, warm: bool = False) -> FastAPI:
    """Models are loaded by the caller (once per process) and shared by every session.

    `warm=True` pays the first-inference costs at startup, inside the server's own event loop
    (a remote provider's HTTP client then belongs to the loop that will use it)."""
    state = ServerState(settings, stack)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if warm:
            from moksori.engine.prompts import system_prompt

            await stack.warm(system_prompt(settings.agent.instructions, stack.llm.caps.languages))
        tune_gc()
        yield
        await asyncio.sleep(0)

    app = FastAPI(title="Moksori", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.moksori = state

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "sessions": state.sessions, "models": stack.describe()}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(sessions=state.sessions),
                                 media_type="text/plain; version=0.0.4")

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket) -> None:
        await serve_realtime(ws, state)

    @app.websocket("/voice-live/realtime")
    async def voice_live(ws: WebSocket) -> None:
        await serve_realtime(ws, state)

    from moksori.server.audio_api import router as audio_router

    app.include_router(audio_router)

    from moksori.server import telephony_routes

    telephony_routes.install(app, state)

    from moksori.server.webrtc import routes as webrtc_routes

    webrtc_routes.install(app, state)

    from moksori.server import conversations_api  # the store opens and closes with the app

    conversations_api.install(app, state)
    cluster_routes.install(app, state)  # /v1/cluster, live events, call control; cluster mode with MOKSORI_REDIS_URL

    static = resources.files("moksori.web") / "static"
    if static.is_dir():
        @app.get("/")
        async def index() -> FileResponse:
            return FileResponse(str(static / "index.html"), media_type="text/html")

        app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


async def serve_realtime(ws: WebSocket, state: ServerState) -> None:
    headers = {k.lower(): v for k, v in ws.headers.items()}
    offered = list(ws.scope.get("subprotocols") or [])
    query = dict(ws.query_params)
    key = extract_key(headers, offered, query)
    if query.get("call_id") is not None:  # the sideband of a WebRTC call
        from moksori.server.webrtc.routes import serve_sideband

        await serve_sideband(ws, state, key, query["call_id"])
        return
    grant = await state.ephemeral.get(key) if is_ephemeral(key) else None  # an ek_ key starts sessions
    if (is_ephemeral(key) and grant is None) or (state.auth_required and grant is None and not key_ok(key, state.keys)):
        state.metrics.auth_failures += 1
        await ws.close(code=1008, reason="invalid or missing API key")  # before accept: HTTP 403
        return
    label = grant.owner if grant is not None else key_label(key if state.auth_required else None)
    limits = state.settings.server
    if state.sessions >= limits.max_sessions or state.sessions_by_key[label] >= limits.max_sessions_per_key:
        await ws.close(code=1013, reason="too many sessions")
        return
    ticket = await cluster_routes.admit_ws(ws, state, label)  # limits across the cluster; None: refused
    if ticket is None:
        return
    flavor = rt.detect_flavor(ws.url.path, headers, offered)
    accept_proto = "realtime" if "realtime" in offered else None
    await ws.accept(subprotocol=accept_proto)
    state.sessions += 1
    state.sessions_by_key[label] += 1
    state.metrics.sessions_total += 1

    async def send(event: dict[str, Any]) -> None:
        await ws.send_text(json.dumps(event, ensure_ascii=False))

    conn = RealtimeConnection(
        state.stack, state.settings, flavor, send, model=query.get("model") or "moksori",
        timeline=query.get("moksori_timeline") in ("1", "true"),
        transcription_only=query.get("intent") == "transcription")
    conn.session.bus.listen(state.metrics.observe_session())
    ticket.opened("voice-live" if flavor is rt.Flavor.AZURE else "realtime", conn.session_id, conn.session)
    try:
        if grant is not None:
            conn.preset(grant.session, transcription_only=grant.transcription)
        await conn.start()
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            data = msg.get("text")
            if data is None:
                data = msg.get("bytes") or b""
            await conn.on_message(data)
    except WebSocketDisconnect:
        pass
    except Exception:  # noqa: BLE001 - never let one connection take the server down
        log.exception("realtime connection failed")
    finally:
        await conn.close()
        ticket.closed("session_closed")
        state.sessions -= 1
        state.sessions_by_key[label] -= 1
        if state.sessions_by_key[label] <= 0:
            del state.sessions_by_key[label]
        try:
            await ws.close()
        except Exception:  # noqa: BLE001 - already closed
            pass


def tune_gc() -> None:
    """Models and imports are loaded: move them out of the collector's way. With hundreds of
    sessions, full collections over those long-lived objects paused the event loop 50-100 ms."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
