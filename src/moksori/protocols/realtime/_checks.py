"""Small validators for JSON values. Each raises ProtocolError naming the offending param."""

from __future__ import annotations

import math
from typing import Any, NoReturn, TypeVar

from moksori.errors import ProtocolError


S = TypeVar("S", bound=str)


def fail(message: str, param: str | None, code: str = "invalid_value") -> NoReturn:
    raise ProtocolError(message, code=code, param=param)


def as_dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(f"{param} must be an object", param, "invalid_type")
    return value


def as_list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        fail(f"{param} must be an array", param, "invalid_type")
    return value


def as_str(value: Any, param: str, *, nonempty: bool = False, max_len: int | None = None) -> str:
    if not isinstance(value, str):
        fail(f"{param} must be a string", param, "invalid_type")
    if nonempty and not value:
        fail(f"{param} must not be empty", param)
    if max_len is not None and len(value) > max_len:
        fail(f"{param} is longer than {max_len} characters", param)
    return value


def as_opt_str(value: Any, param: str) -> str | None:
    return None if value is None else as_str(value, param)


def as_bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        fail(f"{param} must be true or false", param, "invalid_type")
    return value


def as_number(value: Any, param: str, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"{param} must be a number", param, "invalid_type")
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"{param} must be a finite number", param)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        fail(f"{param} must be between {lo} and {hi}", param)
    try:
        return float(value)
    except OverflowError:
        fail(f"{param} is too large", param)


def as_int(value: Any, param: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (an integral float such as ``300.0`` is accepted too)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        fail(f"{param} must be an integer", param, "invalid_type")
    if lo is not None and value < lo:
        fail(f"{param} must be at least {lo}, got {value}", param)
    if hi is not None and value > hi:
        fail(f"{param} must be at most {hi}, got {value}", param)
    return value


def as_choice(value: Any, param: str, choices: tuple[S, ...]) -> S:
    if not isinstance(value, str) or value not in choices:
        shown = repr(value[:40]) if isinstance(value, str) else type(value).__name__
        fail(f"{param} must be one of {', '.join(choices)}; got {shown}", param)
    return choices[choices.index(value)]  # the same string, typed as the choice it matched
