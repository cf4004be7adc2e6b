#!/usr/bin/env python3
"""`make cluster` / `make cluster-down`: Moksori as a cluster on this machine.

    python scripts/cluster.py up       nginx + WORKERS `moksori serve` workers + one llama_cpp.server
    python scripts/cluster.py down     stop what `up` started (by its pid files), nothing else
    python scripts/cluster.py status   what runs, and the cluster as /v1/cluster sees it
    python scripts/cluster.py restart  rolling restart: each worker drains (SIGTERM), then starts again

Everything listens on 127.0.0.1. The workers use the PostgreSQL and Redis servers that already
run (the database is created when missing), and one OpenAI-compatible inference server
(`python -m llama_cpp.server` with the packaged SmolLM2 GGUF, or CLUSTER_LLM_MODEL; started through
`moksori.providers.llama_cpu`, which turns off the AMX path that crashes on some Xeons) as their LLM.
Pid files and logs go to CLUSTER_DIR (default .data/cluster):

    llm.pid llm.log  worker-1.pid worker-1.log ...  nginx/nginx.pid nginx/error.log nginx/access.log
    state.json (ports, pids and their start times)  stream-secret, hash-secret (made once, mode 600)

Settings (environment):
    CLUSTER_PORT=8000  WORKERS=2  CLUSTER_DIR=.data/cluster
    MOKSORI_REDIS_URL=redis://127.0.0.1:6379/0   MOKSORI_REDIS_PREFIX=moksori:
    MOKSORI_STORE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/moksori_cluster
    MOKSORI_TELEPHONY_STREAM_SECRET, MOKSORI_STORE_HASH_SECRET (default: made once in CLUSTER_DIR)
    CLUSTER_LLM_MODEL (a GGUF path)  CLUSTER_LLM_THREADS=<half the cores>  CLUSTER_LLM_CTX=4096
    CLUSTER_LLM_URL=http://host:port  an OpenAI-compatible server that already runs (vLLM...): none is
                                      started, and MOKSORI_LLM_MODEL names its model
    CLUSTER_READY_TIMEOUT_S=300  NGINX=nginx  WORKER=n (restart only worker-n)
Any other MOKSORI_* variable (API keys, models...) reaches every worker unchanged.

A pid is only signalled if the process still has the start time recorded when it was started,
so a pid reused by another program is never touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PY = sys.executable


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def cluster_dir() -> Path:
    d = Path(env("CLUSTER_DIR", str(REPO / ".data" / "cluster")))
    return d if d.is_absolute() else (Path.cwd() / d)


def say(msg: str) -> None:
    print(f"cluster: {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"cluster: error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


# --------------------------------------------------------------------------- processes


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if it does not exist (or has
    exited and waits to be reaped: `up` reaps its own children when a start fails)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return None
    return fields[19]


def alive(entry: dict) -> bool:
    return start_time(entry["pid"]) == entry["start"]


def record(pid: int) -> dict:
    return {"pid": pid, "start": start_time(pid)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def spawn(argv: list[str], log: Path, environ: dict[str, str]) -> dict:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environ,
                                cwd=str(REPO), start_new_session=True)
    return record(proc.pid)


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_ready(name: str, url: str, entry: dict | None, log: Path | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_ok(url):
            return
        if entry is not None and not alive(entry):
            tail = log.read_text(errors="replace")[-2500:] if log and log.exists() else ""
            raise RuntimeError(f"{name} exited while starting; the end of {log}:\n{tail}")
        time.sleep(0.25)
    raise RuntimeError(f"{name} was not ready at {url} after {timeout_s:g} s (see {log})")


def signal_it(pid: int, sig: int, group: bool) -> None:
    if group and os.getpgid(pid) == pid:
        os.killpg(pid, sig)  # the process and whatever it spawned (espeak-ng...)
    else:
        os.kill(pid, sig)


def stop(name: str, entry: dict, sig: int = signal.SIGTERM, grace_s: float = 15.0, group: bool = True) -> bool:
    """Signal the process (group) we started, then wait; SIGKILL after `grace_s`."""
    if not alive(entry):
        return False
    pid = entry["pid"]
    try:
        signal_it(pid, sig, group)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while alive(entry) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(entry):
        say(f"{name} (pid {pid}) did not stop in {grace_s:g} s: killing it")
        try:
            signal_it(pid, signal.SIGKILL, True)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while alive(entry) and time.monotonic() < deadline:
            time.sleep(0.1)
    return True


# --------------------------------------------------------------------------- shared services


def check_redis(url: str) -> None:
    u = urlsplit(url)
    if u.scheme not in ("redis", "rediss"):
        return  # unix:// and TLS: the workers check it themselves
    try:
        with socket.create_connection((u.hostname or HOST, u.port or 6379), timeout=2) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError as e:
        fail(f"Redis is not reachable at {u.hostname}:{u.port or 6379} ({e.strerror or e}); start it first")
    if not reply.startswith((b"+PONG", b"-NOAUTH")):
        fail(f"Redis at {u.hostname}:{u.port or 6379} answered {reply[:40]!r} to PING")


def ensure_database(store_url: str) -> None:
    """Create the PostgreSQL database of `store_url` when it does not exist."""
    import asyncpg

    u = urlsplit(store_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    name = u.path.lstrip("/")
    if not name:
        fail(f"MOKSORI_STORE_URL names no database: {store_url}")
    admin = u._replace(path="/postgres").geturl()

    async def run() -> bool:
        conn = await asyncpg.connect(admin, timeout=10)
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                return False
            await conn.execute(f'CREATE DATABASE "{name}"')
            return True
        finally:
            await conn.close()

    try:
        if asyncio.run(run()):
            say(f"created PostgreSQL database {name}")
    except (OSError, asyncpg.PostgresError) as e:
        if "already exists" in str(e):
            return
        fail(f"PostgreSQL is not usable at {u.hostname}:{u.port or 5432} ({type(e).__name__}: {e})")


def shared_secret(d: Path, variable: str, filename: str) -> str:
    """`variable` from the environment, else a random secret made once in `d/filename`."""
    given = os.environ.get(variable)
    if given:
        return given
    path = d / filename
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def packaged_gguf() -> str:
    sys.path.insert(0, str(REPO / "src"))
    from moksori.providers.models import path_of

    return str(path_of("smollm2-135m"))


def nginx_binary() -> str:
    found = shutil.which(env("NGINX", "nginx")) or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if not found:
        fail("nginx is not installed (bash scripts/install-system.sh installs the Debian package)")
    return str(found)


def nginx_config(run: Path, port: int, worker_ports: list[int]) -> Path:
    """Write nginx.conf (and the site, deploy/nginx/moksori.conf) for these workers under `run`."""
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    # max_fails=0: 503s are retried on the next worker, never counted as failures (moksori.conf)
    upstreams = "\n".join(f"    server {HOST}:{p} max_fails=0;" for p in worker_ports)
    site = (REPO / "deploy/nginx/moksori.conf").read_text()
    (run / "moksori.conf").write_text(site.replace("@LISTEN@", f"{HOST}:{port}").replace("@WORKERS@", upstreams))
    user = ""
    if os.geteuid() == 0:  # a root master would hand the workers to `nobody`: keep them ours
        import grp
        import pwd

        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    main = (REPO / "deploy/nginx/nginx.conf.template").read_text()
    (run / "nginx.conf").write_text(main.replace("@RUN@", str(run)).replace("@USER@", user))
    return run / "nginx.conf"


def start_nginx(nginx: str, run: Path, port: int, worker_ports: list[int]) -> dict:
    """nginx (as a daemon, its pid file under `run`) on `port` in front of `worker_ports`."""
    conf = nginx_config(run, port, worker_ports)
    check = subprocess.run([nginx, "-t", "-q", "-p", str(run), "-c", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejected the configuration:\n{check.stderr.strip()}")
    subprocess.run([nginx, "-p", str(run), "-c", str(conf)], check=True, capture_output=True, timeout=30)
    return record(int((run / "nginx.pid").read_text().strip()))


# --------------------------------------------------------------------------- up / down / status


def load_state(d: Path) -> dict | None:
    try:
        return json.loads((d / "state.json").read_text())
    except (OSError, ValueError):
        return None


def entries(state: dict) -> list[tuple[str, dict]]:
    out = []
    if state.get("nginx"):
        out.append(("nginx", state["nginx"]))
    out += [(f"worker-{i + 1}", w) for i, w in enumerate(state.get("workers", []))]
    if state.get("llm"):
        out.append(("llm", state["llm"]))
    return out


def up() -> None:
    d = cluster_dir()
    d.mkdir(parents=True, exist_ok=True)
    old = load_state(d)
    if old and any(alive(e) for _, e in entries(old)):
        fail(f"a cluster started from {d} is still running: `make cluster-down` first")
    port = int(env("CLUSTER_PORT", "8000"))
    workers = int(env("WORKERS", "2"))
    if workers < 1:
        fail("WORKERS must be at least 1")
    if not port_free(port):
        fail(f"port {port} is in use (set CLUSTER_PORT)")
    redis_url = env("MOKSORI_REDIS_URL", "redis://127.0.0.1:6379/0")
    store_url = env("MOKSORI_STORE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/moksori_cluster")
    timeout_s = float(env("CLUSTER_READY_TIMEOUT_S", "300"))
    nginx = nginx_binary()
    check_redis(redis_url)
    ensure_database(store_url)
    model = env("CLUSTER_LLM_MODEL", "") or packaged_gguf()
    # half the cores: llama.cpp's threads wait for each other at every step, spinning; on a busy
    # machine (the workers share it) two threads on two cores were 10-40x slower than one
    llm_threads = env("CLUSTER_LLM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))

    state: dict = {"dir": str(d), "port": port, "workers": [], "worker_ports": []}
    save = lambda: (d / "state.json").write_text(json.dumps(state, indent=1))  # noqa: E731
    try:
        # 1. the inference server every worker shares (CLUSTER_LLM_URL: one that already runs)
        external = env("CLUSTER_LLM_URL", "").rstrip("/")
        if external:
            state["llm_url"] = external
            say(f"LLM: the OpenAI-compatible server at {external} (CLUSTER_LLM_URL)")
        else:
            llm_port = free_port()
            log = d / "llm.log"
            state["llm"] = spawn([PY, "-m", "moksori.providers.llama_cpu", "--model", model, "--model_alias", "moksori-llm",
                                  "--host", HOST, "--port", str(llm_port), "--n_threads", llm_threads,
                                  "--n_threads_batch", llm_threads,
                                  "--n_ctx", env("CLUSTER_LLM_CTX", "4096"), "--interrupt_requests", "False",
                                  "--verbose", "False"], log, {**os.environ, "PYTHONUNBUFFERED": "1"})
            state["llm_port"] = llm_port
            state["llm_url"] = f"http://{HOST}:{llm_port}"
            (d / "llm.pid").write_text(f"{state['llm']['pid']}\n")
            save()
            say(f"llama_cpp.server on {HOST}:{llm_port} ({Path(model).name})")
            wait_ready("llama_cpp.server", f"http://{HOST}:{llm_port}/v1/models", state["llm"], log, timeout_s)

        # 2. the workers
        wenv = worker_env(d, port, state["llm_url"])
        for i in range(workers):
            wport = free_port()
            entry = spawn_worker(d, i, wport, wenv)
            state["workers"].append(entry)
            state["worker_ports"].append(wport)
            (d / f"worker-{i + 1}.pid").write_text(f"{entry['pid']}\n")
            save()
        say(f"{workers} workers on {', '.join(f'{HOST}:{p}' for p in state['worker_ports'])} (loading models)")
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: wait_ready(f"worker-{i + 1}", f"http://{HOST}:{state['worker_ports'][i]}/health",
                                               state["workers"][i], d / f"worker-{i + 1}.log", timeout_s),
                          range(workers)))

        # 3. nginx in front
        run = d / "nginx"
        state["nginx"] = start_nginx(nginx, run, port, state["worker_ports"])
        save()
        wait_ready("nginx", f"http://{HOST}:{port}/health", state["nginx"], run / "error.log", 30)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        say("start failed; stopping what was started")
        save()
        down(quiet=True)
        fail(str(e))
    save()
    say(f"ready: http://{HOST}:{port}/ (Realtime: ws://{HOST}:{port}/v1/realtime) - nginx pid {state['nginx']['pid']}, "
        f"{workers} workers, logs in {d}")


def worker_env(d: Path, port: int, llm_url: str) -> dict[str, str]:
    """The environment of every worker: this one's, plus what the cluster shares."""
    wenv = {**os.environ, "PYTHONUNBUFFERED": "1",
            "MOKSORI_REDIS_URL": env("MOKSORI_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "MOKSORI_STORE_URL": env("MOKSORI_STORE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/moksori_cluster"),
            "MOKSORI_TELEPHONY_STREAM_SECRET": shared_secret(d, "MOKSORI_TELEPHONY_STREAM_SECRET", "stream-secret"),
            "MOKSORI_STORE_HASH_SECRET": shared_secret(d, "MOKSORI_STORE_HASH_SECRET", "hash-secret"),
            "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": f"{llm_url}/v1",
            # the alias llama_cpp.server is started with; another server (CLUSTER_LLM_URL): its model's name
            "MOKSORI_LLM_MODEL": env("MOKSORI_LLM_MODEL", "moksori-llm") if env("CLUSTER_LLM_URL", "") else "moksori-llm"}
    wenv.setdefault("MOKSORI_PUBLIC_URL", f"http://{HOST}:{port}")
    wenv["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    return wenv


def spawn_worker(d: Path, i: int, wport: int, wenv: dict[str, str]) -> dict:
    entry = spawn([PY, "-m", "moksori", "serve", "--host", HOST, "--port", str(wport)], d / f"worker-{i + 1}.log", wenv)
    (d / f"worker-{i + 1}.pid").write_text(f"{entry['pid']}\n")
    return entry


def restart() -> None:
    """A rolling restart (after an upgrade, or to change settings): one worker at a time, SIGTERM
    (it drains: new sessions go to the others, its live ones run to their end, up to
    MOKSORI_SERVER_DRAIN_TIMEOUT_S), then the same worker again on the same port, ready before
    the next one drains. WORKER=2 restarts only worker-2. Uses this environment, as `up` does."""
    d = cluster_dir()
    state = load_state(d)
    if state is None or not state.get("workers"):
        fail(f"no cluster to restart (no {d / 'state.json'})")
    only = env("WORKER", "")
    timeout_s = float(env("CLUSTER_READY_TIMEOUT_S", "300"))
    drain_s = float(env("MOKSORI_SERVER_DRAIN_TIMEOUT_S", "25"))
    wenv = worker_env(d, state["port"], state.get("llm_url") or f"http://{HOST}:{state['llm_port']}")
    save = lambda: (d / "state.json").write_text(json.dumps(state, indent=1))  # noqa: E731
    for i, (entry, wport) in enumerate(zip(list(state["workers"]), state["worker_ports"])):
        if only and only != str(i + 1):
            continue
        name = f"worker-{i + 1}"
        say(f"{name} (pid {entry['pid']}): draining")
        t0 = time.monotonic()
        stop(name, entry, signal.SIGTERM, grace_s=drain_s + 10)
        say(f"{name} stopped after {time.monotonic() - t0:.1f} s; starting it again on {HOST}:{wport}")
        state["workers"][i] = spawn_worker(d, i, wport, wenv)
        save()
        try:
            wait_ready(name, f"http://{HOST}:{wport}/health", state["workers"][i], d / f"{name}.log", timeout_s)
        except RuntimeError as e:
            fail(f"{e}\n(the other workers still run; `make cluster-status`)")
        say(f"{name} ready (pid {state['workers'][i]['pid']})")


def down(quiet: bool = False) -> None:
    d = cluster_dir()
    state = load_state(d)
    if state is None:
        if not quiet:
            say(f"nothing to stop (no {d / 'state.json'})")
        return
    stopped = []
    # a worker drains on SIGTERM: its live sessions may run up to MOKSORI_SERVER_DRAIN_TIMEOUT_S
    drain_s = float(env("MOKSORI_SERVER_DRAIN_TIMEOUT_S", "25"))
    for name, entry in entries(state):  # nginx first: no new sessions reach the workers
        sig = signal.SIGQUIT if name == "nginx" else signal.SIGTERM  # nginx: graceful shutdown
        if stop(name, entry, sig, grace_s=drain_s + 10 if name.startswith("worker") else 10.0, group=name != "nginx"):
            stopped.append(f"{name} ({entry['pid']})")
    for f in ["llm.pid", *[f"worker-{i + 1}.pid" for i in range(len(state.get("workers", [])))]]:
        (d / f).unlink(missing_ok=True)
    (d / "state.json").unlink(missing_ok=True)
    say(("stopped " + ", ".join(stopped)) if stopped else "nothing was running")


def status() -> None:
    d = cluster_dir()
    state = load_state(d)
    if state is None:
        say("not running")
        raise SystemExit(3)
    running = True
    for name, entry in entries(state):
        ok = alive(entry)
        running &= ok
        print(f"  {name:10} pid {entry['pid']:>7}  {'running' if ok else 'GONE'}")
    keys = [k.strip() for k in os.environ.get("MOKSORI_API_KEYS", "").split(",") if k.strip()]
    headers = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://{HOST}:{state['port']}/v1/cluster",
                                                           headers=headers), timeout=5) as r:
            for w in json.loads(r.read())["workers"]:
                print(f"  registry   {w['id']}  pid {w['pid']}  sessions {w['sessions']}"
                      f"{'  draining' if w['draining'] else ''}")
    except (OSError, ValueError) as e:
        print(f"  /v1/cluster through nginx: {e}")
    raise SystemExit(0 if running else 1)


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "up":
        up()
    elif cmd == "down":
        down()
    elif cmd == "status":
        status()
    elif cmd == "restart":
        restart()
    else:
        print(__doc__)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
