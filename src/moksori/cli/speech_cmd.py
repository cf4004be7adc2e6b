"""`moksori transcribe` and `moksori say`: the speech models on their own."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import typer

from moksori.cli.main import app, friendly
from moksori.cli.ui import check_output_file, err_console, loading
from moksori.errors import AudioFormatError, ConfigError
from moksori.settings import load_settings
from moksori.text.unencodable import encodable_text

_LANGS = ("en", "ko")


def _check_lang(lang: str | None) -> str | None:
    if lang is not None and lang not in _LANGS:
        raise ConfigError(f"unsupported language '{lang}': use one of {', '.join(_LANGS)}")
    return lang


@app.command()
@friendly
def transcribe(
    file: Path = typer.Argument(..., help="An audio file (WAV; other formats via PyAV)."),
    lang: str | None = typer.Option(None, "--lang", help="Pin the language: ko or en (default: detect)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON with language, segments and timings."),
) -> None:
    """Print what is said in an audio file."""
    from moksori.audio.wav import load_audio
    from moksori.providers.long_form import transcribe_long
    from moksori.providers.registry import build_stt, build_vad

    _check_lang(lang)
    settings = load_settings()
    frame = load_audio(file, rate=16000)
    audio = frame.to_float()
    if len(audio) == 0:
        raise AudioFormatError(f"{file} contains no audio samples")
    with loading() as ui:
        ui.step("voice activity detection")
        vad = build_vad(settings)
        ui.step("speech recognition")
        stt = build_stt(settings, progress=ui.progress)
    t0 = time.perf_counter()
    result = asyncio.run(transcribe_long(stt, vad, audio, language=lang))
    elapsed = time.perf_counter() - t0
    text, language, segments = result.text, result.language, result.segments
    duration = len(audio) / 16000
    if as_json:
        typer.echo(json.dumps({
            "text": text, "language": language or "unknown", "duration_s": round(duration, 3),
            "processing_s": round(elapsed, 3), "rtf": round(elapsed / duration, 3) if duration else None,
            "segments": segments,
        }, ensure_ascii=False, indent=2))
    else:
        typer.echo(text)


def guess_language(text: str) -> str:
    return "ko" if re.search(r"[가-힣]", text) else "en"


@app.command()
@friendly
def say(
    text: str = typer.Argument(..., help="What to say."),
    out: Path = typer.Option(..., "--out", "-o", help="Write the speech to this WAV file."),
    lang: str | None = typer.Option(None, "--lang", help="ko or en (default: guessed from the text)."),
    voice: str | None = typer.Option(None, "--voice", help="A voice name from `moksori voices`, or a Piper .onnx path."),
    speed: float = typer.Option(1.0, "--speed", min=0.3, max=3.0),
) -> None:
    """Speak text into a WAV file."""
    from moksori.audio.frames import concat
    from moksori.audio.wav import write_wav
    from moksori.providers.base import TTSOptions
    from moksori.providers.registry import build_tts
    from moksori.text.korean_numbers import normalize_for_tts
    from moksori.text.speakable import speakable

    text = encodable_text(text)  # bytes the terminal could not decode: U+FFFD, not a failed synthesis
    if not text.strip():
        raise ConfigError("nothing to say: the text is empty")
    language = _check_lang(lang) or guess_language(text)
    check_output_file(out)
    settings = load_settings()
    if voice and voice.endswith(".onnx"):
        key = "voice_ko" if language == "ko" else "voice_en"
        settings = settings.model_copy(update={"tts": settings.tts.model_copy(update={key: voice})})
        voice = None
    with loading() as ui:
        ui.step("speech synthesis")
        tts = build_tts(settings)
    if voice and voice not in tts.caps.voices:
        raise ConfigError(f"unknown voice '{voice}': available voices are {', '.join(tts.caps.voices)}")
    spoken = normalize_for_tts(speakable(text), language)

    async def run() -> list:
        return [f async for f in tts.synthesize(spoken, TTSOptions(voice=voice, language=language, speed=speed))]

    t0 = time.perf_counter()
    frames = asyncio.run(run())
    if not frames:
        raise ConfigError("the voice produced no audio for this text")
    audio = concat(frames)
    write_wav(out, audio)
    err_console.print(f"[green]✓[/] {audio.duration:.2f} s of speech at {audio.rate} Hz -> {out} "
                      f"[dim]({time.perf_counter() - t0:.2f} s)[/]", highlight=False)
