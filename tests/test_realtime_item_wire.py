"""A conversation item's content parts on the wire, and the beta transcription session's events:
pure functions, no models, no sockets (the same end to end with the SDKs and real speech is
test_realtime_item_parts.py)."""

from __future__ import annotations

from typing import Any

import pydantic
from openai._models import construct_type_unchecked
from openai.types import realtime as ga_types
from openai.types.beta import realtime as beta_types

from moksori.engine.item_words import joined_words
from moksori.engine.memory import BLOCKED_TEXT, Item
from moksori.protocols import realtime as rt
from moksori.server.realtime_items import audio_transcripts, item_wire

GA_ADAPTER = pydantic.TypeAdapter(ga_types.RealtimeServerEvent)


def mixed(words: str | None) -> Item:
    parts: list[Any] = [("text", "Translate this:"), ("audio", words), ("text", "")]
    return Item(id="item_1", text=joined_words([w for _, w in parts]), audio=True, parts=parts)


def test_an_item_shows_each_of_its_parts_in_every_dialect() -> None:
    for flavor in rt.Flavor:
        wire = item_wire(mixed("bonjour"), flavor)
        assert wire["content"] == [{"type": "input_text", "text": "Translate this:"},
                                   {"type": "input_audio", "transcript": "bonjour"},
                                   {"type": "input_text", "text": ""}], flavor
    assert item_wire(mixed(None), rt.Flavor.GA)["content"][1] == {"type": "input_audio", "transcript": None}
    reply = Item(id="item_2", role="assistant", text="Hi. There.", parts=[("text", "Hi."), ("audio", "There.")])
    assert [p["type"] for p in item_wire(reply, rt.Flavor.BETA)["content"]] == ["text", "audio"]
    assert [p["type"] for p in item_wire(reply, rt.Flavor.GA)["content"]] == ["output_text", "output_audio"]
    GA_ADAPTER.validate_python({"type": "conversation.item.retrieved", "event_id": "e1",
                                "item": item_wire(mixed("bonjour"), rt.Flavor.GA)})


def test_an_item_whose_text_changed_since_is_one_part() -> None:
    """A guardrail blocked it (or a truncate cut it): its parts no longer say what it says."""
    item = mixed("bonjour")
    item.text = BLOCKED_TEXT
    assert item_wire(item, rt.Flavor.GA)["content"] == [{"type": "input_audio", "transcript": BLOCKED_TEXT}]
    turn = Item(id="item_3", text="hello there", audio=True)  # a live turn's: no parts kept
    assert item_wire(turn, rt.Flavor.GA, words_pending=True)["content"] == [{"type": "input_audio", "transcript": None}]


def test_each_audio_part_has_its_own_transcript() -> None:
    assert audio_transcripts(mixed("bonjour"), "Translate this: bonjour") == [(1, "bonjour")]
    assert audio_transcripts(Item(id="item_3", text="hello", audio=True), "hello") == [(0, "hello")]
    assert audio_transcripts(None, "hello") == [(0, "hello")]


def test_a_failed_transcription_is_each_sdks_event() -> None:
    for flavor, adapter in ((rt.Flavor.GA, GA_ADAPTER), (rt.Flavor.BETA, pydantic.TypeAdapter(beta_types.RealtimeServerEvent))):
        ev = rt.ServerEvents(flavor).input_audio_transcription_failed("item_1", 1, "the STT is down", code="provider_error")
        parsed = adapter.validate_python(ev)
        assert parsed.type == "conversation.item.input_audio_transcription.failed" and parsed.content_index == 1
        assert parsed.error.code == "provider_error" and parsed.error.message == "the STT is down"


def test_the_beta_transcription_session_events() -> None:
    cfg, _ = rt.apply_session_update(rt.SessionConfig(), {"input_audio_transcription": {"model": "whisper-1",
                                                                                        "language": "en"}},
                                     rt.Flavor.BETA, transcription=True)
    session = rt.session_to_wire(cfg, rt.Flavor.BETA, session_id="sess_1", model="m", transcription=True)
    assert session["object"] == "realtime.transcription_session"
    assert {"modalities", "voice", "instructions", "tools", "output_audio_format"}.isdisjoint(session)
    ev = rt.ServerEvents(rt.Flavor.BETA)
    created, updated = ev.session_created(session, transcription=True), ev.session_updated(session, transcription=True)
    assert (created["type"], updated["type"]) == ("transcription_session.created", "transcription_session.updated")
    assert created["event_id"] != updated["event_id"]
    # as the SDK reads it (its model wants a `client_secret`, which only a REST-created session has)
    parsed = construct_type_unchecked(value=updated, type_=beta_types.RealtimeServerEvent)  # type: ignore[arg-type]
    assert isinstance(parsed, beta_types.TranscriptionSessionUpdatedEvent)
    assert parsed.session.input_audio_format == "pcm16"
    assert parsed.session.input_audio_transcription is not None
    assert parsed.session.input_audio_transcription.language == "en"
    # GA says `session.*` (with a transcription session), and so does Azure, which has no other name
    for flavor in (rt.Flavor.GA, rt.Flavor.AZURE):
        assert rt.ServerEvents(flavor).session_updated({}, transcription=True)["type"] == "session.updated"
    assert ev.session_created(session)["type"] == "session.created"  # a conversation connection


def test_a_failed_transcription_counts_as_an_error_in_the_metrics() -> None:
    from moksori.engine import events as E
    from moksori.server.metrics import Metrics

    metrics = Metrics()
    listen = metrics.observe_session()
    listen(E.UserTranscriptionFailed(t=1.0, item_id="item_1", content_indexes=(1,), code="stt_unavailable",
                                     message="connection refused", retryable=True, text="Translate this:"))
    assert metrics.counters["errors"] == 1
