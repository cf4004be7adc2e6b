"""llama.cpp's own OpenMP spin count (providers/llama_cpu.py, MOKSORI_LLAMA_SPINCOUNT).

Each libgomp reads GOMP_SPINCOUNT once, when it loads, and prints what it read with
OMP_DISPLAY_ENV=verbose: the child processes below load llama.cpp (the system libgomp) and
CTranslate2 (its own bundled copy) and the test reads which spin count each one got.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moksori.errors import ConfigError
from moksori.providers import llama_cpu

SRC = Path(__file__).resolve().parent.parent / "src"

_LOAD_BOTH = """
import json, os, sys
import moksori
from moksori.providers.llm_llamacpp import LlamaCppLLM
from moksori.providers.models import path_of
llm = LlamaCppLLM(path_of("smollm2-135m"), context_tokens=512)
import ctranslate2  # loads its own libgomp after llama.cpp's
print(json.dumps({"after": os.environ.get("GOMP_SPINCOUNT"), "policy": os.environ.get("OMP_WAIT_POLICY")}))
"""

_REPLY = """
import asyncio, json
from moksori.providers.base import ChatRequest, Message, TextDelta
from moksori.providers.llm_llamacpp import LlamaCppLLM
from moksori.providers.models import path_of

async def main():
    llm = LlamaCppLLM(path_of("smollm2-135m"), context_tokens=512)
    req = ChatRequest(messages=(Message("system", "You are a friendly voice assistant."),
                                Message("user", "He might even have been made amiable himself.")),
                      temperature=0.0, max_tokens=24)
    return "".join([e.text async for e in llm.chat(req) if isinstance(e, TextDelta)])

print(json.dumps(asyncio.run(main())))
"""


def _child(code: str, **env: str) -> tuple[str, str]:
    full = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", llama_cpu.SPIN_ENV)}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), full.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120,
                          check=True)
    return proc.stdout.strip().splitlines()[-1], proc.stderr


def _spincounts(stderr: str) -> list[str]:
    return re.findall(r"GOMP_SPINCOUNT = '(\d+)'", stderr)


def _wait_policies(stderr: str) -> list[str]:
    return re.findall(r"OMP_WAIT_POLICY = '(\w+)'", stderr)


def test_llama_cpp_gets_its_own_spin_count_and_ctranslate2_keeps_the_process_one():
    out, err = _child(_LOAD_BOTH, OMP_DISPLAY_ENV="verbose")
    # llama.cpp's libgomp loads first (1000), CTranslate2's after it (Moksori's default 0)
    assert _spincounts(err) == [str(llama_cpu.DEFAULT_SPINCOUNT), "0"]
    # llama.cpp's libgomp waits actively, so that with more threads than CPUs (a second llama.cpp
    # context) it still spins its count rather than libgomp's throttled 100; CTranslate2's keeps
    # the default (shown as PASSIVE)
    assert _wait_policies(err) == ["ACTIVE", "PASSIVE"]
    after = json.loads(out)
    assert after["after"] == "0" and after["policy"] is None  # put back for whatever loads later


def test_the_environment_keeps_its_own_wait_policy():
    out, err = _child(_LOAD_BOTH, OMP_DISPLAY_ENV="verbose", OMP_WAIT_POLICY="PASSIVE")
    assert _wait_policies(err) == ["PASSIVE", "PASSIVE"]
    assert json.loads(out)["policy"] == "PASSIVE"


def test_the_environment_sets_either_spin_count():
    _, err = _child(_LOAD_BOTH, OMP_DISPLAY_ENV="verbose", MOKSORI_LLAMA_SPINCOUNT="0", GOMP_SPINCOUNT="50")
    assert _spincounts(err) == ["0", "50"]


def test_spin_count_values(monkeypatch):
    monkeypatch.delenv(llama_cpu.SPIN_ENV, raising=False)
    assert llama_cpu.llama_spincount() == llama_cpu.DEFAULT_SPINCOUNT
    monkeypatch.setenv(llama_cpu.SPIN_ENV, " 20000 ")
    assert llama_cpu.llama_spincount() == 20000
    for bad in ("lots", "-1", "1.5"):
        monkeypatch.setenv(llama_cpu.SPIN_ENV, bad)
        with pytest.raises(ConfigError):
            llama_cpu.llama_spincount()


def test_the_spin_count_does_not_change_the_reply():
    """Spinning only changes how a thread waits at a barrier, not what is computed: the same
    greedy reply, word for word, with and without it (same machine, same build)."""
    spin, _ = _child(_REPLY, MOKSORI_LLAMA_SPINCOUNT="1000")
    sleep, _ = _child(_REPLY, MOKSORI_LLAMA_SPINCOUNT="0")
    assert json.loads(spin) and json.loads(spin) == json.loads(sleep)


def test_the_wait_policy_does_not_change_the_reply():
    """The active wait policy llama.cpp's libgomp now loads with changes how its threads wait,
    not what they compute: the same greedy reply as with the passive one (the reference path,
    which spins as little as libgomp ever did before)."""
    active, _ = _child(_REPLY)
    passive, _ = _child(_REPLY, OMP_WAIT_POLICY="PASSIVE")
    assert json.loads(active) and json.loads(active) == json.loads(passive)
