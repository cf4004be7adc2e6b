"""`moksori serve`: the Realtime API, the audio endpoints and the browser app."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from moksori.cli.main import app, friendly
from moksori.cli.ui import checked_store_url, err_console, load_stack
from moksori.errors import ConfigError, MoksoriError
from moksori.settings import load_settings, store_url

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


class StartupError(MoksoriError):
    """The server's start-up (its lifespan: warming the models, building the tools...) failed."""

    code = "startup_failed"


@app.command()
@friendly
def serve(
    host: str | None = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default 8000)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the OpenAI-Realtime-compatible API and the browser app."""
    import uvicorn

    from moksori.server.app import create_app
    from moksori.server.auth import is_loopback, redact_uvicorn_logs
    from moksori.server.sockets import guarded_protocols

    settings = load_settings()
    # checked before the models load: uvicorn took these after, and raised (a KeyError for a level
    # it does not know, an OverflowError with its own tracebacks for a port past 65535)
    log_level = log_level.strip().lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"unknown --log-level {log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"--port must be 0-65535 (got {port})")
    host = (host if host is not None else settings.server.host).strip()
    if not host:
        raise ConfigError("the address to listen on is empty",
                          hint="give --host 127.0.0.1 (this machine only) or 0.0.0.0 (every interface, needs API keys)")
    port = settings.server.port if port is None else port
    keys = settings.all_api_keys()
    from moksori.cluster import check_cluster_settings

    check_cluster_settings(settings)  # cluster mode (MOKSORI_REDIS_URL): one-line errors before the models load
    url = store_url(settings)
    if url is not None:  # a URL no supported driver takes is a typo, not an outage: refuse it now
        checked_store_url(url)
    settings.server = settings.server.model_copy(update={"host": host, "port": port})  # the registry's address
    if not is_loopback(host) and not keys:
        raise ConfigError(f"refusing to listen on {host} without API keys",
                          hint="set MOKSORI_API_KEYS (comma-separated) or MOKSORI_API_KEYS_FILE, or bind 127.0.0.1")
    stack = load_stack(settings, warm=False)
    err_console.print("[dim]warming up the models…[/]")
    application = create_app(settings, stack, warm=True)
    state = application.state.moksori
    everywhere = host in ("0.0.0.0", "::")
    shown = "127.0.0.1" if everywhere else host

    def listening() -> None:  # once it is: after the lifespan's start-up and the bind
        err_console.print(f"[bold green]Moksori is listening[/] on http://{shown}:{port}  "
                          f"(browser app: http://{shown}:{port}/ , Realtime: ws://{shown}:{port}/v1/realtime)"
                          + (f"  [yellow]bound to every interface ({host})[/]" if everywhere else "")
                          + ("" if keys else "  [yellow]no API keys: loopback only[/]"), highlight=False)

    # a failed start-up's traceback in the log only when asked for; the CLI says it in one line
    watch = StartupWatch(application, traceback=log_level.lower() in ("debug", "trace")
                         or bool(os.environ.get("MOKSORI_DEBUG")))
    http_protocol, ws_protocol = guarded_protocols(state.sockets)
    config = uvicorn.Config(watch, host=host, port=port, log_level=log_level,
                            http=http_protocol, ws=ws_protocol,
                            ws_max_size=max(16 * 1024 * 1024, 2 * settings.server.max_message_bytes),
                            ws_ping_interval=settings.server.ws_ping_interval_s or None,
                            ws_ping_timeout=settings.server.ws_ping_timeout_s, lifespan="on",
                            timeout_keep_alive=5, timeout_graceful_shutdown=10,
                            h11_max_incomplete_event_size=16 * 1024, backlog=256)
    redact_uvicorn_logs()
    server = draining_server(config, state, settings.server.drain_timeout_s, on_started=listening)
    exited: SystemExit | None = None
    try:
        server.run()
    except OSError as e:
        raise cannot_listen(host, port, e) from None
    except SystemExit as e:  # uvicorn's sys.exit(3), for a failed start-up and for a failed bind alike
        exited = e
    if watch.error is not None:
        raise startup_error(watch.error) from watch.error
    if not server.started:
        # uvicorn exits inside its `except OSError` around the bind: that error is the exit's context
        bind_error = exited.__context__ if exited is not None else None
        if isinstance(bind_error, OSError):
            raise cannot_listen(host, port, bind_error) from None
        raise ConfigError(f"cannot listen on {host}:{port}: the server did not start (see the log above)")


class StartupWatch:
    """The ASGI app uvicorn runs: Moksori's, plus what its lifespan's start-up raised (`error`).

    uvicorn answers a failed start-up as it answers a failed bind (it logs, then `sys.exit(3)`),
    so without this the CLI could not tell them apart. The start-up's traceback, which Starlette
    sends in `lifespan.startup.failed` and uvicorn logs as an error, is left out of the log unless
    `traceback` (the CLI prints the exception in one line instead)."""

    def __init__(self, app: ASGIApp, *, traceback: bool) -> None:
        self.app = app
        self.traceback = traceback
        self.error: Exception | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "lifespan.startup.complete":
                started = True
            elif message["type"] == "lifespan.startup.failed" and not self.traceback:
                message = {**message, "message": ""}
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as e:
            if not started:
                self.error = e
            raise


def startup_error(e: Exception) -> StartupError:
    """One line for what the lifespan's start-up raised, naming the provider when the error does."""
    reason = " ".join(str(e).split())
    hint = None
    if isinstance(e, MoksoriError):
        provider = getattr(e, "provider", None)
        if provider and provider not in reason:
            reason = f"{provider}: {reason}"
    else:  # not one of ours: a bug, or a library's error nobody translated
        reason = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
        hint = "--log-level debug or MOKSORI_DEBUG=1 shows the traceback"
    return StartupError(f"start-up failed: {reason}", hint=hint)


_BIND_HINTS = {
    errno.EADDRINUSE: "another process listens there: stop it, or choose another --port",
    errno.EADDRNOTAVAIL: "that is not an address of this machine: give --host 127.0.0.1 or 0.0.0.0",
}


def cannot_listen(host: str, port: int, e: OSError) -> ConfigError:
    """The bind failed: `cannot listen on HOST:PORT: <the OS's reason>`. The errno says it shorter
    than asyncio's message ("error while attempting to bind on address (...): ...")."""
    if isinstance(e, socket.gaierror) or not e.errno or e.errno < 0:
        reason = e.strerror or str(e)  # a host name that does not resolve: "Name or service not known"
    else:
        reason = os.strerror(e.errno)
    hint = _BIND_HINTS.get(e.errno or 0)
    if e.errno == errno.EACCES and port < 1024:
        hint = "ports below 1024 need privileges: choose another --port"
    return ConfigError(f"cannot listen on {host}:{port}: {reason}", hint=hint)


def draining_server(config: Any, state: Any, drain_timeout_s: float,
                    on_started: Callable[[], None] | None = None) -> Any:
    """uvicorn's Server, except that the first SIGTERM drains: new sessions are refused (503
    `draining`, `/ready` 503) while the live ones go on, until none is left or `drain_timeout_s`
    passed; then the usual shutdown (what is still open gets 1012). A second SIGTERM, or SIGINT,
    stops at once; that too marks the server draining first, so its live-event streams end whole
    within a poll instead of being cut at uvicorn's graceful-shutdown timeout. `on_started` is
    called once it listens (the lifespan's start-up done, the address bound)."""
    import signal
    import time

    import uvicorn

    class DrainingServer(uvicorn.Server):
        draining_since: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig == signal.SIGTERM and drain_timeout_s > 0 and self.draining_since is None and not self.should_exit:
                self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
                self.draining_since = time.monotonic()
                state.drain()
                return
            state.drain()  # also at once (SIGINT): live-event streams end whole, not cut at the graceful timeout
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and on_started is not None:
                on_started()

        async def on_tick(self, counter: int) -> bool:
            if self.draining_since is not None and not self.should_exit:
                if state.sessions <= 0 or time.monotonic() - self.draining_since >= drain_timeout_s:
                    self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer(config)
