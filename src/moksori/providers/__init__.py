"""Providers: the contracts (`base`), the registry that builds a stack from settings, the
resilience wrappers, and the embedded and remote models.

The contracts and the errors a provider raises are re-exported here; the implementations stay in
their modules (`moksori.providers.stt_whisper`, `...llm_openai`, ...) so importing the contracts
loads no model runtime.
"""

from moksori.errors import ProviderError, ProviderTimeout
from moksori.providers.base import (
    LLM,
    STT,
    TTS,
    VAD,
    ChatDone,
    ChatEvent,
    ChatRequest,
    Denoiser,
    DenoiserCaps,
    DenoiseStream,
    LLMCaps,
    Message,
    Provider,
    Role,
    STTCaps,
    STTOptions,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    ToolSpec,
    Transcript,
    TTSCaps,
    TTSOptions,
    TurnCaps,
    TurnDetector,
    Usage,
    VADCaps,
    VADStream,
)

__all__ = [
    "Provider", "ProviderError", "ProviderTimeout",
    "VAD", "VADCaps", "VADStream",
    "TurnDetector", "TurnCaps",
    "STT", "STTCaps", "STTOptions", "Transcript",
    "LLM", "LLMCaps", "Role", "Message", "ToolCall", "ToolSpec", "ChatRequest",
    "ChatEvent", "TextDelta", "ToolCallEvent", "Usage", "ChatDone",
    "TTS", "TTSCaps", "TTSOptions",
    "Denoiser", "DenoiserCaps", "DenoiseStream",
]
