"""Prometheus-format metrics, computed from session timelines (the one source of truth)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from moksori.engine.events import Event

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

    def observe_session(self) -> Callable[[Event], None]:
        """A listener for one session's events."""
        stopped: dict[int, float] = {}
        turn_of: dict[str, int] = {}

        def listen(e: Event) -> None:
            t = e.type
            if t == "user.speech_stopped":
                stopped[e.data["turn_id"]] = e.t
            elif t == "user.turn_ended":
                self.counters["turns"] += 1
            elif t == "agent.response_started" and e.data.get("turn_id") is not None:
                turn_of[e.data["response_id"]] = e.data["turn_id"]
            elif t == "agent.audio_started":
                turn = turn_of.pop(e.data["response_id"], None)
                if turn in stopped:
                    self.latency.observe(max(0.0, e.t - stopped.pop(turn)))
            elif t == "agent.response_done":
                self.counters[f"responses_{e.data.get('status', 'completed')}"] += 1
                usage = e.data.get("usage") or {}
                for k in ("input_tokens", "output_tokens", "cached_tokens"):
                    self.tokens[k] += int(usage.get(k) or 0)
            elif t == "agent.interrupted":
                self.counters["interruptions"] += 1
                if e.data.get("reaction_ms") is not None:
                    self.barge_in.observe(e.data["reaction_ms"] / 1000)
            elif t == "error":
                self.counters["errors"] += 1

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
        lines += self.latency.render("moksori_response_latency_seconds",
                                     "End of user speech to first reply audio.")
        lines += self.barge_in.render("moksori_barge_in_reaction_seconds",
                                      "User speech onset to reply audio cleared.")
        return "\n".join(lines) + "\n"
