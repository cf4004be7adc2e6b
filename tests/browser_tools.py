"""Helpers for the browser tests: a WAV for Chromium's fake microphone, a headless Debian
Chromium driven by Playwright, and a real `moksori serve` on 127.0.0.1.

Chromium is the system one (`/usr/bin/chromium`); Playwright's own browsers are never
installed. The flags follow docs/PROTOCOLS.md "Browser tests (verified recipe)".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from servers import ServerProcess, free_port

CHROMIUM = Path(os.environ.get("MOKSORI_CHROMIUM", "/usr/bin/chromium"))


def chromium_available() -> bool:
    if not CHROMIUM.is_file():
        return False
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def write_mic_wav(path: Path, speech: Path, *, lead_s: float = 1.0, tail_s: float = 6.0, rate: int = 48000) -> Path:
    """`speech` with silence before and after, as 16-bit mono PCM at `rate`.

    With `%noloop` Chromium repeats the file's last 10 ms forever, so the tail must be silent.
    Any rate works (Chromium resamples to its 44.1 kHz fake device); we resample here with
    numpy's linear interpolation only because the file must be written at one rate anyway.
    """
    from moksori.audio.wav import load_audio

    frame = load_audio(speech, rate=rate)
    x = frame.to_float().astype(np.float32)
    lead = np.zeros(int(lead_s * rate), dtype=np.float32)
    tail = np.zeros(int(tail_s * rate), dtype=np.float32)
    pcm = np.clip(np.concatenate([lead, x, tail]), -1.0, 1.0)
    data = (pcm * 32767.0).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def chromium_args(mic_wav: Path | None) -> list[str]:
    """The recipe's flags, minus --user-data-dir (passed to Playwright separately)."""
    args = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        # WebRTC over loopback: the server offers 127.0.0.1 candidates only (nothing leaves the machine)
        "--allow-loopback-in-peer-connection",
    ]
    if mic_wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={Path(mic_wav).resolve()}%noloop")
    return args


@contextlib.contextmanager
def chromium(mic_wav: Path | None = None, *, viewport: dict[str, int] | None = None) -> Iterator[object]:
    """A headless Chromium with a fresh profile (a Playwright `BrowserContext`); always closed.

    Playwright refuses `--user-data-dir` in `args`, so the fresh profile goes through
    `launch_persistent_context`. Its default `--mute-audio` is dropped so that the page's audio
    output runs exactly as it would for a person.
    """
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(prefix="moksori-chromium-"))
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(profile), executable_path=str(CHROMIUM), headless=True,
                args=chromium_args(mic_wav), ignore_default_args=["--mute-audio"],
                viewport=viewport or {"width": 1100, "height": 900})
            try:
                yield ctx
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@contextlib.contextmanager
def moksori_server(data_dir: Path, *, extra_env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A real `moksori serve` on 127.0.0.1 with its own data dir; stopped on exit."""
    port = free_port()
    env = {"MOKSORI_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    argv = [sys.executable, "-m", "moksori", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=120, env=env) as srv:
        yield srv
