"""Real Redis for cluster tests: the server on 127.0.0.1:6379, one key prefix per test.

Other helpers (and a second run of this suite) use the same Redis at the same time, so every
test works under its own prefix `moksori-test-<random>:` and deletes its keys afterwards. Set
MOKSORI_TEST_REDIS to use another server.
"""

from __future__ import annotations

import asyncio
import os
import secrets

REDIS_URL = os.environ.get("MOKSORI_TEST_REDIS", "redis://127.0.0.1:6379/0")


def new_prefix() -> str:
    return f"moksori-test-{secrets.token_hex(5)}:"


async def delete_prefix(prefix: str, url: str = REDIS_URL) -> int:
    from redis.asyncio import Redis

    r = Redis.from_url(url, decode_responses=True)
    try:
        n = 0
        async for key in r.scan_iter(match=prefix + "*", count=500):
            n += await r.delete(key)
        return n
    finally:
        await r.aclose()


def delete_prefix_sync(prefix: str, url: str = REDIS_URL) -> int:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(delete_prefix(prefix, url))).result()


def redis_available(url: str = REDIS_URL) -> bool:
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False
