"""The timeline record of a guardrail trip. (Phase 2 moves it into the engine's typed event
catalogue; the `type` string `guardrail.tripped` is part of the spec and stays.)"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Stage = Literal["input", "output"]
Action = Literal["block", "rewrite"]


@dataclass(frozen=True, slots=True)
class GuardrailTripped:
    TYPE = "guardrail.tripped"

    stage: Stage
    action: Action
    policy: str  # "terms", "patterns", "mask", "pii", "moderation"
    reason: str  # what matched, for people; never the matched text itself
    language: str
    categories: tuple[str, ...] = ()  # moderation categories that were flagged

    def to_data(self) -> dict[str, Any]:
        d = asdict(self)
        d["categories"] = list(self.categories)
        return d
