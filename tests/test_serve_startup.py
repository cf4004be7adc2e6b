"""`moksori serve` says why it did not start: real `python -m moksori serve` processes.

* the port is taken (a socket of this test listens on it): "cannot listen on HOST:PORT: <the OS's
  reason>", a non-zero exit, nothing claims the server is listening;
* the app's start-up (its lifespan) raises: a setting only the lifespan checks (tools.timezone,
  read when the tools are built), and the packaged local LLM failing its warm-up (a system prompt
  longer than its 512-token context window): "start-up failed: <the real error>", naming the
  model, never "cannot listen", no Python traceback on stderr unless `--log-level debug`;
* a start that works still serves and says it listens (after it does).

STT and TTS are remote providers at a port where nothing listens (their warm-up is skipped with a
warning), so each server starts in a few seconds; the LLM is the packaged SmolLM2 (test 3) or a
remote one that is not called at start-up.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from servers import HOST, ServerProcess, closed_port, free_port

TIMEOUT_S = 180


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any MOKSORI_* of the caller's, plus a quick stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOKSORI_")}
    nowhere = f"http://{HOST}:{closed_port()}/v1"
    env.update({"MOKSORI_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1",
                "MOKSORI_STT_PROVIDER": "openai", "MOKSORI_STT_BASE_URL": nowhere, "MOKSORI_STT_MAX_RETRIES": "0",
                "MOKSORI_TTS_PROVIDER": "openai", "MOKSORI_TTS_BASE_URL": nowhere, "MOKSORI_TTS_MAX_RETRIES": "0",
                "MOKSORI_LLM_PROVIDER": "openai", "MOKSORI_LLM_BASE_URL": nowhere, "MOKSORI_LLM_MODEL": "absent"})
    env.update(extra)
    return env


def serve(tmp_path: Path, port: int, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "moksori", "serve", "--host", HOST, "--port", str(port), *args]
    return subprocess.run(argv, env=env_for(tmp_path / "data", **env), cwd=tmp_path, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def test_port_taken_says_cannot_listen_and_why(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(tmp_path, port)
    assert done.returncode != 0, done.stderr[-2000:]
    assert f"cannot listen on {HOST}:{port}: {os.strerror(errno.EADDRINUSE)}" in done.stderr, done.stderr[-2000:]
    assert "start-up failed" not in done.stderr
    assert "Moksori is listening" not in done.stderr  # it never was
    assert "Traceback" not in done.stderr


def test_setting_raised_in_the_lifespan_is_named(tmp_path: Path) -> None:
    port = free_port()
    done = serve(tmp_path, port, MOKSORI_TOOLS_TIMEZONE="Mars/Olympus")
    assert done.returncode != 0, done.stderr[-2000:]
    assert "start-up failed: tools.timezone 'Mars/Olympus' is not an IANA time zone" in done.stderr, \
        done.stderr[-2000:]
    assert "cannot listen" not in done.stderr
    assert "address in use" not in done.stderr
    assert "Moksori is listening" not in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # the port was never taken: a server can listen there now
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, port))


def test_debug_log_level_shows_the_traceback(tmp_path: Path) -> None:
    done = serve(tmp_path, free_port(), "--log-level", "debug", MOKSORI_TOOLS_TIMEZONE="Mars/Olympus")
    assert done.returncode != 0, done.stderr[-2000:]
    assert "Traceback (most recent call last)" in done.stderr, done.stderr[-2000:]
    assert "in zone" in done.stderr  # the frame that raised (tools/builtins.py)
    assert "start-up failed: tools.timezone 'Mars/Olympus' is not an IANA time zone" in done.stderr
    assert "cannot listen" not in done.stderr


@pytest.mark.models
def test_local_llm_failing_at_start_up_is_named(tmp_path: Path) -> None:
    """The packaged SmolLM2 loads, then its warm-up (inside the lifespan) cannot fit the system
    prompt into a 512-token window."""
    from moksori.providers import models

    gguf = models.path_of("smollm2-135m")
    long_prompt = " ".join(["Always answer politely, briefly and in the language you were spoken to."] * 80)
    done = serve(tmp_path, free_port(), MOKSORI_LLM_PROVIDER="llamacpp", MOKSORI_LLM_MODEL=str(gguf),
                 MOKSORI_LLM_CONTEXT_TOKENS="512", MOKSORI_AGENT_INSTRUCTIONS=long_prompt)
    assert done.returncode != 0, done.stderr[-2000:]
    line = next((x for x in done.stderr.splitlines() if "start-up failed:" in x), None)
    assert line is not None, done.stderr[-3000:]
    assert f"llamacpp:{gguf.name}" in line  # the component that failed
    assert "512-token context window" in line  # and why
    assert "the instructions (system prompt) alone are" in line  # not "the last message" (the warm-up's "Hi")
    assert "cannot listen" not in done.stderr
    assert "address in use" not in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_a_good_start_serves_and_then_says_so(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "moksori", "serve", "--host", HOST, "--port", str(port)]
    with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=TIMEOUT_S, cwd=tmp_path,
                       env=env_for(tmp_path / "data")) as srv:
        assert srv.wait_for_log(f"Moksori is listening on http://{HOST}:{port}", timeout_s=10), srv.log_text()[-2000:]
        log = srv.log_text()
        assert log.index("warming up the models") < log.index("Moksori is listening")
        assert "cannot listen" not in log
        assert "start-up failed" not in log
