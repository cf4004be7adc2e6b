"""`moksori transcribe` and `moksori say`: the speech models on their own."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import typer

from moksori.cli.main import app, friendly
from moksori.cli.ui import err_console, loading
from moksori.errors import AudioFormatError, ConfigError
from moksori.settings import load_settings

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
    from moksori.providers.base import STTOptions
    from moksori.providers.registry import build_stt, build_vad
    from moksori.providers.vad_segments import speech_regions

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
    regions = speech_regions(vad, audio)
    segments = []
    language = lang
    for start, end in regions:
        piece = audio[int(start * 16000):int(end * 16000)]
        tr = stt.transcribe_array(piece, STTOptions(language=language)) if hasattr(stt, "transcribe_array") \
            else asyncio.run(_one(stt, piece, STTOptions(language=language)))
        language = language or tr.language  # the first region decides for the rest
        if tr.text.strip():
            segments.append({"start": round(start, 2), "end": round(end, 2), "text": tr.text.strip()})
    elapsed = time.perf_counter() - t0
    text = _join([s["text"] for s in segments])
    duration = len(audio) / 16000
    if as_json:
        typer.echo(json.dumps({
            "text": text, "language": language or "unknown", "duration_s": round(duration, 3),
            "processing_s": round(elapsed, 3), "rtf": round(elapsed / duration, 3) if duration else None,
            "segments": segments,
        }, ensure_ascii=False, indent=2))
    else:
        typer.echo(text)


async def _one(stt, audio, opts):
    from moksori.providers.base import one_chunk

    final = None
    async for tr in stt.transcribe(one_chunk(audio), opts):
        final = tr
    return final


def _join(texts: list[str]) -> str:
    return re.sub(r"\s+", " ", " ".join(texts)).strip()


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

    if not text.strip():
        raise ConfigError("nothing to say: the text is empty")
    language = _check_lang(lang) or guess_language(text)
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

    async def run():
        return [f async for f in tts.synthesize(spoken, TTSOptions(voice=voice, language=language, speed=speed))]

    t0 = time.perf_counter()
    frames = asyncio.run(run())
    if not frames:
        raise ConfigError("the voice produced no audio for this text")
    audio = concat(frames)
    if out.parent and not out.parent.exists():
        raise ConfigError(f"output folder does not exist: {out.parent}")
    write_wav(out, audio)
    err_console.print(f"[green]✓[/] {audio.duration:.2f} s of speech at {audio.rate} Hz -> {out} "
                      f"[dim]({time.perf_counter() - t0:.2f} s)[/]", highlight=False)
