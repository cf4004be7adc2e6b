"""Brains: what turns the user's audio into the agent's reply.

Two implementations of one face, `moksori.engine.session.Session`:

* `pipeline` (default): Moksori's own STT -> LLM -> TTS, with speculation (`moksori.engine`);
* `realtime`: a speech-to-speech upstream (OpenAI Realtime GA, Azure Voice Live, another
  Moksori) hears and speaks: `moksori.brains.realtime.RealtimeSession`, the same session with
  the reply part swapped, Moksori keeping the transports, the speaker, memory, interruptions,
  history and accounting.

Every entry point opens its session here, so `MOKSORI_BRAIN` picks the brain everywhere:

    session = open_session(stack, cfg, toolbox=toolbox, input_rate=8000)
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from moksori.engine.config import SessionConfig, config_from_settings
from moksori.engine.session import Session

if TYPE_CHECKING:
    from moksori.agent_kit import AgentKit
    from moksori.engine.clock import Clock
    from moksori.engine.tools import ToolBox
    from moksori.providers.registry import Stack
    from moksori.settings import Settings

__all__ = ["open_session", "brain_config", "attach_context"]


def brain_config(cfg: SessionConfig, settings: Settings) -> SessionConfig:
    """A session config as the brain needs it: with the realtime brain and the upstream's VAD,
    the turn settings are the upstream's (`MOKSORI_REALTIME_TURN_DETECTION`, its silence and
    eagerness), not the local turn-taker's."""
    r = settings.realtime
    if settings.brain != "realtime" or r.turn_detection == "moksori" or cfg.turn.mode == "manual":
        return cfg
    return cfg.with_(turn=replace(cfg.turn, mode="semantic" if r.turn_detection == "semantic_vad" else "silence",
                                  silence_duration_ms=r.silence_duration_ms, eagerness=r.eagerness))


def open_session(stack: Stack, cfg: SessionConfig | None = None, *, settings: Settings | None = None,
                 clock: Clock | None = None, session_id: str | None = None, toolbox: ToolBox | None = None,
                 input_rate: int | None = None, turns_from_settings: bool = True, kit: AgentKit | None = None) -> Session:
    """The session of the brain the settings pick (`MOKSORI_BRAIN`).

    `input_rate`: the caller's audio rate when known (telephony: 8000, so the realtime brain
    sends G.711 upstream as it came). `turns_from_settings=False` keeps `cfg.turn` as given (a
    Realtime client chose its turn detection). `kit`: the server's tools, guardrails, denoiser
    and backchannels (`moksori.agent_kit`); the realtime brain takes its tools, guardrails and
    slow-tool filler timing (the upstream hears and speaks: nothing local to denoise or
    acknowledge with).
    Raises `ConfigError` for an unusable upstream."""
    settings = settings or stack.settings
    cfg = cfg or config_from_settings(settings)
    if settings.brain != "realtime":
        session = Session(stack, cfg, clock=clock, session_id=session_id, toolbox=toolbox, kit=kit)
        attach_context(session, settings)
        return session
    from moksori.brains.realtime.session import RealtimeSession, Who
    from moksori.brains.realtime.settings import options_from_settings

    if kit is not None:
        from moksori.engine.tools import ToolBox

        toolbox = toolbox or ToolBox()
        for tool in kit.engine_tools():
            if toolbox.get(tool.spec.name) is None:
                toolbox.add(tool)
    options = options_from_settings(settings)
    if turns_from_settings:
        cfg = brain_config(cfg, settings)
    who: Who = "moksori" if settings.realtime.turn_detection == "moksori" else "upstream"
    session = RealtimeSession(stack, cfg, upstream=options, who=who, clock=clock, session_id=session_id,
                              toolbox=toolbox, input_rate=input_rate, guard=kit.guard if kit is not None else None,
                              tool_slow_after_s=kit.tool_slow_after_s if kit is not None else None)
    attach_context(session, settings)
    return session


def attach_context(session: Session, settings: Settings) -> None:
    """Context management for a live session: the LLM sees the system prompt and the newest
    whole turns (the user's earlier conversations first) within `agent.context_tokens`
    (default: the model's context minus the reply cap) and `agent.max_history_messages`;
    with `summarize`, the turns that leave the window are folded into a running summary after
    a reply, off the critical path, and the fold stops when the user speaks."""
    from moksori.engine import events as E
    from moksori.engine.context import ContextPolicy, ContextWindow, default_budget, token_counter

    llm = session.stack.llm
    cfg = session.cfg
    budget = default_budget(settings.agent.context_tokens, llm.caps.context_tokens, cfg.max_output_tokens)
    policy = ContextPolicy(budget_tokens=budget, strategy=settings.agent.context_strategy,
                           max_messages=cfg.max_history_messages)
    window = ContextWindow(policy, count=token_counter(llm), llm=llm)
    session.memory.window = window

    def listen(e: E.Event) -> None:
        match e:
            case E.UserSpeechStarted():
                window.cancel_background()
            case E.AgentResponseDone(status="completed", in_conversation=True):
                mem = session.memory
                window.after_reply([*mem.history, *mem.items])
            case E.SessionClosed():
                window.cancel_background()

    if policy.strategy == "summarize":
        session.bus.listen(listen)
