"""Fixtures shared by the test modules that run the real embedded stack."""

from __future__ import annotations

import pytest

from moksori.settings import load_settings
from moksori.testing.virtual_time import run_virtual


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The embedded stack (Whisper, SmolLM2, Piper, ...), built and warmed once per test module.
    A module that needs another stack defines its own `stack` fixture, which wins over this one."""
    from moksori.engine.prompts import system_prompt
    from moksori.providers.registry import build_stack

    settings = load_settings(data_dir=tmp_path_factory.getbasetemp() / "moksori-data")
    st = build_stack(settings)
    run_virtual(st.warm(system_prompt(None, st.llm.caps.languages)))
    return st
