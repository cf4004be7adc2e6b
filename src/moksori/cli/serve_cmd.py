"""`moksori serve`: the Realtime API, the audio endpoints and the browser app."""

from __future__ import annotations

from typing import Any

import typer

from moksori.cli.main import app, friendly
from moksori.cli.ui import err_console, load_stack
from moksori.errors import ConfigError
from moksori.settings import load_settings, store_url


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
        from moksori.store.db import normalise_url

        normalise_url(url)
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
    err_console.print(f"[bold green]Moksori is listening[/] on http://{shown}:{port}  "
                      f"(browser app: http://{shown}:{port}/ , Realtime: ws://{shown}:{port}/v1/realtime)"
                      + (f"  [yellow]bound to every interface ({host})[/]" if everywhere else "")
                      + ("" if keys else "  [yellow]no API keys: loopback only[/]"), highlight=False)
    http_protocol, ws_protocol = guarded_protocols(state.sockets)
    config = uvicorn.Config(application, host=host, port=port, log_level=log_level,
                            http=http_protocol, ws=ws_protocol,
                            ws_max_size=max(16 * 1024 * 1024, 2 * settings.server.max_message_bytes),
                            ws_ping_interval=settings.server.ws_ping_interval_s or None,
                            ws_ping_timeout=settings.server.ws_ping_timeout_s, lifespan="on",
                            timeout_keep_alive=5, timeout_graceful_shutdown=10,
                            h11_max_incomplete_event_size=16 * 1024, backlog=256)
    redact_uvicorn_logs()
    server = draining_server(config, state, settings.server.drain_timeout_s)
    try:
        server.run()
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    except SystemExit:
        pass
    if not server.started:
        raise ConfigError(f"cannot listen on {host}:{port} (is the address in use?)")


def draining_server(config: Any, state: Any, drain_timeout_s: float) -> Any:
    """uvicorn's Server, except that the first SIGTERM drains: new sessions are refused (503
    `draining`, `/ready` 503) while the live ones go on, until none is left or `drain_timeout_s`
    passed; then the usual shutdown (what is still open gets 1012). A second SIGTERM, or SIGINT,
    stops at once; that too marks the server draining first, so its live-event streams end whole
    within a poll instead of being cut at uvicorn's graceful-shutdown timeout."""
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

        async def on_tick(self, counter: int) -> bool:
            if self.draining_since is not None and not self.should_exit:
                if state.sessions <= 0 or time.monotonic() - self.draining_since >= drain_timeout_s:
                    self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer(config)
