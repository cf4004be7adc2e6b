"""From a Realtime session (what the client asked for) to an engine session config.

    server_vad                          -> silence-only end of turn (what OpenAI clients expect)
    semantic_vad, azure_semantic_vad*   -> the end-of-turn model + eagerness
    turn_detection: null                -> manual commit
    OpenAI voice names ("alloy"...)      -> our voice for the reply language
    Azure "en-US-*" / "ko-KR-*" names    -> the English / Korean voice (and that language)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from moksori.engine.config import SessionConfig as EngineConfig
from moksori.engine.turns import TurnConfig
from moksori.protocols import realtime as rt
from moksori.providers.base import ToolSpec
from moksori.settings import Settings

# the packaged voices, by language
LOCAL_VOICES = {"en": "en_US-joe-medium", "ko": "espeak-ko"}


def upstream_turns(settings: Settings) -> bool:
    """The realtime brain with the upstream's own VAD deciding turns."""
    return settings.brain == "realtime" and settings.realtime.turn_detection != "moksori"


def initial_session(settings: Settings) -> rt.SessionConfig:
    """What `session.created` reports: our defaults, in protocol terms."""
    t = settings.turn
    if upstream_turns(settings):  # the realtime brain's upstream VAD: its kind, silence and eagerness
        r = settings.realtime
        td = rt.TurnDetection(type="semantic_vad" if r.turn_detection == "semantic_vad" else "server_vad",
                              silence_duration_ms=r.silence_duration_ms,
                              eagerness=r.eagerness, prefix_padding_ms=t.prefix_padding_ms,
                              create_response=t.create_response, interrupt_response=t.interrupt_response)
        return rt.SessionConfig(instructions=settings.agent.instructions or "", turn_detection=td,
                                temperature=settings.llm.temperature, voice=r.voice or "alloy")
    td = rt.TurnDetection(
        type="semantic_vad" if t.provider == "smart-turn" else "server_vad",
        threshold=t.threshold, prefix_padding_ms=t.prefix_padding_ms, silence_duration_ms=t.silence_duration_ms,
        create_response=t.create_response, interrupt_response=t.interrupt_response, eagerness=t.eagerness,
        idle_timeout_ms=t.idle_timeout_ms if t.provider != "smart-turn" else None)
    nr = settings.audio.noise_reduction
    return rt.SessionConfig(instructions=settings.agent.instructions or "", turn_detection=td,
                            temperature=settings.llm.temperature,
                            noise_reduction=None if nr == "off" else {"type": nr})


def voice_and_language(cfg: rt.SessionConfig,
                       available: tuple[str, ...]) -> tuple[str | None, Literal["en", "ko"] | None]:
    """(local voice name or None for 'by language', pinned language or None)."""
    name = cfg.voice or ""
    if cfg.voice_config and isinstance(cfg.voice_config.get("name"), str):
        name = cfg.voice_config["name"]
    if name in available:
        return name, ("ko" if name == LOCAL_VOICES["ko"] else None)
    low = name.lower()
    if low.startswith("ko-kr") or low.startswith("ko_"):
        return None, "ko"
    if low.startswith("en-") or low.startswith("en_"):
        return None, "en"
    return None, None  # OpenAI voice names: our voice for whatever language the user speaks


def engine_config(cfg: rt.SessionConfig, base: EngineConfig, settings: Settings, *,
                  voices: tuple[str, ...], transcription_only: bool = False) -> EngineConfig:
    td = cfg.turn_detection
    if td is None:
        turn = replace(base.turn, mode="manual")
    else:
        semantic = td.type != "server_vad" and (settings.turn.provider == "smart-turn" or upstream_turns(settings))
        turn = TurnConfig(
            mode="semantic" if semantic else "silence", threshold=td.threshold,
            prefix_padding_ms=td.prefix_padding_ms, silence_duration_ms=td.silence_duration_ms,
            create_response=td.create_response and not transcription_only,
            interrupt_response=td.interrupt_response, eagerness=td.eagerness,
            interrupt_min_speech_ms=settings.turn.interrupt_min_speech_ms,
            speculate_after_ms=settings.turn.speculate_after_ms,
            eot_start=settings.turn.eot_start, eot_skip=settings.turn.eot_skip,
            # OpenAI: "idle timeout is currently only supported for server_vad mode"
            idle_timeout_ms=td.idle_timeout_ms if td.type == "server_vad" and not transcription_only else None)
    voice, voice_lang = voice_and_language(cfg, voices)
    lang = base.language
    pinned = rt.pinned_language(cfg.input_transcription.language) if cfg.input_transcription else None
    if pinned in ("en", "ko"):
        lang = "en" if pinned == "en" else "ko"
    elif voice_lang:
        lang = voice_lang
    nr = (cfg.noise_reduction or {}).get("type")
    return replace(
        base, noise_reduction=nr if nr in rt.SUPPORTED_NOISE_REDUCTION else "off",
        instructions=cfg.instructions or None, language=lang, voice=voice, modalities=modalities(cfg.output_modalities),
        output_rate=cfg.output_format.rate, turn=turn, tools=tool_specs(cfg.tools),
        tool_choice=tool_choice_name(cfg.tool_choice), temperature=cfg.temperature,
        max_output_tokens=max_tokens(cfg.max_output_tokens, settings), speed=cfg.speed or 1.0,
        stt_prompt=cfg.input_transcription.prompt if cfg.input_transcription else None)


# ---------------------------------------------------------------------------- one option at a time
# Shared by the session (`engine_config`) and by `response.create` overrides (`response_overrides`).


def modalities(output_modalities: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Realtime `output_modalities` -> the engine's: audio always comes with its transcript."""
    return ("audio", "text") if "audio" in output_modalities else ("text",)


def max_tokens(value: int | Literal["inf"], settings: Settings) -> int:
    return settings.llm.max_tokens if value == "inf" else int(value)


def tool_specs(tools: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> tuple[ToolSpec, ...]:
    """Realtime function tools -> engine tool specs (nameless ones are dropped)."""
    return tuple(ToolSpec(t.get("name", ""), t.get("description", "") or "",
                          t.get("parameters") or {"type": "object", "properties": {}})
                 for t in tools if t.get("name"))


def tool_choice_name(choice: str | dict[str, Any]) -> str:
    """`"auto"`/`"none"`/`"required"`, or the name of the one function the client forces."""
    if isinstance(choice, str):
        return choice
    return choice.get("name") or choice.get("function", {}).get("name") or "auto"


def response_overrides(o: rt.ResponseOverrides, settings: Settings, *, voices: tuple[str, ...]) -> dict[str, Any]:
    """`response.create` overrides -> keyword arguments of `Session.create_response` (everything
    but `input`, which needs the conversation). Unknown voices are ignored (the session's stays)."""
    kw: dict[str, Any] = {}
    if o.instructions is not None:
        kw["instructions"] = o.instructions
    if o.output_modalities is not None:
        kw["modalities"] = modalities(o.output_modalities)
    if o.voice is not None and o.voice in voices:
        kw["voice"] = o.voice
    if o.temperature is not None:
        kw["temperature"] = o.temperature
    if o.max_output_tokens is not None:
        kw["max_output_tokens"] = max_tokens(o.max_output_tokens, settings)
    if o.tools is not None:
        kw["tools"] = tool_specs(o.tools)
    if o.tool_choice is not None:
        kw["tool_choice"] = tool_choice_name(o.tool_choice)
    if o.conversation == "none":
        kw["in_conversation"] = False
    if o.fixed_text is not None:  # Azure's pre-generated assistant message: spoken as it is
        kw["fixed_text"] = o.fixed_text
        if o.fixed_item_id is not None:
            kw["item_id"] = o.fixed_item_id
    return kw
