"""The OpenAI Realtime / Azure Voice Live codec: shapes, round trips and SDK conformance.

Conformance: every server event the codec builds is validated against the SDKs' own models
and checked for fields those models do not know:

* GA: ``openai.types.realtime.RealtimeServerEvent`` (pydantic ``TypeAdapter``), and the exact
  path openai-agents runs on each received event (``OpenAIRealtimeWebSocketModel._handle_ws_event``
  with its ``get_server_event_type_adapter()``), asserting it emits no validation errors.
* beta: ``openai.types.beta.realtime.RealtimeServerEvent``.
* Azure: ``azure.ai.voicelive.models.ServerEvent._deserialize`` must resolve the concrete
  subclass, with every required field present and no unknown field.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
from typing import Any

import numpy as np
import pydantic
import pytest
from openai.types import realtime as ga_types
from openai.types.beta import realtime as beta_types

from moksori.audio.frames import Frame
from moksori.errors import ProtocolError
from moksori.protocols.realtime import (PCM16_24K, PCMA, PCMU, AudioFormat, ContentPart, ConversationItemCreate,
                                        ConversationItemTruncate, Flavor, FunctionCallItem, FunctionCallOutputItem,
                                        InputAudioBufferAppend, InputTranscription, ItemReference, MessageItem,
                                        ResponseCancel, ResponseCreate, ServerEvents, SessionConfig, SessionUpdate,
                                        TurnDetection, Usage, apply_session_update, detect_flavor, event_name,
                                        event_part, function_call_item, item_to_wire, message_item,
                                        parse_audio_format, parse_client_event, response_object,
                                        session_to_wire, status_details)

MAX = 1 << 20
GA_ADAPTER = pydantic.TypeAdapter(ga_types.RealtimeServerEvent)
BETA_ADAPTER = pydantic.TypeAdapter(beta_types.RealtimeServerEvent)
# Fields the real services send that the SDK models do not declare.
GA_EXTRAS = {"session.id", "session.object"}
BETA_EXTRAS = {"session.object"}
AZURE_EXTRAS = {"session.object"}


# --------------------------------------------------------------------------- helpers

def _extras(value: Any, path: str = "") -> list[str]:
    """Paths of fields that a (lenient, extra='allow') openai model did not declare."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        for key in value.model_extra or {}:
            found.append(f"{path}.{key}".lstrip("."))
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for v in value:
            found += _extras(v, path)
    return found


def ga_validate(event: dict[str, Any]) -> Any:
    wire = json.loads(json.dumps(event))  # only JSON survives the socket
    parsed = GA_ADAPTER.validate_python(wire)
    assert parsed.type == event["type"]
    assert set(_extras(parsed)) <= GA_EXTRAS, event
    return parsed


def beta_validate(event: dict[str, Any]) -> Any:
    parsed = BETA_ADAPTER.validate_python(json.loads(json.dumps(event)))
    assert parsed.type == event["type"]
    assert set(_extras(parsed)) <= BETA_EXTRAS, event
    return parsed


def _azure_problems(obj: Any, path: str) -> list[str]:
    from azure.ai.voicelive._utils.model_base import Model as AzureModel

    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _azure_problems(v, f"{path}[{i}]")]
    if not isinstance(obj, AzureModel):
        return []
    cls = type(obj)
    fields = cls._attr_to_rest_field
    problems = []
    if cls.__subclasses__() and any(rf._is_discriminator for rf in fields.values()):
        problems.append(f"{path}: no concrete {cls.__name__} subclass for {dict(obj)!r}")
    rest = {rf._rest_name: attr for attr, rf in fields.items()}
    raw = dict(obj)
    for key in raw:
        if key not in rest and f"{path}.{key}".lstrip(".") not in AZURE_EXTRAS:
            problems.append(f"{path}.{key}: unknown to {cls.__name__}")
    for attr, rf in fields.items():
        if not rf._is_optional and raw.get(rf._rest_name) is None:
            problems.append(f"{path}.{rf._rest_name}: required by {cls.__name__}")
        if rf._rest_name in raw and raw[rf._rest_name] is not None:
            problems += _azure_problems(getattr(obj, attr), f"{path}.{rf._rest_name}".lstrip("."))
    return problems


def azure_validate(event: dict[str, Any]) -> Any:
    from azure.ai.voicelive.models import ServerEvent

    parsed = ServerEvent._deserialize(json.loads(json.dumps(event)), [])
    assert parsed.type == event["type"]
    problems = _azure_problems(parsed, "")
    assert not problems, problems
    return parsed


VALIDATORS = {Flavor.GA: ga_validate, Flavor.BETA: beta_validate, Flavor.AZURE: azure_validate}
MODELS = {Flavor.GA: "gpt-realtime", Flavor.BETA: "gpt-4o-realtime-preview", Flavor.AZURE: "gpt-realtime"}


def b64_pcm(n: int = 480, seed: int = 0) -> tuple[str, np.ndarray]:
    samples = np.random.default_rng(seed).integers(-32768, 32767, n, dtype=np.int16)
    return base64.b64encode(samples.astype("<i2").tobytes()).decode(), samples


def conversation_events(flavor: Flavor, cfg: SessionConfig | None = None) -> list[dict[str, Any]]:
    """One of every server event, in a realistic order (None = not in this dialect)."""
    cfg = cfg or SessionConfig(input_transcription=InputTranscription(model="whisper-1", language="en"),
                               tools=({"name": "get_time", "description": "Time now",
                                       "parameters": {"type": "object", "properties": {}}},))
    ev = ServerEvents(flavor)
    audio, _ = b64_pcm()
    user = message_item("item_u1", "user", [ContentPart("input_audio", audio=audio, transcript=None)], flavor)
    user_done = message_item("item_u1", "user", [ContentPart("input_audio", audio=audio, transcript="what time")],
                             flavor)
    asst_empty = message_item("item_a1", "assistant", [], flavor, status="in_progress")
    asst = message_item("item_a1", "assistant", [ContentPart("output_audio", transcript="It is noon.")], flavor)
    text_item = message_item("item_a2", "assistant", [ContentPart("output_text", text="hi")], flavor)
    call = function_call_item("item_f1", "call_1", "get_time", '{"tz":"UTC"}', flavor)
    call_open = function_call_item("item_f1", "call_1", "get_time", "", flavor, status="in_progress")
    usage = Usage(input_text_tokens=10, input_audio_tokens=20, cached_text_tokens=5, output_text_tokens=3,
                  output_audio_tokens=40)
    common = dict(output_modalities=cfg.output_modalities, voice=cfg.voice, output_format=cfg.output_format)
    session = session_to_wire(cfg, flavor, session_id="sess_1", model=MODELS[flavor])
    out = [
        ev.session_created(session),
        ev.session_updated(session),
        ev.input_audio_buffer_speech_started(120, "item_u1"),
        ev.input_audio_buffer_speech_stopped(980, "item_u1"),
        ev.input_audio_buffer_committed("item_u1", None),
        ev.input_audio_buffer_committed("item_u2", "item_u1"),
        ev.conversation_item_added(user, None),
        ev.conversation_item_done(user, None),
        ev.input_audio_transcription_delta("item_u1", 0, "what"),
        ev.input_audio_transcription_completed("item_u1", 0, "what time", audio_seconds=0.86),
        ev.input_audio_transcription_failed("item_u1", 0, "could not transcribe"),
        ev.response_created(response_object("resp_1", flavor, **common)),
        ev.response_output_item_added("resp_1", 0, asst_empty),
        ev.conversation_item_added(asst_empty, "item_u1"),
        ev.response_content_part_added("resp_1", "item_a1", 0, 0, event_part("audio")),
        ev.output_audio_delta("resp_1", "item_a1", 0, 0, PCM16_24K.encode(Frame.silence(0.02, 24000))),
        ev.output_audio_transcript_delta("resp_1", "item_a1", 0, 0, "It is"),
        ev.output_audio_done("resp_1", "item_a1", 0, 0),
        ev.output_audio_transcript_done("resp_1", "item_a1", 0, 0, "It is noon."),
        ev.response_content_part_done("resp_1", "item_a1", 0, 0, event_part("audio", transcript="It is noon.")),
        ev.response_output_item_done("resp_1", 0, asst),
        ev.conversation_item_done(asst, "item_u1"),
        ev.response_content_part_added("resp_1", "item_a2", 1, 0, event_part("text")),
        ev.output_text_delta("resp_1", "item_a2", 1, 0, "h"),
        ev.output_text_done("resp_1", "item_a2", 1, 0, "hi"),
        ev.response_content_part_done("resp_1", "item_a2", 1, 0, event_part("text", text="hi")),
        ev.response_output_item_added("resp_1", 2, call_open),
        ev.function_call_arguments_delta("resp_1", "item_f1", 2, "call_1", '{"tz":'),
        ev.function_call_arguments_done("resp_1", "item_f1", 2, "call_1", "get_time", '{"tz":"UTC"}'),
        ev.response_output_item_done("resp_1", 2, call),
        ev.response_done(response_object("resp_1", flavor, status="completed", output=[asst, text_item, call],
                                         usage=usage, conversation_id="conv_1", **common)),
        ev.response_done(response_object("resp_2", flavor, status="cancelled",
                                         status_details=status_details("cancelled", reason="turn_detected"),
                                         usage=Usage(), **common)),
        ev.response_done(response_object("resp_3", flavor, status="incomplete",
                                         status_details=status_details("incomplete", reason="max_output_tokens"),
                                         **common)),
        ev.response_done(response_object("resp_4", flavor, status="failed",
                                         status_details=status_details("failed"), **common)),
        ev.conversation_item_retrieved(user_done),
        ev.conversation_item_truncated("item_a1", 0, 1500),
        ev.conversation_item_deleted("item_a2"),
        ev.input_audio_buffer_cleared(),
        ev.input_audio_buffer_timeout_triggered(1000, 6000, "item_u3"),
        ev.output_audio_buffer_cleared("resp_1"),
        ev.rate_limits_updated([{"name": "requests", "limit": 100, "remaining": 99, "reset_seconds": 1.0}]),
        ev.error("bad thing", code="invalid_value", param="session.voice", event_id="client_7"),
        ev.warning("session.avatar is recorded but not supported", param="session.avatar"),
    ]
    return [e for e in out if e is not None]


# --------------------------------------------------------------------------- flavour

def test_detect_flavor():
    assert detect_flavor("/v1/realtime?model=gpt-realtime", {}, []) is Flavor.GA
    assert detect_flavor("/v1/realtime", {"OpenAI-Beta": "realtime=v1"}, []) is Flavor.BETA
    assert detect_flavor("/v1/realtime", {"openai-beta": "assistants=v2, realtime=v1"}, []) is Flavor.BETA
    assert detect_flavor("/v1/realtime", {}, ["realtime", "openai-insecure-api-key.k", "openai-beta.realtime-v1"]) \
        is Flavor.BETA
    assert detect_flavor("/voice-live/realtime?api-version=2025-10-01", {"OpenAI-Beta": "realtime=v1"}, []) \
        is Flavor.AZURE
    assert detect_flavor("/v1/realtime", {"OpenAI-Beta": "assistants=v2"}, ["realtime"]) is Flavor.GA


def test_event_names_per_flavor():
    assert event_name("response.output_audio.delta", Flavor.BETA) == "response.audio.delta"
    assert event_name("response.output_audio_transcript.done", Flavor.AZURE) == "response.audio_transcript.done"
    assert event_name("response.output_text.delta", Flavor.BETA) == "response.text.delta"
    assert event_name("conversation.item.added", Flavor.BETA) == "conversation.item.created"
    assert event_name("conversation.item.done", Flavor.BETA) is None
    assert event_name("conversation.item.done", Flavor.GA) == "conversation.item.done"
    ev = ServerEvents(Flavor.BETA)
    assert ev.conversation_item_done({"id": "x"}) is None
    assert ev.input_audio_buffer_cleared()["event_id"] == "event_1"  # a skipped event uses no id


# --------------------------------------------------------------------------- audio formats

@pytest.mark.parametrize("wire,fmt", [
    ({"type": "audio/pcm", "rate": 24000}, PCM16_24K), ({"type": "audio/pcm"}, PCM16_24K),
    ({"type": "audio/pcmu"}, PCMU), ({"type": "audio/pcma"}, PCMA), ("pcm16", PCM16_24K),
    ("g711_ulaw", PCMU), ("g711_alaw", PCMA), ("pcm16_8000hz", AudioFormat("pcm16", 8000)),
    ("pcm16_16000hz", AudioFormat("pcm16", 16000)), ("pcm16_24000hz", PCM16_24K),
    ("pcm16-16000hz", AudioFormat("pcm16", 16000)),
])
def test_parse_audio_format(wire, fmt):
    assert parse_audio_format(wire, param="p") == fmt


@pytest.mark.parametrize("wire,param", [
    ("opus", "p"), ({"type": "audio/opus"}, "p.type"), ({"type": "audio/pcm", "rate": 44100}, "p.rate"),
    ({"type": "audio/pcm", "rate": "24000"}, "p.rate"), ({"type": "audio/pcmu", "rate": 16000}, "p.rate"),
    (24000, "p"), (None, "p"),
])
def test_parse_audio_format_rejects(wire, param):
    with pytest.raises(ProtocolError) as e:
        parse_audio_format(wire, param=param.split(".")[0])
    assert e.value.param == param


def test_audio_format_wire_per_flavor():
    assert PCM16_24K.to_wire(Flavor.GA) == {"type": "audio/pcm", "rate": 24000}
    assert PCMU.to_wire(Flavor.GA) == {"type": "audio/pcmu"}
    assert PCMA.to_wire(Flavor.BETA) == "g711_alaw"
    assert AudioFormat("pcm16", 16000).to_wire(Flavor.AZURE) == "pcm16_16000hz"
    assert AudioFormat("pcm16", 16000).to_wire(Flavor.AZURE, direction="input") == "pcm16"
    for fmt in (PCM16_24K, PCMU, PCMA, AudioFormat("pcm16", 8000), AudioFormat("pcm16", 16000)):
        for flavor in Flavor:
            assert parse_audio_format(fmt.to_wire(flavor), param="p") == fmt


def test_decode_encode_pcm16_round_trip():
    b64, samples = b64_pcm(240)
    frame = PCM16_24K.decode(b64)
    assert frame.rate == 24000 and np.array_equal(frame.samples, samples)
    assert PCM16_24K.encode(frame) == b64
    assert AudioFormat("pcm16", 16000).decode(b64).rate == 16000


def test_decode_encode_g711():
    speech = Frame.from_float(0.5 * np.sin(np.linspace(0, 60, 800)), 8000)
    for fmt in (PCMU, PCMA):
        b64 = fmt.encode(speech)
        assert len(base64.b64decode(b64)) == 800  # one byte per sample
        back = fmt.decode(b64)
        assert back.rate == 8000
        assert np.max(np.abs(back.samples.astype(int) - speech.samples)) < 600  # G.711 quantisation only
        assert fmt.encode(back) == b64


@pytest.mark.parametrize("bad,why", [("AAA", "base64"), ("AA==AA==", "base64"), ("AQI=\n", "base64"),
                                     ("@@@@", "base64"), ("AQID", "even"), (123, "string")])
def test_decode_rejects(bad, why):
    with pytest.raises(ProtocolError) as e:
        PCM16_24K.decode(bad, param="audio")
    assert why in e.value.message and e.value.param == "audio"


def test_encode_requires_matching_rate():
    with pytest.raises(ValueError, match="resample"):
        PCMU.encode(Frame.silence(0.01, 16000))


# --------------------------------------------------------------------------- session config

def test_defaults():
    cfg = SessionConfig()
    assert cfg.input_format == cfg.output_format == PCM16_24K
    assert cfg.turn_detection == TurnDetection("server_vad", 0.5, 300, 400, True, True)
    assert cfg.voice == "alloy" and cfg.output_modalities == ("audio",) and cfg.input_transcription is None


def test_ga_session_update_from_openai_sdk_params():
    from openai._utils import maybe_transform
    from openai.types.realtime import RealtimeClientEventParam

    event = {"type": "session.update", "event_id": "c1", "session": {
        "type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.", "output_modalities": ["audio"],
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "noise_reduction": {"type": "near_field"},
                            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "ko"},
                            "turn_detection": {"type": "semantic_vad", "eagerness": "high",
                                               "create_response": False}},
                  "output": {"format": {"type": "audio/pcma"}, "voice": "marin", "speed": 1.2}},
        "tools": [{"type": "function", "name": "lookup", "description": "Find",
                   "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}],
        "tool_choice": {"type": "function", "name": "lookup"}, "max_output_tokens": 512, "tracing": "auto"}}
    raw = json.dumps(maybe_transform(event, RealtimeClientEventParam))  # what the SDK's send() writes
    parsed = parse_client_event(raw, max_bytes=MAX)
    assert isinstance(parsed, SessionUpdate) and parsed.event_id == "c1"
    cfg, warnings = apply_session_update(SessionConfig(), parsed.session, Flavor.GA)
    assert warnings == []
    assert cfg.input_format == PCMU and cfg.output_format == PCMA
    assert cfg.turn_detection == TurnDetection(type="semantic_vad", eagerness="high", create_response=False)
    assert cfg.input_transcription == InputTranscription("gpt-4o-mini-transcribe", "ko")
    assert cfg.voice == "marin" and cfg.speed == 1.2 and cfg.instructions == "Be brief."
    assert cfg.tools[0]["name"] == "lookup" and cfg.tool_choice == {"type": "function", "name": "lookup"}
    assert cfg.max_output_tokens == 512 and cfg.noise_reduction == {"type": "near_field"}
    wire = session_to_wire(cfg, Flavor.GA, session_id="sess_1", model="gpt-realtime")
    session = ga_validate(ServerEvents(Flavor.GA).session_updated(wire)).session
    assert isinstance(session, ga_types.RealtimeSessionCreateRequest)
    assert session.audio.input.turn_detection.eagerness == "high"
    assert session.audio.output.format.type == "audio/pcma"
    # the echoed session, fed back as an update, changes nothing
    assert apply_session_update(cfg, wire, Flavor.GA) == (cfg, [])


async def test_openai_agents_session_update_is_accepted():
    from agents.realtime.openai_realtime import OpenAIRealtimeWebSocketModel
    from openai.types.realtime.session_update_event import SessionUpdateEvent

    model = OpenAIRealtimeWebSocketModel()
    session = model._get_session_config({"instructions": "Hi", "voice": "cedar",
                                         "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
                                         "input_audio_format": "g711_ulaw", "output_audio_format": "pcm16"})
    raw = SessionUpdateEvent(session=session, type="session.update").model_dump_json(exclude_unset=True)
    parsed = parse_client_event(raw, max_bytes=MAX)
    cfg, warnings = apply_session_update(SessionConfig(), parsed.session, Flavor.GA)
    assert warnings == []
    assert cfg.voice == "cedar" and cfg.input_format == PCMU and cfg.output_format == PCM16_24K
    assert cfg.turn_detection.silence_duration_ms == 700 and cfg.turn_detection.threshold == 0.5
    assert cfg.input_transcription.model == "gpt-4o-mini-transcribe"  # agents' default


def test_beta_session_update_from_sdk_typed_dict():
    from openai.types.beta.realtime import SessionUpdateEventParam

    event: SessionUpdateEventParam = {"type": "session.update", "session": {
        "modalities": ["text", "audio"], "voice": "verse", "input_audio_format": "g711_alaw",
        "output_audio_format": "g711_ulaw", "input_audio_transcription": {"model": "whisper-1"},
        "turn_detection": {"type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 200,
                           "silence_duration_ms": 600, "create_response": True},
        "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}],
        "tool_choice": "required", "temperature": 0.9, "max_response_output_tokens": "inf",
        "input_audio_noise_reduction": {"type": "far_field"}}}
    parsed = parse_client_event(json.dumps(event), max_bytes=MAX)
    cfg, warnings = apply_session_update(SessionConfig(), parsed.session, Flavor.BETA)
    assert warnings == []
    assert cfg.output_modalities == ("text", "audio") and cfg.voice == "verse"
    assert cfg.input_format == PCMA and cfg.output_format == PCMU
    assert cfg.turn_detection == TurnDetection("server_vad", 0.7, 200, 600, True, True)
    assert cfg.temperature == 0.9 and cfg.tool_choice == "required"
    wire = session_to_wire(cfg, Flavor.BETA, session_id="sess_1", model="gpt-4o-realtime-preview")
    parsed_wire = beta_validate(ServerEvents(Flavor.BETA).session_created(wire))
    assert parsed_wire.session.input_audio_format == "g711_alaw"
    assert apply_session_update(cfg, wire, Flavor.BETA) == (cfg, [])


def test_azure_session_update_from_sdk_models():
    from azure.ai.voicelive.models import (AudioEchoCancellation, AudioInputTranscriptionOptions,
                                           AudioNoiseReduction, AzureSemanticVadMultilingual, AzureStandardVoice,
                                           ClientEventSessionUpdate, RequestSession)

    session = RequestSession(
        modalities=["text", "audio"], instructions="Hallo", output_audio_format="pcm16_16000hz",
        input_audio_format="pcm16", input_audio_sampling_rate=16000,
        voice=AzureStandardVoice(name="en-US-AvaNeural", temperature=0.8),
        turn_detection=AzureSemanticVadMultilingual(threshold=0.3, silence_duration_ms=500, remove_filler_words=True),
        input_audio_echo_cancellation=AudioEchoCancellation(),
        input_audio_noise_reduction=AudioNoiseReduction(type="azure_deep_noise_suppression"),
        input_audio_transcription=AudioInputTranscriptionOptions(model="azure-speech", language="en-US"))
    raw = json.dumps(ClientEventSessionUpdate(session=session, event_id="az1").as_dict())
    parsed = parse_client_event(raw, max_bytes=MAX)
    cfg, warnings = apply_session_update(SessionConfig(), parsed.session, Flavor.AZURE)
    assert cfg.voice == "en-US-AvaNeural"
    assert cfg.voice_config == {"type": "azure-standard", "name": "en-US-AvaNeural", "temperature": 0.8}
    assert cfg.input_format == AudioFormat("pcm16", 16000) and cfg.output_format == AudioFormat("pcm16", 16000)
    assert cfg.turn_detection.type == "azure_semantic_vad_multilingual" and cfg.turn_detection.threshold == 0.3
    assert cfg.echo_cancellation == {"type": "server_echo_cancellation"}
    assert cfg.noise_reduction == {"type": "azure_deep_noise_suppression"}
    assert any("remove_filler_words" in w for w in warnings)
    assert any("input_audio_noise_reduction.type" in w for w in warnings)
    assert len(warnings) == 2
    wire = session_to_wire(cfg, Flavor.AZURE, session_id="sess_1", model="gpt-realtime")
    assert wire["voice"]["name"] == "en-US-AvaNeural" and wire["input_audio_sampling_rate"] == 16000
    assert wire["input_audio_noise_reduction"] is None  # not in force, so not echoed as if it were
    parsed_wire = azure_validate(ServerEvents(Flavor.AZURE).session_updated(wire))
    from azure.ai.voicelive.models import AzureStandardVoice, AzureVoice

    voice = AzureVoice._deserialize(parsed_wire.session.voice, [])  # the SDK leaves the union as a dict
    assert isinstance(voice, AzureStandardVoice) and voice.name == "en-US-AvaNeural" and voice.temperature == 0.8
    assert parsed_wire.session.turn_detection.threshold == 0.3


def test_avatar_and_unknown_fields_warn():
    cfg, warnings = apply_session_update(SessionConfig(), {
        "avatar": {"character": "lisa"}, "animation": {"outputs": ["blendshapes"]}, "frobnicate": 1,
        "prompt": {"id": "p1"}, "tools": [{"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:9/mcp"}],
        "audio": {"input": {"turn_detection": {"type": "server_vad", "mystery": 2}}}}, Flavor.AZURE)
    assert cfg.avatar == {"character": "lisa"} and cfg.animation == {"outputs": ["blendshapes"]}
    assert cfg.tools == ()
    assert [t.server_label for t in cfg.mcp_tools] == ["x"]  # served (tests/test_realtime_mcp.py): no warning
    joined = "\n".join(warnings)
    for needle in ("session.avatar", "session.animation", "session.frobnicate", "session.prompt",
                   "session.audio.input.turn_detection.mystery"):
        assert needle in joined
    assert len(warnings) == 5


def test_partial_updates_merge():
    cfg, _ = apply_session_update(SessionConfig(), {"turn_detection": {"type": "server_vad", "threshold": 0.9}},
                                  Flavor.BETA)
    cfg, _ = apply_session_update(cfg, {"turn_detection": {"silence_duration_ms": 800}}, Flavor.BETA)
    assert cfg.turn_detection.threshold == 0.9 and cfg.turn_detection.silence_duration_ms == 800
    cfg, _ = apply_session_update(cfg, {"turn_detection": {"type": "semantic_vad"}}, Flavor.BETA)
    assert cfg.turn_detection == TurnDetection(type="semantic_vad")  # a new type starts from defaults
    cfg, _ = apply_session_update(cfg, {"turn_detection": None, "instructions": "x"}, Flavor.BETA)
    assert cfg.turn_detection is None and cfg.voice == "alloy" and cfg.instructions == "x"
    cfg, _ = apply_session_update(cfg, {"audio": {"output": {"voice": {"id": "voice_123"}}}}, Flavor.GA)
    assert cfg.voice == "voice_123"
    assert session_to_wire(cfg, Flavor.GA, session_id="s", model="m")["audio"]["output"]["voice"] == {"id": "voice_123"}


def test_turn_detection_types_per_flavor():
    for flavor in (Flavor.GA, Flavor.BETA):
        with pytest.raises(ProtocolError) as e:
            apply_session_update(SessionConfig(), {"turn_detection": {"type": "azure_semantic_vad"}}, flavor)
        assert e.value.param == "session.turn_detection.type"
    cfg, warnings = apply_session_update(SessionConfig(), {"turn_detection": {"type": "semantic_vad"}}, Flavor.AZURE)
    assert cfg.turn_detection.type == "azure_semantic_vad" and "azure_semantic_vad" in warnings[0]
    # configs made for one dialect still serialise into the other's vocabulary
    ga = session_to_wire(cfg, Flavor.GA, session_id="s", model="gpt-realtime")
    assert ga["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    ga_validate(ServerEvents(Flavor.GA).session_created(ga))


@pytest.mark.parametrize("payload,param", [
    ({"audio": {"input": {"format": {"type": "audio/wav"}}}}, "session.audio.input.format.type"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}},
     "session.audio.input.turn_detection.threshold"),
    ({"turn_detection": {"type": "server_vad", "silence_duration_ms": -1}},
     "session.turn_detection.silence_duration_ms"),
    ({"turn_detection": {"type": "magic_vad"}}, "session.turn_detection.type"),
    ({"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}, "session.turn_detection.eagerness"),
    ({"turn_detection": {"type": "server_vad", "create_response": "yes"}}, "session.turn_detection.create_response"),
    ({"input_audio_format": "mp3"}, "session.input_audio_format"),
    ({"voice": ""}, "session.voice"), ({"voice": {"type": "azure-standard"}}, "session.voice.name"),
    ({"instructions": 5}, "session.instructions"), ({"modalities": ["video"]}, "session.modalities[0]"),
    ({"output_modalities": []}, "session.output_modalities"), ({"temperature": "hot"}, "session.temperature"),
    ({"max_response_output_tokens": 0}, "session.max_response_output_tokens"),
    ({"max_output_tokens": "lots"}, "session.max_output_tokens"),
    ({"tools": [{"type": "function"}]}, "session.tools[0].name"),
    ({"tools": [{"name": "a"}, {"name": "a"}]}, "session.tools[1].name"),
    ({"tool_choice": "sometimes"}, "session.tool_choice"), ({"type": "transcription"}, "session.type"),
    ({"input_audio_sampling_rate": 44100}, "session.input_audio_sampling_rate"),
    ({"audio": {"output": {"speed": 9}}}, "session.audio.output.speed"),
])
def test_invalid_session_values(payload, param):
    with pytest.raises(ProtocolError) as e:
        apply_session_update(SessionConfig(), payload, Flavor.GA)
    assert e.value.param == param


def test_session_payload_must_be_object():
    with pytest.raises(ProtocolError) as e:
        apply_session_update(SessionConfig(), ["x"], Flavor.GA)
    assert e.value.param == "session"


# --------------------------------------------------------------------------- client events

def test_client_events_from_openai_sdk_models():
    from openai.types.realtime import (ConversationItemCreateEvent, ConversationItemTruncateEvent,
                                       InputAudioBufferAppendEvent, ResponseCancelEvent, ResponseCreateEvent)

    audio, _ = b64_pcm(100)
    dump = lambda m: m.model_dump_json(exclude_unset=True)  # noqa: E731 - as openai-agents sends them
    ev = parse_client_event(dump(InputAudioBufferAppendEvent(type="input_audio_buffer.append", audio=audio)),
                            max_bytes=MAX)
    assert ev == InputAudioBufferAppend(None, audio)
    item = {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "hello"}, {"type": "input_audio", "audio": audio}]}
    ev = parse_client_event(dump(ConversationItemCreateEvent(type="conversation.item.create", item=item,
                                                             event_id="e9")), max_bytes=MAX)
    assert isinstance(ev, ConversationItemCreate) and ev.event_id == "e9"
    assert ev.item == MessageItem("user", (ContentPart("input_text", text="hello"),
                                           ContentPart("input_audio", audio=audio)))
    ev = parse_client_event(dump(ConversationItemTruncateEvent(type="conversation.item.truncate", item_id="i1",
                                                               content_index=0, audio_end_ms=1234)), max_bytes=MAX)
    assert ev == ConversationItemTruncate(None, "i1", 0, 1234)
    ev = parse_client_event(dump(ResponseCancelEvent(type="response.cancel", response_id="r1")), max_bytes=MAX)
    assert ev == ResponseCancel(None, "r1")
    ev = parse_client_event(dump(ResponseCreateEvent(type="response.create", response={
        "instructions": "Shout", "output_modalities": ["text"], "conversation": "none", "metadata": {"k": "v"},
        "audio": {"output": {"voice": "ash", "format": {"type": "audio/pcmu"}}}, "max_output_tokens": 50,
        "tool_choice": "none", "input": [{"type": "message", "role": "user",
                                          "content": [{"type": "input_text", "text": "q"}]}]})), max_bytes=MAX)
    assert isinstance(ev, ResponseCreate)
    r = ev.response
    assert (r.instructions, r.output_modalities, r.conversation, r.metadata) == ("Shout", ("text",), "none", {"k": "v"})
    assert (r.voice, r.output_format, r.max_output_tokens, r.tool_choice) == ("ash", PCMU, 50, "none")
    assert r.input == (MessageItem("user", (ContentPart("input_text", text="q"),)),) and r.warnings == ()


def test_function_call_items_and_references():
    from openai.types.beta.realtime import ResponseCreateEventParam

    out = parse_client_event(json.dumps({"type": "conversation.item.create", "previous_item_id": "i0", "item": {
        "type": "function_call_output", "call_id": "c1", "output": "{\"ok\":true}"}}), max_bytes=MAX)
    assert out.item == FunctionCallOutputItem("c1", '{"ok":true}') and out.previous_item_id == "i0"
    call = parse_client_event(json.dumps({"type": "conversation.item.create", "item": {
        "type": "function_call", "id": "it1", "call_id": "c1", "name": "f", "arguments": "{}"}}), max_bytes=MAX)
    assert call.item == FunctionCallItem("c1", "f", "{}", id="it1")
    beta: ResponseCreateEventParam = {"type": "response.create", "response": {
        "modalities": ["text", "audio"], "voice": "sage", "output_audio_format": "g711_ulaw",
        "max_response_output_tokens": "inf", "temperature": 0.7,
        "input": [{"type": "item_reference", "id": "it1"},
                  {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "ok"}]}]}}
    r = parse_client_event(json.dumps(beta), max_bytes=MAX).response
    assert r.input == (ItemReference("it1"), MessageItem("assistant", (ContentPart("output_text", text="ok"),)))
    assert (r.output_modalities, r.voice, r.output_format, r.max_output_tokens) == (("text", "audio"), "sage",
                                                                                     PCMU, "inf")


def test_azure_response_create_extras_warn():
    ev = parse_client_event(json.dumps({"type": "response.create", "response": {
        "cancel_previous": True, "pre_generated_assistant_message": {"type": "message"}, "zzz": 1}}), max_bytes=MAX)
    assert len(ev.response.warnings) == 3 and "response.zzz" in ev.response.warnings[2]


@pytest.mark.parametrize("etype", ["input_audio_buffer.commit", "input_audio_buffer.clear",
                                   "output_audio_buffer.clear", "response.create", "response.cancel"])
def test_bare_events(etype):
    ev = parse_client_event(json.dumps({"type": etype, "event_id": "x1"}).encode(), max_bytes=MAX)
    assert ev.TYPE == etype and ev.event_id == "x1"


def test_transcription_session_update_is_accepted():
    ev = parse_client_event(json.dumps({"type": "transcription_session.update", "event_id": "t1",
                                        "session": {"input_audio_format": "pcm16"}}), max_bytes=MAX)
    assert ev.TYPE == "transcription_session.update" and ev.session == {"input_audio_format": "pcm16"}


def test_item_round_trip_through_wire():
    audio, _ = b64_pcm(10)
    items = [MessageItem("user", (ContentPart("input_text", text="a"), ContentPart("input_audio", audio=audio,
                                                                                     transcript="t"))),
             MessageItem("assistant", (ContentPart("output_text", text="b"), ContentPart("output_audio",
                                                                                         transcript="c"))),
             MessageItem("system", (ContentPart("input_text", text="rules"),)),
             FunctionCallItem("c1", "f", "{}"), FunctionCallOutputItem("c1", "42")]
    for flavor in Flavor:
        for item in items:
            wire = item_to_wire(item, flavor, item_id="item_9")
            raw = json.dumps({"type": "conversation.item.create", "item": wire})
            back = parse_client_event(raw, max_bytes=MAX).item
            assert back.id == "item_9"
            assert type(back) is type(item)
            if isinstance(item, MessageItem):
                assert back.content == item.content and back.role == item.role


@pytest.mark.parametrize("raw,code,param", [
    (b"\xff\xfe", "invalid_json", None), ("{", "invalid_json", None), ("[1]", "invalid_event", None),
    ('{"type": 5}', "missing_required_parameter", "type"), ("{}", "missing_required_parameter", "type"),
    ('{"type": "x", "event_id": 7}', "invalid_type", "event_id"), ('{"type":"a","b":NaN}', "invalid_json", None),
    ('{"type": "input_audio_buffer.append"}', "invalid_type", "audio"),
    ('{"type": "conversation.item.truncate", "item_id": "i", "content_index": -1, "audio_end_ms": 3}',
     "invalid_value", "content_index"),
    ('{"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": '
     '[{"type": "text", "text": "x"}]}}', "invalid_value", "item.content[0].type"),
    ('{"type": "conversation.item.create", "item": {"type": "mcp_call"}}', "invalid_value", "item.type"),
    ('{"type": "response.create", "response": {"conversation": "conv_1"}}', "invalid_value",
     "response.conversation"),
    ('{"type": "session.update", "session": 3}', "invalid_type", "session"),
])
def test_client_event_errors(raw, code, param):
    with pytest.raises(ProtocolError) as e:
        parse_client_event(raw, max_bytes=MAX)
    assert (e.value.code, e.value.param) == (code, param)


def test_unknown_event_echoes_event_id_and_errors_carry_it():
    with pytest.raises(ProtocolError) as e:
        parse_client_event('{"type": "session.teleport", "event_id": "ev_42"}', max_bytes=MAX)
    assert e.value.code == "unknown_event" and e.value.event_id == "ev_42"
    with pytest.raises(ProtocolError) as e:
        parse_client_event('{"type": "conversation.item.delete", "event_id": "ev_43"}', max_bytes=MAX)
    assert e.value.event_id == "ev_43" and e.value.param == "item_id"
    err = ServerEvents(Flavor.GA).error_from(e.value)
    assert err["error"]["event_id"] == "ev_43" and err["error"]["param"] == "item_id"
    ga_validate(err)


def test_message_too_large():
    big = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 2000})
    for raw in (big, big.encode()):
        with pytest.raises(ProtocolError) as e:
            parse_client_event(raw, max_bytes=1000)
        assert e.value.code == "message_too_large"
    multibyte = json.dumps({"type": "x", "pad": "가" * 300}, ensure_ascii=False)  # 900+ bytes, ~320 chars
    with pytest.raises(ProtocolError) as e:
        parse_client_event(multibyte, max_bytes=900)
    assert e.value.code == "message_too_large"
    assert isinstance(parse_client_event(big, max_bytes=len(big)), InputAudioBufferAppend)


# --------------------------------------------------------------------------- server events

@pytest.mark.parametrize("flavor", list(Flavor))
def test_every_server_event_conforms(flavor):
    events = conversation_events(flavor)
    for ev in events:
        VALIDATORS[flavor](ev)
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids) and ids[0] == "event_1"
    types = {e["type"] for e in events}
    if flavor is Flavor.GA:
        assert {"response.output_audio.delta", "conversation.item.added", "conversation.item.done",
                "input_audio_buffer.timeout_triggered"} <= types
    else:
        assert {"response.audio.delta", "response.audio_transcript.done", "response.text.delta",
                "conversation.item.created"} <= types
        assert not {"conversation.item.done", "conversation.item.added", "input_audio_buffer.timeout_triggered"} & types


@pytest.mark.parametrize("flavor", list(Flavor))
@pytest.mark.parametrize("cfg", [
    SessionConfig(turn_detection=None, output_modalities=("text",), input_format=PCMU, output_format=PCMA),
    SessionConfig(turn_detection=TurnDetection("semantic_vad", eagerness="low"), max_output_tokens=100,
                  tool_choice={"type": "function", "name": "f"},
                  tools=({"name": "f", "description": "", "parameters": {"type": "object"}},)),
    SessionConfig(turn_detection=TurnDetection(idle_timeout_ms=6000), noise_reduction={"type": "near_field"},
                  input_transcription=InputTranscription("whisper-1", "ko", "Korean names")),
])
def test_session_variants_conform(flavor, cfg):
    if flavor is Flavor.BETA and isinstance(cfg.tool_choice, dict):
        cfg = dataclasses.replace(cfg, tool_choice="required")  # the beta model types tool_choice as a string
    for ev in conversation_events(flavor, cfg)[:2]:
        VALIDATORS[flavor](ev)


def test_azure_only_session_shapes_conform():
    cfg, _ = apply_session_update(SessionConfig(), {
        "voice": {"name": "en-US-AvaNeural", "type": "azure-standard"},
        "turn_detection": {"type": "azure_semantic_vad", "threshold": 0.4},
        "input_audio_format": "g711_ulaw", "output_audio_format": "pcm16_8000hz",
        "input_audio_echo_cancellation": {"type": "server_echo_cancellation"}}, Flavor.AZURE)
    wire = session_to_wire(cfg, Flavor.AZURE, session_id="s", model="gpt-realtime")
    assert "input_audio_sampling_rate" not in wire and wire["output_audio_format"] == "pcm16_8000hz"
    azure_validate(ServerEvents(Flavor.AZURE).session_created(wire))
    voice_ev = ServerEvents(Flavor.AZURE).response_created(response_object("r", Flavor.AZURE, voice=cfg.voice_config))
    assert azure_validate(voice_ev).response.voice == {"name": "en-US-AvaNeural", "type": "azure-standard"}


def test_warning_per_flavor():
    az = ServerEvents(Flavor.AZURE).warning("noise type unsupported", param="session.input_audio_noise_reduction")
    assert az["type"] == "warning" and az["warning"]["code"] == "unsupported_feature"
    ga = ServerEvents(Flavor.GA).warning("avatar unsupported", param="session.avatar")
    assert ga["type"] == "error" and ga["error"]["type"] == "invalid_request_error"
    assert ga["error"]["code"] == "unsupported_feature"


def test_event_ids_deterministic_and_custom_source():
    ev = ServerEvents(Flavor.GA, itertools.count(100), prefix="evt_c7_")
    assert [ev.input_audio_buffer_cleared()["event_id"] for _ in range(3)] == ["evt_c7_100", "evt_c7_101",
                                                                                "evt_c7_102"]


def test_content_part_names_per_flavor():
    part = ContentPart("output_audio", transcript="x")
    assert message_item("i", "assistant", [part], Flavor.GA)["content"][0]["type"] == "output_audio"
    assert message_item("i", "assistant", [part], Flavor.BETA)["content"][0]["type"] == "audio"
    text = ContentPart("output_text", text="y")
    assert message_item("i", "assistant", [text], Flavor.GA)["content"][0] == {"type": "output_text", "text": "y"}
    assert message_item("i", "assistant", [text], Flavor.AZURE)["content"][0] == {"type": "text", "text": "y"}


def test_response_done_usage_and_status():
    usage = Usage(input_text_tokens=7, input_audio_tokens=3, output_audio_tokens=11, output_text_tokens=2)
    for flavor in Flavor:
        r = response_object("resp_1", flavor, status="cancelled",
                            status_details=status_details("cancelled", reason="client_cancelled"), usage=usage)
        assert r["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert r["usage"]["total_tokens"] == 23 and r["usage"]["input_tokens"] == 10
        assert r["usage"]["output_token_details"] == {"text_tokens": 2, "audio_tokens": 11}
        VALIDATORS[flavor](ServerEvents(flavor).response_done(r))
    assert status_details("completed") is None


# --------------------------------------------------------------------------- openai-agents, end to end

class _Listener:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def on_event(self, event: Any) -> None:
        self.events.append(event)


class _FakeSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, data: str) -> None:
        self.sent.append(json.loads(data))


async def test_openai_agents_parses_every_ga_event():
    """Drive openai-agents' own receive path with the codec's events: it validates each one
    strictly and turns it into its model events."""
    from agents.realtime import model_events as me
    from agents.realtime.openai_realtime import OpenAIRealtimeWebSocketModel

    model = OpenAIRealtimeWebSocketModel()
    model._websocket = _FakeSocket()  # replies (truncate/retrieve/cancel) land here
    listener = _Listener()
    model.add_listener(listener)
    events = conversation_events(Flavor.GA)
    for ev in events:
        await model._handle_ws_event(json.loads(json.dumps(ev)))
    got = listener.events
    raw = [e for e in got if isinstance(e, me.RealtimeModelRawServerEvent)]
    assert len(raw) == len(events)
    assert not [e for e in got if isinstance(e, me.RealtimeModelExceptionEvent)]
    errors = [e for e in got if isinstance(e, me.RealtimeModelErrorEvent)]
    assert len(errors) == 2  # exactly the error and the warning we sent, both parsed as RealtimeError
    assert all(isinstance(e.error, ga_types.RealtimeError) for e in errors)
    assert errors[1].error.code == "unsupported_feature"
    assert model._created_session is not None and model._created_session.audio.output.voice == "alloy"
    kinds = {type(e).__name__ for e in got}
    for name in ("RealtimeModelAudioEvent", "RealtimeModelAudioDoneEvent", "RealtimeModelTranscriptDeltaEvent",
                 "RealtimeModelOutputTextDeltaEvent", "RealtimeModelToolCallEvent", "RealtimeModelTurnStartedEvent",
                 "RealtimeModelTurnEndedEvent", "RealtimeModelUsageEvent", "RealtimeModelItemUpdatedEvent",
                 "RealtimeModelItemDeletedEvent", "RealtimeModelInputAudioTranscriptionCompletedEvent",
                 "RealtimeModelInputAudioTimeoutTriggeredEvent"):
        assert name in kinds, name
    audio = next(e for e in got if isinstance(e, me.RealtimeModelAudioEvent))
    assert len(audio.data) == 960 and audio.item_id == "item_a1"  # 20 ms of 24 kHz pcm16
    call = next(e for e in got if isinstance(e, me.RealtimeModelToolCallEvent))
    assert (call.call_id, call.name, call.arguments) == ("call_1", "get_time", '{"tz":"UTC"}')
    usage = next(e for e in got if isinstance(e, me.RealtimeModelUsageEvent))
    assert usage.usage.total_tokens == 73 and usage.input_tokens_details.cached_tokens == 5
