"""WAV read/write. A small RIFF parser of our own, so every failure is a clear message.

Reads PCM 8/16/24/32-bit, IEEE float 32/64, G.711 μ-law/A-law and WAVE_FORMAT_EXTENSIBLE; any
channel count (downmixed to mono). Streams written by tools that do not know the final length
(a data size of 0 or 0xFFFFFFFF, as `espeak-ng --stdout` writes) are read to the end of the bytes.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

from moksori.audio import g711
from moksori.audio.frames import Frame, float_to_pcm16
from moksori.errors import AudioFormatError, AudioTooLong

_PCM, _FLOAT, _ALAW, _ULAW, _EXTENSIBLE = 1, 3, 6, 7, 0xFFFE
MAX_WAV_BYTES = 1 << 31


def read_wav_bytes(data: bytes, *, name: str = "audio", max_seconds: float | None = None) -> Frame:
    """Parse a whole WAV file held in memory into a mono PCM16 frame at its own rate.

    With `max_seconds`, a longer file is refused (`AudioTooLong`) from its header, before any
    sample is decoded."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise AudioFormatError(f"{name} is not a WAV file (no RIFF/WAVE header)")
    pos, fmt, pcm = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body_start = pos + 8
        if cid == b"data":
            end = len(data) if size in (0, 0xFFFFFFFF) or body_start + size > len(data) else body_start + size
            pcm = data[body_start:end]
            break
        if cid == b"fmt ":
            fmt = data[body_start:body_start + size]
        pos = body_start + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise AudioFormatError(f"{name}: WAV has no valid 'fmt ' chunk")
    if pcm is None:
        raise AudioFormatError(f"{name}: WAV has no 'data' chunk")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt, 0)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if channels < 1 or rate < 1000 or rate > 384000:
        raise AudioFormatError(f"{name}: implausible WAV header ({channels} channels, {rate} Hz)")
    if max_seconds is not None:
        # the length the decoder will make, from the same channels and bits it decodes with; never
        # from the header's block_align, which a client can set to anything (65535 made 2000 s
        # of 16-bit mono look like 61 s)
        frame_bytes = channels * max(8, bits) // 8
        seconds = len(pcm) / frame_bytes / rate
        if seconds > max_seconds:
            raise AudioTooLong(f"{name} is {seconds:.0f} s long; the limit is {max_seconds:g} s")
    samples = _decode(pcm, tag, bits, name)
    usable = len(samples) - len(samples) % channels
    samples = samples[:usable]
    if channels > 1:
        mixed = samples.reshape(-1, channels).astype(np.float32).mean(axis=1)
        samples = np.round(mixed).astype(np.int16) if samples.dtype == np.int16 else mixed
    if samples.dtype != np.int16:
        samples = float_to_pcm16(samples)
    return Frame(np.ascontiguousarray(samples), rate)


def _decode(raw: bytes, tag: int, bits: int, name: str) -> np.ndarray:
    if tag == _PCM:
        if bits == 16:
            return np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.int16)
        if bits == 8:
            return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
        if bits == 24:
            b = np.frombuffer(raw[: len(raw) // 3 * 3], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            v = np.where(v & 0x800000, v - (1 << 24), v)
            return v.astype(np.float32) / float(1 << 23)
        if bits == 32:
            return np.frombuffer(raw[: len(raw) // 4 * 4], dtype="<i4").astype(np.float32) / float(1 << 31)
    elif tag == _FLOAT and bits in (32, 64):
        dt = "<f4" if bits == 32 else "<f8"
        x = np.frombuffer(raw[: len(raw) // (bits // 8) * (bits // 8)], dtype=dt).astype(np.float32)
        return np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    elif tag == _ULAW and bits == 8:
        return g711.ulaw_decode(raw)
    elif tag == _ALAW and bits == 8:
        return g711.alaw_decode(raw)
    raise AudioFormatError(f"{name}: unsupported WAV encoding (format tag {tag}, {bits} bits)",
                           hint="use PCM 16-bit, float, μ-law or A-law")


def read_wav(path: str | Path, *, max_seconds: float | None = None) -> Frame:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_WAV_BYTES:
            raise AudioFormatError(f"{p} is larger than 2 GiB")
        data = p.read_bytes()
    except FileNotFoundError:
        raise AudioFormatError(f"no such file: {p}") from None
    except IsADirectoryError:
        raise AudioFormatError(f"{p} is a directory, not an audio file") from None
    except PermissionError:
        raise AudioFormatError(f"cannot read {p}: permission denied") from None
    return read_wav_bytes(data, name=str(p), max_seconds=max_seconds)


def wav_bytes(frame: Frame) -> bytes:
    buf = io.BytesIO()
    pcm = frame.to_bytes()
    buf.write(b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE")
    buf.write(b"fmt " + struct.pack("<IHHIIHH", 16, _PCM, 1, frame.rate, frame.rate * 2, 2, 16))
    buf.write(b"data" + struct.pack("<I", len(pcm)) + pcm)
    return buf.getvalue()


def write_wav(path: str | Path, frame: Frame) -> None:
    try:
        Path(path).write_bytes(wav_bytes(frame))
    except OSError as e:  # a write's error (a full disk) does not name the file: say which one
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def load_audio(path: str | Path, *, rate: int | None = None, max_seconds: float | None = None) -> Frame:
    """Any audio file -> mono PCM16. WAV is parsed here; other containers (mp3, flac, ogg...)
    go through PyAV, which faster-whisper already depends on. Resampled to `rate` if given.

    With `max_seconds`, longer audio is refused (`AudioTooLong`) as soon as that is known: from
    a WAV header, or while decoding anything else (a compressed file can decode to hundreds of
    times its size), never after decoding it all."""
    from moksori.audio.resample import resample

    p = Path(path)
    if not p.exists():
        raise AudioFormatError(f"no such file: {p}")
    if p.is_dir():
        raise AudioFormatError(f"{p} is a directory, not an audio file")
    with open(p, "rb") as fh:
        head = fh.read(12)
    if head[:4] in (b"RIFF", b"RF64"):
        frame = read_wav(p, max_seconds=max_seconds)
    else:
        frame = _decode_with_av(p, rate=rate, max_seconds=max_seconds)
    return resample(frame, rate) if rate else frame


def _decode_with_av(p: Path, *, rate: int | None = None, max_seconds: float | None = None) -> Frame:
    try:
        import av
    except ImportError:  # pragma: no cover - av ships with faster-whisper
        raise AudioFormatError(f"{p}: not a WAV file, and PyAV is not installed to decode it") from None
    try:
        with av.open(str(p), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioFormatError(f"{p} has no audio stream")
            stream = container.streams.audio[0]
            rate = rate or stream.rate or stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            limit = None if max_seconds is None else int(max_seconds * rate)
            chunks, total = [], 0
            for packet_frame in container.decode(stream):
                for f in resampler.resample(packet_frame):
                    chunks.append(f.to_ndarray().reshape(-1))
                    total += len(chunks[-1])
                if limit is not None and total > limit:
                    raise AudioTooLong(f"{p} is longer than the limit of {max_seconds:g} s")
            for f in resampler.resample(None):
                chunks.append(f.to_ndarray().reshape(-1))
    except AudioFormatError:
        raise
    except Exception as e:  # noqa: BLE001 - av raises many types; translated at this boundary
        raise AudioFormatError(f"{p} is not a readable audio file ({type(e).__name__})") from None
    if not chunks:
        raise AudioFormatError(f"{p} contains no audio samples")
    return Frame(np.concatenate(chunks).astype(np.int16), int(rate))
