"""Settings: environment over TOML over defaults, grouped names, one-line errors."""

from __future__ import annotations

import pytest

from moksori.errors import ConfigError
from moksori.settings import load_settings


def test_environment_names_reach_the_groups(monkeypatch) -> None:
    monkeypatch.setenv("MOKSORI_LLM_MODEL", "/models/big.gguf")
    monkeypatch.setenv("MOKSORI_TURN_SILENCE_DURATION_MS", "650")
    monkeypatch.setenv("MOKSORI_TWILIO_AUTH_TOKEN", "tok")
    monkeypatch.setenv("MOKSORI_API_KEYS", "k1, k2")
    monkeypatch.setenv("MOKSORI_PUBLIC_URL", "https://voice.example.com")
    s = load_settings()
    assert s.llm.model == "/models/big.gguf"
    assert s.turn.silence_duration_ms == 650
    assert s.twilio.auth_token.get_secret_value() == "tok"
    assert s.api_keys == ["k1", "k2"]
    assert s.public_url == "https://voice.example.com"


def test_toml_file_and_environment_precedence(tmp_path, monkeypatch) -> None:
    cfg = tmp_path / "moksori.toml"
    cfg.write_text('language = "ko"\n[llm]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                   '[turn]\neagerness = "low"\n', encoding="utf-8")
    monkeypatch.setenv("MOKSORI_CONFIG", str(cfg))
    monkeypatch.setenv("MOKSORI_TURN_EAGERNESS", "high")  # the environment wins over the file
    s = load_settings()
    assert s.language == "ko" and s.llm.provider == "openai" and s.llm.base_url == "http://127.0.0.1:9/v1"
    assert s.turn.eagerness == "high"


def test_bad_values_are_one_line_errors(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MOKSORI_TURN_THRESHOLD", "1.7")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "turn.threshold" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delenv("MOKSORI_TURN_THRESHOLD")
    monkeypatch.setenv("MOKSORI_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="not a file"):
        load_settings()


def test_a_value_that_fits_no_type_of_a_union_names_the_setting(monkeypatch) -> None:
    """`stt.threads` is a number or "auto": a wrong value was reported under pydantic's type tag
    (`invalid setting stt.threads.constrained-int`), with only the first type's message."""
    monkeypatch.setenv("MOKSORI_STT_THREADS", "many")
    with pytest.raises(ConfigError) as e:
        load_settings()
    said = str(e.value)
    assert said.startswith("invalid setting stt.threads: ") and "constrained" not in said, said
    assert "valid integer" in said and "'auto'" in said, said
    monkeypatch.setenv("MOKSORI_STT_THREADS", "auto")
    monkeypatch.setenv("MOKSORI_SERVER_PORT", "eighty")
    with pytest.raises(ConfigError, match=r"^invalid setting server.port: Input should be a valid integer"):
        load_settings()


def test_api_keys_file(tmp_path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# comment\nalpha\n\n beta \n", encoding="utf-8")
    s = load_settings(api_keys=["gamma"], api_keys_file=keys)
    assert s.all_api_keys() == ["gamma", "alpha", "beta"]
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(api_keys_file=tmp_path / "nope.txt").all_api_keys()


def test_fallback_urls_take_a_plain_url_a_comma_list_or_json(monkeypatch) -> None:
    monkeypatch.setenv("MOKSORI_LLM_FALLBACK", "http://x")  # crashed with an internal SettingsError
    monkeypatch.setenv("MOKSORI_STT_FALLBACK", "http://a:1/v1, http://b:2/v1")
    monkeypatch.setenv("MOKSORI_TTS_FALLBACK", '["http://c:3/v1"]')
    s = load_settings()
    assert s.llm.fallback == ["http://x"]
    assert s.stt.fallback == ["http://a:1/v1", "http://b:2/v1"]
    assert s.tts.fallback == ["http://c:3/v1"]


def test_unparseable_environment_and_config_file_are_one_line_errors(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MOKSORI_LLM", "{not json")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "MOKSORI_LLM" in str(e.value) and "\n" not in str(e.value) and "MOKSORI_LLM_BASE_URL" in str(e.value)
    monkeypatch.delenv("MOKSORI_LLM")
    bad = tmp_path / "bad.toml"
    bad.write_text('[llm\nprovider = "openai"\n', encoding="utf-8")
    monkeypatch.setenv("MOKSORI_CONFIG", str(bad))
    with pytest.raises(ConfigError, match="bad.toml"):
        load_settings()


def test_the_cli_reports_an_unparseable_variable_in_one_line(tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "MOKSORI_LLM": "{oops", "MOKSORI_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "moksori", "models", "list"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error: cannot read MOKSORI_LLM")


def test_every_settings_group_is_importable_from_the_package() -> None:
    """The groups live in one module per concern (`moksori/settings/*.py`); `moksori.settings` is
    the one place callers import them from, so a group added to a module must be re-exported."""
    import importlib
    import pkgutil

    from pydantic import BaseModel

    import moksori.settings as S

    defined = set()
    for mod in pkgutil.iter_modules(S.__path__, "moksori.settings."):
        module = importlib.import_module(mod.name)
        defined |= {name for name, obj in vars(module).items()
                    if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == mod.name}
    assert "Settings" in defined and "ClusterSettings" in defined
    assert defined <= set(S.__all__), defined - set(S.__all__)
    assert [name for name in S.__all__ if not hasattr(S, name)] == []
