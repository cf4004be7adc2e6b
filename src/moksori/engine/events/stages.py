"""Stage timings of a turn and its reply: STT, the end-of-turn model, the LLM, TTS."""

from __future__ import annotations

from .base import Event, _event


@_event
class SttStarted(Event):
    type = "stt.started"
    turn_id: int
    item_id: str
    audio_s: float


@_event
class SttFinished(Event):
    type = "stt.finished"
    turn_id: int
    item_id: str
    text: str
    language: str


@_event
class EotFinished(Event):
    """The end-of-turn model's verdict on a pause (semantic mode)."""

    type = "eot.finished"
    turn_id: int
    item_id: str
    probability: float
    text_cue: str


@_event
class LlmStarted(Event):
    type = "llm.started"
    response_id: str
    item_id: str
    messages: int


@_event
class LlmFirstToken(Event):
    type = "llm.first_token"
    response_id: str
    item_id: str


@_event
class LlmFinished(Event):
    type = "llm.finished"
    response_id: str
    item_id: str
    input_tokens: int
    output_tokens: int


@_event
class TtsStarted(Event):
    """The first clause went to TTS."""

    type = "tts.started"
    response_id: str
    item_id: str
    text: str


@_event
class TtsFirstAudio(Event):
    type = "tts.first_audio"
    response_id: str
    item_id: str
    samples: int
