"""`moksori doctor`: the CPU, the numeric path each embedded engine takes on it, and warnings."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from moksori.cli.main import app, friendly
from moksori.cli.ui import out_console
from moksori.providers import cpu as cpu_mod
from moksori.providers import numerics
from moksori.settings import Settings, load_settings


def cpu_table(info: cpu_mod.CpuInfo) -> Table:
    t = Table()
    t.add_column("instruction set")
    t.add_column("present")
    for name, label in cpu_mod.FEATURES:
        mark = "[green]yes[/]" if name in info.flags else "[yellow]listed, not usable[/]" if name in info.unusable else "no"
        t.add_row(label, mark)
    return t


def engines_table(paths: list[numerics.EnginePath]) -> Table:
    t = Table(title="Engines on this CPU", title_justify="left")
    for col in ("engine", "models", "numeric path", "same on every CPU"):
        t.add_column(col, overflow="fold")
    for p in paths:
        t.add_row(p.engine, p.models, p.path, "[green]yes[/]" if p.same_everywhere else "[yellow]no[/]")
    return t


def print_findings(findings: list[numerics.Finding]) -> None:
    for f in findings:
        tag = "[bold yellow]warning[/]" if f.level == "warning" else "[dim]note[/]"
        out_console.print(f"{tag} ({f.model}): {f.text}", highlight=False, soft_wrap=True)


def report(settings: Settings) -> tuple[cpu_mod.CpuInfo, list[numerics.EnginePath], list[numerics.Finding]]:
    info = cpu_mod.detect()
    paths, findings = numerics.assess(info, numerics.probe(settings))
    return info, paths, findings


@app.command()
@friendly
def doctor(as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables.")) -> None:
    """The CPU's instruction sets, the numeric path each embedded model takes on them, and warnings
    when one is known to give different results from other CPUs. Exit code 1 if there is a warning."""
    info, paths, findings = report(load_settings())
    if as_json:
        out_console.print_json(json.dumps({
            "cpu": {"model": info.model, "arch": info.arch, "vendor": info.vendor, "cores": info.cores,
                    "features": sorted(info.flags), "unusable": sorted(info.unusable), "int8_dot": info.int8_dot},
            "engines": [p.__dict__ for p in paths],
            "findings": [f.__dict__ for f in findings],
        }))
    else:
        out_console.print(f"CPU: {info.model} ({info.arch}, {info.vendor or 'unknown vendor'}, {info.cores} cores)",
                          highlight=False)
        out_console.print(cpu_table(info))
        out_console.print(engines_table(paths))
        print_findings(findings)
        if not any(f.level == "warning" for f in findings):
            out_console.print("[green]✓[/] no warnings: every embedded model runs on a path that matches its "
                              "reference within the tested tolerance", highlight=False)
    if any(f.level == "warning" for f in findings):
        raise typer.Exit(1)
