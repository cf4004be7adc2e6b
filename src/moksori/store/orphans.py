"""Replies left `in_progress` by a process that died mid-reply (`kill -9`, a crash, a lost
machine): finalized as `incomplete` and interrupted, keeping what was heard as last written.

Each reply in progress names the process writing it (`items.owner`, stamped by the writer):

* a cluster worker: its worker id. Any live worker finalizes the replies of owners that are not
  in the registry any more (their entries expired: `finalize_owners`, from `moksori.cluster.reaper`).
* one server (no Redis): `<instance>/<boot>`. The instance id is kept in the data dir
  (`store-instance`), and the server holds an exclusive lock on it while it runs, so a reply of
  this instance with another boot id was left by an earlier run of this same server, which is
  dead (`local_owner`, then `finalize_earlier_runs` at start-up). A second server started on the
  same data dir cannot take the lock: it gets an instance of its own (and says so), and leaves
  the first one's replies alone.
* no owner (written before owners existed, or by a process without one): finalized once their
  last progress is older than `UNOWNED_STALE_S` (a live reply writes its progress every second).

A finalize is one UPDATE ... WHERE status = 'in_progress' AND owner IN (...): running it twice, or
on two workers at once, finalizes each reply once (the second finds it no longer in progress).
The finalized row's owner becomes `~` + owner: if that process was alive after all (a worker cut
off from Redis), its own ending of the reply still lands (`writes.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy import ColumnElement, and_, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from moksori.store.models import items
from moksori.store.writes import SWEPT

log = logging.getLogger("moksori.store")

UNOWNED_STALE_S = 600.0


@dataclass
class LocalOwner:
    """This server's owner id, and whether it may finalize its instance's earlier runs."""

    instance: str
    owner: str
    exclusive: bool  # holds the data dir's instance lock
    lock: IO[str] | None = None

    def close(self) -> None:
        if self.lock is not None:
            with contextlib.suppress(OSError):
                self.lock.close()
            self.lock = None


def local_owner(data_dir: Path) -> LocalOwner:
    """`<instance>/<boot>` for a server without a cluster (see the module's doc)."""
    d = Path(data_dir).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    boot = f"{os.getpid()}-{secrets.token_hex(4)}"
    lock = open(d / "store-instance.lock", "a+")  # noqa: SIM115 - held for the process's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        instance = "x" + secrets.token_hex(6)
        log.warning("store: another server runs on the data dir %s; this one finalizes no reply a crash left "
                    "in progress (instance %s of its own)", d, instance)
        return LocalOwner(instance, f"{instance}/{boot}", exclusive=False)
    path = d / "store-instance"
    try:
        instance = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        instance = ""
    if not instance or len(instance) > 64 or "/" in instance:
        instance = secrets.token_hex(6)
        tmp = d / ".store-instance.tmp"
        tmp.write_text(instance + "\n", encoding="ascii")
        os.replace(tmp, path)
    return LocalOwner(instance, f"{instance}/{boot}", exclusive=True, lock=lock)


async def in_progress_owners(engine: AsyncEngine) -> list[str]:
    """The owners of replies in progress (from the partial index), unowned ones left out."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(items.c.owner).where(items.c.status == "in_progress",
                                                              items.c.owner.is_not(None)).distinct())
        return [r[0] for r in rows if r[0] and not r[0].startswith(SWEPT)]


async def finalize_owners(engine: AsyncEngine, owners: Collection[str], *, unowned: bool = True,
                          now: float | None = None) -> int:
    """Finalize the replies in progress of `owners` (dead processes), and the unowned ones
    untouched for `UNOWNED_STALE_S`. Returns how many."""
    conds: list[ColumnElement[bool]] = []
    if owners:
        conds.append(items.c.owner.in_(sorted(owners)))
    if unowned:
        cutoff = (time.time() if now is None else now) - UNOWNED_STALE_S
        conds.append(and_(items.c.owner.is_(None), items.c.created_at < cutoff))
    if not conds:
        return 0
    async with engine.begin() as conn:
        result = await conn.execute(
            update(items).where(items.c.status == "in_progress", or_(*conds))
            .values(status="incomplete", interrupted=True, owner=literal(SWEPT) + items.c.owner))
        n = int(result.rowcount or 0)
    if n:
        log.warning("store: %d replies left in progress by a process that is gone were finalized as incomplete "
                    "(what was heard of them kept)", n)
    return n


def dead_owners(owners: Collection[str], live: Collection[str]) -> list[str]:
    return [o for o in owners if o not in live]


def earlier_runs(owners: Collection[str], me: LocalOwner) -> list[str]:
    """Owners that are earlier runs of this server's instance (not this run)."""
    return [o for o in owners if o != me.owner and o.split("/", 1)[0] == me.instance]
