"""The Realtime codec's transcription session, transcription language and prompt, and Azure's
pre-generated assistant message: pure functions, no models (the same behaviour end to end, with
the SDKs and real speech, is in test_realtime_transcription.py and test_voicelive_pregenerated.py).
"""

from __future__ import annotations

import json
import typing

import pydantic
import pytest
from openai.types import realtime as ga_types

from moksori.engine.config import SessionConfig as EngineConfig
from moksori.errors import ProtocolError
from moksori.protocols import realtime as rt
from moksori.server.realtime_config import engine_config, response_overrides
from moksori.settings import Language, Settings

GA_ADAPTER = pydantic.TypeAdapter(ga_types.RealtimeServerEvent)
MAX = 1 << 20


def transcription_update(**transcription: object) -> dict:
    return {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "whisper-1", **transcription},
        "turn_detection": {"type": "semantic_vad"}}}}


def refused(payload: dict, flavor: rt.Flavor = rt.Flavor.GA, **kw: bool) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        rt.apply_session_update(rt.SessionConfig(), payload, flavor, **kw)
    return e.value


# --------------------------------------------------------------------------- the transcription session


def test_a_transcription_connection_takes_the_ga_transcription_session():
    cfg, warnings = rt.apply_session_update(rt.SessionConfig(), transcription_update(language="en", prompt="Jon"),
                                            rt.Flavor.GA, transcription=True)
    assert not warnings
    assert cfg.input_transcription == rt.InputTranscription("whisper-1", "en", "Jon")
    assert cfg.turn_detection is not None and cfg.turn_detection.type == "semantic_vad"
    assert cfg.turn_detection.create_response is False  # a transcription session never replies
    # the beta transcription_session.update shape (no type) too
    cfg, _ = rt.apply_session_update(rt.SessionConfig(), {"input_audio_transcription": {"model": "whisper-1"}},
                                     rt.Flavor.BETA, transcription=True)
    assert cfg.input_transcription == rt.InputTranscription("whisper-1")


def test_session_types_must_match_the_connection():
    assert refused({"type": "realtime"}, transcription=True).param == "session.type"
    err = refused(transcription_update())  # a conversation connection
    assert err.param == "session.type" and "intent=transcription" in err.message


def test_the_ga_transcription_session_object():
    cfg, _ = rt.apply_session_update(rt.SessionConfig(), transcription_update(language="ko"), rt.Flavor.GA,
                                     transcription=True)
    wire = rt.session_to_wire(cfg, rt.Flavor.GA, session_id="sess_1", model="m", transcription=True)
    assert wire["type"] == "transcription" and wire["object"] == "realtime.transcription_session"
    assert set(wire) == {"type", "object", "id", "audio"} and set(wire["audio"]) == {"input"}
    assert wire["audio"]["input"]["transcription"] == {"model": "whisper-1", "language": "ko"}
    for typ in ("session.created", "session.updated"):  # the SDK reads it as its transcription session
        event = GA_ADAPTER.validate_python({"type": typ, "event_id": "e1", "session": wire})
        assert isinstance(event.session, ga_types.RealtimeTranscriptionSessionCreateRequest)


# --------------------------------------------------------------------------- language and prompt


def test_transcription_languages_are_the_engines():
    assert rt.TRANSCRIPTION_LANGUAGES == tuple(x for x in typing.get_args(Language) if x != "auto")


@pytest.mark.parametrize(("given", "pinned"), [("en", "en"), ("ko", "ko"), ("EN", "en"), ("en-US", "en"),
                                                ("ko_KR", "ko"), ("en,ko", None), ("en-US,en-GB", "en"),
                                                ("", None), (None, None)])
def test_accepted_languages(given, pinned):
    update = {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1", "language": given}}}}
    cfg, _ = rt.apply_session_update(rt.SessionConfig(), update, rt.Flavor.GA)
    assert cfg.input_transcription is not None
    assert cfg.input_transcription.language == (given or None)  # echoed as given
    assert rt.pinned_language(cfg.input_transcription.language) == pinned
    base = EngineConfig(language="auto")
    assert engine_config(cfg, base, Settings(), voices=()).language == (pinned or "auto")


@pytest.mark.parametrize("language", ["de", "xx-nonsense", "en,zh", "en,", "-", " "])
@pytest.mark.parametrize(("flavor", "param"), [
    (rt.Flavor.GA, "session.audio.input.transcription.language"),
    (rt.Flavor.BETA, "session.input_audio_transcription.language"),
    (rt.Flavor.AZURE, "session.input_audio_transcription.language")])
def test_unsupported_languages_are_refused(language, flavor, param):
    if flavor is rt.Flavor.GA:
        update = {"audio": {"input": {"transcription": {"language": language}}}}
    else:
        update = {"input_audio_transcription": {"model": "whisper-1", "language": language}}
    err = refused(update, flavor)
    assert (err.code, err.param) == ("unsupported_language", param)
    assert "en, ko" in err.message


def test_prompt_is_kept_and_bounded():
    update = {"input_audio_transcription": {"model": "whisper-1", "prompt": "Mister Jon Dashwud."}}
    cfg, _ = rt.apply_session_update(rt.SessionConfig(), update, rt.Flavor.BETA)
    assert cfg.input_transcription is not None and cfg.input_transcription.prompt == "Mister Jon Dashwud."
    long = {"input_audio_transcription": {"prompt": "x" * (rt.MAX_PROMPT_CHARS + 1)}}
    assert refused(long, rt.Flavor.BETA).param == "session.input_audio_transcription.prompt"


# --------------------------------------------------------------------------- Azure's pre-generated message


def response_create(message: object) -> rt.ResponseOverrides:
    ev = rt.parse_client_event(json.dumps({"type": "response.create", "response": {
        "pre_generated_assistant_message": message}}), max_bytes=MAX)
    assert isinstance(ev, rt.ResponseCreate) and ev.response is not None
    return ev.response


def test_pre_generated_assistant_message_is_the_reply_text():
    o = response_create({"type": "message", "role": "assistant", "content": [
        {"type": "text", "text": "Your parcel"}, {"type": "audio", "transcript": "ships Tuesday."}]})
    assert o.fixed_text == "Your parcel ships Tuesday." and not o.warnings
    assert response_overrides(o, Settings(), voices=())["fixed_text"] == "Your parcel ships Tuesday."
    assert "fixed_text" not in response_overrides(rt.ResponseOverrides(), Settings(), voices=())


def test_pre_generated_assistant_message_without_text_warns():
    o = response_create({"type": "message", "role": "assistant", "content": []})
    assert o.fixed_text is None and "no text" in o.warnings[0]


@pytest.mark.parametrize(("message", "param"), [
    ("hello", "response.pre_generated_assistant_message"),
    ({"role": "user", "content": [{"type": "input_text", "text": "hi"}]}, "response.pre_generated_assistant_message"),
    ({"content": [{"type": "text"}]}, "response.pre_generated_assistant_message.content[0].text"),
    ({"content": [{"type": "text", "text": "x" * 5000}]}, "response.pre_generated_assistant_message.content")])
def test_bad_pre_generated_assistant_messages_are_refused(message, param):
    with pytest.raises(ProtocolError) as e:
        response_create(message)
    assert e.value.param == param
