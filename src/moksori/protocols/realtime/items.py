"""Conversation items and responses: the normalised types and their wire shapes.

Clients send items in ``conversation.item.create`` (parsed into :class:`MessageItem`,
:class:`FunctionCallItem`, :class:`FunctionCallOutputItem`); the server sends items back
inside many events. Content-part type names differ by dialect:

=================  ================  ==============
normalised         GA                beta / Azure
=================  ================  ==============
``input_text``     ``input_text``    ``input_text``
``input_audio``    ``input_audio``   ``input_audio``
``input_image``    ``input_image``   ``input_image``
``output_text``    ``output_text``   ``text``
``output_audio``   ``output_audio``  ``audio``
=================  ================  ==============

(``response.content_part.*`` events use ``text``/``audio`` in every dialect.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .audio_formats import PCM16_24K, AudioFormat
from .flavor import Flavor
from .mcp import MCPApprovalResponseItem

__all__ = [
    "PartType", "MessageRole", "ItemStatus", "ResponseStatus", "ContentPart", "MessageItem", "FunctionCallItem",
    "FunctionCallOutputItem", "ItemReference", "Item", "Usage", "part_to_wire", "item_to_wire",
    "message_item", "function_call_item", "function_call_output_item", "event_part", "usage_to_wire",
    "status_details", "response_object",
]

PartType = Literal["input_text", "input_audio", "input_image", "output_text", "output_audio"]
MessageRole = Literal["user", "assistant", "system"]
ItemStatus = Literal["completed", "in_progress", "incomplete"]
ResponseStatus = Literal["in_progress", "completed", "cancelled", "incomplete", "failed"]


@dataclass(frozen=True, slots=True)
class ContentPart:
    """One piece of a message. ``audio`` stays base64 in the session's audio format."""

    type: PartType
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    image_url: str | None = None


@dataclass(frozen=True, slots=True)
class MessageItem:
    role: MessageRole
    content: tuple[ContentPart, ...]
    id: str | None = None
    status: ItemStatus | None = None


@dataclass(frozen=True, slots=True)
class FunctionCallItem:
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None


@dataclass(frozen=True, slots=True)
class FunctionCallOutputItem:
    call_id: str
    output: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class ItemReference:
    """``{"type": "item_reference", "id": ...}`` – only valid in ``response.create`` input."""

    id: str


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | MCPApprovalResponseItem

_BETA_PART_NAMES = {"output_text": "text", "output_audio": "audio"}


def part_to_wire(part: ContentPart, flavor: Flavor) -> dict[str, Any]:
    """A content part as it appears inside an item."""
    name = _BETA_PART_NAMES.get(part.type, part.type) if flavor.beta_shaped else part.type
    out: dict[str, Any] = {"type": name}
    if part.type in ("input_text", "output_text"):
        out["text"] = part.text or ""
    elif part.type == "input_image":
        out["image_url"] = part.image_url or ""
    else:  # audio parts: the transcript is always present (possibly null); bytes only if kept
        if part.audio is not None:
            out["audio"] = part.audio
        out["transcript"] = part.transcript
    return out


def message_item(item_id: str, role: str, content: Sequence[ContentPart], flavor: Flavor, *,
                 status: ItemStatus = "completed") -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": status, "role": role,
            "content": [part_to_wire(p, flavor) for p in content]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, flavor: Flavor, *,
                       status: ItemStatus = "completed") -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "function_call", "status": status,
            "call_id": call_id, "name": name, "arguments": arguments}


def function_call_output_item(item_id: str, call_id: str, output: str, flavor: Flavor) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item_id, "object": "realtime.item", "type": "function_call_output",
                           "call_id": call_id, "output": output}
    if flavor is not Flavor.AZURE:  # Azure's function_call_output item has no status field
        out["status"] = "completed"
    return out


def item_to_wire(item: Item, flavor: Flavor, *, item_id: str | None = None,
                 status: ItemStatus | None = None) -> dict[str, Any]:
    """Serialise a parsed item; ``item_id``/``status`` fill in what the client left out."""
    iid = item_id or item.id or ""
    if isinstance(item, MessageItem):
        return message_item(iid, item.role, item.content, flavor, status=status or item.status or "completed")
    if isinstance(item, FunctionCallItem):
        return function_call_item(iid, item.call_id, item.name, item.arguments, flavor,
                                  status=status or item.status or "completed")
    if isinstance(item, MCPApprovalResponseItem):
        from .mcp import mcp_approval_response_item

        return mcp_approval_response_item(item, iid)
    return function_call_output_item(iid, item.call_id, item.output, flavor)


def event_part(kind: Literal["audio", "text"], *, text: str | None = None,
               transcript: str | None = None) -> dict[str, Any]:
    """The ``part`` of ``response.content_part.added|done`` (same in every dialect)."""
    if kind == "audio":
        return {"type": "audio", "transcript": transcript or ""}
    return {"type": "text", "text": text or ""}


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one response. Local models can report estimates or zeros."""

    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0

    @property
    def input_tokens(self) -> int:
        return self.input_text_tokens + self.input_audio_tokens

    @property
    def output_tokens(self) -> int:
        return self.output_text_tokens + self.output_audio_tokens


def usage_to_wire(usage: Usage, flavor: Flavor) -> dict[str, Any]:
    details: dict[str, Any] = {"text_tokens": usage.input_text_tokens, "audio_tokens": usage.input_audio_tokens,
                               "cached_tokens": usage.cached_text_tokens + usage.cached_audio_tokens}
    if flavor is not Flavor.BETA:  # the beta usage object has no image or cached breakdown
        details["image_tokens"] = 0
        details["cached_tokens_details"] = {"text_tokens": usage.cached_text_tokens,
                                            "audio_tokens": usage.cached_audio_tokens, "image_tokens": 0}
    return {"total_tokens": usage.input_tokens + usage.output_tokens, "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens, "input_token_details": details,
            "output_token_details": {"text_tokens": usage.output_text_tokens,
                                     "audio_tokens": usage.output_audio_tokens}}


def status_details(status: ResponseStatus, *, reason: str | None = None,
                   error: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """``status_details`` of a response: ``None`` while in progress or when completed.

    cancelled: reason ``turn_detected`` | ``client_cancelled``;
    incomplete: reason ``max_output_tokens`` | ``content_filter``;
    failed: ``error`` = ``{"type", "code", "message"}``.
    """
    if status in ("in_progress", "completed"):
        return None
    out: dict[str, Any] = {"type": status}
    if status == "failed":
        out["error"] = dict(error or {"type": "server_error", "code": "server_error",
                                      "message": "the response failed"})
    else:
        out["reason"] = reason or ("client_cancelled" if status == "cancelled" else "max_output_tokens")
    return out


def response_object(response_id: str, flavor: Flavor, *, status: ResponseStatus = "in_progress",
                    status_details: dict[str, Any] | None = None, output: Sequence[dict[str, Any]] = (),
                    usage: Usage | None = None, conversation_id: str | None = None,
                    output_modalities: Sequence[str] = ("audio",), voice: str | Mapping[str, Any] = "alloy",
                    output_format: AudioFormat = PCM16_24K, max_output_tokens: int | str = "inf",
                    temperature: float | None = None, metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``response`` object of ``response.created`` / ``response.done``.

    ``voice`` may be an Azure voice object; the OpenAI dialects only carry its name.
    """
    out: dict[str, Any] = {"id": response_id, "object": "realtime.response", "status": status,
                           "status_details": status_details, "output": list(output),
                           "conversation_id": conversation_id}
    voice_name = voice if isinstance(voice, str) else str(voice.get("name") or voice.get("id") or "")
    if flavor is Flavor.GA:
        out["output_modalities"] = list(output_modalities)
        out["audio"] = {"output": {"format": output_format.to_wire(flavor), "voice": voice_name}}
    else:
        out["modalities"] = list(output_modalities)
        out["voice"] = dict(voice) if flavor is Flavor.AZURE and not isinstance(voice, str) else voice_name
        out["output_audio_format"] = output_format.to_wire(flavor)
        if temperature is not None:
            out["temperature"] = temperature
    out["max_output_tokens"] = max_output_tokens
    out["usage"] = usage_to_wire(usage, flavor) if usage is not None else None
    out["metadata"] = dict(metadata) if metadata is not None else None
    return out
