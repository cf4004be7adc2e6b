"""The client side of the Realtime wire format, sans I/O: client events as JSON-able dicts in
the upstream's dialect, and server events parsed into `(GA type, payload)`.

OpenAI is spoken in the GA shape (nested `session.audio`, `output_modalities`); Azure Voice
Live in its flat, beta-like shape (`modalities`, `input_audio_format`, voice objects). Server
events are accepted under GA *and* beta names from either, and normalised to GA names.
The per-setting shapes come from `moksori.protocols.realtime` (the same code the server uses).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from typing import Any, overload

from moksori.accounting import TurnUsage
from moksori.errors import ProtocolError
from moksori.protocols.realtime import ContentPart, Flavor, InputTranscription, TurnDetection
from moksori.protocols.realtime.items import PartType, part_to_wire
from moksori.protocols.realtime.session_fields import transcription_to_wire, turn_detection_to_wire

from .options import SessionOptions, UpstreamFlavor

__all__ = ["ClientWire", "parse_server_event", "usage_from_wire", "wire_int", "GA_NAMES", "DEFAULT_TRANSCRIPTION",
           "WIRE_INT_MAX"]

log = logging.getLogger("moksori.brains.realtime")

# no count, index or millisecond offset of one upstream session comes near it (2**31 ms: 24 days)
WIRE_INT_MAX = 2**31 - 1

# beta / Azure name -> GA name (server events)
GA_NAMES: dict[str, str] = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}

DEFAULT_TRANSCRIPTION: dict[str, str] = {"openai": "gpt-4o-mini-transcribe", "azure": "azure-speech"}


def _flavor(f: UpstreamFlavor) -> Flavor:
    return Flavor.AZURE if f == "azure" else Flavor.GA


def _voice(voice: str | dict[str, Any], flavor: UpstreamFlavor) -> Any:
    if isinstance(voice, dict) or flavor == "openai":
        return voice
    # Azure: neural voices are "xx-YY-NameNeural" (or with ":DragonHD…"); the rest are OpenAI voices
    if "-" in voice:
        return {"name": voice, "type": "azure-standard"}
    return {"name": voice, "type": "openai"}


class ClientWire:
    """Builds client events for one upstream dialect. Every event gets a fresh `event_id`
    (`mk_<n>`), so an `error` that echoes it can be tied to what caused it."""

    def __init__(self, flavor: UpstreamFlavor, *, prefix: str = "mk_") -> None:
        self.flavor = flavor
        self._fl = _flavor(flavor)
        self._ids = itertools.count(1)
        self._prefix = prefix

    def _ev(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": f"{self._prefix}{next(self._ids)}", **fields}

    # ------------------------------------------------------------------ session
    def session_payload(self, opts: SessionOptions) -> dict[str, Any]:
        td: dict[str, Any] | None = None
        if opts.turn != "manual":
            td = turn_detection_to_wire(TurnDetection(
                type=opts.turn, threshold=opts.threshold, prefix_padding_ms=opts.prefix_padding_ms,
                silence_duration_ms=opts.silence_duration_ms, create_response=opts.create_response,
                interrupt_response=opts.interrupt_response, eagerness=opts.eagerness), self._fl)
            if td is not None:
                td.pop("idle_timeout_ms", None)
        model = DEFAULT_TRANSCRIPTION[self.flavor] if opts.transcription_model is None else opts.transcription_model
        tr = transcription_to_wire(InputTranscription(model=model, language=opts.transcription_language), self._fl) \
            if model else None
        tools = [{"type": "function", "name": t["name"], "description": t.get("description") or "",
                  "parameters": t.get("parameters") or {"type": "object", "properties": {}}} for t in opts.tools]
        if self.flavor == "openai":
            out_audio: dict[str, Any] = {"format": opts.output_format.to_wire(self._fl)}
            if opts.voice is not None:
                out_audio["voice"] = opts.voice
            s: dict[str, Any] = {
                "type": "realtime", "instructions": opts.instructions,
                "output_modalities": list(opts.output_modalities),
                "audio": {"input": {"format": opts.input_format.to_wire(self._fl), "turn_detection": td,
                                    "transcription": tr},
                          "output": out_audio},
                "tools": tools, "tool_choice": opts.tool_choice,
            }
            if opts.max_output_tokens is not None:
                s["max_output_tokens"] = opts.max_output_tokens
        else:
            s = {
                "modalities": ["text", "audio"] if "audio" in opts.output_modalities else ["text"],
                "instructions": opts.instructions,
                "input_audio_format": opts.input_format.to_wire(self._fl, direction="input"),
                "output_audio_format": opts.output_format.to_wire(self._fl),
                "turn_detection": td, "input_audio_transcription": tr,
                "tools": tools, "tool_choice": opts.tool_choice,
            }
            if opts.input_format.encoding == "pcm16":
                s["input_audio_sampling_rate"] = opts.input_format.rate
            if opts.voice is not None:
                s["voice"] = _voice(opts.voice, self.flavor)
            if opts.temperature is not None:
                s["temperature"] = opts.temperature
            if opts.max_output_tokens is not None:
                s["max_response_output_tokens"] = opts.max_output_tokens
        s.update(opts.extra)
        return s

    def session_update(self, opts: SessionOptions) -> dict[str, Any]:
        return self._ev("session.update", session=self.session_payload(opts))

    # ------------------------------------------------------------------ input audio
    def append(self, audio_b64: str) -> dict[str, Any]:
        return self._ev("input_audio_buffer.append", audio=audio_b64)

    def commit(self) -> dict[str, Any]:
        return self._ev("input_audio_buffer.commit")

    def clear(self) -> dict[str, Any]:
        return self._ev("input_audio_buffer.clear")

    # ------------------------------------------------------------------ responses
    def response_create(self, *, instructions: str | None = None, modalities: tuple[str, ...] | None = None,
                        tools: tuple[dict[str, Any], ...] | None = None, tool_choice: Any = None,
                        metadata: dict[str, str] | None = None, conversation: str | None = None,
                        input: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """`conversation="none"` with `input` (items, as `input_items` builds them): an
        out-of-band response that reads only those items and adds nothing to the conversation."""
        r: dict[str, Any] = {}
        if instructions is not None:
            r["instructions"] = instructions
        if modalities is not None:
            if self.flavor == "openai":
                r["output_modalities"] = list(modalities)
            else:
                r["modalities"] = ["text", "audio"] if "audio" in modalities else ["text"]
        if tools is not None:
            r["tools"] = [{"type": "function", **t} for t in tools]
        if tool_choice is not None:
            r["tool_choice"] = tool_choice
        if metadata is not None:
            r["metadata"] = dict(metadata)
        if conversation is not None:
            r["conversation"] = conversation
        if input is not None:
            r["input"] = list(input)
        return self._ev("response.create", response=r) if r else self._ev("response.create")

    @property
    def item_references(self) -> bool:
        """`response.create`'s `input` may name an item of the conversation (`item_reference`):
        OpenAI documents it (beta and GA); Azure Voice Live's request items have no such type."""
        return self.flavor == "openai"

    def item_reference(self, item_id: str) -> dict[str, Any]:
        """An item of the upstream's conversation (its id there), named in a response's `input`."""
        return {"type": "item_reference", "id": item_id}

    def input_items(self, messages: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """(role, text) pairs as message items for `response.create`'s `input`."""
        out = []
        for role, text in messages:
            kind: PartType = "output_text" if role == "assistant" else "input_text"
            out.append({"type": "message", "role": role,
                        "content": [part_to_wire(ContentPart(kind, text=text), self._fl)]})
        return out

    def response_cancel(self, response_id: str | None = None) -> dict[str, Any]:
        return self._ev("response.cancel", response_id=response_id) if response_id else self._ev("response.cancel")

    # ------------------------------------------------------------------ conversation
    def truncate(self, item_id: str, audio_end_ms: int, content_index: int = 0) -> dict[str, Any]:
        return self._ev("conversation.item.truncate", item_id=item_id, content_index=content_index,
                        audio_end_ms=int(audio_end_ms))

    def retrieve(self, item_id: str) -> dict[str, Any]:
        return self._ev("conversation.item.retrieve", item_id=item_id)

    def delete(self, item_id: str) -> dict[str, Any]:
        return self._ev("conversation.item.delete", item_id=item_id)

    def message(self, role: str, *, text: str | None = None, audio_b64: str | None = None,
                item_id: str | None = None, previous_item_id: str | None = None) -> dict[str, Any]:
        if audio_b64 is not None:
            part = {"type": "input_audio", "audio": audio_b64}
        else:
            kind: PartType = "output_text" if role == "assistant" else "input_text"
            part = part_to_wire(ContentPart(kind, text=text or ""), self._fl)
        item: dict[str, Any] = {"type": "message", "role": role, "content": [part]}
        return self._item(item, item_id, previous_item_id)

    def user_item(self, content: list[tuple[str, str]]) -> dict[str, Any]:
        """A user message item of several parts, in order: ("text", words) or ("audio", base64
        audio in the session's input format)."""
        parts = [{"type": "input_audio", "audio": value} if kind == "audio"
                 else part_to_wire(ContentPart("input_text", text=value), self._fl) for kind, value in content]
        return {"type": "message", "role": "user", "content": parts}

    def user_message(self, content: list[tuple[str, str]], *, item_id: str | None = None,
                     previous_item_id: str | None = None) -> dict[str, Any]:
        return self._item(self.user_item(content), item_id, previous_item_id)

    def function_call(self, call_id: str, name: str, arguments: str, *, item_id: str | None = None,
                      previous_item_id: str | None = None) -> dict[str, Any]:
        return self._item({"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments},
                          item_id, previous_item_id)

    def function_output(self, call_id: str, output: str, *, item_id: str | None = None,
                        previous_item_id: str | None = None) -> dict[str, Any]:
        return self._item({"type": "function_call_output", "call_id": call_id, "output": output},
                          item_id, previous_item_id)

    def _item(self, item: dict[str, Any], item_id: str | None, previous_item_id: str | None) -> dict[str, Any]:
        if item_id:
            item = {"id": item_id, **item}
        ev = self._ev("conversation.item.create", item=item)
        if previous_item_id:
            ev["previous_item_id"] = previous_item_id
        return ev


def parse_server_event(raw: str | bytes, *, max_bytes: int) -> tuple[str, dict[str, Any]]:
    """One upstream message -> (GA event type, the whole event). `ProtocolError` if it is not a
    JSON object with a string `type`."""
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > max_bytes:
            raise ProtocolError(f"upstream message of {len(raw)} bytes is over the limit", code="message_too_large")
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("upstream message is not UTF-8", code="invalid_json") from None
    elif len(raw) > max_bytes:
        raise ProtocolError("upstream message is over the size limit", code="message_too_large")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("upstream message is not JSON", code="invalid_json") from None
    kind = obj.get("type") if isinstance(obj, dict) else None
    if not isinstance(kind, str):
        raise ProtocolError("upstream message is not an event object", code="invalid_event")
    return GA_NAMES.get(kind, kind), obj


@overload
def wire_int(v: Any, default: int) -> int: ...
@overload
def wire_int(v: Any, default: None = None) -> int | None: ...
def wire_int(v: Any, default: int | None = None) -> int | None:
    """A number the upstream sent (a count, an index, milliseconds) as an int, or `default` when
    it is not one we can use: absent, not a JSON number (a bool or a string is not), not finite
    (`json.loads` reads `1e999` as inf, and `int(inf)` raises), negative, or absurd (over
    `WIRE_INT_MAX`). Every number read from the upstream goes through here."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return default
    if isinstance(v, float) and not math.isfinite(v):
        return default
    if not 0 <= v <= WIRE_INT_MAX:
        return default
    return int(v)


def _int(d: Any, key: str, default: int = 0) -> int:
    if not isinstance(d, dict) or d.get(key) is None:
        return default
    n = wire_int(d[key])
    if n is None:
        log.warning("upstream usage: %s is not a usable number (%.40r); read as missing", key, d[key])
        return default
    return n


def usage_from_wire(u: Any, *, model: str | None = None) -> TurnUsage | None:
    """`response.done.response.usage` (GA, beta or Azure) -> `TurnUsage` with text, audio and
    cached tokens apart (`cached_tokens` is part of the input counts, as OpenAI counts it)."""
    if not isinstance(u, dict):
        return None
    itd = u.get("input_token_details") if isinstance(u.get("input_token_details"), dict) else None
    otd = u.get("output_token_details") if isinstance(u.get("output_token_details"), dict) else None
    total_in, total_out = _int(u, "input_tokens"), _int(u, "output_tokens")
    text_in = _int(itd, "text_tokens", total_in) if itd is not None else total_in
    audio_in = _int(itd, "audio_tokens")
    cached = _int(itd, "cached_tokens")
    ctd = itd.get("cached_tokens_details") if itd is not None else None
    if isinstance(ctd, dict):
        cached_text, cached_audio = _int(ctd, "text_tokens"), _int(ctd, "audio_tokens")
    else:
        cached_text, cached_audio = min(cached, text_in), max(0, cached - text_in)
    text_out = _int(otd, "text_tokens", total_out) if otd is not None else total_out
    audio_out = _int(otd, "audio_tokens")
    return TurnUsage(llm_model=model, input_tokens=text_in, cached_tokens=cached_text, output_tokens=text_out,
                     input_audio_tokens=audio_in, cached_audio_tokens=cached_audio, output_audio_tokens=audio_out)
