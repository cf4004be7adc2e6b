"""What every event is: the `Event` base (`t`, `type`, `timeline`, `to_json()`) and the field
options of the wire shape (`optional()`, `_wire()`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, dataclass_transform


_T = TypeVar("_T")


def optional(*, default: Any = None) -> Any:
    """A field left out of the JSON while it holds `default` (payloads that vary by source)."""
    return field(default=default, metadata={"omit_if": default})


def _wire(name: str) -> Any:
    """A field with another name on the wire (`from` is a Python keyword)."""
    return field(metadata={"wire": name})


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(field, optional, _wire))
def _event(cls: type[_T]) -> type[_T]:
    """Every event is a frozen, slotted dataclass with keyword-only fields."""
    return dataclass(frozen=True, slots=True, kw_only=True)(cls)


@_event
class Event:
    """Base of every engine event. `type` is the wire name; `t` is session time in seconds."""

    type: ClassVar[str] = ""
    timeline: ClassVar[bool] = True
    t: float

    @property
    def is_timeline(self) -> bool:
        return self.timeline

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "t": round(self.t, 4)}
        for name, wire, omit, omit_if in _wire_fields(type(self)):
            value = getattr(self, name)
            if omit and value == omit_if:
                continue
            out[wire] = _plain(value)
        return out


_FIELDS: dict[type[Event], tuple[tuple[str, str, bool, Any], ...]] = {}


def _wire_fields(cls: type[Event]) -> tuple[tuple[str, str, bool, Any], ...]:
    """(name, wire name, may be omitted, omitted when equal to) per field, in order."""
    out = _FIELDS.get(cls)
    if out is None:
        out = _FIELDS[cls] = tuple(
            (f.name, f.metadata.get("wire", f.name), "omit_if" in f.metadata, f.metadata.get("omit_if"))
            for f in dataclasses.fields(cls) if f.name not in ("t", "frame"))
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    return v
