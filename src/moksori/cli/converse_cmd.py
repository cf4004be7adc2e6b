"""`moksori converse IN.wav`: play a recording into a live session, keep what the agent said.

The session is recorded into the store like any other (channel `cli`; `--user ID` files it under
that user and starts with their history, as `moksori chat --user` does; `MOKSORI_STORE_URL=none`
records nothing)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import typer

from moksori.cli.main import app, friendly
from moksori.cli.ui import check_output_file, err_console, load_stack
from moksori.errors import AudioFormatError, ConfigError
from moksori.settings import load_settings

if TYPE_CHECKING:
    from moksori.cli.cli_recording import OfflineRecording


@app.command()
@friendly
def converse(
    input: Path = typer.Argument(..., help="The caller's audio (any WAV; other formats via PyAV)."),
    out: Path = typer.Option(..., "--out", "-o", help="Write everything the agent said here (WAV), time-aligned with the input."),
    timeline: Path | None = typer.Option(None, "--timeline", help="Write the session timeline here (JSON lines)."),
    lang: str | None = typer.Option(None, "--lang", help="ko or en (default: detect per turn)."),
    fast: bool = typer.Option(False, "--fast", help="Run on virtual time: as fast as the models allow. "
                              "Model time then counts as zero, so latencies in the timeline are not real."),
    max_tail_s: float = typer.Option(30.0, "--max-tail", help="After the input ends, wait at most this long for the agent."),
    user: str | None = typer.Option(None, "--user", help="Your user id: the conversation is stored under it and "
                                    "starts with your earlier turns (as `moksori chat --user`)."),
) -> None:
    """Talk to the agent with a recording instead of a microphone."""
    from moksori.audio.wav import load_audio, write_wav

    from moksori.store import valid_user_id

    if lang is not None and lang not in ("en", "ko"):
        raise ConfigError(f"unsupported language '{lang}': use en or ko")
    if user is not None and not valid_user_id(user):
        raise ConfigError(f"invalid user id {user!r}: use 1-255 letters, digits and _ . @ : + - = /")
    frame = load_audio(input)
    if len(frame) == 0:
        raise AudioFormatError(f"{input} contains no audio samples")
    for p in (out, timeline):
        if p is not None:
            check_output_file(p)
    settings = load_settings(**({"language": lang} if lang else {}))
    if fast and settings.brain == "realtime":
        raise ConfigError("--fast needs MOKSORI_BRAIN=pipeline: a realtime upstream answers in real time, "
                          "so virtual time cannot run ahead of it")
    stack = load_stack(settings)
    from moksori.cli.cli_recording import prepare_offline
    from moksori.engine.config import config_from_settings

    stored = prepare_offline(settings, stack, config_from_settings(settings, output_rate=24000, output_lead_ms=0),
                             user, metadata={"command": "converse"})
    timeline_file = _TimelineFile(timeline) if timeline is not None else None
    try:
        rec = run_conversation(stack, settings, frame, fast=fast, max_tail_s=max_tail_s, timeline=timeline_file,
                               stored=stored)
    finally:
        if timeline_file is not None:
            timeline_file.close()
        if stored is not None and not stored.close():
            err_console.print("[yellow]warning:[/] some turns were not saved: the store did not answer in time",
                              highlight=False)
    reply = rec.reply_audio(min_seconds=frame.duration)
    write_wav(out, reply)
    _summary(rec, out, reply.duration, fast)
    if stored is not None and stored.recording is not None:
        who = f" (user {user})" if user else " (anonymous)"
        err_console.print(f"[green]✓[/] saved as conversation {stored.recording.conversation_id}{who}", highlight=False)
    if timeline_file is not None and timeline_file.error is not None:
        raise timeline_file.error  # names the file: one line, exit 2


def run_conversation(stack: Any, settings: Any, frame: Any, *, fast: bool, max_tail_s: float = 30.0,
                     timeline: _TimelineFile | None = None, output_rate: int = 24000,
                     stored: OfflineRecording | None = None) -> Any:
    """Feed `frame` into a new session at real-time pace (virtual time with fast=True), recorded
    into `stored` when given, its timeline written to `timeline` (the caller closes it)."""
    from moksori.audio.frames import Frame
    from moksori.brains import open_session
    from moksori.engine.bus import TimelineWriter
    from moksori.engine.config import config_from_settings
    from moksori.testing.harness import Recording, play_into_session
    from moksori.testing.virtual_time import run_virtual

    cfg = config_from_settings(settings, output_rate=output_rate, output_lead_ms=0)
    if fast and settings.brain == "realtime":
        raise ConfigError("--fast needs MOKSORI_BRAIN=pipeline: a realtime upstream answers in real time, "
                          "so virtual time cannot run ahead of it")

    async def main() -> Recording:
        from moksori.agent_kit import AgentKit

        kit = await AgentKit.build(settings)  # the server's tools, guardrails, denoiser, backchannels
        for w in kit.warnings:
            err_console.print(f"[yellow]tools:[/] {w}", highlight=False)
        session = open_session(stack, cfg, settings=settings, input_rate=frame.rate, kit=kit)
        if stored is not None:
            stored.attach(session)
        rec = Recording(cfg.output_rate)
        session.bus.listen(rec)
        if timeline is not None:
            session.bus.listen(TimelineWriter(cast(IO[str], timeline)))  # it only writes
        try:
            await session.ready(timeout=30)  # the realtime brain: connected to its upstream before the caller speaks
            await play_into_session(session, frame, recording=rec)
            waited = 0.0
            while waited < max_tail_s:  # keep the line open (silence) until the agent is done
                await play_into_session(session, Frame.silence(0.5, frame.rate), recording=rec)
                waited += 0.5
                if session.state == "idle" and not session.busy():
                    break
            await session.close()
        finally:
            await kit.close()
        return rec

    return run_virtual(main()) if fast else asyncio.run(main())


class _TimelineFile:
    """The `--timeline` file. A write that fails (a full disk) stops the writing, not the
    conversation: the reply is still written, then the error is told, naming the file. It raised
    an OSError without a file name from inside the session (or at the last flush), which the CLI
    could only show as a traceback, and the reply WAV was never written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: OSError | None = None
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, text: str) -> None:
        if self.error is None:
            try:
                self._fh.write(text)
            except OSError as e:
                self._failed(e)

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError as e:
            self._failed(e)

    def _failed(self, e: OSError) -> None:
        if self.error is None:
            self.error = OSError(e.errno, e.strerror or str(e), str(self.path))


def _summary(rec: Any, out: Path, seconds: float, fast: bool) -> None:
    from moksori.engine import events as E

    stops = {e.turn_id: e.t for e in rec.of(E.UserSpeechStopped)}
    started = {e.response_id: e.turn_id for e in rec.of(E.AgentResponseStarted)}
    for e in rec.of(E.UserTranscript):
        err_console.print(f"[cyan]user[/]  {e.text}", highlight=False)
    for e in rec.of(E.AgentAudioStarted):
        turn = started.get(e.response_id)
        lat = f"{1000 * (e.t - stops[turn]):.0f} ms after end of speech" if turn in stops and not fast else ""
        done = next((d for d in rec.of(E.AgentResponseDone) if d.response_id == e.response_id), None)
        text = done.text if done else ""
        flag = " [yellow](interrupted)[/]" if done and done.interrupted else ""
        err_console.print(f"[magenta]agent[/] {text}{flag} [dim]{lat}[/]", highlight=False)
    err_console.print(f"[green]✓[/] {seconds:.1f} s of reply audio -> {out}", highlight=False)
