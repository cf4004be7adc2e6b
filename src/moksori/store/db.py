"""Database URLs and engines: SQLite (aiosqlite) or PostgreSQL (asyncpg), one engine per event loop."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from moksori.errors import ConfigError

log = logging.getLogger("moksori.store")

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}


def normalise_url(url: str) -> str:
    """Accept plain `sqlite:///` and `postgresql://` URLs and pick the async drivers for them."""
    url = url.strip()
    try:
        u = make_url(url)
    except ArgumentError:
        raise ConfigError(f"MOKSORI_STORE_URL is not a database URL: {redacted(url)!r}",
                          hint="e.g. sqlite+aiosqlite:///path/moksori.db or postgresql+asyncpg://user@host/db") from None
    backend = u.get_backend_name()
    driver = u.drivername
    if driver in _DRIVERS:
        driver = _DRIVERS[driver]
    if driver not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ConfigError(f"unsupported store database {u.drivername!r}",
                          hint="use sqlite+aiosqlite:///… or postgresql+asyncpg://…, or none to turn storage off")
    if backend == "sqlite" and u.database not in (None, "", ":memory:"):
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return u.set(drivername=driver).render_as_string(hide_password=False)


def redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database).expanduser()


def make_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    url = normalise_url(url)
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI connection
            cur = dbapi_conn.cursor()
            # WAL: readers never block the writer; NORMAL: a process crash (kill -9) loses
            # nothing committed (only a power loss can drop the last transactions)
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                               pool_recycle=1800, connect_args={"timeout": 10, "command_timeout": 30})
