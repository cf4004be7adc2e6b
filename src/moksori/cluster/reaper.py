"""Replies a dead worker left in progress: any live worker finalizes them.

A worker killed with `kill -9` mid-reply leaves that reply stored as `in_progress` (its progress
is written every second, stamped with the worker's id). Every `every_s`, each live worker reads
the registry; the owners of replies in progress that are not in it any more (their entries
expired: `ttl_s` without a heartbeat) are dead, and their replies are finalized as incomplete,
keeping what was heard as last written (`Store.finalize_orphans`; idempotent, and safe with every
worker doing it at once).

Nothing is finalized on a registry this worker cannot trust: Redis unreachable, or a registry
without this worker itself (Redis restarted empty, or this worker's own entry not written yet).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from moksori.cluster.node import ClusterNode
from moksori.cluster.redis_client import RedisUnavailable

log = logging.getLogger("moksori.cluster")

Finalize = Callable[[set[str]], Awaitable[int]]


async def reap_once(node: ClusterNode, finalize: Finalize) -> int | None:
    """One round: the number of replies finalized, None when the registry could not be trusted."""
    try:
        live = {w.id for w in await node.workers()}
    except RedisUnavailable:
        return None
    if node.worker_id not in live:
        return None
    return await finalize(live)


async def reap_forever(node: ClusterNode, finalize_of: Callable[[], Finalize | None], every_s: float) -> None:
    """`finalize_of()`: the store's `finalize_orphans`, None while the store is not up."""
    while True:
        await asyncio.sleep(every_s)
        finalize = finalize_of()
        if finalize is None:
            continue
        try:
            await reap_once(node, finalize)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the database is away: next round
            log.info("cluster: replies of dead workers not finalized this round: %s: %s", type(e).__name__,
                     " ".join(str(e).split())[:200])
