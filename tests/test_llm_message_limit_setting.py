"""`MOKSORI_LLM_MAX_MESSAGE_TOKENS`: the embedded model's per-message limit, from settings.

The embedded llama.cpp model is sent one user or tool message with at most `max_message_tokens`
(its start and its end: `engine/context.cut_middle`; tests/test_llm_long_prompt.py). That limit
was a constructor argument only (512 tokens, at most a quarter of the context): a deployment with
a bigger model and more cores could not raise it, nor turn it off. Now `llm.max_message_tokens`
sets it: `auto` (the default, as before), a number (64 up to less than `llm.context_tokens`), or
0 for no per-message limit; anything else is a one-line `ConfigError` naming the setting.
"""

from __future__ import annotations

import asyncio

import pytest

from moksori.engine.context import ContextPolicy, ContextWindow, message_limit
from moksori.engine.memory import Item
from moksori.errors import ConfigError
from moksori.providers.base import ChatRequest, Message
from moksori.settings import load_settings
from test_llm_long_prompt import QUESTION, SYSTEM, TYPED

VAR = "MOKSORI_LLM_MAX_MESSAGE_TOKENS"


def test_the_setting_is_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MOKSORI_CONFIG", "")
    assert load_settings().llm.max_message_tokens == "auto"
    for value, expected in (("300", 300), ("0", 0), ("auto", "auto"), ("4095", 4095)):
        monkeypatch.setenv(VAR, value)
        assert load_settings().llm.max_message_tokens == expected, value


@pytest.mark.parametrize(("value", "context", "said"), [
    ("10", None, "10 is too few to keep a message's start and end: use at least 64, or 0 for no per-message limit"),
    ("63", None, "use at least 64"),
    ("4096", None, "4096 does not fit the 4096-token context window (llm.context_tokens)"),
    ("1500", "1024", "1500 does not fit the 1024-token context window"),
    ("-1", None, "greater than or equal to 0"),
    ("lots", None, "valid integer, unable to parse string as an integer; or Input should be 'auto'"),
])
def test_a_bad_value_is_a_one_line_error_naming_the_setting(monkeypatch, value, context, said) -> None:
    monkeypatch.setenv("MOKSORI_CONFIG", "")
    monkeypatch.setenv(VAR, value)
    if context is not None:
        monkeypatch.setenv("MOKSORI_LLM_CONTEXT_TOKENS", context)
    with pytest.raises(ConfigError) as e:
        load_settings()
    text = str(e.value)
    assert text.startswith("invalid setting llm.max_message_tokens: ") and "\n" not in text, text
    assert said in text, text


# --------------------------------------------------------------------------- the real packaged model


def built(monkeypatch, tmp_path, value: str | None):
    """The LLM `moksori serve` builds (`build_llm`) with the setting at `value` (None: unset)."""
    from moksori.providers.registry import build_llm

    monkeypatch.setenv("MOKSORI_CONFIG", "")
    monkeypatch.setenv("MOKSORI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MOKSORI_LLM_CONTEXT_TOKENS", "2048")
    if value is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, value)
    return build_llm(load_settings())


def prompt_tokens(llm) -> int:
    """Prompt tokens the embedded model is sent for SYSTEM and the 100 KB message TYPED."""
    llama = llm.providers[0]
    tokens, _ = llama._fit(ChatRequest(messages=(Message("system", SYSTEM), Message("user", TYPED)), max_tokens=64))
    return len(tokens) - len(llama._tokens(llama.render(ChatRequest(messages=(Message("system", SYSTEM),)))))


@pytest.mark.models
def test_the_setting_reaches_the_model_and_the_context_window(monkeypatch, tmp_path) -> None:
    sizes = {}
    for value, limit in ((None, 512), ("200", 200), ("0", None)):
        llm = built(monkeypatch, tmp_path, value)
        try:
            assert message_limit(llm) == limit, value  # what the context window cuts to
            window = ContextWindow(ContextPolicy(budget_tokens=1800), llm=llm)
            last = window.messages([Item(id="big", role="user", text=TYPED)], SYSTEM)[-1]
            assert last.content.endswith(QUESTION)
            assert ("characters cut" in last.content) == (limit is not None), value
            sizes[value] = prompt_tokens(llm)  # what the model itself is sent of it
        finally:
            asyncio.run(llm.close())
    print(f"the 100 KB message sent as {sizes} tokens (unset: 512; 200; 0: no per-message limit)")
    assert 400 < sizes[None] <= 512 + 16 and 150 < sizes["200"] <= 200 + 16
    # no per-message limit: only the context window bounds it (its end, 2,048 - 32 for the reply)
    assert sizes["0"] > 1500
