"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations


def pct(xs: list[float], p: float) -> float:
    """The p-quantile (0..1) with linear interpolation; NaN for no data."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def cold_llm(llm: object, system: str) -> None:
    """The LLM's KV cache set back to the system prompt alone, as after start-up: the batched
    provider's other slots forget what they hold too (else a fresh session of an utterance
    played before finds its whole prompt cached there)."""
    for provider in getattr(llm, "providers", None) or [llm]:  # inside the stack's ResilientLLM
        forget = getattr(provider, "forget_cached_prompts", None)
        if forget is not None:
            forget()
    await llm.warm(system)  # type: ignore[attr-defined]
