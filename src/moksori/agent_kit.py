"""What makes an agent act and behave, built once per server and handed to every session.

    kit = await AgentKit.build(settings)         # MCP servers listed, guardrails compiled
    session = open_session(stack, cfg, kit=kit)  # every entry point: browser, Realtime, phone, CLI
    ...
    await kit.close()                            # stdio MCP children end

* `tools`: the server-side tools (`[tools]`: built-ins, `[[tools.http]]`, `[[tools.mcp]]`),
  offered to the LLM in every session beside a transport's own (the phone's `end_call`);
* `guard`: the input and output guardrails (`[guardrails]`), or None when none is configured;
* `denoiser(mode)`: the packaged DeepFilterNet3 for `noise_reduction`, one per mode, or a
  warning saying why it is unavailable;
* `backchannel_on`: whether sessions say "mm-hmm" in mid-thought pauses
  (`MOKSORI_TURN_BACKCHANNEL`), and the filler / apology timing of slow or failing tools.

A session opened without a kit (tests, embedders) has none of this: the behaviour before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from moksori.engine.tools import Tool
from moksori.guardrails.guard import Guardrails, PIILogFilter
from moksori.tools.toolset import ServerTools

if TYPE_CHECKING:
    from moksori.providers.base import Denoiser
    from moksori.settings import Settings

log = logging.getLogger(__name__)

# tool names a transport adds itself (the phone's call control): server tools never take them
RESERVED_TOOL_NAMES = ("end_call", "transfer_call")


def packaged_llm(settings: Settings) -> bool:
    """The LLM is the packaged SmolLM2-135M (no other model or server configured)."""
    return settings.llm.provider == "llamacpp" and not settings.llm.model


class AgentKit:
    def __init__(self, *, tools: ServerTools | None = None, guard: Guardrails | None = None,
                 noise_model: str | None = None, noise_atten_db: float | None = None,
                 backchannel_on: bool = False, backchannel_after_ms: int = 700, backchannel_min_gap_s: float = 5.0,
                 tool_slow_after_s: float | None = 1.5,
                 warnings: Iterable[str] = ()) -> None:
        self.tools = tools
        self.guard = guard
        self.noise_model = noise_model
        self.noise_atten_db = noise_atten_db
        self.backchannel_on = backchannel_on
        self.backchannel_after_ms = backchannel_after_ms
        self.backchannel_min_gap_s = backchannel_min_gap_s
        self.tool_slow_after_s = tool_slow_after_s
        self.warnings = list(warnings)
        self._denoisers: dict[str, tuple[Denoiser | None, str | None]] = {}
        self._log_filter: PIILogFilter | None = None

    @classmethod
    async def build(cls, settings: Settings, *, start_tools: bool = True) -> AgentKit:
        """From settings; lists the MCP servers' tools (an unreachable one is a warning, not an
        error). Raises `ConfigError` for a configuration that cannot work."""
        ts = settings.tools
        if packaged_llm(settings) and "builtins" not in ts.model_fields_set:
            # the packaged SmolLM2-135M calls whatever tool it is offered, at random: no built-ins
            # unless asked for (tools a user configured are offered; the README says which models)
            ts = ts.model_copy(update={"builtins": []})
        tools = ServerTools.from_settings(ts, reserved=RESERVED_TOOL_NAMES)
        warnings = await tools.start() if start_tools else []
        if packaged_llm(settings) and tools.names():
            warnings.append("the packaged LLM (SmolLM2-135M) cannot pick tools reliably: point MOKSORI_LLM_MODEL "
                            "at a tool-calling model, or MOKSORI_LLM_PROVIDER=openai at a server")
        guard = Guardrails.from_settings(settings.guardrails)
        return cls(tools=tools, guard=guard, noise_model=settings.audio.noise_reduction_model,
                   noise_atten_db=settings.audio.noise_reduction_atten_db,
                   backchannel_on=settings.turn.backchannel == "on",
                   backchannel_after_ms=settings.turn.backchannel_after_ms,
                   backchannel_min_gap_s=settings.turn.backchannel_min_gap_s,
                   tool_slow_after_s=settings.tools.slow_after_s or None, warnings=warnings)

    # ------------------------------------------------------------------ what sessions take

    def engine_tools(self) -> list[Tool]:
        return self.tools.engine_tools() if self.tools is not None else []

    @property
    def active_guard(self) -> Guardrails | None:
        """The guardrails when any input or output check is configured (else None: no cost)."""
        return self.guard if self.guard is not None and self.guard.active else None

    def denoiser(self, mode: str) -> tuple[Denoiser | None, str | None]:
        """(denoiser, None) for `near_field` / `far_field`, (None, None) for off, or (None,
        warning) when the packaged model cannot be used here."""
        if mode in ("off", "", None):
            return None, None
        if mode not in self._denoisers:
            from moksori.providers.denoise_deepfilter import build_denoiser

            self._denoisers[mode] = build_denoiser(mode, self.noise_model,
                                                   self.noise_atten_db if self.noise_atten_db else None)
        return self._denoisers[mode]

    # ------------------------------------------------------------------ logs

    def store_redactor(self) -> Callable[[str], str] | None:
        """What masks PII (`guardrails.redact_pii`) in the records a live session writes to the
        store; None when no kind of PII is to be redacted."""
        if self.guard is None or not self.guard.redactor:
            return None
        return self.guard.redactor

    def install_log_filter(self, loggers: Iterable[str] = ("", "uvicorn", "uvicorn.error", "uvicorn.access")) -> None:
        """Mask PII (`guardrails.redact_pii`) in every record the handlers of these loggers
        write (the root's handlers see every propagated record)."""
        if self.guard is None or not self.guard.redactor:
            return
        self._log_filter = self._log_filter or PIILogFilter(self.guard.redactor)
        for name in loggers:
            for h in logging.getLogger(name).handlers:
                if self._log_filter not in h.filters:
                    h.addFilter(self._log_filter)

    def remove_log_filter(self) -> None:
        if self._log_filter is None:
            return
        for lg in [logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]:
            for h in getattr(lg, "handlers", []):
                if self._log_filter in h.filters:
                    h.removeFilter(self._log_filter)

    async def close(self) -> None:
        self.remove_log_filter()
        if self.tools is not None:
            await self.tools.close()
        if self.guard is not None:
            await self.guard.close()
