"""Real databases for store tests: a fresh SQLite file, or a PostgreSQL database of our own.

PostgreSQL runs on these machines at 127.0.0.1:5432 (trust auth, user `postgres`); each test
gets its own database `moksori_test_<random>`, dropped afterwards, so parallel runs and other
helpers never collide. Set MOKSORI_TEST_PG to point at another server (an asyncpg DSN without
the database name, e.g. postgresql://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

PG_DSN = os.environ.get("MOKSORI_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


async def _admin(sql: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_DSN + "/postgres", timeout=10)
    except (OSError, asyncpg.PostgresError) as e:
        raise RuntimeError(f"PostgreSQL is not reachable at {PG_DSN} ({type(e).__name__}: {e}); "
                           "the store tests need it (.ci/run starts it when it is installed)") from None
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _admin_sync(sql: str) -> None:
    """Run on a thread of its own, so it also works inside an async test's running loop."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(_admin(sql))).result()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database; yields its SQLAlchemy URL and drops it afterwards."""
    name = f"moksori_test_{secrets.token_hex(6)}"
    _admin_sync(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://{PG_DSN.split('://', 1)[1]}/{name}"
    finally:
        _admin_sync(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{tmp_path / 'moksori.db'}"
