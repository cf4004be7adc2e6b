"""Cluster mode: on when `MOKSORI_REDIS_URL` is set, and then only with what it needs.

Checked before a worker loads its models, each as one line:

* a PostgreSQL store (`MOKSORI_STORE_URL=postgresql+asyncpg://...`): every worker reads and writes
  the same history (SQLite is one machine's file);
* `MOKSORI_TELEPHONY_STREAM_SECRET`: a phone call's webhook and its media stream may reach
  different workers, and each must verify the tokens the others mint;
* a Redis URL and key prefix that make sense.
"""

from __future__ import annotations

import logging
from typing import Any

from moksori.cluster.redis_client import Keys, check_url
from moksori.errors import ConfigError

log = logging.getLogger("moksori.cluster")


def cluster_enabled(settings: Any) -> bool:
    return settings.redis.enabled


def check_cluster_settings(settings: Any, *, warn: bool = True) -> None:
    """Raise `ConfigError` (one line) if cluster mode is on without what it needs."""
    if not cluster_enabled(settings):
        return
    from moksori.settings import store_url

    check_url(settings.redis.url)
    Keys(settings.redis.prefix)
    url = store_url(settings) or ""
    if not url.startswith(("postgresql", "postgres")):
        shown = "off" if not url else url.split(":", 1)[0]
        raise ConfigError(f"cluster mode (MOKSORI_REDIS_URL) needs a PostgreSQL store shared by every worker, "
                          f"not {shown}: set MOKSORI_STORE_URL=postgresql+asyncpg://user@host:5432/dbname")
    secret = settings.telephony.stream_secret
    if secret is None or not secret.get_secret_value().strip():
        raise ConfigError("cluster mode (MOKSORI_REDIS_URL) needs MOKSORI_TELEPHONY_STREAM_SECRET, the same on "
                          "every worker: a call's webhook and its media stream may reach different workers")
    if warn and settings.store.hash_secret is None:
        log.warning("cluster: MOKSORI_STORE_HASH_SECRET is not set; workers on other machines (with another "
                    "data dir) would hash callers' phone numbers differently")
