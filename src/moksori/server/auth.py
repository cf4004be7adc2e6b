"""API keys: where clients put them, and checking them in constant time."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping

INSECURE_PREFIX = "openai-insecure-api-key."


def extract_key(headers: Mapping[str, str], subprotocols: Iterable[str] = (),
                query: Mapping[str, str] | None = None) -> str | None:
    """`Authorization: Bearer`, `api-key` (Azure), the browser subprotocol, or `?api-key=`."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    if headers.get("api-key"):
        return headers["api-key"].strip()
    for proto in subprotocols:
        if proto.startswith(INSECURE_PREFIX):
            return proto[len(INSECURE_PREFIX):] or None
    if query is not None:
        return query.get("api-key") or query.get("api_key") or None
    return None


def key_ok(key: str | None, keys: list[str]) -> bool:
    """True if `key` is one of `keys`; compares against every key so timing reveals nothing."""
    if key is None:
        return False
    given = key.encode()
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given, k.encode())
    return ok


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def key_label(key: str | None) -> str:
    """Something to count sessions by without keeping the key itself in memory tables."""
    if key is None:
        return "anonymous"
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:16]
