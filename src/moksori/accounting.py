"""Usage and cost: what a turn used (LLM tokens, STT audio, TTS text and audio) and what it cost.

Pure data and arithmetic, no I/O besides reading the price table once. Prices are user data
(a TOML file, `MOKSORI_PRICES_FILE`), keyed by model name, in US dollars:

    [models."gpt-4o-mini"]          # per 1M tokens
    input_per_1m = 0.15
    cached_input_per_1m = 0.075
    output_per_1m = 0.60

    [models."whisper-1"]            # per minute of audio
    per_minute = 0.006

A model that is not in the table costs 0: local models are free by default. See
`moksori/data/prices.example.toml` for a documented table of hosted models.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from moksori.errors import ConfigError

__all__ = ["TurnUsage", "ModelPrice", "PriceTable", "Cost", "realtime_usage", "format_cost"]


@dataclass(frozen=True, slots=True)
class TurnUsage:
    """What one turn (or a sum of turns) used. Token counts are LLM tokens.

    `input_tokens` counts every text token the LLM read, `cached_tokens` the part of those served
    from a prompt cache (so `cached_tokens <= input_tokens`). Audio tokens are only reported by
    speech-to-speech models; the STT → LLM → TTS pipeline reports audio as seconds instead.
    """

    llm_model: str | None = None
    stt_model: str | None = None
    tts_model: str | None = None
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    input_audio_tokens: int = 0
    cached_audio_tokens: int = 0
    output_audio_tokens: int = 0
    stt_seconds: float = 0.0
    tts_characters: int = 0
    tts_seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.input_audio_tokens + self.output_audio_tokens

    def __add__(self, other: TurnUsage) -> TurnUsage:
        if not isinstance(other, TurnUsage):
            return NotImplemented
        out: dict[str, Any] = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name.endswith("_model"):
                out[f.name] = b if b is not None else a  # the most recent model used
            else:
                out[f.name] = a + b
        return TurnUsage(**out)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TurnUsage:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_PRICE_KEYS = ("input_per_1m", "cached_input_per_1m", "output_per_1m", "audio_input_per_1m",
               "audio_cached_input_per_1m", "audio_output_per_1m", "per_minute", "per_1m_characters")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """US dollars. Tokens per 1M; `per_minute` prices audio (STT input or TTS output),
    `per_1m_characters` prices TTS input text. A cached price left unset is the full price."""

    input_per_1m: float = 0.0
    cached_input_per_1m: float | None = None
    output_per_1m: float = 0.0
    audio_input_per_1m: float = 0.0
    audio_cached_input_per_1m: float | None = None
    audio_output_per_1m: float = 0.0
    per_minute: float = 0.0
    per_1m_characters: float = 0.0


@dataclass(frozen=True, slots=True)
class Cost:
    usd: float
    unpriced: tuple[str, ...] = ()  # models used that the table has no price for


class PriceTable:
    """Model name → price. Keys may be globs (`"gpt-4o-mini*"`); an exact name wins."""

    def __init__(self, prices: dict[str, ModelPrice] | None = None) -> None:
        self.prices = dict(prices or {})

    @classmethod
    def load(cls, path: str | Path | None) -> PriceTable:
        """The table in `path`; None: an empty table (every model costs 0)."""
        if path is None:
            return cls()
        p = Path(path).expanduser()
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read the price table {p}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"the price table {p} is not valid TOML: {e}") from None
        return cls.from_mapping(data, source=str(p))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "price table") -> PriceTable:
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise ConfigError(f"{source}: [models] must be a table of model names")
        prices: dict[str, ModelPrice] = {}
        for name, entry in models.items():
            if not isinstance(entry, dict):
                raise ConfigError(f"{source}: models.{name} must be a table of prices")
            unknown = sorted(set(entry) - set(_PRICE_KEYS))
            if unknown:
                raise ConfigError(f"{source}: models.{name} has unknown price {unknown[0]!r}",
                                  hint="use " + ", ".join(_PRICE_KEYS))
            for k, v in entry.items():
                if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                    raise ConfigError(f"{source}: models.{name}.{k} must be a number ≥ 0")
            prices[str(name)] = ModelPrice(**{k: float(v) for k, v in entry.items()})
        return cls(prices)

    def price_for(self, model: str | None) -> ModelPrice | None:
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        lowered = model.lower()
        for name, price in self.prices.items():
            if name.lower() == lowered:
                return price
        globs = [n for n in self.prices if any(c in n for c in "*?[")]
        for name in sorted(globs, key=len, reverse=True):  # the most specific pattern first
            if fnmatch.fnmatchcase(lowered, name.lower()):
                return self.prices[name]
        return None

    def cost(self, u: TurnUsage) -> Cost:
        usd = 0.0
        unpriced: list[str] = []

        def price(model: str | None, used: bool) -> ModelPrice | None:
            p = self.price_for(model)
            if p is None and used and model and model not in unpriced:
                unpriced.append(model)
            return p

        llm = price(u.llm_model, u.total_tokens > 0)
        if llm is not None:
            cached_in = llm.input_per_1m if llm.cached_input_per_1m is None else llm.cached_input_per_1m
            cached_audio = (llm.audio_input_per_1m if llm.audio_cached_input_per_1m is None
                            else llm.audio_cached_input_per_1m)
            usd += (max(0, u.input_tokens - u.cached_tokens) * llm.input_per_1m + u.cached_tokens * cached_in
                    + u.output_tokens * llm.output_per_1m
                    + max(0, u.input_audio_tokens - u.cached_audio_tokens) * llm.audio_input_per_1m
                    + u.cached_audio_tokens * cached_audio + u.output_audio_tokens * llm.audio_output_per_1m) / 1e6
        stt = price(u.stt_model, u.stt_seconds > 0)
        if stt is not None:
            usd += u.stt_seconds / 60.0 * stt.per_minute
        tts = price(u.tts_model, u.tts_characters > 0 or u.tts_seconds > 0)
        if tts is not None:
            usd += u.tts_characters / 1e6 * tts.per_1m_characters + u.tts_seconds / 60.0 * tts.per_minute
        return Cost(usd=usd, unpriced=tuple(unpriced))

    def with_price(self, model: str, price: ModelPrice) -> PriceTable:
        return PriceTable({**self.prices, model: price})


def realtime_usage(u: TurnUsage) -> dict[str, Any]:
    """`response.done.response.usage` in the GA shape. `cached_tokens` is part of
    `input_tokens`, as OpenAI counts it; the pipeline's LLM tokens are text tokens."""
    input_tokens = u.input_tokens + u.input_audio_tokens
    output_tokens = u.output_tokens + u.output_audio_tokens
    return {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": {
            "text_tokens": u.input_tokens,
            "audio_tokens": u.input_audio_tokens,
            "image_tokens": 0,
            "cached_tokens": u.cached_tokens + u.cached_audio_tokens,
            "cached_tokens_details": {"text_tokens": u.cached_tokens, "audio_tokens": u.cached_audio_tokens,
                                      "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": u.output_tokens, "audio_tokens": u.output_audio_tokens},
    }


def format_cost(usd: float) -> str:
    """`$0.00` for nothing, otherwise enough digits to see a fraction of a cent."""
    if usd <= 0:
        return "$0.00"
    if usd >= 1:
        return f"${usd:,.2f}"
    if usd >= 0.01:
        return f"${usd:.4f}"
    return f"${usd:.6f}"

