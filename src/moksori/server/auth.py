"""API keys: where clients put them, and checking them in constant time."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
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
    """Only this machine can connect. An empty host binds every interface: not loopback."""
    host = host.strip()
    if host == "localhost":
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


_SECRET_QUERY = re.compile(r"(?i)([?&](?:api[-_]key|token|key|access_token)=)[^&\s\"']*")


def redact(text: str) -> str:
    """A URL or log line with the values of key-like query parameters replaced by `***`."""
    return _SECRET_QUERY.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    """Keeps `?api-key=...` (browsers can only send a key there) and stream `?token=...` out of
    the access and error logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = redact(record.msg)
        return True


def redact_uvicorn_logs() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
