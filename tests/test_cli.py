"""The `moksori` command line, run as a user would: a subprocess, real models, real speech."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from speech import prepared_data_dir, requires_speech, utt, wer

from moksori.audio.frames import Frame
from moksori.audio.wav import read_wav, write_wav

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def cli(data_dir, tmp_path_factory):
    """Run `python -m moksori ARGS` with only MOKSORI_DATA_DIR set, in an empty folder (no moksori.toml)."""
    workdir = tmp_path_factory.mktemp("cli-cwd")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOKSORI_")}
    env.update(MOKSORI_DATA_DIR=str(data_dir), COLUMNS="300", NO_COLOR="1", PYTHONWARNINGS="ignore")

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moksori", *args], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    return run


def assert_one_line_error(proc: subprocess.CompletedProcess, *, code: int = 2,
                          contains: str | tuple[str, ...] = "") -> str:
    """A user mistake: non-zero exit, no traceback, exactly one `error:` line, and it is the last line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert lines[-1] == errors[0], proc.stderr
    options = (contains,) if isinstance(contains, str) else contains
    assert any(c.lower() in errors[0].lower() for c in options), errors[0]
    return errors[0]


# --------------------------------------------------------------------------- transcribe / say


@requires_speech
def test_transcribe_json(cli):
    u = utt("en_011")
    proc = cli("transcribe", str(u.path), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= {"text", "language", "segments", "rtf", "duration_s", "processing_s"}
    assert out["language"] == "en"
    assert out["duration_s"] == pytest.approx(u.duration, abs=0.05)
    assert 0 < out["rtf"] < 2.0
    print(f"\ntranscribe en_011: rtf {out['rtf']}, {len(out['segments'])} segments: {out['text']}")
    assert "fellow americans" in out["text"].lower()
    assert wer(u.transcript, out["text"]) < 0.35
    segs = out["segments"]
    assert len(segs) >= 2  # JFK pauses: several VAD regions
    assert all(0 <= s["start"] < s["end"] <= u.duration + 0.01 for s in segs)
    assert all(a["end"] <= b["start"] for a, b in zip(segs, segs[1:]))
    assert " ".join(s["text"] for s in segs) == out["text"]


@requires_speech
def test_transcribe_plain_text_korean(cli):
    proc = cli("transcribe", str(utt("ko_001").path), "--lang", "ko")
    assert proc.returncode == 0, proc.stderr
    assert "피하면서" in proc.stdout


def test_say_writes_a_valid_wav(cli, tmp_path):
    out = tmp_path / "hello.wav"
    proc = cli("say", "Hello, this is a test of the speech synthesis.", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    frame = read_wav(out)
    assert frame.rate == 22050
    assert 1.5 < frame.duration < 6.0
    assert np.sqrt(np.mean(frame.samples.astype(np.float64) ** 2)) > 500
    raw = out.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE" and int.from_bytes(raw[4:8], "little") == len(raw) - 8


def test_say_korean(cli, tmp_path):
    out = tmp_path / "ko.wav"
    proc = cli("say", "안녕하세요", "--out", str(out))  # language guessed from the Hangul
    assert proc.returncode == 0, proc.stderr
    assert read_wav(out).duration > 0.3


# --------------------------------------------------------------------------- models


def test_models_list(cli):
    from moksori.providers.models import CATALOGUE

    proc = cli("models", "list")
    assert proc.returncode == 0, proc.stderr
    for key in CATALOGUE:
        assert key in proc.stdout, key
    assert "not prepared" not in proc.stdout  # the session data dir has Whisper joined


def test_models_verify(cli, data_dir):
    from moksori.providers.models import CATALOGUE, WHISPER_JOINED_SHA256

    proc = cli("models", "verify", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = "".join(proc.stdout.split())  # hashes may be folded across lines
    assert WHISPER_JOINED_SHA256 in out
    assert "CPU:" in proc.stdout and "AVX2" in proc.stdout and "numeric paths: no warnings" in proc.stdout
    for spec in CATALOGUE.values():
        if spec.key != "whisper-base":
            for f in spec.files:
                assert f.sha256 in out, f.relpath


# --------------------------------------------------------------------------- errors


def test_error_missing_file(cli, tmp_path):
    assert_one_line_error(cli("transcribe", str(tmp_path / "nope.wav")), contains="no such file")


def test_error_not_audio(cli, tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello, I am not audio\n" * 50)
    assert_one_line_error(cli("transcribe", str(txt)), contains=("not a readable audio file", "no audio stream", "contains no audio"))
    fake = tmp_path / "fake.wav"
    fake.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    assert_one_line_error(cli("transcribe", str(fake)), contains="fmt")


@requires_speech
def test_error_bad_lang(cli, tmp_path):
    assert_one_line_error(cli("transcribe", str(utt("en_002").path), "--lang", "fr"), contains="unsupported language")
    assert_one_line_error(cli("say", "hello", "--out", str(tmp_path / "x.wav"), "--lang", "xx"),
                          contains="unsupported language")
    assert not (tmp_path / "x.wav").exists()


def test_error_empty_say_text(cli, tmp_path):
    assert_one_line_error(cli("say", "   ", "--out", str(tmp_path / "x.wav")), contains="empty")


def test_error_output_folder_missing(cli, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "x.wav"
    assert_one_line_error(cli("say", "hello", "--out", str(target)), contains="output folder does not exist")
    assert not target.parent.exists()


def test_error_folders_where_files_belong(cli, tmp_path):
    """A folder given as the input or the output is the user's mistake, said in one line (it was
    an 'internal error: IsADirectoryError', the output one after the models had loaded)."""
    assert_one_line_error(cli("transcribe", str(tmp_path)), contains="is a directory")
    assert_one_line_error(cli("say", "hello", "--out", str(tmp_path)), contains="is a folder")


def test_error_full_disk_is_a_user_error(cli):
    """An OS error on the file the user named (here a full disk: /dev/full) is one line naming
    the file, exit 2, not an internal error."""
    assert_one_line_error(cli("say", "hello", "--out", "/dev/full"), contains="No space left on device: /dev/full")


def test_chat_without_audio_device(cli):
    try:
        import sounddevice as sd

        devices = list(sd.query_devices())
    except Exception:  # noqa: BLE001 - no PortAudio or no sound system: no devices
        devices = []
    if any(d["max_input_channels"] > 0 for d in devices) and any(d["max_output_channels"] > 0 for d in devices):
        pytest.skip("this machine has audio devices")
    line = assert_one_line_error(cli("chat", timeout=60), code=2)
    assert any(w in line for w in ("microphone", "PortAudio", "speakers")), line
    assert "--text" in line  # tells what to do instead
    assert_one_line_error(cli("chat", "--list-devices", timeout=60), code=2)


# --------------------------------------------------------------------------- converse


@requires_speech
def test_converse_two_turns(cli, tmp_path):
    from moksori.audio.wav import load_audio

    first, second = load_audio(utt("en_002").path, rate=16000), load_audio(utt("en_028").path, rate=16000)
    gap = np.zeros(4 * 16000, dtype=np.int16)
    spliced = Frame(np.concatenate([first.samples, gap, second.samples, gap]), 16000)
    inp, out, timeline = tmp_path / "in.wav", tmp_path / "reply.wav", tmp_path / "timeline.jsonl"
    write_wav(inp, spliced)

    proc = cli("converse", str(inp), "--out", str(out), "--timeline", str(timeline), "--fast", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "saved as conversation" in proc.stderr  # recorded on virtual time too (the data dir's SQLite)

    reply = read_wav(out)
    assert reply.duration >= spliced.duration - 0.01
    events = [json.loads(line) for line in timeline.read_text().splitlines() if line.strip()]
    types = [e["type"] for e in events]
    assert types.count("user.turn_ended") >= 2, types
    assert types.count("agent.audio_started") >= 1
    transcripts = " ".join(e["text"] for e in events if e["type"] == "user.transcript").lower()
    assert "thousand thoughts" in transcripts and "young man" in transcripts
    samples = reply.samples.astype(np.float64)
    print(f"\nconverse: input {spliced.duration:.2f} s, reply {reply.duration:.2f} s, "
          f"{types.count('agent.audio_started')} replies, reply RMS {np.sqrt(np.mean(samples ** 2)):.0f}")
    assert np.sqrt(np.mean(samples ** 2)) > 100
    # the reply audio starts after the first turn ends, not during the user's first sentence
    first_start = min(e["t"] for e in events if e["type"] == "agent.audio_started")
    assert first_start > first.duration - 0.3
    head = samples[: int((first.duration - 0.3) * reply.rate)]
    assert np.abs(head).max() < 100
