"""`moksori chat`: talk with the agent through the microphone and speakers, or type (--text,
in `moksori.cli.text_chat`)."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

import numpy as np
import typer

from moksori.cli.main import app, friendly
from moksori.cli.ui import err_console, load_stack, out_console
from moksori.engine import events as E
from moksori.errors import ConfigError, MoksoriError
from moksori.settings import load_settings


class NoAudioDevice(MoksoriError):
    code = "no_audio_device"


def _sounddevice() -> Any:
    try:
        import sounddevice as sd
    except OSError:  # PortAudio library missing
        raise NoAudioDevice("PortAudio is not installed, so there is no microphone access",
                            hint="install libportaudio2, or use `moksori chat --text` / `moksori converse FILE`") from None
    return sd


def _devices(sd: Any) -> list[dict]:
    try:
        return list(sd.query_devices())
    except Exception:  # noqa: BLE001 - PortAudio errors when no sound system exists
        return []


@app.command()
@friendly
def chat(
    text: bool = typer.Option(False, "--text", help="Type instead of speaking (loads no speech models)."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="With --text: print the reply as it comes."),
    user: str | None = typer.Option(None, "--user", help="Your user id: your history is kept in the store "
                                    "and resumed next time (voice and --text)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="With --text: reply cap "
                                          "(default agent.text_max_tokens, 800)."),
    list_devices: bool = typer.Option(False, "--list-devices", help="List audio devices and exit."),
    input_device: str | None = typer.Option(None, "--input-device", help="Microphone (index or name)."),
    output_device: str | None = typer.Option(None, "--output-device", help="Speakers (index or name)."),
    lang: str | None = typer.Option(None, "--lang", help="ko or en (default: detect per turn)."),
    no_barge_in: bool = typer.Option(False, "--no-barge-in", help="Do not let speech interrupt the agent "
                                     "(use this without headphones, or the agent hears itself)."),
) -> None:
    """A live conversation with the agent."""
    if lang is not None and lang not in ("en", "ko"):
        raise ConfigError(f"unsupported language '{lang}': use en or ko")
    if list_devices:
        sd = _sounddevice()
        devs = _devices(sd)
        if not devs:
            raise NoAudioDevice("no audio devices found on this machine")
        for i, d in enumerate(devs):
            kind = "/".join(k for k, n in (("in", d["max_input_channels"]), ("out", d["max_output_channels"])) if n)
            out_console.print(f"{i:3d}  {d['name']}  [dim]({kind}, {int(d['default_samplerate'])} Hz)[/]")
        return
    settings = load_settings(**({"language": lang} if lang else {}))
    from moksori.store import valid_user_id

    if user is not None and not valid_user_id(user):
        raise ConfigError(f"invalid user id {user!r}: use 1-255 letters, digits and _ . @ : + - = /")
    if text:
        from moksori.cli.text_chat import TextChatOptions, run_text_chat
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError("--max-tokens must be at least 1")
        opts = TextChatOptions(stream=stream, user=user, max_tokens=max_tokens or settings.agent.text_max_tokens)
        asyncio.run(run_text_chat(settings, opts))
        return
    sd = _sounddevice()
    devs = _devices(sd)
    if not any(d["max_input_channels"] > 0 for d in devs):
        raise NoAudioDevice("no microphone found on this machine (is this a server?)",
                            hint="try `moksori chat --text`, `moksori converse FILE`, or the browser app of `moksori serve`")
    if not any(d["max_output_channels"] > 0 for d in devs):
        raise NoAudioDevice("no speakers found on this machine", hint="try `moksori chat --text`")
    stack = load_stack(settings)
    asyncio.run(_voice_chat(stack, settings, sd, _pick(input_device), _pick(output_device), no_barge_in, user))


def _pick(dev: str | None) -> int | str | None:
    if dev is None:
        return None
    return int(dev) if dev.isdigit() else dev


class _Player:
    """Speaker output: a FIFO the audio callback drains; `clear()` flushes it on barge-in."""

    def __init__(self) -> None:
        self._q: deque[np.ndarray] = deque()
        self._lock = threading.Lock()

    def add(self, samples: np.ndarray) -> None:
        with self._lock:
            self._q.append(samples)

    def clear(self) -> None:
        with self._lock:
            self._q.clear()

    def fill(self, out: np.ndarray) -> None:
        need, pos = len(out), 0
        with self._lock:
            while pos < need and self._q:
                head = self._q[0]
                take = min(need - pos, len(head))
                out[pos:pos + take, 0] = head[:take]
                pos += take
                if take == len(head):
                    self._q.popleft()
                else:
                    self._q[0] = head[take:]
        out[pos:, 0] = 0


async def _voice_chat(stack: Any, settings: Any, sd: Any, in_dev: int | str | None, out_dev: int | str | None,
                      no_barge_in: bool, user: str | None = None) -> None:
    from dataclasses import replace

    from moksori.audio.frames import Frame
    from moksori.brains import open_session
    from moksori.engine.config import config_from_settings

    loop = asyncio.get_running_loop()
    try:
        in_info = sd.query_devices(in_dev, "input")
        out_info = sd.query_devices(out_dev, "output")
    except Exception as e:  # noqa: BLE001 - PortAudio raises ValueError/PortAudioError
        raise NoAudioDevice(f"cannot open the audio device: {e}", hint="see `moksori chat --list-devices`") from None
    in_rate, out_rate = int(in_info["default_samplerate"]), int(out_info["default_samplerate"])
    cfg = config_from_settings(settings, output_rate=out_rate, output_lead_ms=150)
    if no_barge_in:
        cfg = cfg.with_(turn=replace(cfg.turn, interrupt_response=False))
    from moksori.agent_kit import AgentKit

    kit = await AgentKit.build(settings)  # the server's tools, guardrails, denoiser, backchannels
    for w in kit.warnings:
        err_console.print(f"[yellow]tools:[/] {w}", highlight=False)
    kit.install_log_filter()
    session = open_session(stack, cfg, settings=settings, input_rate=in_rate, kit=kit)
    from moksori.cli.cli_recording import open_cli_recording

    store = await open_cli_recording(session, settings, user)
    player = _Player()

    def on_event(ev: E.Event) -> None:
        match ev:
            case E.AgentAudio(frame=frame):
                player.add(frame.samples.astype(np.float32) / 32768.0)
            case E.AgentAudioCleared():
                player.clear()
            case E.UserTranscript(text=text) if text:
                out_console.print(f"[cyan]you[/]   {text}", highlight=False)
            case E.AgentResponseDone(text=text, interrupted=interrupted) if text:
                tag = " [yellow](interrupted)[/]" if interrupted else ""
                out_console.print(f"[magenta]agent[/] {text}{tag}", highlight=False)
            case E.ErrorEvent(message=message) | E.UserTranscriptionFailed(message=message):
                err_console.print(f"[red]error:[/] {message}", highlight=False)
            case E.BrainUpstreamDropped(reason=reason):
                err_console.print(f"[yellow]the upstream dropped ({reason}); reconnecting…[/]", highlight=False)

    session.bus.listen(on_event)

    def mic(indata: np.ndarray, frames: int, t: Any, status: Any) -> None:  # PortAudio thread
        loop.call_soon_threadsafe(session.push_audio, Frame(indata[:, 0].copy(), in_rate))

    def speakers(outdata: np.ndarray, frames: int, t: Any, status: Any) -> None:
        player.fill(outdata)

    try:
        with sd.InputStream(device=in_dev, channels=1, samplerate=in_rate, dtype="int16",
                            blocksize=in_rate // 50, callback=mic), \
             sd.OutputStream(device=out_dev, channels=1, samplerate=out_rate, dtype="float32",
                             blocksize=out_rate // 50, callback=speakers):
            err_console.print("[bold green]Listening.[/] Speak any time; Ctrl-C to stop."
                              + ("" if no_barge_in else " Use headphones, or the agent may hear itself."))
            while True:
                await asyncio.sleep(3600)
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except Exception as e:  # noqa: BLE001 - PortAudio errors on open
        raise NoAudioDevice(f"audio device error: {e}") from None
    finally:
        await session.close()
        await kit.close()
        if store is not None:
            await store.close()
