"""Alembic environment for the Moksori store.

Moksori runs migrations itself (`moksori.store.migrate.upgrade`, at start-up and by
`moksori db upgrade`) and hands Alembic an open connection in `config.attributes["connection"]`.
Running `alembic` by hand also works: the URL then comes from `sqlalchemy.url` or MOKSORI_STORE_URL.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context

from moksori.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # noqa: ANN001 - a sync Connection
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("MOKSORI_STORE_URL")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from moksori.store.db import make_engine

    url = config.get_main_option("sqlalchemy.url") or os.environ.get("MOKSORI_STORE_URL")
    if not url:
        raise SystemExit("set sqlalchemy.url or MOKSORI_STORE_URL")

    async def main() -> None:
        engine = make_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(_run)
        await engine.dispose()

    asyncio.run(main())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
