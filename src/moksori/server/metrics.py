"""Prometheus-format metrics, computed from session timelines (the one source of truth)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from moksori.engine import events as E

# seconds; end of speech -> first reply audio, and barge-in reaction
_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = _BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.total += 1
        self.sum += v
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for b, c in zip(self.buckets, self.counts):
            lines.append(f'{name}_bucket{{le="{b}"}} {c}')
        lines += [f'{name}_bucket{{le="+Inf"}} {self.total}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.total}"]
        return lines


class Metrics:
    def __init__(self) -> None:
        self.sessions_total = 0
        self.auth_failures = 0
        self.counters: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self.latency = Histogram()
        self.barge_in = Histogram((0.1, 0.15, 0.2, 0.3, 0.5, 1.0))
        self.guardrail_trips: Counter[tuple[str, str, str]] = Counter()  # (stage, action, policy)
        self.tool_calls: Counter[tuple[str, str]] = Counter()  # (tool, outcome: ok or the error kind)

    def observe_session(self) -> Callable[[E.Event], None]:
        """A listener for one session's events."""
        stopped: dict[int, float] = {}
        turn_of: dict[str, int] = {}

        def listen(e: E.Event) -> None:
            match e:
                case E.UserSpeechStopped(turn_id=turn_id):
                    stopped[turn_id] = e.t
                case E.UserTurnEnded():
                    self.counters["turns"] += 1
                case E.AgentResponseStarted(turn_id=int(turn_id), response_id=rid):
                    turn_of[rid] = turn_id
                case E.AgentAudioStarted(response_id=rid):
                    turn = turn_of.pop(rid, None)
                    if turn in stopped:
                        self.latency.observe(max(0.0, e.t - stopped.pop(turn)))
                case E.AgentResponseDone(status=status, usage=usage):
                    self.counters[f"responses_{status}"] += 1
                    self.tokens["input_tokens"] += usage.input_tokens
                    self.tokens["output_tokens"] += usage.output_tokens
                    self.tokens["cached_tokens"] += usage.cached_tokens
                case E.AgentInterrupted(reaction_ms=reaction_ms):
                    self.counters["interruptions"] += 1
                    if reaction_ms is not None:
                        self.barge_in.observe(reaction_ms / 1000)
                case E.ErrorEvent() | E.UserTranscriptionFailed():
                    self.counters["errors"] += 1
                case E.GuardrailTripped(stage=stage, action=action, policy=policy):
                    self.guardrail_trips[(stage, action, policy)] += 1
                case E.AgentToolResult(name=name, ok=ok, error_kind=kind):
                    self.tool_calls[(name, "ok" if ok else (kind or "failed"))] += 1
                case E.AgentBackchannel():
                    self.counters["backchannels"] += 1

        return listen

    def render(self, *, sessions: int) -> str:
        lines = ["# HELP moksori_sessions Open sessions.", "# TYPE moksori_sessions gauge", f"moksori_sessions {sessions}",
                 "# TYPE moksori_sessions_total counter", f"moksori_sessions_total {self.sessions_total}",
                 "# TYPE moksori_auth_failures_total counter", f"moksori_auth_failures_total {self.auth_failures}"]
        for name, value in sorted(self.counters.items()):
            lines += [f"# TYPE moksori_{name}_total counter", f"moksori_{name}_total {value}"]
        lines.append("# TYPE moksori_llm_tokens_total counter")
        for kind in ("input_tokens", "output_tokens", "cached_tokens"):
            lines.append(f'moksori_llm_tokens_total{{kind="{kind}"}} {self.tokens[kind]}')
        lines += ["# HELP moksori_guardrail_trips_total Guardrail trips (guardrail.tripped events).",
                  "# TYPE moksori_guardrail_trips_total counter"]
        for (stage, action, policy), n in sorted(self.guardrail_trips.items()):
            lines.append(f'moksori_guardrail_trips_total{{stage="{stage}",action="{action}",policy="{policy}"}} {n}')
        lines += ["# HELP moksori_tool_calls_total Server-side tool calls by outcome.",
                  "# TYPE moksori_tool_calls_total counter"]
        for (tool, outcome), n in sorted(self.tool_calls.items()):
            lines.append(f'moksori_tool_calls_total{{tool="{_label(tool)}",outcome="{outcome}"}} {n}')
        lines += self.latency.render("moksori_response_latency_seconds",
                                     "End of user speech to first reply audio.")
        lines += self.barge_in.render("moksori_barge_in_reaction_seconds",
                                      "User speech onset to reply audio cleared.")
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value: backslashes, quotes and newlines escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
