"""What the parts of one session share: clock, timeline, memory, providers, speaker, config.

The parts (`Response`, `PartialTranscripts`, `Speculations`, `Interruptions`, `Responses`) get
this object, or a narrower `Protocol` of it (`ResponseHost`, `PartialsHost`), never the
`Session`: none of them can reach into another's state, and nothing imports `session.py`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from moksori.engine import events as E
from moksori.engine.bus import EventBus
from moksori.engine.clock import Clock
from moksori.engine.config import SessionConfig
from moksori.engine.memory import Memory
from moksori.engine.prompts import system_prompt
from moksori.engine.speaker import Playback, Speaker
from moksori.engine.tools import ToolBox
from moksori.errors import MoksoriError
from moksori.providers.base import LLM, STT, TTS
from moksori.providers.registry import Stack

if TYPE_CHECKING:
    from moksori.agent_kit import AgentKit
    from moksori.guardrails.guard import Guardrails

log = logging.getLogger("moksori.session")


class SessionContext:
    def __init__(self, stack: Stack, cfg: SessionConfig, clock: Clock, session_id: str, toolbox: ToolBox,
                 kit: AgentKit | None = None) -> None:
        self.id = session_id
        self.kit = kit
        # guardrails without the rest of a kit (the realtime brain: the upstream hears and speaks);
        # kept even with no check configured: their PII redactor masks what is stored
        self.guardrails: Guardrails | None = None
        # the kit's slow-tool threshold without the rest of a kit (the realtime brain runs tools too)
        self.slow_tool_after_s: float | None = None
        self.stack = stack
        self.cfg = cfg
        self.clock = clock
        self.toolbox = toolbox
        self.bus = EventBus()
        self.memory = Memory(max_messages=cfg.max_history_messages)
        self.closed = False
        self.last_language: str = cfg.language if cfg.language != "auto" else "en"  # of the last words heard
        self.speaker: Speaker  # set by the session right after (the speaker publishes through us)
        self.on_change: Callable[[], None] = lambda: None  # the session re-derives its state
        self._tasks: set[asyncio.Task[Any]] = set()

    # -------------------------------------------------------------- timeline

    def publish(self, ev: E.Event) -> None:
        if self.closed and not isinstance(ev, E.SessionClosed):
            return
        self.bus.publish(ev)

    def publish_error(self, err: BaseException, *, turn_id: int | None = None,
                      response_id: str | None = None) -> None:
        code = getattr(err, "code", "server_error")
        msg = str(err) if isinstance(err, MoksoriError) else f"internal error: {type(err).__name__}"
        if not isinstance(err, MoksoriError):
            log.exception("session %s: unexpected error", self.id, exc_info=err)
        self.publish(E.ErrorEvent(t=self.clock.now(), code=code, message=msg,
                                  retryable=getattr(err, "retryable", False), turn_id=turn_id,
                                  response_id=response_id))

    # -------------------------------------------------------------- tasks

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, *,
              context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def running_tasks(self) -> list[asyncio.Task[Any]]:
        return [t for t in self._tasks if not t.done()]

    # -------------------------------------------------------------- what replies need (ResponseHost)

    @property
    def llm(self) -> LLM:
        return self.stack.llm

    @property
    def tts(self) -> TTS:
        return self.stack.tts

    @property
    def stt(self) -> STT:
        return self.stack.stt

    @property
    def guard(self) -> Guardrails | None:
        """The input and output guardrails, when the server configured any."""
        if self.kit is not None:
            return self.kit.active_guard
        return self.guardrails if self.guardrails is not None and self.guardrails.active else None

    @property
    def tool_slow_after_s(self) -> float | None:
        """Say a filler when a server tool takes longer than this (None: never)."""
        return self.kit.tool_slow_after_s if self.kit is not None else self.slow_tool_after_s

    @property
    def output_rate(self) -> int:
        return self.cfg.output_rate

    @property
    def voice(self) -> str | None:
        return self.cfg.voice

    @property
    def speed(self) -> float:
        return self.cfg.speed

    def system_prompt(self, instructions: str | None = None) -> str:
        return system_prompt(instructions if instructions is not None else self.cfg.instructions,
                             self.stack.llm.caps.languages)

    def play(self, pb: Playback) -> None:
        self.speaker.enqueue(pb)

    def playout_end(self) -> float:
        return self.speaker.playout_end

    def stt_language(self) -> str | None:
        """The language STT is pinned to, or None to detect it."""
        return None if self.cfg.language == "auto" else self.cfg.language
