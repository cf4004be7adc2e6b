"""A Pipecat 1.14 phone bot on Moksori's embedded models, for benchmarks/pipecat_vs_moksori.py.

Runs inside its own virtualenv (benchmarks/pipecat/setup-venv.sh), never in Moksori's. It serves
the Twilio media-stream WebSocket the way Pipecat's own Twilio examples do: a FastAPI route,
`parse_telephony_websocket`, `TwilioFrameSerializer` + `FastAPIWebsocketTransport`, and one
pipeline per call (transport in -> STT -> user aggregator -> LLM -> TTS -> transport out ->
assistant aggregator), its services built per call as in those examples.

Models, all from local files (the benchmark passes the paths; nothing is downloaded):
* Whisper base: the CTranslate2 folder Moksori prepares, through `WhisperSTTService`;
* SmolLM2-135M: the packaged GGUF behind a local `llama_cpp.server`, through `OpenAILLMService`;
* Piper: the packaged `en_US-joe-medium` voice, through `PiperTTSService` (its `download_dir`
  is the voice's folder, so the file is found and not fetched);
* Silero VAD (the copy inside pipecat-ai, byte-identical to Moksori's) and smart-turn v3.2
  (the same file Moksori loads), Pipecat's default user-turn stop strategy.

Everything else is Pipecat's default (see benchmarks/pipecat/README.md for the list). The
greeting, system prompt, temperature and max tokens are the application's and match Moksori's.

With `--events FILE` every call's pipeline timeline is appended there as JSON lines stamped with
`time.monotonic()` (the same clock the simulated caller uses), for the per-stage split.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub

import uvicorn
from fastapi import FastAPI, WebSocket
from loguru import logger
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import TTSSpeakFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transcriptions.language import Language
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy import (
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

# Frames whose first push marks a stage of the turn. Audio frames are logged once per reply.
_STAGES = {
    "VADUserStartedSpeakingFrame", "VADUserStoppedSpeakingFrame", "UserStartedSpeakingFrame",
    "UserStoppedSpeakingFrame", "TranscriptionFrame", "LLMFullResponseStartFrame",
    "LLMFullResponseEndFrame", "TTSStartedFrame", "BotStartedSpeakingFrame", "BotStoppedSpeakingFrame",
    "InterruptionFrame",
}
_ONCE_PER_REPLY = {"LLMTextFrame", "TTSAudioRawFrame", "OutputAudioRawFrame"}


class StageLog(BaseObserver):
    """Appends the stages of each turn to a JSON-lines file, on the monotonic clock."""

    def __init__(self, path: Path, call_id: str) -> None:
        super().__init__()
        self._fh = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self._call = call_id
        self._seen: set[str] = set()
        self._last: tuple[str, float] = ("", 0.0)

    def _write(self, frame: str, **extra: object) -> None:
        now = time.monotonic()
        if frame != "metric" and self._last[0] == frame and now - self._last[1] < 0.005:
            return  # a broadcast frame goes both ways as two frames: log it once
        self._last = (frame, now)
        self._fh.write(json.dumps({"call": self._call, "t": now, "frame": frame, **extra}) + "\n")

    async def on_push_frame(self, data: FramePushed) -> None:
        if not data.first_push:
            return
        name = type(data.frame).__name__
        if name in _STAGES:
            if name in ("UserStoppedSpeakingFrame", "LLMFullResponseStartFrame"):
                self._seen.clear()
            text = getattr(data.frame, "text", None)
            self._write(name, **({"text": text[:300]} if isinstance(text, str) else {}))
        elif name in _ONCE_PER_REPLY and name not in self._seen:
            self._seen.add(name)
            self._write(name)
        elif name == "MetricsFrame":
            for item in data.frame.data:
                fields = {k: v for k, v in vars(item).items() if isinstance(v, (int, float, str, bool))}
                self._write("metric", kind=type(item).__name__, **fields)

    def close(self) -> None:
        self._fh.close()


def make_app(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True, "pid": os.getpid()}

    @app.websocket("/telephony/twilio/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        _, call = await parse_telephony_websocket(websocket)
        serializer = TwilioFrameSerializer(
            stream_sid=call["stream_id"], call_sid=call["call_id"],
            # no REST hang-up: there is no Twilio account behind the simulated carrier
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False))
        transport = FastAPIWebsocketTransport(websocket=websocket, params=FastAPIWebsocketParams(
            audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer))
        await run_call(args, transport, call["call_id"])

    return app


async def run_call(args: argparse.Namespace, transport: FastAPIWebsocketTransport, call_id: str) -> None:
    stt = WhisperSTTService(settings=WhisperSTTService.Settings(model=args.whisper, language=Language.EN))
    llm = OpenAILLMService(
        api_key="local", base_url=args.llm_url,
        settings=OpenAILLMService.Settings(model=args.llm_model, temperature=args.temperature,
                                           max_tokens=args.max_tokens))
    voice = Path(args.voice)
    tts = PiperTTSService(settings=PiperTTSService.Settings(voice=voice.name.removesuffix(".onnx")),
                          download_dir=voice.parent)
    context = LLMContext([{"role": "system", "content": args.system}])
    user, assistant = LLMContextAggregatorPair(context, user_params=LLMUserAggregatorParams(
        vad_analyzer=SileroVADAnalyzer(),
        # Pipecat's default stop strategy, with the model path given so the very file Moksori
        # loads is the one used (pipecat-ai ships the same file).
        user_turn_strategies=UserTurnStrategies(stop=[TurnAnalyzerUserTurnStopStrategy(
            turn_analyzer=LocalSmartTurnAnalyzerV3(smart_turn_model_path=args.smart_turn))]),
    ))
    pipeline = Pipeline([transport.input(), stt, user, llm, tts, transport.output(), assistant])
    log = StageLog(Path(args.events), call_id) if args.events else None
    task = PipelineWorker(pipeline, params=PipelineParams(audio_out_sample_rate=8000, enable_metrics=True),
                          observers=[log] if log else [])

    @transport.event_handler("on_client_connected")
    async def on_connected(_transport, _client) -> None:
        await task.queue_frames([TTSSpeakFrame(args.greeting)])

    @transport.event_handler("on_client_disconnected")
    async def on_disconnected(_transport, _client) -> None:
        await task.cancel()

    try:
        # force_gc as in Pipecat's Twilio example: collect each call's pipeline (and models) when it ends
        await WorkerRunner(handle_sigint=False, force_gc=True).run(task)
    finally:
        if log is not None:
            log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--whisper", required=True, help="CTranslate2 Whisper folder (local path)")
    ap.add_argument("--voice", required=True, help="Piper voice .onnx (its .onnx.json beside it)")
    ap.add_argument("--smart-turn", required=True, help="smart-turn v3.2 .onnx")
    ap.add_argument("--llm-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--llm-model", default="smollm2")
    ap.add_argument("--system", required=True, help="system prompt")
    ap.add_argument("--greeting", required=True)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--events", help="append per-call stage timelines here (JSON lines)")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()
    for p in (args.whisper, args.voice, args.smart_turn):
        if not Path(p).exists():
            raise SystemExit(f"bot: no such model file or folder: {p}")
    logger.remove()
    logger.add(lambda m: print(m, end="", flush=True), level=args.log_level)
    uvicorn.run(make_app(args), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
