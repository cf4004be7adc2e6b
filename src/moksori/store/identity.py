"""Who owns a conversation: tenants are API keys (kept only as a hash), users are the ids callers give."""

from __future__ import annotations

import hashlib
import os
import time
import hmac
import re
import secrets
from pathlib import Path

DEFAULT_TENANT = "default"  # a server without API keys, and the CLI
MAX_USER_ID = 255
_USER_ID = re.compile(r"^[\w.@:+\-=/]{1,255}$", re.UNICODE)


def tenant_id(api_key: str | None) -> str:
    """The tenant of an API key: `key_` + 32 hex digits of its SHA-256 (the key is never stored)."""
    if not api_key:
        return DEFAULT_TENANT
    return "key_" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:32]


def valid_user_id(user: str) -> bool:
    """User ids are 1-255 characters: letters (any script), digits and `_ . @ : + - = /`."""
    return bool(_USER_ID.match(user))


def phone_user_id(number: str, secret: bytes) -> str:
    """A caller's number as a user id: `tel:` + HMAC-SHA256 of the digits (never the number itself).

    Formatting is ignored (`+82 10-1234-5678` and `+821012345678` are the same caller), and so is
    the script of the digits (fullwidth `１` or Arabic-Indic `١` is the same caller as `1`)."""
    digits = "".join(ch if ch == "+" else str(int(ch)) for ch in re.findall(r"[\d+]", number))
    digest = hmac.new(secret, digits.encode("ascii"), hashlib.sha256).hexdigest()[:32]
    return f"tel:{digest}"


def hash_secret(configured: str | None, data_dir: Path) -> bytes:
    """The HMAC key for phone numbers: the configured one, else a random key kept in data_dir
    (`store-secret`, created once). Several servers sharing a database must share the key."""
    if configured:
        return configured.encode("utf-8")
    path = Path(data_dir).expanduser() / "store-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # exclusive create: two processes starting at once end up with the same key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32))
    for _ in range(50):
        try:
            return bytes.fromhex(path.read_text(encoding="ascii").strip() or "x")
        except ValueError:  # the other process is still writing it
            time.sleep(0.01)
    raise OSError(f"cannot read the store secret {path}")
