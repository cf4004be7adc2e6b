"""Usage and cost: the price table (TOML), per-turn and total arithmetic, the GA usage shape."""

from __future__ import annotations

from importlib import resources

import pytest
from openai.types.realtime import RealtimeResponseUsage
from pydantic import TypeAdapter

from moksori.accounting import ModelPrice, PriceTable, TurnUsage, format_cost, realtime_usage
from moksori.errors import ConfigError
from moksori.settings import load_settings, store_url


def example() -> PriceTable:
    return PriceTable.load(resources.files("moksori") / "data" / "prices.example.toml")


def test_local_models_cost_nothing_by_default() -> None:
    u = TurnUsage(llm_model="SmolLM2-135M-Instruct.Q4_1.gguf", input_tokens=5000, output_tokens=300,
                  stt_model="whisper-base", stt_seconds=60, tts_model="piper", tts_characters=400)
    c = PriceTable().cost(u)
    assert c.usd == 0 and set(c.unpriced) == {"SmolLM2-135M-Instruct.Q4_1.gguf", "whisper-base", "piper"}


def test_per_million_tokens_cached_tokens_and_per_minute() -> None:
    t = example()
    # gpt-realtime-1.5: text in 4, cached 0.40, out 16, audio in 32, cached 0.40, out 64 (per 1M)
    u = TurnUsage(llm_model="gpt-realtime-1.5", input_tokens=10_000, cached_tokens=4_000, output_tokens=1_000,
                  input_audio_tokens=2_000, cached_audio_tokens=500, output_audio_tokens=3_000)
    want = (6_000 * 4 + 4_000 * 0.40 + 1_000 * 16 + 1_500 * 32 + 500 * 0.40 + 3_000 * 64) / 1e6
    assert t.cost(u).usd == pytest.approx(want) and t.cost(u).unpriced == ()
    stt = TurnUsage(stt_model="whisper-1", stt_seconds=90)
    assert t.cost(stt).usd == pytest.approx(1.5 * 0.006)
    tts = TurnUsage(tts_model="tts-1", tts_characters=2_000)
    assert t.cost(tts).usd == pytest.approx(2_000 * 15 / 1e6)
    # a glob matches dated model names; the cached price defaults to the full price
    assert t.price_for("gpt-4o-mini-2024-07-18") == t.price_for("gpt-4o-mini*")
    plain = PriceTable({"m": ModelPrice(input_per_1m=2.0)})
    assert plain.cost(TurnUsage(llm_model="m", input_tokens=1_000_000, cached_tokens=500_000)).usd == pytest.approx(2.0)


def test_totals_add_up() -> None:
    a = TurnUsage(llm_model="a", input_tokens=10, cached_tokens=2, output_tokens=5, stt_seconds=1.5)
    b = TurnUsage(llm_model="b", input_tokens=20, output_tokens=7, tts_characters=30, tts_seconds=2.0)
    s = a + b
    assert (s.input_tokens, s.cached_tokens, s.output_tokens, s.total_tokens) == (30, 2, 12, 42)
    assert s.stt_seconds == 1.5 and s.tts_characters == 30 and s.llm_model == "b"
    assert TurnUsage.from_dict(s.to_dict()) == s


def test_bad_price_tables_are_one_line_errors(tmp_path) -> None:
    cases = {"not toml": "[models\n", "bad key": '[models.x]\nper_token = 1\n',
             "negative": '[models.x]\ninput_per_1m = -1\n', "not a table": 'models = 3\n'}
    for name, text in cases.items():
        p = tmp_path / f"{name}.toml"
        p.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as e:
            PriceTable.load(p)
        assert "\n" not in str(e.value), name
    with pytest.raises(ConfigError):
        PriceTable.load(tmp_path / "missing.toml")


def test_realtime_usage_is_the_ga_shape() -> None:
    u = TurnUsage(input_tokens=120, cached_tokens=100, output_tokens=30)
    wire = realtime_usage(u)
    parsed = TypeAdapter(RealtimeResponseUsage).validate_python(wire, strict=True)
    assert not parsed.model_extra and not parsed.input_token_details.model_extra
    assert wire["input_token_details"]["cached_tokens"] == 100 and wire["input_token_details"]["text_tokens"] == 120
    assert wire["input_token_details"]["audio_tokens"] == 0 and wire["total_tokens"] == 150
    assert wire["output_token_details"] == {"text_tokens": 30, "audio_tokens": 0}
    s2s = realtime_usage(TurnUsage(input_tokens=10, input_audio_tokens=50, output_audio_tokens=80))
    assert s2s["input_tokens"] == 60 and s2s["output_tokens"] == 80 and s2s["input_token_details"]["audio_tokens"] == 50


def test_format_cost() -> None:
    assert [format_cost(x) for x in (0, 0.0000421, 0.0312, 2.5)] == ["$0.00", "$0.000042", "$0.0312", "$2.50"]


def test_store_settings(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MOKSORI_DATA_DIR", str(tmp_path))
    assert store_url(load_settings()) == f"sqlite+aiosqlite:///{tmp_path / 'moksori.db'}"
    monkeypatch.setenv("MOKSORI_STORE_URL", "none")
    assert store_url(load_settings()) is None
    monkeypatch.setenv("MOKSORI_STORE_URL", "postgresql+asyncpg://u@db/x")
    monkeypatch.setenv("MOKSORI_STORE_RETENTION_DAYS", "30")
    monkeypatch.setenv("MOKSORI_AGENT_CONTEXT_TOKENS", "2048")
    monkeypatch.setenv("MOKSORI_AGENT_CONTEXT_STRATEGY", "summarize")
    monkeypatch.setenv("MOKSORI_PRICES_FILE", str(tmp_path / "p.toml"))
    s = load_settings()
    assert store_url(s) == "postgresql+asyncpg://u@db/x" and s.store.retention_days == 30
    assert s.agent.context_tokens == 2048 and s.agent.context_strategy == "summarize"
    assert s.prices_file == tmp_path / "p.toml" and s.agent.text_max_tokens == 800
    monkeypatch.setenv("MOKSORI_AGENT_CONTEXT_STRATEGY", "forget")
    with pytest.raises(ConfigError):
        load_settings()
