"""`llm.weights`: the packaged GGUF's weights written once in another llama.cpp type (providers/llm_weights.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from moksori.errors import ConfigError, ModelError
from moksori.providers.base import ChatRequest, Message, TextDelta
from moksori.providers.llm_weights import weights_file
from moksori.providers.models import path_of
from moksori.settings import load_settings

pytestmark = pytest.mark.models


def test_as_is_is_the_file_itself_and_writes_nothing(tmp_path):
    source = Path(path_of("smollm2-135m"))
    assert weights_file(source, "as_is", tmp_path / "cache") == source
    assert not (tmp_path / "cache").exists()


def test_unknown_type_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="unknown LLM weight type 'q2_k'"):
        weights_file(Path(path_of("smollm2-135m")), "q2_k", tmp_path)


def test_settings_reject_an_unknown_type():
    with pytest.raises(ConfigError, match="invalid setting llm.weights: Input should be 'as_is', 'q8_0' or 'f16'"):
        load_settings(llm={"weights": "q3"})


async def test_q8_0_copy_is_written_once_and_answers(tmp_path):
    from moksori.providers.registry import build_llm

    source = Path(path_of("smollm2-135m"))
    cache = tmp_path / "llm-weights"
    made = weights_file(source, "q8_0", cache)
    assert made.parent == cache and made.suffix == ".gguf" and "q8_0" in made.name
    assert [p.name for p in cache.iterdir()] == [made.name]  # no temporary file left behind
    stamp = made.stat().st_mtime_ns
    assert weights_file(source, "q8_0", cache) == made and made.stat().st_mtime_ns == stamp  # reused

    llm = build_llm(load_settings(data_dir=tmp_path, llm={"weights": "q8_0"}))
    try:
        inner = llm.providers[0]  # build_llm wraps the local model in a ResilientLLM
        raw = inner._llm  # the loaded file's own metadata
        assert raw.metadata["general.file_type"] == "7"  # LLAMA_FTYPE_MOSTLY_Q8_0
        assert inner.caps.languages == ("en",)  # still the packaged English-only model
        req = ChatRequest(messages=(Message("system", "Answer briefly."), Message("user", "Say hello.")),
                          max_tokens=8, temperature=0.0)
        text = "".join([ev.text async for ev in llm.chat(req) if isinstance(ev, TextDelta)])
        assert text.strip()
    finally:
        await llm.close()


def test_a_changed_source_gets_a_new_copy(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(Path(path_of("smollm2-135m")).read_bytes())
    first = weights_file(source, "q8_0", tmp_path / "cache")
    os.utime(source, (source.stat().st_atime, source.stat().st_mtime + 10))
    second = weights_file(source, "q8_0", tmp_path / "cache")
    assert second != first and second.is_file()


def test_corrupt_source_is_a_model_error_and_leaves_no_file(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(np.random.default_rng(0).bytes(1 << 20))
    with pytest.raises(ModelError, match="could not write x.gguf's weights as q8_0"):
        weights_file(bad, "q8_0", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_unwritable_cache_is_a_model_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelError, match="cannot create"):
        weights_file(Path(path_of("smollm2-135m")), "q8_0", blocker / "cache")
