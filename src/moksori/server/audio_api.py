"""OpenAI-compatible `/v1/audio/transcriptions` and `/v1/audio/speech` on the embedded models."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from moksori.audio.frames import concat
from moksori.audio.resample import resample
from moksori.audio.wav import read_wav_bytes, wav_bytes
from moksori.errors import AudioFormatError, MoksoriError
from moksori.providers.base import TTSOptions
from moksori.providers.long_form import transcribe_long
from moksori.server.auth import extract_key, key_ok
from moksori.text.korean_numbers import normalize_for_tts
from moksori.text.speakable import speakable

router = APIRouter()
MAX_UPLOAD = 50 * 1024 * 1024
MAX_TEXT = 4096


def _err(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": code,
                                   "param": param}}, status)


def _authorised(request: Request) -> bool:
    state = request.app.state.moksori
    if not state.auth_required:
        return True
    headers = {k.lower(): v for k, v in request.headers.items()}
    return key_ok(extract_key(headers), state.keys)


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request) -> Response:
    if not _authorised(request):
        return _err(401, "invalid or missing API key", "invalid_api_key")
    if int(request.headers.get("content-length") or 0) > MAX_UPLOAD:
        return _err(413, f"file too large (limit {MAX_UPLOAD // 1024 // 1024} MiB)", "file_too_large", "file")
    try:
        form = await request.form(max_part_size=MAX_UPLOAD)
    except Exception:  # noqa: BLE001 - malformed multipart
        return _err(400, "expected multipart/form-data with a 'file' field", "invalid_request")
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        return _err(400, "missing 'file'", "missing_file", "file")
    data = await upload.read()
    language = form.get("language") or None
    if language is not None and language not in ("en", "ko"):
        return _err(400, f"unsupported language '{language}' (en, ko)", "unsupported_language", "language")
    fmt = form.get("response_format") or "json"
    if fmt not in ("json", "text", "verbose_json"):
        return _err(400, f"unsupported response_format '{fmt}'", "invalid_value", "response_format")
    try:
        frame = _decode_upload(data, getattr(upload, "filename", None) or "upload")
    except AudioFormatError as e:
        return _err(400, str(e), "invalid_audio", "file")
    stack = request.app.state.moksori.stack
    audio = resample(frame, 16000).to_float()
    t0 = time.perf_counter()
    try:
        result = await transcribe_long(stack.stt, stack.vad, audio, language=language)
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


def _decode_upload(data: bytes, name: str):
    if not data:
        raise AudioFormatError("the uploaded file is empty")
    if data[:4] in (b"RIFF", b"RF64"):
        return read_wav_bytes(data, name=name)
    import tempfile
    from pathlib import Path

    from moksori.audio.wav import load_audio

    with tempfile.NamedTemporaryFile(suffix=Path(name).suffix or ".bin") as fh:
        fh.write(data)
        fh.flush()
        try:
            return load_audio(fh.name)
        except AudioFormatError as e:  # name the client's file, not our temporary path
            raise AudioFormatError(str(e).replace(fh.name, name)) from None


@router.post("/v1/audio/speech")
async def speech(request: Request) -> Response:
    if not _authorised(request):
        return _err(401, "invalid or missing API key", "invalid_api_key")
    try:
        body = await request.json()
    except Exception:  # noqa: BLE001
        return _err(400, "body must be JSON", "invalid_json")
    if not isinstance(body, dict):
        return _err(400, "body must be a JSON object", "invalid_json")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        return _err(400, "'input' must be a non-empty string", "invalid_value", "input")
    if len(text) > MAX_TEXT:
        return _err(400, f"'input' is longer than {MAX_TEXT} characters", "invalid_value", "input")
    fmt = body.get("response_format", "wav")
    if fmt not in ("wav", "pcm"):
        return _err(400, f"unsupported response_format '{fmt}' (wav, pcm)", "invalid_value", "response_format")
    speed = body.get("speed", 1.0)
    if not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
        return _err(400, "'speed' must be between 0.25 and 4.0", "invalid_value", "speed")
    stack = request.app.state.moksori.stack
    voice = body.get("voice") if isinstance(body.get("voice"), str) else None
    language = body.get("language") if body.get("language") in ("en", "ko") else \
        ("ko" if any("가" <= ch <= "힣" for ch in text) else "en")
    if voice is not None and voice not in stack.tts.caps.voices:
        voice = None  # OpenAI voice names map to our voice for the language
    spoken = normalize_for_tts(speakable(text), language)
    try:
        frames = [f async for f in stack.tts.synthesize(spoken, TTSOptions(voice=voice, language=language,
                                                                             speed=float(speed)))]
    except MoksoriError as e:
        return _err(502, str(e), "synthesis_failed")
    if not frames:
        return _err(400, "nothing speakable in 'input'", "invalid_value", "input")
    audio = concat([resample(f, 24000) for f in frames])
    if fmt == "pcm":  # OpenAI's pcm: raw 24 kHz 16-bit little-endian mono
        return Response(audio.to_bytes(), media_type="audio/pcm")
    return Response(wav_bytes(audio), media_type="audio/wav")
