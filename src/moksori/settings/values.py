"""Shared value types of the settings: the language, and lists given comma-separated or as JSON."""

from __future__ import annotations

from typing import Any, Literal

Language = Literal["auto", "en", "ko"]


def split_csv(value: Any) -> Any:
    """A list field from the environment: `a, b` or a JSON array `["a", "b"]`; other values as they are."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            import json

            return json.loads(value)
        return [v.strip() for v in value.split(",") if v.strip()]
    return value
