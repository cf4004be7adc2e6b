"""Console output and the model-loading progress display."""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from moksori.errors import ConfigError
from moksori.settings import Settings

err_console = Console(stderr=True)
out_console = Console()


def checked_store_url(url: str) -> str:
    """`url` (MOKSORI_STORE_URL) once a driver could take it, else a one-line `ConfigError`.
    SQLAlchemy's parser raises a bare ValueError for a port that is not a number
    (`postgresql://u@host:abc/db`, `...@[::1/db`): `moksori db` and `moksori serve` called that
    an internal error."""
    from moksori.errors import MoksoriError
    from moksori.store.db import normalise_url

    try:
        normalise_url(url)
    except MoksoriError:
        raise
    except ValueError as e:
        raise ConfigError(f"MOKSORI_STORE_URL is not a database URL ({' '.join(str(e).split())[:120]})",
                          hint="e.g. sqlite+aiosqlite:///path/moksori.db or postgresql+asyncpg://user@host:5432/db") from None
    return url


def check_output_file(path: Path) -> None:
    """Refuse an output path that cannot be written, before any model loads."""
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: give a file name")
    if not path.parent.exists():
        raise ConfigError(f"output folder does not exist: {path.parent}")


class _Loading:
    def __init__(self, status: Any, title: str) -> None:
        self.status, self.title = status, title
        self.current: str | None = None
        self.started = time.perf_counter()

    def step(self, label: str) -> None:
        """A new loading step: the previous one is printed as done, with its time."""
        self.done()
        self.current, self.started = label, time.perf_counter()
        self.status.update(f"[bold]{self.title}:[/] {label}")

    def progress(self, label: str, done: int, total: int) -> None:
        self.status.update(f"[bold]{self.title}:[/] {label} {100 * done // max(1, total)}%")

    def done(self) -> None:
        if self.current is not None:
            err_console.print(f"  [green]✓[/] {self.current} [dim]({time.perf_counter() - self.started:.1f} s)[/]",
                              highlight=False)
            self.current = None


@contextmanager
def loading(title: str = "Loading models") -> Iterator[_Loading]:
    """A live status line on stderr; each finished step is printed with its time."""
    start = time.perf_counter()
    with err_console.status(f"[bold]{title}…", spinner="dots") as status:
        ui = _Loading(status, title)
        yield ui
        ui.done()
    err_console.print(f"[dim]{title} took {time.perf_counter() - start:.1f} s[/]", highlight=False)


def load_stack(settings: Settings, *, warm: bool = True) -> Any:
    """Build the whole provider stack with a progress display (used by converse/chat/serve)."""
    from moksori.engine.prompts import system_prompt
    from moksori.providers.registry import build_stack

    with loading() as ui:
        stack = build_stack(settings, step=ui.step, progress=ui.progress)
        if warm:
            ui.step("warming up (first inference, prompt cache)")
            asyncio.run(stack.warm(system_prompt(settings.agent.instructions, stack.llm.caps.languages)))
    return stack
