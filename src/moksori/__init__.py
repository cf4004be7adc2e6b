"""Moksori (목소리): a self-hostable real-time voice agent server."""

import os as _os

# CTranslate2 (Whisper) and llama.cpp each bring their own OpenMP runtime. With libgomp's
# default spin-wait, the idle threads of one runtime spin on the 2 cores the other needs:
# measured on a 2-core VM, the first LLM reply after a Whisper call then took 6 s to its
# first token instead of 0.1 s. A shorter spin keeps both fast. Set before either library
# loads; an explicit setting in the environment wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "100000")

__version__ = "0.1.0"
