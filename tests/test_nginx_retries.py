"""Which 503s the cluster's nginx (`deploy/nginx/moksori.conf`, as `scripts/cluster.py` renders
it) tries again on the next worker. A refusal of one worker (full, draining, busy) should be; a
503 every worker gives (the shared store or Redis is away) should not: retrying it only adds each
worker's timeout (a conversations read during a PostgreSQL freeze took 20 s through two workers).

Real nginx in front of two stand-in workers (plain HTTP servers on loopback that answer 503 and
count what reaches them): what is under test is nginx's routing, not Moksori's app.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from servers import free_port, wait_http

REPO = Path(__file__).resolve().parents[1]

if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():  # pragma: no cover - make setup installs it
    pytest.fail("nginx is not installed (bash scripts/install-system.sh)", pytrace=False)


def _cluster_script():
    spec = importlib.util.spec_from_file_location("cluster_script", REPO / "scripts/cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Refusing(ThreadingHTTPServer):
    """A stand-in worker: every request is counted by path and answered 503."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.hits[path] = server.hits.get(path, 0) + 1
                body = b'{"error": {"code": "refused"}}'
                self.send_response(200 if path == "/health" else 503)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory) -> Iterator[tuple[str, list[Refusing]]]:
    cluster = _cluster_script()
    workers = [Refusing(), Refusing()]
    threads = [threading.Thread(target=w.serve_forever, daemon=True) for w in workers]
    for t in threads:
        t.start()
    run = tmp_path_factory.mktemp("nginx")
    port = free_port()
    pid = cluster.start_nginx(cluster.nginx_binary(), run, port, [w.server_address[1] for w in workers])["pid"]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout_s=10)
        yield url, workers
    finally:
        subprocess.run(["kill", str(pid)], check=False)
        for w in workers:
            w.shutdown()


def reached(workers: list[Refusing], path: str) -> int:
    return sum(w.hits.get(path, 0) for w in workers)


@pytest.mark.parametrize("path", ["/v1/conversations", "/v1/conversations/conv_1/items", "/v1/usage",
                                  "/v1/cluster", "/v1/conversations/conv_1/events"])
def test_a_503_every_worker_would_give_is_not_tried_again(nginx, path) -> None:
    url, workers = nginx
    r = httpx.get(url + path, timeout=10)
    assert r.status_code == 503
    assert reached(workers, path) == 1


@pytest.mark.parametrize("path", ["/v1/realtime", "/voice-live/realtime", "/telephony/twilio/stream"])
def test_a_session_refused_by_one_worker_goes_to_the_next(nginx, path) -> None:
    url, workers = nginx
    r = httpx.get(url + path, timeout=10)
    assert r.status_code == 503  # both refused: the client gets the last one's answer
    assert reached(workers, path) == 2
