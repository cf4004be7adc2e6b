"""Audio building blocks: PCM16 frames, resampling (libsoxr), G.711, WAV files.

The Whisper-style log-mel front end (`moksori.audio.features`) serves the smart-turn model and is
not re-exported.
"""

from moksori.audio.frames import SUPPORTED_RATES, Frame, concat, float_to_pcm16, pcm16_to_float
from moksori.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from moksori.audio.resample import StreamResampler, resample, resample_float
from moksori.audio.wav import load_audio, read_wav, read_wav_bytes, wav_bytes, write_wav

__all__ = [
    "SUPPORTED_RATES", "Frame", "concat", "float_to_pcm16", "pcm16_to_float",
    "alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode",
    "StreamResampler", "resample", "resample_float",
    "load_audio", "read_wav", "read_wav_bytes", "wav_bytes", "write_wav",
]
