"""`moksori serve` says why it did not start: real `python -m moksori serve` processes.

* the port is taken (a socket of this test listens on it): "cannot listen on HOST:PORT: <the OS's
  reason>", a non-zero exit, nothing claims the server is listening;
* the app's start-up (its lifespan) raises: a setting only the lifespan checks (tools.timezone,
  read when the tools are built), and the packaged local LLM failing its warm-up (a system prompt
  longer than its 512-token context window): "start-up failed: <the real error>", naming the
  model, never "cannot listen", no Python traceback on stderr unless `--log-level debug`;
* a local voice that loads but cannot speak its warm-up stops start-up the same way, in one line
  naming the voice (file) and why: a Piper voice whose config names an espeak-ng voice that does
  not exist, an .onnx that is not a Piper voice's graph, Korean espeak-ng without its data;
  a Piper config that cannot be used at all (a phoneme type Piper does not know) stops the load
  with one line, as a corrupt .onnx does;
* a start that works still serves and says it listens (after it does).

`serve` ends a server that says it listens (a start that should have failed) instead of waiting
for it to exit, so such a regression fails in seconds.

STT and TTS are remote providers at a port where nothing listens (their warm-up is skipped with a
warning), so each server starts in a few seconds; the LLM is the packaged SmolLM2 (test 3) or a
remote one that is not called at start-up.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
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
    """Run `moksori serve` until it exits, or until it says it listens (then it is stopped)."""
    argv = [sys.executable, "-m", "moksori", "serve", "--host", HOST, "--port", str(port), *args]
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(argv, env=env_for(tmp_path / "data", **env), cwd=tmp_path, stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=stderr, text=True)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                if "Moksori is listening" in err.read_text(errors="replace"):
                    proc.terminate()  # it started: the test sees that in its stderr
                    break
                time.sleep(0.1)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out.read_text(errors="replace"),
                                       err.read_text(errors="replace"))


def piper_voice(folder: Path, name: str, *, graph: Path | None = None, **config: object) -> Path:
    """A Piper voice in `folder`: the packaged voice's graph (or `graph`), linked, and its config
    with `config`'s keys changed (a key of the form a__b changes config[a][b])."""
    from moksori.providers import models

    packaged = models.path_of("piper-en-joe")
    cfg = json.loads(Path(f"{packaged}.json").read_text(encoding="utf-8"))
    for key, value in config.items():
        *parents, leaf = key.split("__")
        target = cfg
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    folder.mkdir(parents=True, exist_ok=True)
    voice = folder / f"{name}.onnx"
    voice.symlink_to(graph or packaged)
    Path(f"{voice}.json").write_text(json.dumps(cfg), encoding="utf-8")
    return voice


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The run's only `error:` line, after checking it exited 2 without listening or a traceback."""
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    assert "Moksori is listening" not in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "cannot listen" not in done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


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


@pytest.mark.models
@pytest.mark.parametrize("broken", ["espeak voice", "graph"])
def test_local_piper_voice_that_cannot_speak_stops_start_up(tmp_path: Path, broken: str) -> None:
    """The voice loads (its config parses, its .onnx is an ONNX graph), then its warm-up fails:
    the config names an espeak-ng voice that does not exist (its phonemizer fails), or the .onnx
    is another model's graph (Silero VAD's: its inputs are not a Piper voice's)."""
    from moksori.providers import models

    if broken == "espeak voice":
        voice = piper_voice(tmp_path / "voices", "en_US-unspoken", espeak__voice="xx-nowhere")
        why = "Failed to set voice: xx-nowhere"
    else:
        voice = piper_voice(tmp_path / "voices", "en_US-vad", graph=models.path_of("silero-vad"))
        why = "Required inputs (['state', 'sr']) are missing"
    done = serve(tmp_path, free_port(), MOKSORI_TTS_PROVIDER="local", MOKSORI_TTS_VOICE_EN=str(voice))
    line = one_error_line(done)
    assert line.startswith("error: start-up failed: "), line
    assert str(voice) in line  # the voice, by its file
    assert why in line, line  # and why it cannot speak
    assert "TTS warm-up skipped" not in done.stderr  # not taken for a remote TTS that is away


@pytest.mark.models
def test_local_piper_voice_whose_config_cannot_be_used_stops_the_load(tmp_path: Path) -> None:
    """A config Piper cannot read (a phoneme type it does not know), and a truncated .onnx: the
    voice does not load, so the start stops before the server's start-up, in one line."""
    from moksori.providers import models

    voice = piper_voice(tmp_path / "voices", "en_US-klingon", phoneme_type="klingon")
    line = one_error_line(serve(tmp_path, free_port(), MOKSORI_TTS_PROVIDER="local", MOKSORI_TTS_VOICE_EN=str(voice)))
    assert f"{voice}.json" in line and "'klingon' is not a valid PhonemeType" in line, line

    truncated = tmp_path / "voices" / "en_US-truncated.onnx"
    packaged = models.path_of("piper-en-joe")
    truncated.write_bytes(packaged.read_bytes()[:100_000])
    Path(f"{truncated}.json").write_text(Path(f"{packaged}.json").read_text(encoding="utf-8"), encoding="utf-8")
    line = one_error_line(serve(tmp_path, free_port(), MOKSORI_TTS_PROVIDER="local",
                                MOKSORI_TTS_VOICE_EN=str(truncated)))
    assert f"cannot load Piper voice {truncated}: the file is corrupt or not an ONNX model" in line, line


@pytest.mark.models
def test_local_espeak_ng_that_cannot_speak_stops_start_up(tmp_path: Path) -> None:
    """Korean speaks through espeak-ng (no MOKSORI_TTS_VOICE_KO); here it cannot find its data
    (ESPEAK_DATA_PATH names an empty folder), so its warm-up fails. The packaged English voice
    has its own espeak-ng data and speaks."""
    empty = tmp_path / "espeak-ng-data"
    empty.mkdir()
    done = serve(tmp_path, free_port(), MOKSORI_TTS_PROVIDER="local", ESPEAK_DATA_PATH=str(empty))
    line = one_error_line(done)
    assert line.startswith("error: start-up failed: espeak-ng"), line
    assert "'ko'" in line and f"{empty}/phontab" in line, line  # the voice, and why


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
        # the remote TTS, where nothing listens, is skipped with a warning per language, not fatal
        assert log.count("TTS warm-up skipped (openai-tts at ") == 2, log[-3000:]
        assert "Traceback" not in log
