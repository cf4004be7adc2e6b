"""Moksori (목소리): a self-hostable real-time voice agent server."""

import os as _os

# CTranslate2 (Whisper) and llama.cpp each bring their own OpenMP runtime. With libgomp's
# default spin-wait, the idle threads of one runtime spin on the 2 cores the other needs: on a
# 2-core VM the first LLM reply after a Whisper call took 6 s to its first token instead of
# 0.1 s. 100000 spins fixed that on a quiet machine but not under load: with two overlapping
# callers on a loaded 2-core VM the LLM's first token came 6.8 s (p50) after the end of speech
# with 100000 and 1.1 s with 0 (benchmarks/omp_spin.py, both in one run). So no spinning.
# Set before either library loads; an explicit setting in the environment wins. llama.cpp is
# loaded with its own short spin (MOKSORI_LLAMA_SPINCOUNT, providers/llama_cpu.import_llama): its
# per-operation barriers need it; this value is what CTranslate2's libgomp reads.
_os.environ.setdefault("GOMP_SPINCOUNT", "0")

__version__ = "0.1.0"
