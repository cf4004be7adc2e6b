"""The Pipecat side of the telephony comparison, seen from Moksori's venv: start a local
`llama_cpp.server` for SmolLM2 and the Pipecat bot (bot.py, in its own venv), stop them after,
and read the bot's per-call stage timeline.

    with PipecatStack.start(whisper_dir, system=..., greeting=..., events=path) as pc:
        ws_url = pc.ws_url            # the Twilio media-stream WebSocket
        pc.pids()                     # {"pipecat-bot": pid, "llama-server": pid}
        pc.stages(call_id, t_from)    # stage times on the monotonic clock
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))

from servers import ServerProcess, free_port

DEFAULT_VENV = REPO / ".data" / "bench" / "pipecat-venv"


def venv_python(venv: Path = DEFAULT_VENV) -> Path:
    py = Path(venv) / "bin" / "python"
    if not py.is_file():
        raise SystemExit(f"no Pipecat virtualenv at {venv}: run `bash benchmarks/pipecat/setup-venv.sh {venv}` first "
                         "(`make bench` does)")
    return py


def pipecat_version(venv: Path = DEFAULT_VENV) -> str:
    freeze = Path(venv) / "pip-freeze.txt"
    if freeze.is_file():
        for line in freeze.read_text().splitlines():
            if line.lower().startswith("pipecat-ai=="):
                return line.split("==", 1)[1]
    return "?"


@dataclass
class PipecatStack:
    bot: ServerProcess
    llm: ServerProcess
    events: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.bot.port}/telephony/twilio/stream"

    def pids(self) -> dict[str, int]:
        out = {}
        for name, srv in (("pipecat-bot", self.bot), ("llama-server", self.llm)):
            if srv.proc is not None:
                out[name] = srv.proc.pid
        return out

    @classmethod
    @contextlib.contextmanager
    def start(cls, whisper_dir: Path, *, system: str, greeting: str, temperature: float, max_tokens: int,
              threads: int = 2, context_tokens: int = 4096, venv: Path = DEFAULT_VENV,
              events: Path) -> Iterator[PipecatStack]:
        """Both servers up (the LLM server first); both stopped on exit."""
        from moksori.providers.models import path_of

        py = venv_python(venv)
        llm_port, bot_port = free_port(), free_port()
        # The OpenMP spin Moksori sets for itself (moksori/__init__.py): CTranslate2 and llama.cpp
        # each bring libgomp, and with its default spin-wait the idle threads of one steal the 2
        # cores the other needs. Same environment on both sides, so that is not what is compared.
        omp = {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "0")}
        # llama.cpp with Moksori's own thread, context and batch settings (providers/llm_llamacpp.py)
        llm = ServerProcess(
            [sys.executable, "-m", "moksori.providers.llama_cpu", "--model", str(path_of("smollm2-135m")),
             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(llm_port),
             "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(context_tokens),
             "--n_batch", "256", "--verbose", "False"],
            port=llm_port, ready_path="/v1/models", ready_timeout_s=120, env={"PYTHONUNBUFFERED": "1", **omp})
        bot = ServerProcess(
            [str(py), str(HERE / "bot.py"), "--port", str(bot_port), "--whisper", str(whisper_dir),
             "--voice", str(path_of("piper-en-joe")), "--smart-turn", str(path_of("smart-turn-v3.2")),
             "--llm-url", f"http://127.0.0.1:{llm_port}/v1", "--llm-model", "smollm2",
             "--system", system, "--greeting", greeting, "--temperature", str(temperature),
             "--max-tokens", str(max_tokens), "--events", str(events)],
            port=bot_port, ready_path="/health", ready_timeout_s=180,
            # the bot must not see Moksori's sources or venv
            env={"PYTHONPATH": "", "VIRTUAL_ENV": str(venv), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **omp})
        events.write_text("")
        with llm, bot:
            yield cls(bot, llm, events)

    def log_tail(self, n: int = 3000) -> str:
        return self.bot.log_text()[-n:]

    def stages(self, call_id: str, t_from: float) -> dict:
        """The bot's timeline for one call from `t_from` on (monotonic seconds): the turn that led to
        the first reply audio, as absolute times, plus what smart-turn said and what STT heard."""
        rows = []
        for line in self.events.read_text().splitlines():
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                if e.get("call") == call_id and e["t"] >= t_from:
                    rows.append(e)
        reply = next((e["t"] for e in rows if e["frame"] == "BotStartedSpeakingFrame"), None)
        until = reply if reply is not None else float("inf")

        def last(frame: str, before: float = until) -> float | None:
            ts = [e["t"] for e in rows if e["frame"] == frame and e["t"] <= before]
            return ts[-1] if ts else None

        turn_end = last("UserStoppedSpeakingFrame")
        out = {
            "vad_stopped": last("VADUserStoppedSpeakingFrame", turn_end if turn_end is not None else until),
            "turn_end": turn_end,
            "transcript": last("TranscriptionFrame"),
            "llm_first_token": last("LLMTextFrame"),
            "tts_first_audio": last("TTSAudioRawFrame"),
            "bot_started": reply,
        }
        turns = [e for e in rows if e["frame"] == "metric" and e.get("kind") == "TurnMetricsData" and e["t"] <= until]
        texts = [e.get("text", "") for e in rows if e["frame"] == "TranscriptionFrame" and e["t"] <= until]
        return {"t": out, "smart_turn": [{"complete": e.get("is_complete"), "p": round(e.get("probability", 0), 3),
                                          "ms": round(e.get("e2e_processing_time_ms", 0))} for e in turns],
                "transcript": " ".join(t.strip() for t in texts),
                "user_turns": sum(e["frame"] == "UserStoppedSpeakingFrame" for e in rows if e["t"] <= until)}


def same_file(a: Path, b: Path) -> bool:
    """Byte-identical (e.g. pipecat-ai's Silero copy and the silero-vad package's)."""
    import hashlib

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    return a.is_file() and b.is_file() and (os.path.samefile(a, b) or digest(a) == digest(b))
