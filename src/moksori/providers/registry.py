"""Build the provider stack (VAD, end of turn, STT, LLM, TTS) from settings, once per process.

Sessions share one stack: models load once, and each model serialises its own use.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moksori.errors import ConfigError, ProviderError
from moksori.providers import cpu
from moksori.providers.base import LLM, STT, TTS, VAD, TurnDetector
from moksori.settings import Settings

Step = Callable[[str], None]
Progress = Callable[[str, int, int], None]
log = logging.getLogger(__name__)


def upstream(provider: STT | TTS) -> str:
    """A provider's name and, for a remote one, the URL it asks first (for start-up warnings)."""
    first = getattr(provider, "providers", (provider,))[0]  # a Resilient* chain: its primary
    url = getattr(first, "url", None)
    return f"{provider.name} at {url}" if url else provider.name


@dataclass
class Stack:
    vad: VAD
    stt: STT
    llm: LLM
    tts: TTS
    turn: TurnDetector | None = None
    settings: Settings = field(default_factory=Settings)
    # the engine sessions built on this stack (engine/session.py adds each); weak, so a session
    # dropped unclosed does not stay counted. A stack made from it by `dataclasses.replace` (the
    # telephony routes' phrase-cached one) shares it: the same models, counted together
    sessions: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet, repr=False, compare=False)

    def live_sessions(self) -> int:
        """Sessions on these models not yet closed (the LLM prefill's `alone` mode reads it)."""
        return sum(1 for s in list(self.sessions) if not s.closed)

    def describe(self) -> dict[str, str]:
        return {k: getattr(self, k).name for k in ("vad", "turn", "stt", "llm", "tts") if getattr(self, k)}

    async def warm(self, system_prompt: str | None = None) -> None:
        """Pay one-time costs (first inference allocations, prompt cache) before the first user."""
        import numpy as np

        from moksori.providers.base import STTOptions, one_chunk

        stream = self.vad.stream()
        stream(np.zeros(self.vad.caps.frame_samples, dtype=np.float32))
        if self.turn is not None:
            await self.turn.complete_probability(np.zeros(16000, dtype=np.float32))
        tone = (0.1 * np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000)).astype(np.float32)
        if not getattr(self.stt, "standin", False):  # the realtime brain's stand-ins have nothing to warm
            try:
                async for _ in self.stt.transcribe(one_chunk(tone), STTOptions(language="en")):
                    pass
            except ProviderError as e:  # a remote STT away at start: each turn's transcription fails until it is back
                log.warning("STT warm-up skipped (%s): %s", upstream(self.stt), e)
        warm = getattr(self.llm, "warm", None)
        if warm is not None and system_prompt:
            await warm(system_prompt)
        if not getattr(self.tts, "standin", False):
            await warm_tts(self.tts)

    async def close(self) -> None:
        for p in (self.vad, self.turn, self.stt, self.llm, self.tts):
            if p is not None:
                await p.close()


async def warm_tts(tts: TTS) -> None:
    """Speak a word in each of the TTS's languages (a language router: with each of its voices).

    A local voice (Piper, espeak-ng: its own `warm`) that cannot speak raises a ModelError naming
    it, which stops start-up as a model that cannot load does: otherwise the server would start
    and every reply fail. A remote TTS busy or away at start (a ProviderError) is logged and
    skipped: its callers get the error later, and it may be back by then."""
    from moksori.providers.base import TTSOptions

    async def speak(voice: TTS, text: str, opts: TTSOptions) -> None:
        async for _ in voice.synthesize(text, opts):
            pass

    voices: dict[str, TTS] = getattr(tts, "by_language", None) or dict.fromkeys(tts.caps.languages, tts)
    for lang, voice in voices.items():
        text, opts = ("Hi." if lang == "en" else "네."), TTSOptions(language=lang)
        try:
            await (voice.warm(text, opts) if hasattr(voice, "warm") else speak(voice, text, opts))
        except ProviderError as e:
            log.warning("TTS warm-up skipped (%s, %s): %s", upstream(voice), lang, e)


def build_stack(settings: Settings, *, step: Step | None = None, progress: Progress | None = None) -> Stack:
    """Load every provider the settings ask for. Raises ModelError/ConfigError with one line."""
    say = step or (lambda _: None)
    if settings.brain == "realtime":
        return build_realtime_stack(settings, say, progress)
    say("voice activity detection (Silero)")
    vad = build_vad(settings)
    turn = None
    if settings.turn.provider == "smart-turn":
        say("end-of-turn model (smart-turn v3.2)")
        turn = build_turn(settings)
    say(f"speech recognition ({settings.stt.provider})")
    stt = build_stt(settings, progress=progress)
    say(f"language model ({settings.llm.provider})")
    llm = build_llm(settings)
    say(f"speech synthesis ({settings.tts.provider})")
    tts = build_tts(settings)
    return Stack(vad=vad, stt=stt, llm=llm, tts=tts, turn=turn, settings=settings)


def build_realtime_stack(settings: Settings, say: Step, progress: Progress | None = None) -> Stack:
    """`MOKSORI_BRAIN=realtime`: the upstream hears and speaks. Silero always (barge-in, Moksori's
    turns); smart-turn and STT only for Moksori's own turn-taking; no local LLM or voice."""
    from moksori.brains.realtime.providers import UpstreamSTT, UpstreamTTS

    llm = build_llm(settings)  # validates MOKSORI_REALTIME_* first: a bad URL fails before any model loads
    say("voice activity detection (Silero)")
    vad = build_vad(settings)
    turn = None
    stt: STT = UpstreamSTT()
    if settings.realtime.turn_detection == "moksori":
        if settings.turn.provider == "smart-turn":
            say("end-of-turn model (smart-turn v3.2)")
            turn = build_turn(settings)
        say(f"speech recognition ({settings.stt.provider}), for the transcript cue")
        stt = build_stt(settings, progress=progress)
    return Stack(vad=vad, stt=stt, llm=llm, tts=UpstreamTTS(), turn=turn, settings=settings)


def build_vad(settings: Settings) -> VAD:
    from moksori.providers.vad_silero import SileroVAD

    return SileroVAD(settings.vad.model)


def build_turn(settings: Settings) -> TurnDetector:
    from moksori.providers.turn_smart import SmartTurn

    return SmartTurn(settings.turn.model)


def build_stt(settings: Settings, *, progress: Progress | None = None) -> STT:
    s = settings.stt
    if s.provider == "openai":
        from moksori.providers.resilience import ResilientSTT, RetryPolicy, Timeouts
        from moksori.providers.stt_remote import RemoteSTT

        if not s.base_url:
            raise ConfigError("MOKSORI_STT_BASE_URL is required with MOKSORI_STT_PROVIDER=openai")
        key = s.api_key.get_secret_value() if s.api_key else None
        stts = [RemoteSTT(base_url=u, model=s.remote_model, api_key=key, timeout_s=s.timeout_s)
                for u in [s.base_url, *s.fallback]]
        return ResilientSTT(stts, policy=RetryPolicy.from_settings(s), timeouts=Timeouts.for_stt(s))
    from moksori.providers.models import prepare_whisper
    from moksori.providers.stt_whisper import WhisperSTT

    model_dir = Path(s.model) if s.model else prepare_whisper(settings.data_dir, progress)
    threads = s.threads if isinstance(s.threads, int) else cpu.whisper_threads(cpu.detect())
    return WhisperSTT(model_dir, threads=threads, beam_size=s.beam_size, compute_type=s.compute_type,
                      abandon=s.partial_abandon)


def build_llm(settings: Settings) -> LLM:
    if settings.brain == "realtime":  # the speech-to-speech upstream, in text mode
        from moksori.brains.realtime.providers import RealtimeLLM
        from moksori.brains.realtime.settings import options_from_settings

        return RealtimeLLM(options_from_settings(settings))
    s = settings.llm
    from moksori.providers.resilience import ResilientLLM, RetryPolicy, Timeouts

    timeouts = Timeouts.from_settings(s)
    if s.provider == "openai":
        from moksori.providers.llm_openai import resilient_openai_llm

        if not s.base_url:
            raise ConfigError("MOKSORI_LLM_BASE_URL is required with MOKSORI_LLM_PROVIDER=openai",
                              hint="e.g. http://127.0.0.1:8080/v1 for a llama.cpp server")
        return resilient_openai_llm(s)
    from moksori.providers.llm_llamacpp import LlamaCppLLM
    from moksori.providers.llm_weights import weights_file
    from moksori.providers.models import path_of

    source = Path(s.model) if s.model else path_of("smollm2-135m")
    path = weights_file(source, s.weights, Path(settings.data_dir).expanduser() / "llm-weights")
    languages = ("en",) if not s.model else ("en", "ko")
    make: Callable[..., LLM] = LlamaCppLLM
    if (parallel := s.replies_at_once()) > 1:  # MOKSORI_LLM_PARALLEL: replies batched in one context
        from moksori.providers.llm_llamacpp_batched import BatchedLlamaCppLLM

        make = functools.partial(BatchedLlamaCppLLM, parallel=parallel)
    per_message = None if s.max_message_tokens == "auto" else s.max_message_tokens  # 0: no limit
    local = make(path, threads=s.threads, context_tokens=s.context_tokens, languages=languages,
                 max_message_tokens=per_message)
    return ResilientLLM([local], policy=RetryPolicy(max_attempts=1), timeouts=timeouts)


def build_tts(settings: Settings) -> TTS:
    s = settings.tts
    if s.provider == "openai":
        from moksori.providers.resilience import ResilientTTS, RetryPolicy, Timeouts
        from moksori.providers.tts_remote import RemoteTTS

        if not s.base_url:
            raise ConfigError("MOKSORI_TTS_BASE_URL is required with MOKSORI_TTS_PROVIDER=openai")
        key = s.api_key.get_secret_value() if s.api_key else None
        ttss = [RemoteTTS(base_url=u, model=s.remote_model, api_key=key, timeout_s=s.timeout_s)
                for u in [s.base_url, *s.fallback]]
        return ResilientTTS(ttss, policy=RetryPolicy.from_settings(s), timeouts=Timeouts.for_tts(s))
    from moksori.providers.tts_espeak import EspeakTTS
    from moksori.providers.tts_piper import PiperTTS
    from moksori.providers.tts_router import LanguageRouterTTS

    en = PiperTTS(s.voice_en, threads=s.threads, language="en", stream=s.piper_stream)
    ko: TTS = (PiperTTS(s.voice_ko, threads=s.threads, language="ko", stream=s.piper_stream) if s.voice_ko
               else EspeakTTS(voice="ko"))
    return LanguageRouterTTS({"en": en, "ko": ko}, default_language="en")
