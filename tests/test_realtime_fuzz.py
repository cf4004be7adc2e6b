"""Property tests for the Realtime codec: hostile input only ever yields ProtocolError, and
valid input round-trips."""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moksori.errors import ProtocolError
from moksori.protocols.realtime import (CLIENT_EVENT_TYPES, PCM16_24K, AudioFormat, ContentPart,
                                        ConversationItemCreate, ConversationItemDelete, ConversationItemRetrieve,
                                        ConversationItemTruncate, Flavor, FunctionCallItem, FunctionCallOutputItem,
                                        InputAudioBufferAppend, InputAudioBufferClear, InputAudioBufferCommit,
                                        MessageItem, OutputAudioBufferClear, ResponseCancel, ResponseCreate,
                                        ResponseOverrides, ServerEvents, SessionConfig, SessionUpdate,
                                        apply_session_update, item_to_wire, parse_client_event, session_to_wire)

from test_realtime_codec import MODELS, VALIDATORS

MAX = 1 << 16
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=10)


def only_protocol_errors(fn, *args, **kwargs) -> Any:
    try:
        return fn(*args, **kwargs)
    except ProtocolError as err:
        assert isinstance(err.message, str) and err.message
        return err


# --------------------------------------------------------------------------- garbage in

@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw):
    only_protocol_errors(parse_client_event, raw, max_bytes=MAX)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text(raw):
    only_protocol_errors(parse_client_event, raw, max_bytes=MAX)


@FUZZ
@given(json_values)
def test_arbitrary_json(value):
    only_protocol_errors(parse_client_event, json.dumps(value), max_bytes=MAX)


EVENT_KEYS = ["event_id", "session", "audio", "item", "previous_item_id", "item_id", "content_index",
              "audio_end_ms", "response", "response_id"]
ITEM_KEYS = ["type", "id", "role", "content", "status", "call_id", "name", "arguments", "output"]
RESPONSE_KEYS = ["instructions", "output_modalities", "modalities", "voice", "audio", "output_audio_format",
                 "tools", "tool_choice", "temperature", "max_output_tokens", "max_response_output_tokens",
                 "conversation", "metadata", "input", "cancel_previous"]
part = st.dictionaries(st.sampled_from(["type", "text", "audio", "transcript", "image_url"]),
                       st.sampled_from(["input_text", "input_audio", "text", "audio", "output_text"]) | json_values,
                       max_size=4)
item = st.dictionaries(st.sampled_from(ITEM_KEYS),
                       st.sampled_from(["message", "function_call", "function_call_output", "user", "assistant",
                                        "system", "item_reference"]) | st.lists(part, max_size=3) | json_values,
                       max_size=6)
response = st.dictionaries(st.sampled_from(RESPONSE_KEYS), json_values | st.lists(item, max_size=2), max_size=5)


@FUZZ
@given(st.sampled_from(sorted(CLIENT_EVENT_TYPES) + ["bogus.event"]),
       st.dictionaries(st.sampled_from(EVENT_KEYS), json_values | item | response, max_size=5))
def test_structured_but_wrong_events(etype, fields):
    result = only_protocol_errors(parse_client_event, json.dumps({**fields, "type": etype}), max_bytes=MAX)
    if isinstance(result, ProtocolError):
        eid = fields.get("event_id")
        if isinstance(eid, str):
            assert result.event_id == eid  # errors about a parsed event always echo its id
    else:
        assert result.TYPE == etype


def test_deep_nesting_and_huge_numbers():
    for raw in ("[" * 100_000 + "]" * 100_000, '{"type": "x", "n": ' + "9" * 5000 + "}",
                '{"type":"session.update","session":{"temperature":1e999}}'):
        assert isinstance(only_protocol_errors(parse_client_event, raw, max_bytes=1 << 20), ProtocolError)
    ev = parse_client_event('{"type":"session.update","session":{"temperature":' + "9" * 400 + "}}", max_bytes=MAX)
    assert isinstance(only_protocol_errors(apply_session_update, SessionConfig(), ev.session, Flavor.GA),
                      ProtocolError)


@FUZZ
@given(st.text(max_size=40), st.sampled_from([PCM16_24K, AudioFormat("pcmu", 8000), AudioFormat("pcma", 8000)]))
def test_decode_arbitrary_text(b64, fmt):
    out = only_protocol_errors(fmt.decode, b64, param="audio")
    if not isinstance(out, ProtocolError):
        assert out.rate == fmt.rate


# --------------------------------------------------------------------------- session.update

def td_types(flavor: Flavor) -> list[str]:
    if flavor is Flavor.AZURE:
        return ["server_vad", "azure_semantic_vad", "azure_semantic_vad_en", "azure_semantic_vad_multilingual"]
    return ["server_vad", "semantic_vad"]


def valid_session(flavor: Flavor) -> st.SearchStrategy[dict[str, Any]]:
    td = st.none() | st.fixed_dictionaries({"type": st.sampled_from(td_types(flavor))}, optional={
        "threshold": st.floats(0, 1), "prefix_padding_ms": st.integers(0, 2000),
        "silence_duration_ms": st.integers(0, 5000), "create_response": st.booleans(),
        "interrupt_response": st.booleans(), "eagerness": st.sampled_from(["low", "medium", "high", "auto"]),
        "idle_timeout_ms": st.none() | st.integers(5000, 30000)})
    tr = st.none() | st.fixed_dictionaries({}, optional={
        "model": st.sampled_from(["whisper-1", "gpt-4o-transcribe"]), "language": st.sampled_from(["en", "ko"]),
        "prompt": st.text(max_size=10)})
    voice = st.sampled_from(["alloy", "marin", "ko-KR-SunHiNeural"]) | st.fixed_dictionaries(
        {"id": st.text(string.ascii_letters, min_size=1, max_size=8)})
    if flavor is Flavor.AZURE:
        voice = voice | st.fixed_dictionaries({"name": st.just("en-US-AvaNeural"), "type": st.just("azure-standard")})
    nr = st.none() | st.fixed_dictionaries({"type": st.sampled_from(["near_field", "far_field",
                                                                      "azure_deep_noise_suppression"])})
    ga_fmt = st.sampled_from([{"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcmu"}, {"type": "audio/pcma"},
                              {"type": "audio/pcm", "rate": 16000}])
    flat_fmt = st.sampled_from(["pcm16", "g711_ulaw", "g711_alaw", "pcm16_16000hz", "pcm16_8000hz"])
    modalities = st.lists(st.sampled_from(["text", "audio"]), min_size=1, max_size=2)
    tools = st.lists(st.fixed_dictionaries({"type": st.just("function"),
                                            "name": st.text(string.ascii_lowercase + "_", min_size=1, max_size=8)},
                                           optional={"description": st.text(max_size=10),
                                                     "parameters": st.just({"type": "object", "properties": {}})}),
                     max_size=3, unique_by=lambda t: t["name"])
    choice = st.sampled_from(["auto", "none", "required"])
    if flavor is Flavor.GA:
        choice = choice | st.fixed_dictionaries({"type": st.just("function"), "name": st.just("f")})
    common = {"instructions": st.text(max_size=20), "tools": tools, "tool_choice": choice,
              "temperature": st.floats(0.6, 1.2), "speed": st.floats(0.25, 1.5)}
    if flavor is Flavor.GA:
        return st.fixed_dictionaries({"type": st.just("realtime")}, optional={
            **common, "output_modalities": modalities, "max_output_tokens": st.just("inf") | st.integers(1, 4096),
            "audio": st.fixed_dictionaries({}, optional={
                "input": st.fixed_dictionaries({}, optional={"format": ga_fmt, "turn_detection": td,
                                                             "transcription": tr, "noise_reduction": nr}),
                "output": st.fixed_dictionaries({}, optional={"format": ga_fmt, "voice": voice,
                                                              "speed": st.floats(0.25, 1.5)})})})
    extra = {}
    if flavor is Flavor.AZURE:
        extra = {"input_audio_sampling_rate": st.sampled_from([8000, 16000, 24000]),
                 "input_audio_echo_cancellation": st.none() | st.just({"type": "server_echo_cancellation"}),
                 "avatar": st.none() | st.just({"character": "lisa", "style": "casual-sitting"})}
    return st.fixed_dictionaries({}, optional={
        **common, **extra, "modalities": modalities, "voice": voice, "input_audio_format": flat_fmt,
        "output_audio_format": flat_fmt, "turn_detection": td, "input_audio_transcription": tr,
        "input_audio_noise_reduction": nr, "max_response_output_tokens": st.just("inf") | st.integers(1, 4096)})


def _openai_strict_ok(cfg: SessionConfig, flavor: Flavor) -> bool:
    """Our documented extensions that OpenAI's own session models cannot express."""
    rates_ok = all(f.encoding != "pcm16" or f.rate == 24000 for f in (cfg.input_format, cfg.output_format))
    return rates_ok and (flavor is Flavor.GA or isinstance(cfg.tool_choice, str))


@FUZZ
@given(st.data())
def test_valid_session_updates_are_accepted_and_echo_cleanly(data):
    flavor = data.draw(st.sampled_from(list(Flavor)))
    payload = data.draw(valid_session(flavor))
    # a session.update travels as JSON through parse_client_event first
    ev = parse_client_event(json.dumps({"type": "session.update", "session": payload}), max_bytes=MAX)
    assert isinstance(ev, SessionUpdate) and ev.session == payload
    cfg, warnings = apply_session_update(SessionConfig(), ev.session, flavor)
    wire = session_to_wire(cfg, flavor, session_id="sess_1", model=MODELS[flavor])
    # the server's own description of the session, sent back, is accepted and describes the same session
    cfg2, warnings2 = apply_session_update(cfg, json.loads(json.dumps(wire)), flavor)
    assert session_to_wire(cfg2, flavor, session_id="sess_1", model=MODELS[flavor]) == wire
    assert warnings2 == []
    if flavor is Flavor.AZURE or _openai_strict_ok(cfg, flavor):
        VALIDATORS[flavor](ServerEvents(flavor).session_updated(wire))


@FUZZ
@given(st.data())
def test_broken_session_updates_only_raise_protocol_errors(data):
    flavor = data.draw(st.sampled_from(list(Flavor)))
    base = data.draw(valid_session(flavor))
    keys = sorted(set(base) | {"audio", "voice", "turn_detection", "tools", "modalities", "input_audio_format",
                               "input_audio_sampling_rate", "type", "junk"})
    broken = dict(base)
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3)):
        broken[key] = data.draw(json_values | st.dictionaries(st.sampled_from(
            ["input", "output", "format", "type", "voice", "rate", "threshold", "name"]), json_values, max_size=3))
    result = only_protocol_errors(apply_session_update, SessionConfig(), broken, flavor)
    if isinstance(result, ProtocolError):
        assert result.param and result.param.startswith("session")
    else:
        cfg, warnings = result
        assert all(isinstance(w, str) for w in warnings)
        session_to_wire(cfg, flavor, session_id="s", model="m")  # anything accepted can be described


@FUZZ
@given(json_values | st.dictionaries(st.sampled_from(["audio", "voice", "turn_detection", "tools", "tool_choice",
                                                       "input_audio_transcription", "modalities", "speed",
                                                       "input_audio_noise_reduction", "type", "avatar"]),
                                      json_values, max_size=5),
       st.sampled_from(list(Flavor)))
def test_arbitrary_session_payloads(payload, flavor):
    result = only_protocol_errors(apply_session_update, SessionConfig(), payload, flavor)
    if not isinstance(result, ProtocolError):
        session_to_wire(result[0], flavor, session_id="s", model="m")


# --------------------------------------------------------------------------- client events round trip

ids = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=12)
opt_ids = st.none() | ids
texts = st.text(max_size=20)
statuses = st.sampled_from(["completed", "in_progress", "incomplete"])
b64 = st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode())
user_part = (st.builds(ContentPart, st.just("input_text"), text=texts)
             | st.builds(ContentPart, st.just("input_audio"), audio=st.none() | b64, transcript=st.none() | texts)
             | st.builds(ContentPart, st.just("input_image"), image_url=st.just("data:image/png;base64,AA==")))
asst_part = (st.builds(ContentPart, st.just("output_text"), text=texts)
             | st.builds(ContentPart, st.just("output_audio"), audio=st.none() | b64, transcript=st.none() | texts))
items = (st.builds(MessageItem, st.just("user"), st.lists(user_part, max_size=3).map(tuple), id=ids, status=statuses)
         | st.builds(MessageItem, st.just("assistant"), st.lists(asst_part, max_size=3).map(tuple), id=ids,
                     status=statuses)
         | st.builds(MessageItem, st.just("system"), st.lists(st.builds(ContentPart, st.just("input_text"),
                                                                         text=texts), max_size=2).map(tuple),
                     id=ids, status=statuses)
         | st.builds(FunctionCallItem, ids, ids, texts, id=ids, status=statuses)
         | st.builds(FunctionCallOutputItem, ids, texts, id=ids))
overrides = st.builds(
    ResponseOverrides, instructions=st.none() | texts,
    output_modalities=st.none() | st.sampled_from([("audio",), ("text",), ("text", "audio")]),
    voice=st.none() | st.sampled_from(["alloy", "marin"]),
    output_format=st.none() | st.sampled_from([PCM16_24K, AudioFormat("pcmu", 8000), AudioFormat("pcma", 8000)]),
    tool_choice=st.none() | st.sampled_from(["auto", "none", "required"]),
    temperature=st.none() | st.floats(0, 2), max_output_tokens=st.none() | st.just("inf") | st.integers(1, 4096),
    conversation=st.sampled_from(["auto", "none"]),
    metadata=st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    input=st.none() | st.lists(items, max_size=2).map(tuple))
events = (st.builds(SessionUpdate, opt_ids, st.dictionaries(st.text(max_size=5), json_values, max_size=3))
          | st.builds(InputAudioBufferAppend, opt_ids, b64)
          | st.builds(InputAudioBufferCommit, opt_ids) | st.builds(InputAudioBufferClear, opt_ids)
          | st.builds(OutputAudioBufferClear, opt_ids)
          | st.builds(ConversationItemCreate, opt_ids, items, opt_ids)
          | st.builds(ConversationItemRetrieve, opt_ids, ids) | st.builds(ConversationItemDelete, opt_ids, ids)
          | st.builds(ConversationItemTruncate, opt_ids, ids, st.integers(0, 5), st.integers(0, 10**7))
          | st.builds(ResponseCreate, opt_ids, st.none() | overrides)
          | st.builds(ResponseCancel, opt_ids, opt_ids))


def _overrides_wire(o: ResponseOverrides, flavor: Flavor) -> dict[str, Any]:
    out: dict[str, Any] = {"conversation": o.conversation}
    if o.instructions is not None:
        out["instructions"] = o.instructions
    if o.output_modalities is not None:
        out["output_modalities" if flavor is Flavor.GA else "modalities"] = list(o.output_modalities)
    if flavor is Flavor.GA and (o.voice or o.output_format):
        out["audio"] = {"output": {k: v for k, v in (("voice", o.voice), ("format", o.output_format and
                                                                          o.output_format.to_wire(flavor)))
                                   if v is not None}}
    elif flavor is not Flavor.GA:
        if o.voice is not None:
            out["voice"] = o.voice
        if o.output_format is not None:
            out["output_audio_format"] = o.output_format.to_wire(flavor)
    for key in ("tool_choice", "temperature", "metadata"):
        if getattr(o, key) is not None:
            out[key] = getattr(o, key)
    if o.max_output_tokens is not None:
        out["max_output_tokens" if flavor is Flavor.GA else "max_response_output_tokens"] = o.max_output_tokens
    if o.input is not None:
        out["input"] = [item_to_wire(i, flavor) for i in o.input]
    return out


def _event_wire(ev: Any, flavor: Flavor) -> dict[str, Any]:
    out: dict[str, Any] = {"type": ev.TYPE}
    if ev.event_id is not None:
        out["event_id"] = ev.event_id
    for name in ev.__dataclass_fields__:
        value = getattr(ev, name)
        if name == "event_id" or value is None:
            continue
        if name == "item":
            value = item_to_wire(value, flavor)
        elif name == "response":
            value = _overrides_wire(value, flavor)
        out[name] = value
    return out


@FEW
@given(events, st.sampled_from(list(Flavor)))
def test_valid_client_events_round_trip(ev, flavor):
    wire = json.dumps(_event_wire(ev, flavor))
    assert parse_client_event(wire, max_bytes=1 << 20) == ev
    assert parse_client_event(wire.encode(), max_bytes=1 << 20) == ev


@pytest.mark.parametrize("flavor", list(Flavor))
def test_message_to_wire_always_parses_back(flavor):
    m = MessageItem("assistant", (ContentPart("output_audio"), ContentPart("output_text")), id="i", status="completed")
    assert parse_client_event(json.dumps({"type": "conversation.item.create", "item": item_to_wire(m, flavor)}),
                              max_bytes=MAX).item == MessageItem(
        "assistant", (ContentPart("output_audio"), ContentPart("output_text", text="")), id="i", status="completed")

