"""`moksori db`: the conversation store's schema and housekeeping."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer

from moksori.cli.main import app, friendly
from moksori.cli.ui import checked_store_url, err_console, out_console
from moksori.errors import ConfigError, MoksoriError
from moksori.settings import load_settings, store_url

T = TypeVar("T")

db_app = typer.Typer(no_args_is_help=True, help="Conversation store: migrate, show status, purge old data.")
app.add_typer(db_app, name="db")


class StoreError(MoksoriError):
    code = "store_unavailable"


def _url() -> str:
    url = store_url(load_settings())
    if url is None:
        raise ConfigError("conversation storage is off (MOKSORI_STORE_URL=none)")
    return checked_store_url(url)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    from moksori.store.db import redacted

    try:
        return asyncio.run(coro)
    except MoksoriError:
        raise
    except Exception as e:  # noqa: BLE001 - drivers raise many kinds; one line for the user
        raise StoreError(f"cannot use the store database: {type(e).__name__}: {' '.join(str(e).split())[:300]}",
                         hint=f"check MOKSORI_STORE_URL ({redacted(_url())})") from None


@db_app.command("upgrade")
@friendly
def upgrade() -> None:
    """Create or migrate the store's tables to the newest schema (also done at start-up)."""
    from moksori.store.db import redacted
    from moksori.store.migrate import upgrade as run

    url = _url()
    rev = _run(run(url))
    out_console.print(f"store {redacted(url)} is at schema {rev}", highlight=False)


@db_app.command("status")
@friendly
def status() -> None:
    """Show the schema revision of the store."""
    from moksori.store.db import redacted
    from moksori.store.migrate import current_revision, head_revision

    url = _url()
    rev = _run(current_revision(url))
    head = head_revision()
    state = "up to date" if rev == head else f"needs `moksori db upgrade` (newest is {head})"
    out_console.print(f"store {redacted(url)}: schema {rev or 'none'}, {state}", highlight=False)


@db_app.command("purge")
@friendly
def purge(days: int | None = typer.Option(None, "--older-than-days",
                                          help="Default: MOKSORI_STORE_RETENTION_DAYS.")) -> None:
    """Delete conversations untouched for longer than the retention period (usage stays)."""
    from moksori.store import Store

    settings = load_settings()
    if days is not None and days < 1:  # it said "retention is off (MOKSORI_STORE_RETENTION_DAYS=0)"
        raise ConfigError(f"--older-than-days must be at least 1 (got {days})")
    _url()
    store = Store.from_settings(settings)
    if store is None:
        raise ConfigError("conversation storage is off (MOKSORI_STORE_URL=none)")
    days = settings.store.retention_days if days is None else days
    if days <= 0:
        err_console.print("retention is off (MOKSORI_STORE_RETENTION_DAYS=0): nothing to purge")
        return

    async def go() -> int:
        from moksori.store.migrate import upgrade as run

        await run(store.url)
        try:
            return await store.purge(older_than_days=days)
        finally:
            await store.close()

    n = _run(go())
    out_console.print(f"removed {n} conversation(s) older than {days} days")
