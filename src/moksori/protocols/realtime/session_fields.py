"""Parsers for the individual session/response settings shared by ``session.update`` and
``response.create``, plus the turn-detection and transcription value types.

Every parser takes the JSON value and the ``param`` path to name in a ProtocolError, and
appends human-readable notes to ``warnings`` for settings it accepts but does not honour.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Literal

from ._checks import as_bool, as_choice, as_dict, as_int, as_list, as_number, as_opt_str, as_str, fail
from .flavor import Flavor

__all__ = [
    "TurnDetection", "InputTranscription", "TURN_DETECTION_TYPES", "EAGERNESS", "TOOL_CHOICE_MODES",
    "parse_turn_detection", "parse_transcription", "parse_tools", "parse_tool_choice", "parse_modalities",
    "parse_voice", "parse_max_tokens", "parse_temperature", "turn_detection_to_wire", "transcription_to_wire",
    "TRANSCRIPTION_LANGUAGES", "MAX_PROMPT_CHARS", "parse_language", "pinned_language",
]

TurnDetectionType = Literal["server_vad", "semantic_vad", "azure_semantic_vad", "azure_semantic_vad_en",
                            "azure_semantic_vad_multilingual"]
TURN_DETECTION_TYPES: tuple[str, ...] = ("server_vad", "semantic_vad", "azure_semantic_vad",
                                         "azure_semantic_vad_en", "azure_semantic_vad_multilingual")
_OPENAI_TD_TYPES: tuple[TurnDetectionType, ...] = ("server_vad", "semantic_vad")
_AZURE_TD_TYPES: tuple[TurnDetectionType, ...] = ("server_vad", "azure_semantic_vad", "azure_semantic_vad_en",
                                                  "azure_semantic_vad_multilingual")
EAGERNESS = ("low", "medium", "high", "auto")
TOOL_CHOICE_MODES = ("auto", "none", "required")

# Azure turn-detection knobs we accept but do not implement.
_TD_UNSUPPORTED = frozenset({"end_of_utterance_detection", "speech_duration_ms", "remove_filler_words",
                             "languages", "auto_truncate"})
_TR_UNSUPPORTED = frozenset({"delay", "keywords", "languages", "custom_speech", "phrase_list"})

TRANSCRIPTION_LANGUAGES: tuple[str, ...] = ("en", "ko")
"""The languages transcription may be pinned to, here and in `/v1/audio/transcriptions`: the
engine's (the `Language` setting without "auto"; tests/test_realtime_transcription_codec.py
keeps the two the same)."""
MAX_PROMPT_CHARS = 4096
"""A transcription prompt's length limit (Whisper reads only its last 100 tokens)."""


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """Server-side turn detection. ``None`` in a SessionConfig means manual commit."""

    type: TurnDetectionType = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 400
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    idle_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class InputTranscription:
    """Transcription of the user's audio; ``model`` defaults to whisper-1 like the beta API did."""

    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None


def parse_turn_detection(value: Any, current: TurnDetection | None, param: str, warnings: list[str],
                         flavor: Flavor) -> TurnDetection | None:
    """Replace the turn detection. Omitted fields keep their current value when the type
    stays the same, else take the defaults of the new type.

    OpenAI dialects know ``server_vad``/``semantic_vad``; Azure knows ``server_vad`` and the
    ``azure_semantic_vad*`` family, and gets ``semantic_vad`` mapped to ``azure_semantic_vad``."""
    if value is None:
        return None
    obj = as_dict(value, param)
    kind = obj.get("type", current.type if current is not None else "server_vad")
    if flavor is Flavor.AZURE and kind == "semantic_vad":
        warnings.append(f"{param}.type 'semantic_vad' is served as 'azure_semantic_vad' on this endpoint")
        kind = "azure_semantic_vad"
    kind = as_choice(kind, f"{param}.type", _AZURE_TD_TYPES if flavor is Flavor.AZURE else _OPENAI_TD_TYPES)
    td = current if current is not None and current.type == kind else TurnDetection(type=kind)
    changes: dict[str, Any] = {}
    for key, v in obj.items():
        p = f"{param}.{key}"
        if key == "type":
            continue
        if key == "threshold":
            changes[key] = as_number(v, p, lo=0.0, hi=1.0)
        elif key in ("prefix_padding_ms", "silence_duration_ms"):
            changes[key] = as_int(v, p, lo=0, hi=60_000)
        elif key == "idle_timeout_ms":
            changes[key] = None if v is None else as_int(v, p, lo=0, hi=3_600_000)
        elif key in ("create_response", "interrupt_response"):
            changes[key] = as_bool(v, p)
        elif key == "eagerness":
            changes[key] = as_choice(v, p, EAGERNESS)
        elif key in _TD_UNSUPPORTED:
            warnings.append(f"{p} is accepted but not supported; it has no effect")
        else:
            warnings.append(f"{p} is not a known turn detection setting and was ignored")
    return replace(td, **changes)


def _language_codes(text: str) -> list[str]:
    """The primary language subtags, lower case: "en-US" -> en; "en,ko" -> en, ko."""
    return [part.strip().replace("_", "-").split("-")[0].lower() for part in text.split(",")]


def parse_language(value: Any, param: str) -> str | None:
    """A transcription language, as given: an ISO-639-1 code ("en"), a BCP-47 tag ("en-US", Azure's)
    or Azure's list to detect among ("en,ko"). Each must be one of TRANSCRIPTION_LANGUAGES, else
    ``unsupported_language`` (REST's code for the same mistake). None and "": detect."""
    text = as_opt_str(value, param)
    if not text:
        return None
    if any(code not in TRANSCRIPTION_LANGUAGES for code in _language_codes(text)):
        fail(f"unsupported language {text[:40]!r} ({', '.join(TRANSCRIPTION_LANGUAGES)})", param,
             "unsupported_language")
    return text


def pinned_language(language: str | None) -> str | None:
    """The one language a parsed transcription language pins; None: detect (none, or a list)."""
    codes = set(_language_codes(language)) if language else set()
    return codes.pop() if len(codes) == 1 else None


def parse_transcription(value: Any, param: str, warnings: list[str]) -> InputTranscription | None:
    if value is None:
        return None
    obj = as_dict(value, param)
    fields: dict[str, Any] = {}
    for key, v in obj.items():
        p = f"{param}.{key}"
        if key == "model":
            if v is not None:
                fields["model"] = as_str(v, p, nonempty=True, max_len=200)
        elif key == "language":
            fields["language"] = parse_language(v, p)
        elif key == "prompt":
            fields["prompt"] = None if v is None else as_str(v, p, max_len=MAX_PROMPT_CHARS)
        elif key in _TR_UNSUPPORTED:
            warnings.append(f"{p} is accepted but not supported; it has no effect")
        else:
            warnings.append(f"{p} is not a known transcription setting and was ignored")
    return InputTranscription(**fields)


def parse_tools(value: Any, param: str, warnings: list[str]) -> tuple[dict[str, Any], ...]:
    """Function tools as ``{"name", "description", "parameters"}``; MCP tools are left to
    :func:`mcp.parse_mcp_tools`; other tool kinds are dropped with a warning."""
    tools: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, raw in enumerate(as_list(value if value is not None else [], param)):
        p = f"{param}[{i}]"
        obj = as_dict(raw, p)
        kind = obj.get("type", "function")
        if kind == "mcp":
            continue  # parsed by mcp.parse_mcp_tools
        if kind != "function":
            shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
            warnings.append(f"{p}: tools of type {shown!r} are not supported; the tool was ignored")
            continue
        name = as_str(obj.get("name"), f"{p}.name", nonempty=True, max_len=256)
        if name in names:
            fail(f"duplicate tool name {name!r}", f"{p}.name")
        names.add(name)
        desc = obj.get("description")
        params = obj.get("parameters")
        if params is not None:
            as_dict(params, f"{p}.parameters")
            if _depth(params) > MAX_SCHEMA_DEPTH:
                fail(f"{p}.parameters is nested more than {MAX_SCHEMA_DEPTH} levels deep", f"{p}.parameters")
        tools.append({"name": name, "description": "" if desc is None else as_str(desc, f"{p}.description"),
                      "parameters": {"type": "object", "properties": {}} if params is None
                      else copy.deepcopy(params)})
    return tuple(tools)


MAX_SCHEMA_DEPTH = 32  # JSON Schemas of real tools are a few levels deep; deeper is abuse


def _depth(value: Any, limit: int = MAX_SCHEMA_DEPTH + 1) -> int:
    """Nesting depth of dicts and lists, counted without recursion and only up to `limit`."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d >= limit:
                return d
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_tool_choice(value: Any, param: str, warnings: list[str]) -> str | dict[str, Any]:
    """``auto`` | ``none`` | ``required`` | ``{"type": "function", "name": ...}``."""
    if isinstance(value, str):
        return as_choice(value, param, TOOL_CHOICE_MODES)
    obj = as_dict(value, param)
    kind = obj.get("type")
    if kind == "function":
        return {"type": "function", "name": as_str(obj.get("name"), f"{param}.name", nonempty=True)}
    if kind == "mcp":
        from . import mcp

        if mcp.SERVED:
            return mcp.parse_mcp_tool_choice(obj, param)
        warnings.append(f"{param}: MCP tools are not connected by this server yet; tool_choice stays 'auto'")
        return "auto"
    fail(f"{param}.type must be 'function'", f"{param}.type")


def parse_modalities(value: Any, param: str, warnings: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    for i, m in enumerate(as_list(value, param)):
        if m in ("avatar", "animation"):
            warnings.append(f"{param}[{i}]: the {m} modality is not supported and was ignored")
            continue
        seen.add(as_choice(m, f"{param}[{i}]", ("text", "audio")))
    if not seen:
        fail(f"{param} must contain 'text' or 'audio'", param)
    return tuple(m for m in ("text", "audio") if m in seen)


def parse_voice(value: Any, param: str) -> tuple[str, dict[str, Any] | None]:
    """A voice name, or a voice object (Azure ``{"name", "type"}``, GA custom ``{"id"}``).

    Returns the name and, for objects, a copy of the object."""
    if isinstance(value, str):
        return as_str(value, param, nonempty=True, max_len=200), None
    obj = as_dict(value, param)
    key = "name" if "name" in obj or "id" not in obj else "id"
    name = as_str(obj.get(key), f"{param}.{key}", nonempty=True, max_len=200)
    if "type" in obj:
        as_str(obj["type"], f"{param}.type")
    return name, copy.deepcopy(obj)


def parse_max_tokens(value: Any, param: str) -> int | Literal["inf"]:
    if value == "inf" and isinstance(value, str):
        return "inf"
    if isinstance(value, str):
        fail(f"{param} must be a positive integer or 'inf'", param)
    return as_int(value, param, lo=1, hi=MAX_OUTPUT_TOKENS)


MAX_OUTPUT_TOKENS = 4096  # OpenAI's own limit for max_output_tokens; "inf" means the server's setting


def parse_temperature(value: Any, param: str) -> float:
    return as_number(value, param, lo=0.0, hi=2.0)


def turn_detection_to_wire(td: TurnDetection | None, flavor: Flavor) -> dict[str, Any] | None:
    if td is None:
        return None
    kind = td.type  # a config built for one dialect is still sent in a shape the other accepts
    if flavor is Flavor.AZURE and kind == "semantic_vad":
        kind = "azure_semantic_vad"
    elif flavor is not Flavor.AZURE and kind.startswith("azure_"):
        kind = "semantic_vad"
    out: dict[str, Any] = {"type": kind}
    if kind == "semantic_vad":
        out["eagerness"] = td.eagerness
    else:
        out.update(threshold=td.threshold, prefix_padding_ms=td.prefix_padding_ms,
                   silence_duration_ms=td.silence_duration_ms)
    out.update(create_response=td.create_response, interrupt_response=td.interrupt_response)
    if kind == "server_vad" and flavor is Flavor.GA:  # the beta and Azure models have no idle timeout
        out["idle_timeout_ms"] = td.idle_timeout_ms
    return out


def transcription_to_wire(tr: InputTranscription | None, flavor: Flavor) -> dict[str, Any] | None:
    if tr is None:
        return None
    out: dict[str, Any] = {"model": tr.model}
    if tr.language is not None:
        out["language"] = tr.language
    if tr.prompt is not None and flavor is not Flavor.AZURE:  # Azure has no transcription prompt
        out["prompt"] = tr.prompt
    return out
