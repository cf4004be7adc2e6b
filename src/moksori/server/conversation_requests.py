"""The Conversations API's request bodies, checked: JSON in, a typed request out, or a
`ProtocolError` naming the parameter at fault (the route answers it as a 400). Pure: no I/O.

Items are messages, as the `openai` SDK sends them (`EasyInputMessage`, `Message`,
`ResponseOutputMessage`): role `user` or `system` with `input_text` parts, `assistant` with
`output_text` parts, or a plain string as the content. The conversation keeps text (what a
session's recorder keeps too): audio, images, files and refusals are refused, and so are the
other item types. An item's `id` is accepted and not used: the server names its items.

Text no database holds is stored cleaned (NULs dropped, lone surrogates as U+FFFD), so a message
that is nothing but NULs holds no text, and a metadata key holding either is refused (two keys
would be stored as one).

Metadata is OpenAI's (at most 16 pairs, keys up to 64 characters, values up to 512), and two
keys are Moksori's own, as the API shows them: `user` (the user id whose history the conversation
is part of, as `?user=` / `X-Moksori-User` give it to a session) and `channel` (set by the server:
`api` for a conversation a client created). Neither can change once the conversation exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from moksori.protocols.realtime._checks import as_choice, as_dict, as_list, as_str, fail
from moksori.store import NewMessage, valid_user_id
from moksori.text.unencodable import encodable, encodable_text

__all__ = ["NewConversation", "MetadataUpdate", "parse_body", "new_conversation", "new_items", "metadata_update",
           "MAX_ITEMS", "MAX_METADATA"]

MAX_ITEMS = 20  # items per request, as OpenAI
MAX_METADATA = 16  # metadata pairs, as OpenAI (and the Realtime API's `response.metadata`)
MAX_KEY, MAX_VALUE = 64, 512
RESERVED = ("user", "channel")

Role = Literal["user", "assistant", "system"]
_ROLES: tuple[Role, ...] = ("user", "assistant", "system")
_MESSAGE_KEYS = frozenset({"type", "role", "content", "id", "status", "phase"})
_PART_KEYS = {"input_text": frozenset({"type", "text", "prompt_cache_breakpoint"}),
              "output_text": frozenset({"type", "text", "annotations", "logprobs"})}
_PART_OF_ROLE = {"user": "input_text", "system": "input_text", "assistant": "output_text"}
_TEXT_ONLY = ("(conversations keep text): send what was said as input_text (the user's) or output_text "
              "(the assistant's)")


@dataclass(frozen=True, slots=True)
class NewConversation:
    messages: tuple[NewMessage, ...]
    metadata: dict[str, str]  # without `user` and `channel`
    user: str | None
    channel: str | None  # what `metadata.channel` said, if anything


@dataclass(frozen=True, slots=True)
class MetadataUpdate:
    metadata: dict[str, str]  # the new metadata, without `user` and `channel`
    user: str | None  # what `metadata.user` said, if anything
    channel: str | None


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object (an empty body is `{}`)."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past what the parser takes
        fail("the request body is not valid JSON", None, "invalid_json")
    return as_dict(body, "body")


def _unknown(obj: dict[str, Any], allowed: frozenset[str], where: str = "") -> None:
    for key in obj:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            fail(f"Unknown parameter: '{name[:120]}'.", name[:120], "unknown_parameter")


def _missing(param: str) -> NoReturn:
    fail(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _metadata(value: Any) -> tuple[dict[str, str], str | None, str | None]:
    """(the client's own pairs, `user`, `channel`)."""
    if value is None:
        return {}, None, None
    obj = as_dict(value, "metadata")
    if len(obj) > MAX_METADATA:
        fail(f"metadata may have at most {MAX_METADATA} pairs, got {len(obj)}", "metadata",
             "object_above_max_properties")
    own: dict[str, str] = {}
    for k, v in obj.items():
        key = as_str(k, "metadata", nonempty=True, max_len=MAX_KEY)
        if not encodable(key):  # stored cleaned, "a\x00" and "a" would be one key: a pair lost
            fail("metadata keys may not hold a NUL or an unpaired UTF-16 surrogate", "metadata")
        own[key] = as_str(v, f"metadata.{key}", max_len=MAX_VALUE)
    user = own.pop("user", None)
    if user is not None and not valid_user_id(user):
        fail("metadata.user: user ids are 1-255 letters, digits and _ . @ : + - = /", "metadata.user",
             "invalid_user")
    return own, user, own.pop("channel", None)


def _text(raw: Any, role: str, param: str) -> str:
    """The text of a message's `content`: a string, or its text parts joined by a space (as the
    Realtime API joins a client item's parts)."""
    if isinstance(raw, str):
        return raw
    parts = as_list(raw, param)
    if not parts:
        fail(f"{param} must hold at least one content part", param, "empty_array")
    want = _PART_OF_ROLE[role]
    texts = []
    for i, part in enumerate(parts):
        p = f"{param}[{i}]"
        obj = as_dict(part, p)
        kind = obj.get("type")
        if not isinstance(kind, str) or kind not in _PART_KEYS:
            shown = repr(kind[:40]) if isinstance(kind, str) else type(kind).__name__
            fail(f"{p}.type {shown} is not supported {_TEXT_ONLY}", f"{p}.type", "unsupported_content_type")
        if kind != want:
            fail(f"{p}.type must be {want} in a {role} message, got {kind!r}", f"{p}.type")
        _unknown(obj, _PART_KEYS[kind], p)
        if "text" not in obj:
            _missing(f"{p}.text")
        texts.append(as_str(obj["text"], f"{p}.text"))
        for key in ("annotations", "logprobs"):  # accepted as the SDK sends them back; not kept
            if obj.get(key) is not None:
                as_list(obj[key], f"{p}.{key}")
    return " ".join(texts)


def _message(raw: Any, param: str) -> NewMessage:
    obj = as_dict(raw, param)
    kind = obj.get("type", "message")
    if kind != "message":
        shown = repr(kind[:40]) if isinstance(kind, str) else type(kind).__name__
        fail(f"{param}.type {shown} is not supported: only message items can be added", f"{param}.type",
             "unsupported_item_type")
    _unknown(obj, _MESSAGE_KEYS, param)
    if "role" not in obj:
        _missing(f"{param}.role")
    role = obj["role"]
    if role == "developer":
        fail(f"{param}.role 'developer' is not supported: use system", f"{param}.role")
    role = as_choice(role, f"{param}.role", _ROLES)
    if "content" not in obj:
        _missing(f"{param}.content")
    text = _text(obj["content"], role, f"{param}.content")
    if not encodable_text(text).strip():  # what the store keeps: NULs dropped
        fail(f"{param}.content holds no text", f"{param}.content", "empty_text")
    if obj.get("id") is not None:
        as_str(obj["id"], f"{param}.id")
    if obj.get("phase") is not None:
        as_choice(obj["phase"], f"{param}.phase", ("commentary", "final_answer"))
    status = obj.get("status")
    if status is not None:
        allowed = ("completed", "incomplete") if role == "assistant" else ("completed",)
        status = as_choice(status, f"{param}.status", allowed)
    return NewMessage(role, text, incomplete=status == "incomplete")


def _messages(value: Any, param: str = "items") -> tuple[NewMessage, ...]:
    raw = as_list(value, param)
    if len(raw) > MAX_ITEMS:
        fail(f"{param} may hold at most {MAX_ITEMS} items at a time, got {len(raw)}", param, "array_above_max_length")
    return tuple(_message(item, f"{param}[{i}]") for i, item in enumerate(raw))


def new_conversation(body: dict[str, Any]) -> NewConversation:
    """`POST /v1/conversations`: {items?, metadata?}."""
    _unknown(body, frozenset({"items", "metadata"}))
    messages = () if body.get("items") is None else _messages(body["items"])
    metadata, user, channel = _metadata(body.get("metadata"))
    return NewConversation(messages, metadata, user, channel)


def new_items(body: dict[str, Any]) -> tuple[NewMessage, ...]:
    """`POST /v1/conversations/{id}/items`: {items} (1 to 20)."""
    _unknown(body, frozenset({"items"}))
    if body.get("items") is None:
        _missing("items")
    messages = _messages(body["items"])
    if not messages:
        fail("items must hold at least one item", "items", "empty_array")
    return messages


def metadata_update(body: dict[str, Any]) -> MetadataUpdate:
    """`POST /v1/conversations/{id}`: {metadata} (null clears the client's pairs)."""
    _unknown(body, frozenset({"metadata"}))
    if "metadata" not in body:
        _missing("metadata")
    metadata, user, channel = _metadata(body["metadata"])
    return MetadataUpdate(metadata, user, channel)
