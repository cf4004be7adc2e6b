"""Per-session options: what a transport (or a Realtime `session.update`) may change."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from moksori.engine.partial_readers import PartialsMode
from moksori.engine.turns import TurnConfig
from moksori.providers.base import ToolSpec
from moksori.settings import Settings


@dataclass(frozen=True)
class SessionConfig:
    instructions: str | None = None
    language: Literal["auto", "en", "ko"] = "auto"
    languages: tuple[str, ...] = ("en", "ko")
    voice: str | None = None
    speed: float = 1.0
    modalities: tuple[str, ...] = ("audio", "text")
    output_rate: int = 24000
    output_chunk_ms: int = 40
    output_lead_ms: int = 200
    turn: TurnConfig = field(default_factory=TurnConfig)
    transcribe_input: bool = True
    # the client's transcription prompt (Realtime `transcription.prompt`): Whisper's "previous text"
    # for every decode of the user's audio (names, spellings, style)
    stt_prompt: str | None = None
    partial_interval_ms: int = 1200
    partial_yield: bool = True  # a live partial's decode gives way to a final one (engine/partials.py)
    # live partials: auto = only while someone reads them (engine/partial_readers.py); the
    # engine's default is on (a program that builds a Session reads its bus), the setting's auto
    partials: PartialsMode = "on"
    stt_incremental: bool = False  # decode the turn in pieces as it is heard (engine/incremental_stt.py)
    # the LLM reads the user's words while they speak (engine/prefill.py; README); "alone": only
    # while the stack serves no other live session. The setting's auto is resolved to one of these
    llm_prefill: bool | Literal["alone"] = False
    llm_prefill_history: bool = False  # ... and the history and template header before them, as they start
    tools: tuple[ToolSpec, ...] = ()  # client tools (the client runs them)
    tool_choice: str = "auto"
    temperature: float = 0.5
    max_output_tokens: int = 160
    # the reply's first clause is cut at this many characters (the listener waits for it: shorter
    # is sooner, too short is choppy; text/chunker.py, docs/LATENCY.md)
    first_clause_max_chars: int = 50
    first_clause_ramp: bool = False  # the clauses after it: caps doubling from that one (ClauseChunker ramp)
    first_clause_pause: str = "max_ahead"  # "now": the LLM pauses for the first clause's TTS before its next token
    max_history_messages: int = 24  # chat messages of memory sent to the LLM
    noise_reduction: str = "off"  # off | near_field | far_field (needs the session's AgentKit)
    backchannel: bool = False  # "mm-hmm" in mid-thought pauses (needs the session's AgentKit)

    def with_(self, **changes: Any) -> SessionConfig:
        return replace(self, **changes)


def prefill_mode(setting: bool | Literal["auto", "alone"], int8_dot: bool | None = None) -> bool | Literal["alone"]:
    """`llm.prefill` as a session runs it: auto is "alone" on a CPU without an int8 dot-product
    instruction (there a single caller's first audio came 33-37 ms sooner, paired, on two AVX2-only
    machines), else off (with one, the A/B runs disagreed at p50). docs/LATENCY.md."""
    if setting != "auto":
        return setting
    if int8_dot is None:
        int8_dot = _cpu_int8_dot()
    return False if int8_dot else "alone"


@functools.cache
def _cpu_int8_dot() -> bool:
    from moksori.providers.cpu import detect

    return detect().has_int8_dot


def config_from_settings(s: Settings, **overrides: Any) -> SessionConfig:
    t = s.turn
    turn = TurnConfig(
        mode="semantic" if t.provider == "smart-turn" else "silence",
        threshold=t.threshold, prefix_padding_ms=t.prefix_padding_ms,
        silence_duration_ms=t.silence_duration_ms, create_response=t.create_response,
        interrupt_response=t.interrupt_response, eagerness=t.eagerness,
        interrupt_min_speech_ms=t.interrupt_min_speech_ms, speculate_after_ms=t.speculate_after_ms,
        eot_start=t.eot_start, eot_skip=t.eot_skip,
        idle_timeout_ms=t.idle_timeout_ms, voice_end_prob=t.voice_end_prob, confident_eot=t.confident_eot,
        confident_silence_ms=t.confident_silence_ms,
    )
    cfg = SessionConfig(
        instructions=s.agent.instructions, language=s.language, turn=turn, speed=s.tts.speed,
        partial_interval_ms=s.stt.partial_interval_ms, partial_yield=s.stt.partial_yield,
        partials=s.stt.partials,
        stt_incremental=s.stt.incremental, llm_prefill=prefill_mode(s.llm.prefill),
        llm_prefill_history=s.llm.prefill_history,
        temperature=s.llm.temperature,
        max_output_tokens=s.llm.max_tokens, max_history_messages=s.agent.max_history_messages,
        noise_reduction=s.audio.noise_reduction, backchannel=s.turn.backchannel == "on",
        first_clause_max_chars=s.tts.first_clause_max_chars, first_clause_ramp=s.tts.first_clause_ramp,
        first_clause_pause=s.tts.first_clause_pause,
    )
    return replace(cfg, **overrides) if overrides else cfg
