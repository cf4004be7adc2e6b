"""OpenAI-compatible `/v1/audio/transcriptions` and `/v1/audio/speech` on the embedded models.

Both share the models with live sessions, so both are built not to get in their way:

* nothing heavy runs on the event loop: decoding, resampling and the VAD over an upload run on
  the misc executor, and every model call is **background** work (`providers/threads.py`): a
  live turn's STT or a reply's clause goes first;
* inputs are bounded before the work starts: the body is capped while it streams
  (`server/guard.py`), a WAV longer than `max_upload_seconds` is refused from its header and
  anything else as soon as decoding passes that length (a 500 KB FLAC can decode to 360 MB);
* outputs are bounded: speech is synthesised one clause at a time (each its own model job, so
  a live session's clauses slip in between), its duration is estimated from the text and
  refused up front when clearly over `max_speech_seconds` (twice the limit), and cut at the
  limit in any case. `pcm` streams as it is made; `wav` is sent whole (its header needs the
  length);
* at most `max_audio_requests` of each run at once; more get `503` with `Retry-After`. A slot
  is held only while there is work for it: a transcription takes one once its body has arrived
  (a client trickling its upload under the idle timeout holds nothing); speech stops and gives
  its slot back when the client hangs up (`wav` too, while it is still being made), and when a
  `pcm` client stops reading but stays connected: a chunk that cannot be sent for
  `body_idle_timeout_s` (the same patience a stalled upload gets) ends the answer there and
  drops the connection;
* `input` with a NUL or an unpaired surrogate is the client's `400`: neither is a character
  anyone can say (Piper cannot take them either), they mean the client's encoding is broken,
  and speaking the text without them would hide that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
import time
from dataclasses import dataclass
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive, Scope, Send

from moksori.audio.frames import Frame
from moksori.audio.resample import StreamResampler, resample
from moksori.audio.wav import read_wav_bytes, wav_bytes
from moksori.errors import AudioFormatError, AudioTooLong, MoksoriError
from moksori.protocols.realtime import MAX_PROMPT_CHARS, TRANSCRIPTION_LANGUAGES
from moksori.providers.base import TTSOptions
from moksori.providers.long_form import transcribe_long
from moksori.providers.threads import background, background_context, run_blocking
from moksori.server.sockets import TRANSPORT_KEY
from moksori.text.chunker import ClauseChunker
from moksori.text.korean_numbers import normalize_for_tts
from moksori.text.speakable import speakable
from moksori.text.unencodable import encodable

log = logging.getLogger("moksori.server")

router = APIRouter()
MAX_TEXT = 4096  # characters of `input`, as OpenAI's API
SPEECH_RATE = 24000
CHUNK_CHARS = 200  # text per synthesis job


def _err(status: int, message: str, code: str, param: str | None = None,
         headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": code,
                                   "param": param}}, status, headers=headers)


def _busy(what: str) -> JSONResponse:
    return JSONResponse({"error": {"message": f"too many {what} requests at once; try again shortly",
                                   "type": "server_error", "code": "server_busy", "param": None}},
                        503, headers={"Retry-After": "5"})


class AudioLimits:
    """Per-server state of the audio endpoints: how many run now, and the limits."""

    def __init__(self, max_requests: int, max_upload_seconds: float, max_speech_seconds: float,
                 send_stall_s: float = 30.0) -> None:
        self.max_requests = max_requests
        self.max_upload_seconds = max_upload_seconds
        self.max_speech_seconds = max_speech_seconds
        self.send_stall_s = send_stall_s  # how long a streamed chunk may wait for a client that stopped reading
        self.running = {"transcriptions": 0, "speech": 0}


def _limits(request: Request) -> AudioLimits:
    state = request.app.state.moksori
    limits = getattr(state, "audio_limits", None)
    if limits is None:
        s = state.settings.server
        limits = state.audio_limits = AudioLimits(s.max_audio_requests, s.max_upload_seconds, s.max_speech_seconds,
                                                  send_stall_s=s.body_idle_timeout_s)
    return limits


# --------------------------------------------------------------------------- transcriptions


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request) -> Response:
    limits = _limits(request)
    # the body first, then the slot: a client that trickles its upload (a byte every few
    # seconds keeps the idle timeout away) would otherwise hold a slot while sending nothing
    form = await _transcription_form(request)
    if isinstance(form, Response):
        return form
    if limits.running["transcriptions"] >= limits.max_requests:
        return _busy("transcription")
    limits.running["transcriptions"] += 1
    try:
        with background():
            return await _transcribe(request, form, limits)
    finally:
        limits.running["transcriptions"] -= 1


@dataclass
class _TranscriptionForm:
    file: UploadFile
    language: str | None
    fmt: str
    prompt: str | None = None  # Whisper's "previous text": spellings, names, style


async def _transcription_form(request: Request) -> _TranscriptionForm | Response:
    """The whole multipart body, checked, or the client's 400.

    The file stays where the parser spooled it (on disk past a megabyte): it is read into
    memory only under a slot."""
    try:
        form = await request.form()
    except Exception:  # noqa: BLE001 - malformed multipart (or a body the guard cut off)
        return _err(400, "expected multipart/form-data with a 'file' field", "invalid_request")
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        return _err(400, "missing 'file'", "missing_file", "file")
    language = form.get("language") or None
    if language is not None and language not in TRANSCRIPTION_LANGUAGES:
        return _err(400, f"unsupported language '{language}' ({', '.join(TRANSCRIPTION_LANGUAGES)})",
                    "unsupported_language", "language")
    fmt = form.get("response_format") or "json"
    if fmt not in ("json", "text", "verbose_json"):
        return _err(400, f"unsupported response_format '{fmt}'", "invalid_value", "response_format")
    prompt = form.get("prompt") or None
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        return _err(400, f"'prompt' must be text of at most {MAX_PROMPT_CHARS} characters", "invalid_value", "prompt")
    return _TranscriptionForm(upload, str(language) if language else None, str(fmt), prompt)


async def _transcribe(request: Request, form: _TranscriptionForm, limits: AudioLimits) -> Response:
    upload, language, fmt = form.file, form.language, form.fmt
    data = await upload.read()
    name = getattr(upload, "filename", None) or "upload"
    try:
        audio = await run_blocking(_decode_upload, data, name, limits.max_upload_seconds)
    except AudioTooLong as e:
        return _err(413, str(e), e.code, "file")
    except AudioFormatError as e:
        return _err(400, str(e), "invalid_audio", "file")
    finally:
        del data
    stack = request.app.state.moksori.stack
    t0 = time.perf_counter()
    try:
        result = await transcribe_long(stack.stt, stack.vad, audio, language=language, prompt=form.prompt)
    except MoksoriError as e:
        return _err(502, str(e), "transcription_failed")
    text, lang = result.text, result.language or language or "en"
    if fmt == "text":
        return PlainTextResponse(text)
    body: dict[str, Any] = {"text": text}
    if fmt == "verbose_json":
        body.update({"task": "transcribe", "language": lang, "duration": round(len(audio) / 16000, 3),
                     "processing_s": round(time.perf_counter() - t0, 3)})
    else:
        body["usage"] = {"type": "duration", "seconds": round(len(audio) / 16000, 3)}
    return JSONResponse(body)


def _decode_upload(data: bytes, name: str, max_seconds: float) -> np.ndarray:
    """Bytes of any audio file -> 16 kHz mono float32 (blocking: run it off the loop)."""
    if not data:
        raise AudioFormatError("the uploaded file is empty")
    if data[:4] in (b"RIFF", b"RF64"):
        frame = read_wav_bytes(data, name=name, max_seconds=max_seconds)
    else:
        import tempfile
        from pathlib import Path

        from moksori.audio.wav import load_audio

        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix[:16] or ".bin") as fh:
            fh.write(data)
            fh.flush()
            try:
                frame = load_audio(fh.name, rate=16000, max_seconds=max_seconds)
            except AudioFormatError as e:  # name the client's file, not our temporary path
                raise type(e)(str(e).replace(fh.name, name)) from None
    if len(frame) == 0:  # a WAV header with no whole sample frame after it (PyAV refuses the others)
        raise AudioFormatError(f"{name} contains no audio samples")
    return resample(frame, 16000).to_float()


# --------------------------------------------------------------------------- speech


@router.post("/v1/audio/speech")
async def speech(request: Request) -> Response:
    try:
        body = await request.json()
    except Exception:  # noqa: BLE001 - whatever the body is, it is not JSON: the client's 400
        return _err(400, "body must be JSON", "invalid_json")
    if not isinstance(body, dict):
        return _err(400, "body must be a JSON object", "invalid_json")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        return _err(400, "'input' must be a non-empty string", "invalid_value", "input")
    if len(text) > MAX_TEXT:
        return _err(400, f"'input' is longer than {MAX_TEXT} characters", "invalid_value", "input")
    if not encodable(text):  # valid JSON (\u0000, \ud800), but no text: see the module's notes
        return _err(400, "'input' contains a NUL character or an unpaired UTF-16 surrogate", "invalid_value", "input")
    fmt = body.get("response_format", "wav")
    if fmt not in ("wav", "pcm"):
        return _err(400, f"unsupported response_format '{fmt}' (wav, pcm)", "invalid_value", "response_format")
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
        return _err(400, "'speed' must be between 0.25 and 4.0", "invalid_value", "speed")
    limits = _limits(request)
    stack = request.app.state.moksori.stack
    voice = body.get("voice") if isinstance(body.get("voice"), str) else None
    language: str = body["language"] if body.get("language") in ("en", "ko") else \
        ("ko" if any("가" <= ch <= "힣" for ch in text) else "en")
    if voice is not None and voice not in stack.tts.caps.voices:
        voice = None  # OpenAI voice names map to our voice for the language
    spoken = normalize_for_tts(speakable(text), language)
    estimate = estimate_seconds(spoken, language) / float(speed)
    if estimate > 2 * limits.max_speech_seconds:  # clearly too long: say so rather than cut it
        return _err(400, f"'input' would make about {estimate / 60:.0f} minutes of speech; the limit is "
                         f"{limits.max_speech_seconds / 60:g} minutes", "input_too_long", "input")
    chunks = speech_chunks(spoken)
    if not chunks:
        return _err(400, "nothing speakable in 'input'", "invalid_value", "input")
    if limits.running["speech"] >= limits.max_requests:
        return _busy("speech")
    limits.running["speech"] += 1
    opts = TTSOptions(voice=voice, language=language, speed=float(speed))
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=4)  # a slow reader pauses synthesis

    async def produce() -> None:
        try:
            async for data in _synthesize(stack.tts, chunks, opts, limits.max_speech_seconds):
                await queue.put(("data", data))
            await queue.put(("end", None))
        except MoksoriError as e:
            await queue.put(("error", e))

    producer = asyncio.create_task(produce(), name="speech-synthesis", context=background_context())

    finished = False

    async def finish() -> None:
        nonlocal finished
        if finished:
            return
        finished = True
        producer.cancel()
        try:
            await asyncio.gather(producer, return_exceptions=True)
        finally:
            # also when this wait is cancelled: a client that leaves mid-stream gets its body
            # iterator cancelled, and Starlette's cancel scope cancels every await in its clean-up
            # too (the slot was lost, and after `max_audio_requests` such clients every speech
            # request got 503)
            limits.running["speech"] -= 1

    try:
        kind, value = await queue.get()
    except BaseException:
        await finish()
        raise
    if kind != "data":  # errors before any audio still get a proper status
        await finish()
        if kind == "error":
            return _err(502, str(value), "synthesis_failed")
        return _err(400, "nothing speakable in 'input'", "invalid_value", "input")

    async def rest() -> AsyncIterator[bytes]:
        try:
            yield value
            while True:
                kind, data = await queue.get()
                if kind == "error":  # the status is sent: the answer is left incomplete, never ended
                    log.warning("speech synthesis failed mid-stream: %s", data)  # as if it were whole
                    raise _Cut(str(data))
                if kind != "data":
                    return
                yield data
        finally:
            await finish()

    if fmt == "pcm":  # OpenAI's pcm: raw 24 kHz 16-bit little-endian mono, streamed
        return _ReadOrDrop(rest(), media_type="audio/pcm", stall_s=limits.send_stall_s, on_end=finish)
    try:
        pcm = await _join_unless_client_leaves(request, rest())
    except _Cut as e:  # nothing was sent yet: a wav answer cut short is a failure, not shorter audio
        return _err(502, str(e), "synthesis_failed")
    if pcm is None:  # nobody to send it to; `rest` has stopped the synthesis and freed the slot
        return Response(status_code=204)
    return Response(wav_bytes(Frame.from_bytes(pcm, SPEECH_RATE)), media_type="audio/wav")


class _ClientStalled(Exception):
    pass


class _Cut(Exception):
    """The synthesis failed after the answer started: it must not end as if it were complete."""


class _ReadOrDrop(StreamingResponse):
    """A streamed answer whose client has to keep reading.

    A client that stops reading but stays connected makes each send wait on backpressure for
    ever, and with it the synthesis and its slot: a chunk that cannot be sent for `stall_s` ends
    the answer there, and the connection is dropped at once (`_drop_connection`: a reset, what
    asyncio and the kernel still held for it discarded). A graceful close would wait until those
    bytes (megabytes: the kernel's buffers) were read, and a client that never reads them would
    keep the socket open for ever.

    A cut answer never ends with HTTP's last chunk: a stall drops the connection, a synthesis that
    fails (`_Cut`) returns without it (uvicorn then closes the connection after what was sent).
    An answer whose client pauses for less than `stall_s` and reads on is not cut: it goes on to
    its end, last chunk included. `on_end` (stop the synthesis, free the slot) runs however the
    answer ends, also when its body is never iterated (the client left first)."""

    def __init__(self, content: AsyncIterator[bytes], *, media_type: str, stall_s: float,
                 on_end: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type=media_type)
        self.stall_s = stall_s
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_or_give_up(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self.stall_s)
            except TimeoutError:
                raise _ClientStalled from None

        try:
            await super().__call__(scope, receive, send_or_give_up)
        except _ClientStalled:
            dropped = _drop_connection(scope)
            log.info("a %s client read nothing for %g s: its answer is dropped%s", scope.get("path"), self.stall_s,
                     "" if dropped else " (its connection is closed once it reads what was sent)")
        except _Cut:
            pass  # logged where it failed; the connection closes without the answer's last chunk
        finally:
            await self.on_end()


def _drop_connection(scope: Scope) -> bool:
    """Reset the connection that carries the request of `scope`, discarding whatever the server
    still holds for it; False when that connection cannot be found (then uvicorn closes it
    gracefully once the app returns). uvicorn does not hand an ASGI app its connection:
    `moksori serve`'s HTTP protocol puts it in the scope (`sockets.TRANSPORT_KEY`). `SO_LINGER`
    0 makes the close a reset: without it the kernel would go on sending its buffered bytes to a
    client that does not read them, and end with a FIN only once they were read."""
    transport = scope.get(TRANSPORT_KEY) or _transport_of(scope)
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return True


def _transport_of(scope: Scope) -> Any:
    """The transport of `scope`'s request when the server is not `moksori serve`'s (whose HTTP
    protocol puts it in the scope): asyncio's selector loop keeps its transports in
    `loop._transports`, and uvicorn's protocol keeps the scope it serves."""
    transports = getattr(asyncio.get_running_loop(), "_transports", None)
    for transport in list((transports or {}).values()):
        if getattr(transport.get_protocol(), "scope", None) is scope:
            return transport
    return None


async def _join_unless_client_leaves(request: Request, parts: AsyncIterator[bytes]) -> bytes | None:
    """`parts` joined, or None as soon as the client hangs up. A `wav` answer is sent whole, so
    nothing else would notice that it left: the synthesis would run on to the end, slot held."""

    async def join() -> bytes:
        return b"".join([part async for part in parts])

    joining = asyncio.create_task(join())
    leaving = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait({joining, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (joining, leaving):
            task.cancel()  # a no-op on a finished task; on `joining`, `rest` stops the synthesis
        await asyncio.gather(joining, leaving, return_exceptions=True)
    return None if joining.cancelled() else joining.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (its body has been read: all that can come is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _synthesize(tts: Any, chunks: list[str], opts: TTSOptions, max_seconds: float) -> AsyncIterator[bytes]:
    budget = int(max_seconds * SPEECH_RATE)
    for chunk in chunks:
        rs: StreamResampler | None = None  # one per chunk: Piper streams a sentence in pieces
        async for frame in tts.synthesize(chunk, opts):
            rs = rs or StreamResampler(frame.rate, SPEECH_RATE)
            out = rs.process(frame.samples)
            if len(out) >= budget:
                if budget > 0:
                    yield out[:budget].astype("<i2").tobytes()
                log.warning("speech output cut at the %g s limit (MOKSORI_SERVER_MAX_SPEECH_SECONDS)", max_seconds)
                return
            budget -= len(out)
            yield out.astype("<i2").tobytes()
        tail = rs.flush() if rs is not None else np.zeros(0, dtype=np.int16)
        tail = tail[:max(0, budget)]
        budget -= len(tail)
        if len(tail):
            yield tail.astype("<i2").tobytes()


_DIGIT = re.compile(r"\d")
_HANGUL = re.compile(r"[가-힣]")


def estimate_seconds(spoken: str, language: str) -> float:
    """A rough length of `spoken` read aloud: long digit runs are read digit by digit
    (~0.35 s each), Korean at ~7 syllables a second, other text at ~14 characters a second."""
    digits = len(_DIGIT.findall(spoken))
    hangul = len(_HANGUL.findall(spoken))
    rest = len(spoken) - digits - hangul
    return 0.35 * digits + hangul / 7.0 + rest / 14.0


def speech_chunks(spoken: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Clauses of at most `max_chars` (a run without spaces is cut hard)."""
    chunker = ClauseChunker(first_min_chars=1, min_chars=40, max_chars=max_chars)
    out: list[str] = []
    for clause in chunker.push(spoken) + chunker.flush():
        clause = clause.strip()
        while len(clause) > max_chars:
            cut = clause.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            out.append(clause[:cut].strip())
            clause = clause[cut:].strip()
        if clause and any(ch.isalnum() for ch in clause):
            out.append(clause)
    return out
