"""The conversation store (`store`), and where its database is."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, SecretStr

if TYPE_CHECKING:
    from .root import Settings


class StoreSettings(BaseModel):
    """Conversation history and usage (`moksori.store`)."""

    # SQLAlchemy async URL: sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db;
    # unset = SQLite in data_dir; "none" = storage off
    url: str | None = None
    retention_days: int = Field(0, ge=0)  # 0 = keep forever; otherwise purge older conversations
    # HMAC key for phone numbers stored as user ids; unset = a random key kept in data_dir
    hash_secret: SecretStr | None = None
    max_pending: int = Field(50_000, ge=100)  # records buffered while the database is slow or down
    flush_interval_ms: int = Field(50, ge=0, le=10_000)

    @property
    def enabled(self) -> bool:
        return (self.url or "").strip().lower() not in ("none", "off", "false", "0")


def store_url(settings: Settings) -> str | None:
    """The store's database URL, or None when storage is off (`MOKSORI_STORE_URL=none`)."""
    if not settings.store.enabled:
        return None
    if settings.store.url:
        return settings.store.url.strip()
    return f"sqlite+aiosqlite:///{Path(settings.data_dir).expanduser() / 'moksori.db'}"
