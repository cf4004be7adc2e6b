"""Ephemeral keys (`ek_...`): minted by `POST /v1/realtime/client_secrets`, they start Realtime
sessions (WebRTC calls and the WebSocket) until they expire, and open nothing else.

A key carries the session config it was minted with (the raw `session` object, already
validated); the session it starts begins with that config. Expiry only stops new sessions: a
session already running goes on.

The store is a tiny async interface so that a shared store (Redis, for several server
processes) can replace the in-process one without touching the routes.
"""

from __future__ import annotations

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
    """One process's keys, oldest first; expired keys are dropped as new ones come in."""

    def __init__(self, max_keys: int = 100_000, *, clock: Callable[[], float] = time.time) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[str, EphemeralKey] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _purge(self) -> None:
        now = self.clock()
        # keys are inserted in creation order, but TTLs differ: purge every expired key
        for value in [v for v, k in self._keys.items() if k.expires_at <= now]:
            del self._keys[value]

    async def put(self, key: EphemeralKey) -> None:
        if len(self._keys) >= self.max_keys:
            self._purge()
            if len(self._keys) >= self.max_keys:
                raise StoreFull(f"{len(self._keys)} ephemeral keys are live")
        self._keys[key.value] = key

    async def get(self, value: str) -> EphemeralKey | None:
        key = self._keys.get(value)
        if key is None:
            return None
        if key.expires_at <= self.clock():
            del self._keys[value]
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
