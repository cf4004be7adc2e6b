"""Bad input to the `moksori` command line, run as a user would: real subprocesses (2026-12-07
pass). A user's mistake, a dead database or a full disk is one `error:` line and exit 2, never a
traceback or an "internal error", and nothing the run made is lost. Each test failed before its
fix:

* `moksori tools --args` nested past the JSON parser's depth: "internal error: RecursionError";
* a MOKSORI_STORE_URL whose port is not a number (`...@host:abc/db`, `...@[::1/db`):
  "internal error: ValueError" from `moksori db status|upgrade|purge` and `moksori serve`;
* `moksori db purge --older-than-days 0` (or -3) said "retention is off
  (MOKSORI_STORE_RETENTION_DAYS=0)" and exited 0;
* `moksori serve --port 70000` loaded every model, then printed uvicorn's tracebacks and
  "internal error: OverflowError"; `--log-level nonsense` (or `WARNING`) "internal error: KeyError";
* `moksori chat --text` with bytes on stdin that are not UTF-8: by default (surrogateescape) an
  "internal error: UnicodeEncodeError" from the tokenizer that ended the chat; with a strict
  stdin the chat ended silently there, as at end of input, and the lines after were lost;
* `moksori converse --timeline` on a full disk: a traceback, and the reply WAV never written;
* any command whose standard output is a full disk: a traceback;
* `moksori say` with text the terminal could not decode: "piper failed: 'utf-8' codec can't encode".

Probed and found clean (no fix needed): missing, empty, folder, text and truncated inputs; WAVs
with 0 channels, 0 bits, ADPCM, 16-bit float, 65535 channels, one sample, half a sample, 1 kHz
and 384 kHz; a dead PostgreSQL, a SQLite file that is not a database, an unsupported driver; an
unreachable LLM server for `chat --text` (one line per turn, the chat goes on); `--args` that is
not an object; unknown tools; bad `--lang`, `--speed`, `--voice`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moksori.audio.frames import Frame
from moksori.audio.wav import read_wav, write_wav

FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full on this system")


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """`python -m moksori ARGS` with no MOKSORI_* variable but the data dir and `env`."""
    workdir = tmp_path_factory.mktemp("bad-cli-cwd")
    data = tmp_path_factory.mktemp("bad-cli-data")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MOKSORI_", "PYTHONIOENCODING"))}
    base.update(MOKSORI_DATA_DIR=str(data), COLUMNS="300", NO_COLOR="1", PYTHONWARNINGS="ignore")

    def run(*args: str | bytes, env: dict[str, str] | None = None, stdin: bytes | None = None,
            stdout: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moksori", *args], cwd=workdir, env={**base, **(env or {})},
                              input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                              stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout)

    return run


def text(b: bytes | None) -> str:
    return (b or b"").decode("utf-8", "replace")


def assert_one_line_error(proc: subprocess.CompletedProcess, *contains: str) -> str:
    """Exit 2, no traceback, no "internal error", one `error:` line and it is the last line."""
    out, err = text(proc.stdout), text(proc.stderr)
    assert proc.returncode == 2, (proc.returncode, out[-1000:], err[-3000:])
    assert "Traceback" not in err + out and "internal error" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    for c in contains:
        assert c.lower() in errors[0].lower(), errors[0]
    return errors[0]


# --------------------------------------------------------------------------- arguments


def test_tools_args_nested_too_deeply(cli):
    proc = cli("tools", "--args", "[" * 30_000 + "]" * 30_000)
    assert_one_line_error(proc, "--args", "nested")


@pytest.mark.parametrize("url", ["postgresql://user:secret@127.0.0.1:abc/db", "postgresql://user:secret@[::1/db"])
@pytest.mark.parametrize("command", [("db", "status"), ("db", "upgrade"), ("db", "purge", "--older-than-days", "3")])
def test_db_with_a_store_url_that_does_not_parse(cli, url, command):
    line = assert_one_line_error(cli(*command, env={"MOKSORI_STORE_URL": url}), "MOKSORI_STORE_URL")
    assert "secret" not in line


@pytest.mark.parametrize("days", ["0", "-3"])
def test_db_purge_refuses_less_than_a_day(cli, tmp_path, days):
    env = {"MOKSORI_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", "MOKSORI_STORE_RETENTION_DAYS": "30"}
    assert_one_line_error(cli("db", "purge", "--older-than-days", days, env=env), "--older-than-days")


@pytest.mark.parametrize("args,env,says", [
    (("--port", "70000"), {}, "--port"),
    (("--port", "-5"), {}, "--port"),
    (("--log-level", "nonsense"), {}, "--log-level"),
    (("--port", "19301"), {"MOKSORI_STORE_URL": "postgresql://user:secret@127.0.0.1:abc/db"}, "MOKSORI_STORE_URL"),
])
def test_serve_refuses_bad_arguments_before_loading_models(cli, args, env, says):
    proc = cli("serve", *args, env={"MOKSORI_STORE_URL": "none", **env}, timeout=60)
    assert_one_line_error(proc, says)
    assert "Loading models" not in text(proc.stderr)  # told at once, not after the models load


# --------------------------------------------------------------------------- typed text the terminal could not decode


@pytest.mark.models
@pytest.mark.parametrize("stdin_kind", ["default", "strict"])
def test_text_chat_takes_bytes_that_are_not_utf8(cli, stdin_kind):
    """The line with the bad bytes is answered, and the line after it (a command) still runs."""
    env = {"MOKSORI_STORE_URL": "none", "MOKSORI_LLM_MAX_TOKENS": "8"}
    if stdin_kind == "strict":
        env["PYTHONIOENCODING"] = "utf-8:strict"
    proc = cli("chat", "--text", "--max-tokens", "8", env=env, stdin=b"hello \xff\xfe there\ntokens\n")
    out, err = text(proc.stdout), text(proc.stderr)
    assert proc.returncode == 0, (out[-2000:], err[-2000:])
    assert "Traceback" not in err and "internal error" not in err, err[-2000:]
    assert "[Tokens used:" in out, out[-2000:]  # the first line was answered
    assert "Session tokens:" in out, out[-2000:]  # and the command after it ran


@pytest.mark.models
def test_say_text_the_terminal_could_not_decode(cli, tmp_path):
    out = tmp_path / "hi.wav"
    proc = cli(b"say", b"hello \xff\xfe there", b"--out", str(out).encode(), env={"MOKSORI_STORE_URL": "none"})
    assert proc.returncode == 0, text(proc.stderr)[-2000:]
    assert read_wav(out).duration > 0.3


# --------------------------------------------------------------------------- a full disk


@needs_dev_full
@pytest.mark.models
def test_converse_timeline_on_a_full_disk_keeps_the_reply(cli, tmp_path, tmp_path_factory):
    from speech import prepared_data_dir

    wav = tmp_path / "in.wav"
    write_wav(wav, Frame.silence(1.0, 16000))
    reply = tmp_path / "reply.wav"
    proc = cli("converse", str(wav), "--out", str(reply), "--fast", "--max-tail", "1", "--timeline", str(FULL),
               env={"MOKSORI_STORE_URL": "none", "MOKSORI_DATA_DIR": str(prepared_data_dir(tmp_path_factory))})
    assert_one_line_error(proc, "No space left on device", str(FULL))
    assert read_wav(reply).duration >= 1.0  # the conversation's reply is still written


@needs_dev_full
def test_output_to_a_full_disk(cli):
    with open(FULL, "wb") as full:
        proc = cli("tools", "--json", stdout=full.fileno())
    assert_one_line_error(proc, "cannot write the output", "No space left on device")
