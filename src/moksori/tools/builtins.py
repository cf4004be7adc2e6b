"""Built-in tools that need no server: the current date and time in a configured time zone.

(The phone-call tools `end_call` / `transfer_call` live with the call: `moksori.telephony.call_tools`.)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from moksori.errors import ConfigError

BUILTIN_NAMES = ("current_time",)

_KO_WEEKDAYS = ("월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"tools.timezone {name!r} is not an IANA time zone",
                          hint="e.g. Asia/Seoul, America/New_York or UTC") from None


def current_time_spec(tz_name: str) -> dict[str, Any]:
    return {
        "name": "current_time",
        "description": f"The current date, time and weekday (time zone {tz_name}). "
                       "Use it whenever the user asks what day or time it is.",
        "parameters": {"type": "object", "properties": {}},
    }


def current_time(tz: ZoneInfo, now: Callable[[], dt.datetime] | None = None) -> dict[str, Any]:
    """The answer of `current_time`: local date, time (24 h), weekday (English and Korean)."""
    t = (now() if now is not None else dt.datetime.now(dt.timezone.utc)).astimezone(tz)
    return {
        "timezone": str(tz.key),
        "iso": t.isoformat(timespec="seconds"),
        "date": t.date().isoformat(),
        "time": t.strftime("%H:%M"),
        "weekday": t.strftime("%A"),
        "weekday_ko": _KO_WEEKDAYS[t.weekday()],
        "utc_offset": t.strftime("%z"),
    }
