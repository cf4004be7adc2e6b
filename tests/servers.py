"""Start real servers on 127.0.0.1 for tests, and always take them down again.

Two kinds:

* `ServerProcess` — a subprocess (e.g. `python -m llama_cpp.server`), its output captured in a
  log file you can read while it runs (`log_text()`), ready once a URL answers.
* `ThreadedASGIServer` — any ASGI app (Starlette, FastAPI, a bare callable) served by uvicorn
  in a background thread with its own event loop, so it keeps working while a test's own loop
  is busy or blocked.

Both are context managers; `stop()` is idempotent. Typical use in a fixture:

    with ServerProcess([sys.executable, "-m", "http.server", str(port)], port=port,
                       ready_path="/") as srv:
        yield srv
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def closed_port(host: str = HOST) -> int:
    """A port where connecting is refused (nothing listens there)."""
    return free_port(host)


def package_file(package: str, filename: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package
    (its `__init__` may import things that are not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{filename} not found in package {package!r}")


def wait_http(
    url: str,
    *,
    timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
    alive: Callable[[], bool] | None = None,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Poll `url` until it answers HTTP 200. `alive()` returning False aborts early."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"server died while starting ({url}){describe()}")
        req = urllib.request.Request(url, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (OSError, urllib.error.URLError) as e:
            last = type(e).__name__
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s:g} s (last: {last}){describe()}")


class ServerProcess:
    """A server subprocess listening on `host:port`.

    `argv` is the full command line (include the port in it yourself). Output (stdout and
    stderr) goes to a temporary log file. The process gets its own process group so that
    `stop()` also ends any children it spawned.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        port: int,
        host: str = HOST,
        ready_path: str = "/",
        ready_headers: Mapping[str, str] | None = None,
        ready_timeout_s: float = 60.0,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.ready_path = ready_path
        self.ready_headers = dict(ready_headers or {})
        self.ready_timeout_s = ready_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        fd, name = tempfile.mkstemp(prefix="server-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, cwd=self.cwd, start_new_session=True,
        )
        try:
            wait_http(self.url + self.ready_path, timeout_s=self.ready_timeout_s, headers=self.ready_headers,
                      alive=lambda: self.proc is not None and self.proc.poll() is None,
                      describe=lambda: "\n--- server log (tail) ---\n" + self.log_text()[-3000:])
        except BaseException:
            self.stop()
            raise
        return self

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        if self._log is not None and not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, needle: str, *, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return True
            time.sleep(0.05)
        return needle in self.log_text()

    def stop(self, *, grace_s: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def llama_server(
    model: str | os.PathLike[str],
    *,
    port: int | None = None,
    threads: int = 2,
    n_ctx: int = 2048,
    api_key: str | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout_s: float = 60.0,
) -> ServerProcess:
    """`python -m llama_cpp.server` for a GGUF, OpenAI-compatible API under `/v1`.

    `--interrupt_requests False`: by default the server ends a running stream early (with a
    bare `[DONE]`) as soon as another request arrives, which makes back-to-back tests flaky.
    """
    port = port or free_port()
    argv = [
        sys.executable, "-m", "moksori.providers.llama_cpu",  # llama_cpp.server, portable kernels
        "--model", str(model), "--host", HOST, "--port", str(port),
        "--n_threads", str(threads), "--n_ctx", str(n_ctx),
        "--verbose", "False", "--interrupt_requests", "False",
        *(["--api_key", api_key] if api_key else []),
        *extra_args,
    ]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return ServerProcess(argv, port=port, ready_path="/v1/models", ready_headers=headers,
                         ready_timeout_s=ready_timeout_s, env={"PYTHONUNBUFFERED": "1"})


class ThreadedASGIServer:
    """Serve an ASGI app with uvicorn on a background thread (own event loop)."""

    def __init__(self, app: Any, *, host: str = HOST, port: int | None = None, start_timeout_s: float = 10.0) -> None:
        import uvicorn

        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=1, access_log=False)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ThreadedASGIServer:
        self._thread = threading.Thread(target=self.server.run, name=f"asgi-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"ASGI server on port {self.port} failed to start")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"ASGI server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self.server.should_exit = True
        thread.join(timeout_s)
        if thread.is_alive():
            self.server.force_exit = True
            thread.join(timeout_s)

    def __enter__(self) -> ThreadedASGIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
