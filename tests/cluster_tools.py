"""`make cluster` for a test module: `scripts/cluster.py up` under a temporary CLUSTER_DIR on a
free port, with the PostgreSQL (a database of its own) and Redis (a key prefix of its own) of this
machine; `scripts/cluster.py down` afterwards, checked to leave nothing running."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import postgres_database
from redis_tools import REDIS_URL, delete_prefix_sync, new_prefix
from servers import free_port
from speech import prepared_data_dir

REPO = Path(__file__).resolve().parents[1]


def cluster_cmd(cmd: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts/cluster.py"), cmd], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def start_time(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


@contextlib.contextmanager
def running_cluster(tmp_path_factory: Any, key: str, settings: dict[str, str],
                    store_url: Callable[[str], str] | None = None) -> Iterator[dict[str, Any]]:
    """nginx + 2 workers (+ one llama_cpp.server unless `settings` has CLUSTER_LLM_URL), each
    worker with the key `key` and `settings`. Yields {"env", "dir", "port", "state", "url", "db"};
    `state` is state.json (a test that restarts a worker updates it, for `down`). `store_url`
    maps the test database's URL to the one the workers use (e.g. through a proxy)."""
    data_dir = prepared_data_dir(tmp_path_factory)
    d = tmp_path_factory.mktemp("cluster-dir")
    prefix = new_prefix()
    port = free_port()
    with postgres_database() as db:
        env = {**os.environ, "CLUSTER_DIR": str(d), "CLUSTER_PORT": str(port), "WORKERS": "2",
               "CLUSTER_LLM_THREADS": "1", "CLUSTER_READY_TIMEOUT_S": "400",
               "MOKSORI_REDIS_URL": REDIS_URL, "MOKSORI_REDIS_PREFIX": prefix,
               "MOKSORI_STORE_URL": store_url(db) if store_url is not None else db,
               "MOKSORI_DATA_DIR": str(data_dir), "MOKSORI_API_KEYS": key, **settings}
        up = cluster_cmd("up", env, timeout=600)
        state = json.loads((d / "state.json").read_text()) if (d / "state.json").exists() else None
        try:
            assert up.returncode == 0, f"cluster up failed:\n{up.stdout}\n{up.stderr}"
            assert state is not None
            yield {"env": env, "dir": d, "port": port, "state": state, "url": f"http://127.0.0.1:{port}", "db": db}
        finally:
            down = cluster_cmd("down", env, timeout=120)
            procs = ([state["nginx"]] if state and state.get("nginx") else []) + \
                    (state["workers"] + ([state["llm"]] if state.get("llm") else []) if state else [])
            left = [p["pid"] for p in procs if start_time(p["pid"]) == p["start"]]
            delete_prefix_sync(prefix)
            # cluster-down stops everything it started, and only that
            assert down.returncode == 0, down.stderr
            assert not left, f"still running after cluster down: {left}\n{down.stdout}"
            assert not (d / "state.json").exists()
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
