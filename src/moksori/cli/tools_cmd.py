"""`moksori tools`: the server-side tools the config gives, checked for real (MCP servers are
started or reached and listed), and `--call NAME --args JSON` to try one."""

from __future__ import annotations

import asyncio
import json

import typer
from rich.table import Table

from moksori.cli.main import app, friendly
from moksori.cli.ui import err_console, out_console
from moksori.errors import ConfigError
from moksori.settings import load_settings


@app.command("tools")
@friendly
def tools_cmd(
    call: str = typer.Option(None, "--call", help="Call this tool once and print its answer."),
    args: str = typer.Option("{}", "--args", help="The call's arguments, as a JSON object."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List the server-side tools (the tools table of the config), connecting to each MCP server."""
    from moksori.tools import ServerTools

    try:
        arguments = json.loads(args)
    except ValueError as e:
        raise ConfigError(f"--args is not JSON: {e}") from None
    except RecursionError:  # was an "internal error"
        raise ConfigError("--args is nested too deeply") from None
    if not isinstance(arguments, dict):
        raise ConfigError("--args must be a JSON object")

    async def run() -> tuple[list[dict], list[str], dict | None]:
        tools = ServerTools.from_settings(load_settings().tools)
        try:
            warnings = await tools.start()
            rows = []
            for name in tools.names():
                info = tools.info(name)
                assert info is not None
                rows.append({"name": name, "source": info.source, "server": info.server,
                             "description": info.spec.description, "timeout_s": info.timeout_s})
            result = None
            if call is not None:
                out = await tools.run(call, arguments)
                result = {"ok": out.ok, "kind": out.kind, "text": out.text, "elapsed_s": round(out.elapsed_s, 3)}
            return rows, warnings, result
        finally:
            await tools.close()

    rows, warnings, result = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps({"tools": rows, "warnings": warnings, "call": result}, ensure_ascii=False))
    else:
        t = Table(title="Server-side tools", title_justify="left")
        for col in ("name", "source", "server", "timeout", "description"):
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(r["name"], r["source"], r["server"] or "-", f"{r['timeout_s']:g} s", r["description"][:80])
        out_console.print(t)
        for w in warnings:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
        if result is not None:
            out_console.print(("[green]ok[/] " if result["ok"] else f"[red]{result['kind']}[/] ") + result["text"],
                              highlight=False, soft_wrap=True)
    if result is not None and not result["ok"]:
        raise typer.Exit(1)
