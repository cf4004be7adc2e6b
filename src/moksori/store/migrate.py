"""Alembic migrations, run at start-up and by `moksori db upgrade`.

Safe when several workers start at once: on PostgreSQL the upgrade runs inside one transaction
holding an advisory transaction lock (the second worker waits, then finds the schema at head);
on SQLite a file lock next to the database does the same. Running it again is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from sqlalchemy import Connection, text

from moksori.store.db import is_sqlite, make_engine, normalise_url, redacted, sqlite_path

log = logging.getLogger("moksori.store")

# pg_advisory_xact_lock key: "moksori" in ASCII, as a 64-bit integer
ADVISORY_LOCK_KEY = int.from_bytes(b"moksori\x01", "big") - (1 << 63)


def _config(connection=None):  # noqa: ANN001, ANN202 - alembic types
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("moksori.store") / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


@contextlib.contextmanager
def _file_lock(db: Path) -> Iterator[None]:
    lock = db.with_name(db.name + ".migrate-lock")
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


async def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            def read(sync_conn: Connection) -> str | None:
                from alembic.runtime.migration import MigrationContext

                return MigrationContext.configure(sync_conn).get_current_revision()

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def upgrade(url: str) -> str:
    """Bring the database at `url` to the newest schema; returns the revision it is at."""
    url = normalise_url(url)
    head = head_revision()
    db = sqlite_path(url)
    if db is not None:
        lock_ctx = await asyncio.to_thread(_enter_file_lock, db)
        try:
            await _upgrade(url)
        finally:
            lock_ctx.close()
    else:
        await _upgrade(url)
    log.info("store: %s at schema %s", redacted(url), head)
    return head


def _enter_file_lock(db: Path) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(_file_lock(db))
    return stack


async def _upgrade(url: str) -> None:
    from alembic import command

    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            if not is_sqlite(url):
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            await conn.run_sync(lambda sync_conn: command.upgrade(_config(sync_conn), "head"))
    finally:
        await engine.dispose()
