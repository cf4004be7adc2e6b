"""The ASGI app: Realtime WebSocket (OpenAI + Azure paths), audio endpoints, web app, metrics.

Routes open to anyone: the browser page (`/`, `/static/*`) and `/health` (a bare liveness probe
that names nothing). With API keys configured, everything else needs one (`server/guard.py`);
`/metrics` and `/ready` also take `MOKSORI_METRICS_TOKEN`. `/ready` is the readiness probe:
200 while sessions are admitted, 503 while the server sheds load or drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections import Counter
from contextlib import asynccontextmanager
from importlib import resources
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from moksori import __version__
from moksori.agent_kit import AgentKit
from moksori.engine.session import Session
from moksori.protocols import realtime as rt
from moksori.providers import threads
from moksori.providers.registry import Stack
from moksori.recording import Who
from moksori.server import cluster_routes, recording_hooks
from moksori.server.auth import extract_key, key_label, key_ok
from moksori.server.ephemeral_keys import MemoryKeyStore, is_ephemeral
from moksori.server.guard import BodyLimits, Guard
from moksori.server.load import Admission, AdmissionLimits, LoopLag, Refusal, open_fds
from moksori.server.metrics import Metrics
from moksori.server.realtime_conn import RealtimeConnection
from moksori.transport import Inbox, receive_loop
from moksori.server.sockets import (PEER_EXTENSION, SocketStats, default_max_connections, fd_limit,
                                    quiet_accept_errors)
from moksori.settings import Settings

log = logging.getLogger("moksori.server")

INBOUND_MESSAGES = 512  # client messages read ahead of processing (~10 s of 20 ms appends)


class ServerState:
    def __init__(self, settings: Settings, stack: Stack) -> None:
        self.settings = settings
        self.stack = stack
        self.keys = settings.all_api_keys()
        token = settings.metrics_token
        self.metrics_token = token.get_secret_value() if token is not None and token.get_secret_value() else None
        self.sessions_by_key: Counter[str] = Counter()
        self.sessions = 0
        self.metrics = Metrics()
        self.ephemeral = MemoryKeyStore(settings.webrtc.max_ephemeral_keys)  # ek_ keys (server/ephemeral_keys.py)
        self.webrtc = None  # server/webrtc/routes.py installs it
        s = settings.server
        self.lag = LoopLag()
        self.admission = Admission(AdmissionLimits(
            max_sessions=s.max_sessions, max_sessions_per_key=s.max_sessions_per_key,
            shed_loop_lag_ms=s.shed_loop_lag_ms, shed_queue_wait_s=s.shed_queue_wait_s), self.lag)
        self.sockets = SocketStats(s.max_connections or default_max_connections(), s.header_timeout_s)
        self.session_objects: weakref.WeakSet[Session] = weakref.WeakSet()  # every Session still in memory
        # tools, guardrails, denoiser, backchannels: built in the lifespan (MCP servers are
        # listed there), handed to every session; None until then (and for bare test apps)
        self.kit: AgentKit | None = None

    @property
    def auth_required(self) -> bool:
        return bool(self.keys)

    # ------------------------------------------------------------------ sessions

    def admit(self, label: str | None) -> Refusal | None:
        return self.admission.check(self.sessions, None if label is None else self.sessions_by_key[label])

    def drain(self) -> None:
        """Take no new sessions from now on (shutdown, or the cluster's draining); live ones go on."""
        self.admission.draining = True
        node = getattr(self, "cluster", None)
        if node is not None:
            node.draining = True

    def opened(self, label: str | None, session: Session | None = None) -> None:
        self.sessions += 1
        self.metrics.sessions_total += 1
        if label is not None:
            self.sessions_by_key[label] += 1
        if session is not None:
            self.track(session)

    def closed(self, label: str | None) -> None:
        self.sessions -= 1
        if label is not None:
            self.sessions_by_key[label] -= 1
            if self.sessions_by_key[label] <= 0:
                del self.sessions_by_key[label]

    def track(self, session: Session) -> None:
        self.session_objects.add(session)
        session.bus.listen(self.metrics.observe_session())

    def unclosed_sessions(self) -> int:
        """Session objects still in memory and not closed: after every client has gone, 0."""
        return sum(1 for s in list(self.session_objects) if not s.closed)


def create_app(settings: Settings, stack: Stack, *, warm: bool = False) -> FastAPI:
    """Models are loaded by the caller (once per process) and shared by every session.

    `warm=True` pays the first-inference costs at startup, inside the server's own event loop
    (a remote provider's HTTP client then belongs to the loop that will use it)."""
    state = ServerState(settings, stack)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        quiet_accept_errors(asyncio.get_running_loop())
        if warm:
            from moksori.engine.prompts import system_prompt

            await stack.warm(system_prompt(settings.agent.instructions, stack.llm.caps.languages))
        tune_gc()
        if state.kit is None:
            state.kit = await AgentKit.build(settings)
            for w in state.kit.warnings:
                log.warning("tools: %s", w)
            state.kit.install_log_filter()
        state.lag.start()
        try:
            yield
        finally:
            state.drain()
            await state.lag.stop()
            if state.kit is not None:
                await state.kit.close()

    app = FastAPI(title="Moksori", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.moksori = state
    s = settings.server
    app.add_middleware(Guard, keys=lambda: state.keys, metrics_token=state.metrics_token,
                       limits=BodyLimits(upload=s.max_upload_bytes, idle_timeout_s=s.body_idle_timeout_s))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the process answers. Names nothing (no version, no models, no counts)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 while new sessions are admitted, 503 while shedding load or draining."""
        body = state.admission.status(state.sessions)
        body.update({"version": __version__, "models": stack.describe(),
                     "unclosed_sessions": state.unclosed_sessions()})
        return JSONResponse(body, 200 if body["status"] == "ready" else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(sessions=state.sessions) + load_metrics(state)
                                 + recording_hooks.store_metrics(state), media_type="text/plain; version=0.0.4")

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

        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


async def refuse(ws: WebSocket, refusal: Refusal) -> None:
    """Turn a WebSocket away before the handshake: HTTP 503 with `Retry-After` and a JSON error,
    distinct from an auth failure (403); without the ASGI denial-response extension the session
    is accepted and closed at once with 1013 (try again later). One implementation for local
    admission and the cluster's (`cluster_routes.refuse_ws`)."""
    await cluster_routes.refuse_ws(ws, refusal)


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
    try:
        user = recording_hooks.user_of(headers, query)
    except recording_hooks.InvalidUser as e:
        await ws.close(code=1008, reason=str(e)[:120])  # before accept: HTTP 403
        return
    # per-key limits only with keys; an ephemeral key's sessions count against the key that minted it
    label = grant.owner if grant is not None and state.auth_required else \
        (key_label(key) if state.auth_required else None)
    refusal = state.admit(label)
    if refusal is not None:
        await refuse(ws, refusal)
        return
    # limits across the cluster (one process: always admitted); None: refused, the refusal is sent
    ticket = await cluster_routes.admit_ws(ws, state, label or key_label(None))
    if ticket is None:
        return
    flavor = rt.detect_flavor(ws.url.path, headers, offered)
    accept_proto = "realtime" if "realtime" in offered else None
    try:
        await ws.accept(subprotocol=accept_proto)
    except BaseException:  # the client left while it was being admitted: its place goes back
        ticket.closed("client_left")
        raise
    state.opened(label)
    conn: RealtimeConnection | None = None
    tasks: list[asyncio.Task] = []
    close = (1000, "")
    silent_s = 0.0  # how long before the end the client was last heard from, if it is gone
    try:
        async def send(event: dict[str, Any]) -> None:
            try:
                await ws.send_text(json.dumps(event, ensure_ascii=False))
            except UnicodeEncodeError:  # an echoed lone surrogate (a client's "\ud800") has no UTF-8 form
                await ws.send_text(json.dumps(event))  # nothing was written: send it with ASCII escapes

        conn = RealtimeConnection(
            state.stack, state.settings, flavor, send, model=query.get("model") or "moksori",
            timeline=query.get("moksori_timeline") in ("1", "true"),
            transcription_only=query.get("intent") == "transcription", kit=state.kit)
        state.track(conn.session)
        channel = "voice-live" if flavor is rt.Flavor.AZURE else "realtime"
        ticket.opened(channel, conn.session_id, conn.session)
        who = Who(recording_hooks.tenant_of(state, key, grant), user, channel,
                  load_history=recording_hooks.wants_history(query))
        recorded = recording_hooks.record(state, conn.session, who)
        conn.recorder = recorded.recorder if recorded is not None else None

        async def fatal(reason: str) -> None:  # the session cannot go on (the realtime brain's upstream is gone)
            nonlocal close
            close = (1011, reason)
            for t in tasks:
                t.cancel()

        conn.on_fatal = fatal
        if grant is not None:
            conn.preset(grant.session, transcription_only=grant.transcription)
        await conn.start()
        # The reader keeps the socket read (and the client's keepalive pings answered) while a
        # handler waits, e.g. for a transcription; up to INBOUND_MESSAGES wait their turn. When
        # the client goes, whatever is still queued is dropped and the session closes at once.
        loop = asyncio.get_running_loop()
        inbox: Inbox[str | bytes] = Inbox(conn.on_message, name=f"rt-process-{conn.session_id}",
                                          limit=INBOUND_MESSAGES, start=False)
        last = [loop.time()]  # when the client last sent anything
        reader = asyncio.create_task(_read(ws, inbox, last), name=f"rt-read-{conn.session_id}")
        worker = inbox.start()
        tasks = [reader, worker]
        idle = state.settings.server.session_idle_timeout_s
        while True:
            done, _ = await asyncio.wait([*tasks, conn.sender], timeout=min(idle, 30.0),
                                         return_when=asyncio.FIRST_COMPLETED)
            if conn.sender in done:  # the socket failed, or the client stopped reading
                close = (1008, "the client is not reading")
                break
            if done:
                break
            if loop.time() - last[0] > idle:
                close = (1000, f"no client message for {idle:g} s")
                break
        if worker.done() and not worker.cancelled() and worker.exception() is not None:
            log.error("realtime connection failed", exc_info=worker.exception())
            close = (1011, "internal error")
        if reader.done() or conn.send_stopped in ("send_failed", "not_reading"):  # the client is gone
            silent_s = max(0.0, loop.time() - max(last[0], _last_heard(ws)))
    except Exception:
        log.exception("realtime connection failed")
        close = (1011, "internal error")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if conn is not None:
                await conn.close(silent_s=silent_s)
        finally:
            ticket.closed("session_closed")
            state.closed(label)
            # already closed by the client, or (a client that does not read) never flushed
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=close[0], reason=close[1]), 5.0)


def _last_heard(ws: WebSocket) -> float:
    """When the socket last received anything from the client (a message, a pong), by the loop's
    clock; 0 where the server's socket layer does not say (`sockets.PEER_EXTENSION`)."""
    peer = (ws.scope.get("extensions") or {}).get(PEER_EXTENSION) or {}
    fn = peer.get("last_heard")
    return float(fn()) if callable(fn) else 0.0


async def _read(ws: WebSocket, inbox: Inbox[str | bytes], last: list[float]) -> None:
    """Until the client disconnects (or the socket breaks); a full `inbox` pauses reading."""
    loop = asyncio.get_running_loop()

    async def handle(data: str | bytes) -> None:
        last[0] = loop.time()
        await inbox.put(data)

    await receive_loop(ws, handle)


def load_metrics(state: ServerState) -> str:
    """Gauges for load and cleanup: loop lag, model queues, sockets, refusals, leaks."""
    lines = [
        "# HELP moksori_loop_lag_seconds Event-loop lag over the last 5 s.",
        "# TYPE moksori_loop_lag_seconds gauge",
    ]
    for q in (0.5, 0.95, 0.99):
        lines.append(f'moksori_loop_lag_seconds{{quantile="{q}"}} {state.lag.quantile(q):.6f}')
    lines += ["# HELP moksori_model_queue Jobs waiting for each model.", "# TYPE moksori_model_queue gauge"]
    rows = [(ex.name, ex) for ex in threads.executors()]
    lines += [f'moksori_model_queue{{model="{n}"}} {ex.queued}' for n, ex in rows]
    lines += ["# TYPE moksori_model_running gauge"]
    lines += [f'moksori_model_running{{model="{n}"}} {ex.running}' for n, ex in rows]
    lines += ["# TYPE moksori_model_expected_wait_seconds gauge"]
    lines += [f'moksori_model_expected_wait_seconds{{model="{n}"}} {ex.expected_wait_s():.3f}' for n, ex in rows]
    lines += ["# TYPE moksori_model_jobs_total counter"]
    lines += [f'moksori_model_jobs_total{{model="{n}"}} {ex.stats.completed}' for n, ex in rows]
    lines += ["# TYPE moksori_model_dropped_total counter"]
    lines += [f'moksori_model_dropped_total{{model="{n}"}} {ex.stats.dropped}' for n, ex in rows]
    lines += ["# TYPE moksori_model_busy_seconds_total counter"]
    lines += [f'moksori_model_busy_seconds_total{{model="{n}"}} {ex.stats.busy_s:.3f}' for n, ex in rows]
    lines += ["# HELP moksori_sessions_refused_total Sessions turned away by admission control.",
              "# TYPE moksori_sessions_refused_total counter"]
    for code in ("too_many_sessions", "server_busy", "draining"):
        lines.append(f'moksori_sessions_refused_total{{reason="{code}"}} {state.admission.refused.get(code, 0)}')
    sk = state.sockets
    lines += [
        "# TYPE moksori_ready gauge", f"moksori_ready {int(state.admission.busy_reason() is None)}",
        "# TYPE moksori_open_connections gauge", f"moksori_open_connections {sk.open_connections}",
        "# TYPE moksori_max_connections gauge", f"moksori_max_connections {sk.max_connections}",
        "# TYPE moksori_connections_refused_total counter", f"moksori_connections_refused_total {sk.refused_busy}",
        "# TYPE moksori_header_timeouts_total counter", f"moksori_header_timeouts_total {sk.header_timeouts}",
        "# TYPE moksori_bad_upgrades_total counter", f"moksori_bad_upgrades_total {sk.bad_upgrades}",
        "# HELP moksori_ws_ping_timeouts_total WebSockets closed because a keepalive ping went unanswered.",
        "# TYPE moksori_ws_ping_timeouts_total counter", f"moksori_ws_ping_timeouts_total {sk.ping_timeouts}",
        "# TYPE moksori_open_fds gauge", f"moksori_open_fds {open_fds()}",
        "# TYPE moksori_fd_limit gauge", f"moksori_fd_limit {fd_limit()}",
        "# HELP moksori_unclosed_sessions Session objects in memory that were never closed (leaks).",
        "# TYPE moksori_unclosed_sessions gauge", f"moksori_unclosed_sessions {state.unclosed_sessions()}",
        "# TYPE moksori_asyncio_tasks gauge", f"moksori_asyncio_tasks {len(asyncio.all_tasks())}",
    ]
    return "\n".join(lines) + "\n"


def tune_gc() -> None:
    """Models and imports are loaded: move them out of the collector's way. With hundreds of
    sessions, full collections over those long-lived objects paused the event loop 50-100 ms."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)

