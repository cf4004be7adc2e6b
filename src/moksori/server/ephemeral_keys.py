"""Ephemeral keys (`ek_...`): minted by `POST /v1/realtime/client_secrets`, they start Realtime
sessions (WebRTC calls and the WebSocket) until they expire, and open nothing else.

A key carries the session config it was minted with (the raw `session` object, already
validated); the session it starts begins with that config. Expiry only stops new sessions: a
session already running goes on.

Limits: a key lives 10 s .. 2 h (MIN_TTL_S .. MAX_TTL_S). Its session config may take at most
MAX_SESSION_BYTES (256 KiB) as JSON: real configs are a few KB, and long prompts tens of KB; a
bigger one is refused with a 400 naming the limit. The in-process store holds at most
`max_keys` keys (MOKSORI_WEBRTC_MAX_EPHEMERAL_KEYS) and MAX_STORE_BYTES (128 MiB) of session
config together; past either, minting answers 429 until keys expire. Without the byte cap, keys
carrying a MB of instructions each for up to 2 h would grow the server without bound.

The store is a tiny async interface so that a shared store (Redis, for several server
processes) can replace the in-process one without touching the routes.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

PREFIX = "ek_"
MIN_TTL_S = 10
MAX_TTL_S = 7200
DEFAULT_TTL_S = 600
MAX_SESSION_BYTES = 256 * 1024  # one key's session config, as JSON
MAX_STORE_BYTES = 128 * 1024 * 1024  # all live keys' session configs in one process


def session_bytes(session: dict[str, Any]) -> int:
    """The size of a session config as UTF-8 JSON: what a key holds (and what Redis stores)."""
    text = json.dumps(session, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8", "surrogatepass"))  # a "\ud800" escape decodes to a lone surrogate


def check_session_size(session: dict[str, Any]) -> None:
    """Raises ValueError, naming the limit, for a config larger than one key may hold."""
    size = session_bytes(session)
    if size > MAX_SESSION_BYTES:
        raise ValueError(f"the session config is {size} bytes as JSON; an ephemeral key holds at most "
                         f"{MAX_SESSION_BYTES} bytes ({MAX_SESSION_BYTES // 1024} KiB)")


@dataclass(frozen=True)
class EphemeralKey:
    value: str
    created_at: int  # unix seconds
    expires_at: int  # unix seconds
    session: dict[str, Any] = field(default_factory=dict)  # the validated `session` object
    transcription: bool = False  # minted for a transcription session
    owner: str = "anonymous"  # label of the real key that minted it (session limits count by it)
    tenant: str | None = None  # the minting key's tenant in the store (its sessions are recorded there)


class KeyStore(Protocol):
    async def put(self, key: EphemeralKey) -> None: ...

    async def get(self, value: str) -> EphemeralKey | None:
        """The key if it exists and has not expired, else None."""
        ...


class StoreFull(Exception):
    """Too many live keys: mint fewer, or shorter-lived ones."""


class MemoryKeyStore:
    """One process's keys, oldest first; expired keys are dropped as new ones come in.
    Bounded by count (`max_keys`) and by the bytes of session config they hold (`max_bytes`)."""

    def __init__(self, max_keys: int = 100_000, *, max_bytes: int = MAX_STORE_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self.clock = clock
        self._keys: OrderedDict[str, EphemeralKey] = OrderedDict()
        self._sizes: dict[str, int] = {}  # key value -> session_bytes(key.session)
        self.bytes = 0  # the sum of _sizes

    def __len__(self) -> int:
        return len(self._keys)

    def _drop(self, value: str) -> None:
        del self._keys[value]
        self.bytes -= self._sizes.pop(value)

    def _purge(self) -> None:
        now = self.clock()
        # keys are inserted in creation order, but TTLs differ: purge every expired key
        for value in [v for v, k in self._keys.items() if k.expires_at <= now]:
            self._drop(value)

    def _full(self, size: int) -> bool:
        return len(self._keys) >= self.max_keys or self.bytes + size > self.max_bytes

    async def put(self, key: EphemeralKey) -> None:
        size = session_bytes(key.session)
        if self._full(size):
            self._purge()
            if len(self._keys) >= self.max_keys:
                raise StoreFull(f"{len(self._keys)} ephemeral keys are live")
            if self.bytes + size > self.max_bytes:
                raise StoreFull(f"live ephemeral keys hold {self.bytes} bytes of session config, "
                                f"at most {self.max_bytes} in all")
        self._keys[key.value] = key
        self._sizes[key.value] = size
        self.bytes += size

    async def get(self, value: str) -> EphemeralKey | None:
        key = self._keys.get(value)
        if key is None:
            return None
        if key.expires_at <= self.clock():
            self._drop(value)
            return None
        return key


def is_ephemeral(token: str | None) -> TypeGuard[str]:
    return token is not None and token.startswith(PREFIX)


def parse_expires_after(value: Any) -> int:
    """`{"anchor": "created_at", "seconds": 10..7200}` -> seconds (default 600). Raises ValueError."""
    if value is None:
        return DEFAULT_TTL_S
    if not isinstance(value, dict):
        raise ValueError("expires_after must be an object")
    anchor = value.get("anchor", "created_at")
    if anchor != "created_at":
        raise ValueError("expires_after.anchor must be 'created_at'")
    seconds = value.get("seconds", DEFAULT_TTL_S)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise ValueError("expires_after.seconds must be an integer")
    if not MIN_TTL_S <= seconds <= MAX_TTL_S:
        raise ValueError(f"expires_after.seconds must be between {MIN_TTL_S} and {MAX_TTL_S}")
    return seconds


def new_key(ttl_s: int, session: dict[str, Any], *, transcription: bool = False, owner: str = "anonymous",
            now: float | None = None, tenant: str | None = None) -> EphemeralKey:
    created = int(time.time() if now is None else now)
    return EphemeralKey(PREFIX + secrets.token_urlsafe(24), created, created + ttl_s, dict(session),
                        transcription, owner, tenant)
