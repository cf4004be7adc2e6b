"""Telephony routes (Twilio, Telnyx, Plivo, Vonage): being written; see issue 5."""

from __future__ import annotations

from typing import Any


def install(app: Any, state: Any) -> None:
    """Add the telephony routes to the app (none yet)."""
