"""The speech-to-speech upstream of the realtime brain (`realtime`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator


class RealtimeSettings(BaseModel):
    """The speech-to-speech upstream of `MOKSORI_BRAIN=realtime` (`moksori.brains.realtime`)."""

    # ws(s)://…/v1/realtime?model=… (OpenAI GA, or another Moksori), or an Azure Voice Live
    # endpoint (https://<resource>.services.ai.azure.com); http(s) is read as ws(s)
    url: str | None = None
    api_key: SecretStr | None = None
    # openai: GA events, `Authorization: Bearer`; azure: Voice Live, `api-key`, `api-version`;
    # auto: azure for /voice-live URLs and *.azure.com hosts outside /openai
    flavor: Literal["auto", "openai", "azure"] = "auto"
    model: str | None = None  # overrides the URL's ?model=
    api_version: str | None = None  # Azure Voice Live api-version (default 2025-10-01)
    voice: str | None = None  # unset: the upstream's default voice
    # who decides that the user finished: the upstream (server_vad | semantic_vad), or Moksori's
    # own turn-taking (Silero + smart-turn + transcript cue) committing turns upstream by hand
    turn_detection: Literal["server_vad", "semantic_vad", "moksori"] = "server_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"  # semantic_vad
    silence_duration_ms: int = Field(500, ge=0, le=10_000)  # server_vad
    transcription_model: str | None = None  # user transcripts; unset: gpt-4o-mini-transcribe / azure-speech
    connect_timeout_s: float = Field(10.0, gt=0, le=300)
    first_event_timeout_s: float = Field(10.0, gt=0, le=300)  # connected, but no session.created
    response_timeout_s: float = Field(15.0, gt=0, le=300)  # a reply asked for, but none started
    idle_timeout_s: float = Field(15.0, gt=0, le=300)  # mid-reply, nothing from the upstream
    keepalive_s: float = Field(15.0, ge=0, le=300)  # WebSocket pings; 0 = none
    max_reconnect_attempts: int = Field(8, ge=1, le=1000)
    # open a fresh session at a quiet moment after this long (before OpenAI's 60-minute limit);
    # 0 = only when the upstream ends it
    rotate_after_s: float = Field(0.0, ge=0)
    reseed_max_items: int = Field(40, ge=0, le=2000)  # conversation replayed to a new connection
    reseed_max_chars: int = Field(12_000, ge=0)
    resume: bool = True  # after a reconnect, answer the turn the drop interrupted

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.strip().lower().startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError("must be a ws://, wss://, http:// or https:// URL")
        return v.strip()
