"""Client -> server events: raw WebSocket message in, one small frozen dataclass out.

:func:`parse_client_event` never raises anything but :class:`ProtocolError`; errors about a
well-formed event carry the client's ``event_id`` so the ``error`` reply can echo it.
Audio stays base64 here (decoding needs the session's format: ``AudioFormat.decode``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

from moksori.errors import ProtocolError
from moksori.text.unencodable import surrogates_replaced

from . import mcp
from ._checks import as_dict, as_int, as_list, as_opt_str, as_str, fail
from .audio_formats import AudioFormat, parse_audio_format
from .items import (ContentPart, FunctionCallItem, FunctionCallOutputItem, Item, ItemReference, MessageItem, MessageRole,
                    PartType)
from .session_fields import (parse_max_tokens, parse_modalities, parse_temperature, parse_tool_choice,
                             parse_tools, parse_voice)

__all__ = [
    "ClientEvent", "SessionUpdate", "TranscriptionSessionUpdate", "InputAudioBufferAppend",
    "InputAudioBufferCommit", "InputAudioBufferClear", "ConversationItemCreate", "ConversationItemRetrieve",
    "ConversationItemTruncate", "ConversationItemDelete", "ResponseCreate", "ResponseOverrides",
    "ResponseCancel", "OutputAudioBufferClear", "parse_client_event", "parse_item", "CLIENT_EVENT_TYPES",
]

_ID_MAX = 64


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    TYPE: ClassVar[str] = "session.update"
    event_id: str | None
    session: dict[str, Any]  # merged with apply_session_update, which validates it


@dataclass(frozen=True, slots=True)
class TranscriptionSessionUpdate:
    TYPE: ClassVar[str] = "transcription_session.update"
    event_id: str | None
    session: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InputAudioBufferAppend:
    TYPE: ClassVar[str] = "input_audio_buffer.append"
    event_id: str | None
    audio: str


@dataclass(frozen=True, slots=True)
class InputAudioBufferCommit:
    TYPE: ClassVar[str] = "input_audio_buffer.commit"
    event_id: str | None


@dataclass(frozen=True, slots=True)
class InputAudioBufferClear:
    TYPE: ClassVar[str] = "input_audio_buffer.clear"
    event_id: str | None


@dataclass(frozen=True, slots=True)
class ConversationItemCreate:
    TYPE: ClassVar[str] = "conversation.item.create"
    event_id: str | None
    item: Item
    previous_item_id: str | None = None


@dataclass(frozen=True, slots=True)
class ConversationItemRetrieve:
    TYPE: ClassVar[str] = "conversation.item.retrieve"
    event_id: str | None
    item_id: str


@dataclass(frozen=True, slots=True)
class ConversationItemTruncate:
    TYPE: ClassVar[str] = "conversation.item.truncate"
    event_id: str | None
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ConversationItemDelete:
    TYPE: ClassVar[str] = "conversation.item.delete"
    event_id: str | None
    item_id: str


@dataclass(frozen=True)
class ResponseOverrides:
    """Per-response settings of ``response.create``; ``None`` = use the session's."""

    instructions: str | None = None
    output_modalities: tuple[str, ...] | None = None
    voice: str | None = None
    voice_config: dict[str, Any] | None = None
    output_format: AudioFormat | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    mcp_tools: tuple[mcp.MCPToolConfig, ...] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    conversation: Literal["auto", "none"] = "auto"
    metadata: dict[str, str] | None = None
    input: tuple[Item | ItemReference, ...] | None = None  # None = the conversation; () = empty context
    # Azure's `pre_generated_assistant_message`: this text is spoken (and kept) as the reply, no LLM
    fixed_text: str | None = None
    fixed_item_id: str | None = None  # ... and the id of its item, when the client gave one
    warnings: tuple[str, ...] = ()  # settings accepted but not honoured


@dataclass(frozen=True, slots=True)
class ResponseCreate:
    TYPE: ClassVar[str] = "response.create"
    event_id: str | None
    response: ResponseOverrides | None = None


@dataclass(frozen=True, slots=True)
class ResponseCancel:
    TYPE: ClassVar[str] = "response.cancel"
    event_id: str | None
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutputAudioBufferClear:
    TYPE: ClassVar[str] = "output_audio_buffer.clear"
    event_id: str | None


ClientEvent = (SessionUpdate | TranscriptionSessionUpdate | InputAudioBufferAppend | InputAudioBufferCommit
               | InputAudioBufferClear | ConversationItemCreate | ConversationItemRetrieve | ConversationItemTruncate
               | ConversationItemDelete | ResponseCreate | ResponseCancel | OutputAudioBufferClear)

# ---------------------------------------------------------------------------- items

# role -> accepted part type -> normalised part type (GA and beta spellings)
_PARTS: dict[str, dict[str, PartType]] = {
    "user": {"input_text": "input_text", "input_audio": "input_audio", "input_image": "input_image"},
    "system": {"input_text": "input_text"},
    "assistant": {"output_text": "output_text", "text": "output_text",
                  "output_audio": "output_audio", "audio": "output_audio"},
}
_STATUSES = ("completed", "in_progress", "incomplete")


def _item_id(obj: dict[str, Any], key: str, param: str, *, required: bool) -> str | None:
    v = obj.get(key)
    if v is None and not required:
        return None
    return as_str(v, f"{param}.{key}", nonempty=True, max_len=_ID_MAX)


def _part(raw: Any, role: str, param: str) -> ContentPart:
    obj = as_dict(raw, param)
    allowed = _PARTS[role]
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in allowed:
        fail(f"{param}.type must be one of {', '.join(allowed)} for a {role} message", f"{param}.type")
    norm = allowed[kind]
    if norm in ("input_text", "output_text"):
        return ContentPart(norm, text=as_str(obj.get("text"), f"{param}.text"))
    if norm == "input_image":
        return ContentPart("input_image", image_url=as_str(obj.get("image_url"), f"{param}.image_url",
                                                           nonempty=True))
    return ContentPart(norm, audio=as_opt_str(obj.get("audio"), f"{param}.audio"),
                       transcript=as_opt_str(obj.get("transcript"), f"{param}.transcript"))


def _status(obj: dict[str, Any], param: str) -> Any:
    v = obj.get("status")
    if v is None:
        return None
    if v not in _STATUSES:
        fail(f"{param}.status must be one of {', '.join(_STATUSES)}", f"{param}.status")
    return v


def parse_item(raw: Any, param: str = "item", *, allow_reference: bool = False) -> Item | ItemReference:
    """One conversation item (``message``, ``function_call``, ``function_call_output``;
    ``item_reference`` too when ``allow_reference``)."""
    obj = as_dict(raw, param)
    kind = obj.get("type", "message" if "role" in obj else None)
    if kind == "item_reference" and allow_reference:
        return ItemReference(as_str(obj.get("id"), f"{param}.id", nonempty=True, max_len=_ID_MAX))
    item_id = _item_id(obj, "id", param, required=False)
    if kind == "message":
        role = obj.get("role")
        if not isinstance(role, str) or role not in _PARTS:
            fail(f"{param}.role must be user, assistant or system", f"{param}.role")
        parts = as_list(obj.get("content"), f"{param}.content")
        content = tuple(_part(p, role, f"{param}.content[{i}]") for i, p in enumerate(parts))
        return MessageItem(cast(MessageRole, role), content, id=item_id, status=_status(obj, param))  # a key of _PARTS
    if kind == "function_call":
        args = obj.get("arguments", "")
        return FunctionCallItem(call_id=as_str(obj.get("call_id"), f"{param}.call_id", nonempty=True),
                                name=as_str(obj.get("name"), f"{param}.name", nonempty=True),
                                arguments=as_str(args, f"{param}.arguments"), id=item_id,
                                status=_status(obj, param))
    if kind == "mcp_approval_response":
        if not mcp.SERVED:
            fail(f"{param}.type 'mcp_approval_response' is not supported: this server does not run MCP tools yet",
                 f"{param}.type")
        return mcp.parse_mcp_approval_response(obj, param, item_id)
    if kind == "function_call_output":
        return FunctionCallOutputItem(call_id=as_str(obj.get("call_id"), f"{param}.call_id", nonempty=True),
                                      output=as_str(obj.get("output"), f"{param}.output"), id=item_id)
    shown = kind[:40] if isinstance(kind, str) else kind
    fail(f"{param}.type {shown!r} is not supported; use message, function_call or function_call_output",
         f"{param}.type")


# ---------------------------------------------------------------------- response.create

# Accepted in response.create but not honoured (GA and Azure extras).
_RESPONSE_UNSUPPORTED = frozenset({"prompt", "reasoning", "parallel_tool_calls", "commit", "cancel_previous",
                                   "append_input_items", "input_items", "reasoning_effort", "interim_response",
                                   "invoke_input"})


MAX_PRE_GENERATED_CHARS = 4096  # as `/v1/audio/speech`'s input


def _pre_generated_text(value: Any, param: str, warnings: list[str]) -> tuple[str | None, str | None]:
    """Azure's `pre_generated_assistant_message`: an assistant message whose text (its text
    parts, or its audio parts' transcripts) is the reply, and the id it gives its item (None: the
    server makes one). No text: None (with a warning)."""
    obj = as_dict(value, param)
    item_id = obj.get("id")
    if item_id is not None:
        as_str(item_id, f"{param}.id", max_len=64)
    if obj.get("type", "message") != "message" or obj.get("role", "assistant") != "assistant":
        fail(f"{param} must be an assistant message", param)
    parts = [_part(raw, "assistant", f"{param}.content[{i}]")
             for i, raw in enumerate(as_list(obj.get("content", []), f"{param}.content"))]
    text = " ".join(t for p in parts if (t := (p.text if p.type == "output_text" else p.transcript)))
    if not text.strip():
        warnings.append(f"{param} has no text to speak; it was ignored")
        return None, None
    if len(text) > MAX_PRE_GENERATED_CHARS:
        fail(f"{param} has more than {MAX_PRE_GENERATED_CHARS} characters of text", f"{param}.content")
    return text, item_id or None


def _metadata(value: Any, param: str) -> dict[str, str] | None:
    if value is None:
        return None
    obj = as_dict(value, param)
    if len(obj) > 16:
        fail(f"{param} may have at most 16 keys", param)
    for k, v in obj.items():
        as_str(k, param, max_len=64)
        as_str(v, f"{param}.{k[:64]}", max_len=512)
    return dict(obj)


def _response_overrides(raw: Any, param: str) -> ResponseOverrides:
    obj = as_dict(raw, param)
    warnings: list[str] = []
    f: dict[str, Any] = {}
    for key, v in obj.items():
        p = f"{param}.{key}"
        if key == "instructions":
            f["instructions"] = as_opt_str(v, p)
        elif key in ("output_modalities", "modalities"):
            f["output_modalities"] = None if v is None else parse_modalities(v, p, warnings)
        elif key == "voice":
            if v is not None:
                f["voice"], f["voice_config"] = parse_voice(v, p)
        elif key == "output_audio_format":
            f["output_format"] = None if v is None else parse_audio_format(v, param=p)
        elif key == "audio":
            out = as_dict(v, p).get("output") if v is not None else None
            if out is not None:
                out = as_dict(out, f"{p}.output")
                if out.get("format") is not None:
                    f["output_format"] = parse_audio_format(out["format"], param=f"{p}.output.format")
                if out.get("voice") is not None:
                    f["voice"], f["voice_config"] = parse_voice(out["voice"], f"{p}.output.voice")
        elif key == "tools":
            f["tools"] = None if v is None else parse_tools(v, p, warnings)
            f["mcp_tools"] = None if v is None else mcp.parse_mcp_tools(v, p, warnings)
        elif key == "tool_choice":
            f["tool_choice"] = None if v is None else parse_tool_choice(v, p, warnings)
        elif key == "temperature":
            f["temperature"] = None if v is None else parse_temperature(v, p)
        elif key in ("max_output_tokens", "max_response_output_tokens"):
            f["max_output_tokens"] = None if v is None else parse_max_tokens(v, p)
        elif key == "conversation":
            if v is not None:
                if v not in ("auto", "none"):
                    fail(f"{p} must be 'auto' or 'none'", p)
                f["conversation"] = v
        elif key == "metadata":
            f["metadata"] = _metadata(v, p)
        elif key == "input":
            if v is not None:
                f["input"] = tuple(parse_item(x, f"{p}[{i}]", allow_reference=True)
                                   for i, x in enumerate(as_list(v, p)))
        elif key == "pre_generated_assistant_message":
            if v is not None:
                f["fixed_text"], f["fixed_item_id"] = _pre_generated_text(v, p, warnings)
        elif key in _RESPONSE_UNSUPPORTED:
            if v is not None:
                warnings.append(f"{p} is accepted but not supported; it has no effect")
        else:
            warnings.append(f"{p[:80]} is not a known response setting and was ignored")
    return ResponseOverrides(**f, warnings=tuple(warnings))


# ---------------------------------------------------------------------------- dispatch

def _build(kind: str, obj: dict[str, Any], eid: str | None) -> ClientEvent:
    if kind == "session.update":
        return SessionUpdate(eid, as_dict(obj.get("session"), "session"))
    if kind == "transcription_session.update":
        return TranscriptionSessionUpdate(eid, as_dict(obj.get("session"), "session"))
    if kind == "input_audio_buffer.append":
        return InputAudioBufferAppend(eid, as_str(obj.get("audio"), "audio"))
    if kind == "input_audio_buffer.commit":
        return InputAudioBufferCommit(eid)
    if kind == "input_audio_buffer.clear":
        return InputAudioBufferClear(eid)
    if kind == "output_audio_buffer.clear":
        return OutputAudioBufferClear(eid)
    if kind == "conversation.item.create":
        item = parse_item(obj.get("item"), "item")
        prev = obj.get("previous_item_id")
        assert not isinstance(item, ItemReference)  # allow_reference is False
        return ConversationItemCreate(eid, item,
                                      None if prev is None else as_str(prev, "previous_item_id", max_len=_ID_MAX))
    if kind == "conversation.item.retrieve":
        return ConversationItemRetrieve(eid, as_str(obj.get("item_id"), "item_id", nonempty=True))
    if kind == "conversation.item.delete":
        return ConversationItemDelete(eid, as_str(obj.get("item_id"), "item_id", nonempty=True))
    if kind == "conversation.item.truncate":
        return ConversationItemTruncate(eid, as_str(obj.get("item_id"), "item_id", nonempty=True),
                                        as_int(obj.get("content_index"), "content_index", lo=0),
                                        as_int(obj.get("audio_end_ms"), "audio_end_ms", lo=0))
    if kind == "response.create":
        resp = obj.get("response")
        return ResponseCreate(eid, None if resp is None else _response_overrides(resp, "response"))
    if kind == "response.cancel":
        rid = obj.get("response_id")
        return ResponseCancel(eid, None if rid is None else as_str(rid, "response_id"))
    raise ProtocolError(f"unknown client event type {kind[:80]!r}", code="unknown_event", param="type",
                        event_id=eid)


CLIENT_EVENT_TYPES = frozenset({
    "session.update", "transcription_session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear", "output_audio_buffer.clear", "conversation.item.create",
    "conversation.item.retrieve", "conversation.item.delete", "conversation.item.truncate", "response.create",
    "response.cancel"})


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not valid JSON", code="invalid_json")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ProtocolError(f"number {text[:40]} is out of range", code="invalid_json")
    return value


def _loads(raw: Any, max_bytes: int) -> Any:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
        if len(data) > max_bytes:
            raise ProtocolError(f"message is {len(data)} bytes; the limit is {max_bytes}", code="message_too_large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("message is not valid UTF-8", code="invalid_json") from None
    elif isinstance(raw, str):
        size = len(raw) if len(raw) > max_bytes or 4 * len(raw) <= max_bytes else \
            len(raw.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise ProtocolError(f"message is over the {max_bytes}-byte limit", code="message_too_large")
        text = raw
    else:
        raise ProtocolError("message must be text", code="invalid_json")
    try:
        # a "\\ud800" escape is valid JSON; its lone surrogate has no UTF-8 form, so it reached the
        # LLM's tokenizer and failed every later reply of the session: replaced at the door
        return surrogates_replaced(json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float), text)
    except (ValueError, RecursionError):
        raise ProtocolError("message is not valid JSON", code="invalid_json") from None


def parse_client_event(raw: str | bytes, *, max_bytes: int) -> ClientEvent:
    """Parse one WebSocket message into a client event (see the module docstring)."""
    obj = _loads(raw, max_bytes)
    if not isinstance(obj, dict):
        raise ProtocolError("a client event must be a JSON object", code="invalid_event")
    eid = obj.get("event_id")
    if eid is not None and not isinstance(eid, str):
        raise ProtocolError("event_id must be a string", code="invalid_type", param="event_id")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("a client event needs a string 'type'", code="missing_required_parameter",
                            param="type", event_id=eid)
    try:
        return _build(kind, obj, eid)
    except ProtocolError as err:
        if err.event_id is None:
            err.event_id = eid
        raise

