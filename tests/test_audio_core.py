"""Audio plumbing without models: frames, G.711, WAV parsing, resampling, log-mel features."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from moksori.audio import g711
from moksori.audio.features import log_mel
from moksori.audio.frames import Frame, concat, float_to_pcm16, pcm16_to_float
from moksori.audio.resample import StreamResampler, resample, resample_float
from moksori.audio.wav import read_wav, read_wav_bytes, wav_bytes, write_wav
from moksori.errors import AudioFormatError, AudioTooLong

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


# --------------------------------------------------------------------------- WAV builder

def make_wav(tag: int, channels: int, rate: int, bits: int, payload: bytes, *,
             data_size: int | None = None, riff_size: int | None = None, extensible_tag: int | None = None,
             extra_chunks: bytes = b"") -> bytes:
    """A WAV file as bytes, built field by field (so the tests do not trust the writer under test)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible_tag is not None else tag, channels, rate, rate * block,
                      block, bits)
    if extensible_tag is not None:
        # cbSize, valid bits, channel mask, then the sub-format GUID whose first 2 bytes are the tag
        guid = struct.pack("<H", extensible_tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + guid
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", len(payload) if data_size is None else data_size) + payload
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def pcm16_bytes(x: np.ndarray) -> bytes:
    return np.asarray(x, dtype="<i2").tobytes()


# --------------------------------------------------------------------------- Frame


class TestFrame:
    def test_valid_frame(self):
        f = Frame(np.zeros(160, dtype=np.int16), 8000)
        assert f.duration == pytest.approx(0.02)
        assert len(f) == 160

    @pytest.mark.parametrize("samples", [
        np.zeros(10, dtype=np.float32),
        np.zeros(10, dtype=np.int32),
        np.zeros((10, 2), dtype=np.int16),
    ])
    def test_rejects_wrong_dtype_or_shape(self, samples):
        with pytest.raises(AudioFormatError, match="1-D int16"):
            Frame(samples, 16000)

    @pytest.mark.parametrize("rate", [0, 999, 192001, -16000])
    def test_rejects_bad_rate(self, rate):
        with pytest.raises(AudioFormatError, match="sample rate"):
            Frame(np.zeros(10, dtype=np.int16), rate)

    def test_bytes_round_trip(self):
        x = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
        f = Frame.from_bytes(pcm16_bytes(x), 16000)
        assert f.samples.tolist() == x.tolist()
        assert f.to_bytes() == pcm16_bytes(x)

    def test_odd_byte_count(self):
        with pytest.raises(AudioFormatError, match="even"):
            Frame.from_bytes(b"\x00\x01\x02", 16000)

    def test_float_conversion_clips_and_round_trips(self):
        x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], dtype=np.float32)
        pcm = float_to_pcm16(x)
        assert pcm.tolist() == [-32767, -32767, -16384, 0, 16384, 32767, 32767]
        back = pcm16_to_float(pcm)
        assert np.abs(back[1:-1] - x[1:-1]).max() < 1e-4
        assert Frame.from_float(x, 8000).samples.tolist() == pcm.tolist()

    def test_silence_and_concat(self):
        a = Frame.silence(0.25, 16000)
        assert len(a) == 4000 and not a.samples.any()
        b = Frame(np.ones(100, dtype=np.int16), 16000)
        c = concat([a, b])
        assert len(c) == 4100 and c.rate == 16000
        with pytest.raises(AudioFormatError):
            concat([a, Frame.silence(0.1, 8000)])
        with pytest.raises(AudioFormatError):
            concat([])


# --------------------------------------------------------------------------- G.711


class TestG711:
    @pytest.mark.parametrize("enc,dec,small_abs,rel", [
        (g711.ulaw_encode, g711.ulaw_decode, 16, 0.055),
        (g711.alaw_encode, g711.alaw_decode, 8, 0.035),
    ], ids=["ulaw", "alaw"])
    def test_round_trip_error_bounds(self, enc, dec, small_abs, rel):
        x = ALL_PCM.astype(np.int32)
        y = dec(enc(ALL_PCM)).astype(np.int32)
        err = np.abs(y - x)
        mag = np.abs(x)
        assert err[mag < 256].max() <= small_abs
        mid = (mag >= 256) & (mag <= 32000)
        assert (err[mid] / mag[mid]).max() <= rel
        assert err.max() <= 700  # the top of the range saturates at the largest code
        # monotonic: a louder input never decodes quieter
        assert np.all(np.diff(y) >= 0)

    def test_sine_snr(self):
        x = float_to_pcm16(sine(440, 8000, 1.0, amp=0.5))
        for enc, dec in ((g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)):
            y = dec(enc(x)).astype(np.float64)
            noise = y - x
            snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(noise ** 2))
            assert snr > 33, snr  # G.711 gives ~38 dB on a loud tone

    def test_codes_round_trip(self):
        codes = bytes(range(256))
        assert g711.alaw_encode(g711.alaw_decode(codes)) == codes
        back = g711.ulaw_encode(g711.ulaw_decode(codes))
        # μ-law has two zeros (0x7F "-0" and 0xFF "+0"); every other code is its own round trip
        diff = [i for i in range(256) if back[i] != codes[i]]
        assert diff == [0x7F] and back[0x7F] == 0xFF

    def test_exact_match_with_audioop(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            audioop = pytest.importorskip("audioop")
        raw = pcm16_bytes(ALL_PCM)
        assert g711.ulaw_encode(ALL_PCM) == audioop.lin2ulaw(raw, 2)
        assert g711.alaw_encode(ALL_PCM) == audioop.lin2alaw(raw, 2)
        codes = bytes(range(256))
        assert g711.ulaw_decode(codes).tolist() == np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2").tolist()
        assert g711.alaw_decode(codes).tolist() == np.frombuffer(audioop.alaw2lin(codes, 2), "<i2").tolist()


# --------------------------------------------------------------------------- WAV


class TestWav:
    def test_write_read_round_trip(self, tmp_path):
        x = float_to_pcm16(sine(300, 22050, 0.3))
        p = tmp_path / "a.wav"
        write_wav(p, Frame(x, 22050))
        f = read_wav(p)
        assert f.rate == 22050 and f.samples.tolist() == x.tolist()
        assert read_wav_bytes(wav_bytes(Frame(x, 8000))).rate == 8000

    def test_pcm16_mono(self):
        x = np.array([0, 100, -100, 32767, -32768], dtype=np.int16)
        f = read_wav_bytes(make_wav(1, 1, 16000, 16, pcm16_bytes(x)))
        assert f.rate == 16000 and f.samples.tolist() == x.tolist()

    def test_pcm8(self):
        raw = bytes([128, 255, 0, 192, 64])  # unsigned, 128 is zero
        f = read_wav_bytes(make_wav(1, 1, 8000, 8, raw))
        expected = [0, 127 / 128, -1.0, 0.5, -0.5]
        assert np.allclose(f.samples / 32767, expected, atol=1e-4)

    def test_pcm24(self):
        vals = [0, 1 << 22, -(1 << 22), (1 << 23) - 1, -(1 << 23)]
        raw = b"".join(struct.pack("<i", v)[:3] for v in vals)
        f = read_wav_bytes(make_wav(1, 1, 48000, 24, raw))
        assert np.allclose(f.samples / 32767, [0, 0.5, -0.5, 1.0, -1.0], atol=1e-4)

    def test_pcm32(self):
        vals = np.array([0, 1 << 30, -(1 << 30), (1 << 31) - 1, -(1 << 31)], dtype="<i4")
        f = read_wav_bytes(make_wav(1, 1, 44100, 32, vals.tobytes()))
        assert np.allclose(f.samples / 32767, [0, 0.5, -0.5, 1.0, -1.0], atol=1e-4)

    def test_float32_and_nan(self):
        vals = np.array([0.0, 0.25, -0.25, 1.5, np.nan], dtype="<f4")
        f = read_wav_bytes(make_wav(3, 1, 24000, 32, vals.tobytes()))
        assert np.allclose(f.samples / 32767, [0, 0.25, -0.25, 1.0, 0.0], atol=1e-4)

    def test_float64_extensible(self):
        vals = np.array([0.0, 0.5, -0.5], dtype="<f8")
        f = read_wav_bytes(make_wav(0, 1, 16000, 64, vals.tobytes(), extensible_tag=3))
        assert np.allclose(f.samples / 32767, [0, 0.5, -0.5], atol=1e-4)

    @pytest.mark.parametrize("tag,enc,dec", [(7, g711.ulaw_encode, g711.ulaw_decode),
                                             (6, g711.alaw_encode, g711.alaw_decode)], ids=["ulaw", "alaw"])
    def test_g711_wav(self, tag, enc, dec):
        x = float_to_pcm16(sine(1000, 8000, 0.1))
        f = read_wav_bytes(make_wav(tag, 1, 8000, 8, enc(x)))
        assert f.rate == 8000 and f.samples.tolist() == dec(enc(x)).tolist()

    def test_stereo_float_downmix(self):
        left = np.array([0.5, -0.5, 0.25, 0.0], dtype="<f4")
        right = np.array([0.25, -0.25, -0.25, 0.0], dtype="<f4")
        raw = np.stack([left, right], axis=1).reshape(-1).tobytes()
        f = read_wav_bytes(make_wav(3, 2, 16000, 32, raw))
        assert np.allclose(f.samples / 32767, (left + right) / 2, atol=1e-4)

    def test_stereo_pcm16_downmix(self):
        left = np.array([1000, -2000, 3000, 0], dtype=np.int16)
        right = np.array([3000, -4000, 1000, 0], dtype=np.int16)
        raw = pcm16_bytes(np.stack([left, right], axis=1).reshape(-1))
        f = read_wav_bytes(make_wav(1, 2, 16000, 16, raw))
        assert f.samples.tolist() == [2000, -3000, 2000, 0]

    @pytest.mark.parametrize("size", [0xFFFFFFFF, 0])
    def test_streaming_header_reads_to_end(self, size):
        x = float_to_pcm16(sine(200, 22050, 0.2))
        data = make_wav(1, 1, 22050, 16, pcm16_bytes(x), data_size=size, riff_size=0xFFFFFFFF)
        f = read_wav_bytes(data)
        assert f.samples.tolist() == x.tolist()

    def test_data_size_larger_than_file_is_truncated_not_an_error(self):
        x = np.arange(100, dtype=np.int16)
        f = read_wav_bytes(make_wav(1, 1, 16000, 16, pcm16_bytes(x), data_size=10_000))
        assert f.samples.tolist() == x.tolist()

    def test_skips_unknown_chunks_with_padding(self):
        x = np.arange(50, dtype=np.int16)
        junk = b"LIST" + struct.pack("<I", 3) + b"abc" + b"\x00"  # odd size: one pad byte
        f = read_wav_bytes(make_wav(1, 1, 16000, 16, pcm16_bytes(x), extra_chunks=junk))
        assert f.samples.tolist() == x.tolist()

    # ------------------------------------------------------------------ errors

    def test_not_a_wav(self):
        with pytest.raises(AudioFormatError, match="not a WAV"):
            read_wav_bytes(b"ID3\x03\x00\x00\x00" + b"\x00" * 100, name="song.mp3")
        with pytest.raises(AudioFormatError, match="not a WAV"):
            read_wav_bytes(b"")

    def test_truncated_header(self):
        full = make_wav(1, 1, 16000, 16, b"\x00\x00" * 10)
        for cut in (4, 11, 20, 30):
            with pytest.raises(AudioFormatError) as ei:
                read_wav_bytes(full[:cut], name="cut.wav")
            assert "\n" not in str(ei.value)

    def test_no_fmt_chunk(self):
        body = b"WAVE" + b"data" + struct.pack("<I", 4) + b"\x00" * 4
        with pytest.raises(AudioFormatError, match="fmt"):
            read_wav_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)

    def test_no_data_chunk(self):
        full = make_wav(1, 1, 16000, 16, b"")
        without = full[: full.index(b"data")]
        with pytest.raises(AudioFormatError, match="data"):
            read_wav_bytes(without)

    def test_unsupported_format_tag(self):
        with pytest.raises(AudioFormatError, match="format tag 2") as ei:
            read_wav_bytes(make_wav(2, 1, 8000, 4, b"\x00" * 64))  # MS ADPCM
        assert ei.value.hint  # tells what is accepted
        with pytest.raises(AudioFormatError, match="unsupported"):
            read_wav_bytes(make_wav(1, 1, 8000, 12, b"\x00" * 64))

    def test_implausible_header(self):
        with pytest.raises(AudioFormatError, match="implausible"):
            read_wav_bytes(make_wav(1, 0, 16000, 16, b"\x00" * 8))
        with pytest.raises(AudioFormatError, match="implausible"):
            read_wav_bytes(make_wav(1, 1, 10, 16, b"\x00" * 8))

    @pytest.mark.parametrize("block_align", [2, 0, 65535], ids=["honest", "zero", "inflated"])
    def test_length_limit_ignores_a_lying_block_align(self, block_align):
        # 2000 s of 16-bit mono at 1000 Hz; a block_align of 65535 made it look like 61 s
        data = bytearray(make_wav(1, 1, 1000, 16, b"\x00\x00" * 1000 * 2000))
        struct.pack_into("<H", data, 32, block_align)  # RIFF header 12 + chunk header 8 + 12 into fmt
        with pytest.raises(AudioTooLong, match="2000 s long"):
            read_wav_bytes(bytes(data), max_seconds=1800)
        assert len(read_wav_bytes(bytes(data), max_seconds=2000)) == 1000 * 2000

    def test_directory_and_missing_file(self, tmp_path):
        with pytest.raises(AudioFormatError, match="directory"):
            read_wav(tmp_path)
        with pytest.raises(AudioFormatError, match="no such file"):
            read_wav(tmp_path / "nope.wav")
        text = tmp_path / "x.wav"
        text.write_text("hello, not audio")
        with pytest.raises(AudioFormatError, match="not a WAV"):
            read_wav(text)


# --------------------------------------------------------------------------- resampling


def peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def out_of_band_db(x: np.ndarray, rate: int, freq: float, width: float = 60.0) -> float:
    """Energy away from `freq`, relative to the total, in dB."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    away = spec[np.abs(f - freq) > width].sum()
    return 10 * np.log10(away / spec.sum())


class TestResample:
    def test_chain_keeps_frequency_and_length(self):
        x8 = Frame(float_to_pcm16(sine(1000, 8000, 1.0)), 8000)
        x16 = resample(x8, 16000)
        x24 = resample(x16, 24000)
        for f, rate in ((x8, 8000), (x16, 16000), (x24, 24000)):
            assert f.rate == rate
            assert abs(len(f) - rate) <= 2
            y = f.samples.astype(np.float64)[rate // 10: -rate // 10]  # away from the edges
            assert abs(peak_hz(y, rate) - 1000) < 5
            assert out_of_band_db(y, rate, 1000) < -40  # no images or aliases
            assert 0.45 < np.abs(y).max() / 32767 < 0.55  # level kept

    def test_downsample_removes_content_above_nyquist(self):
        x = float_to_pcm16(sine(1000, 48000, 1.0, 0.3) + sine(6000, 48000, 1.0, 0.3))
        y = resample(Frame(x, 48000), 8000).samples.astype(np.float64)[800:-800]
        assert abs(peak_hz(y, 8000) - 1000) < 5
        # 6 kHz is above the 4 kHz Nyquist: it must be filtered, not folded to 2 kHz
        assert out_of_band_db(y, 8000, 1000) < -40

    def test_same_rate_and_empty(self):
        f = Frame(np.arange(10, dtype=np.int16), 16000)
        assert resample(f, 16000) is f
        e = resample(Frame(np.zeros(0, dtype=np.int16), 8000), 16000)
        assert e.rate == 16000 and len(e) == 0
        y = resample_float(np.ones(100, dtype=np.float32), 16000, 16000)
        assert y.dtype == np.float32 and len(y) == 100

    @pytest.mark.parametrize("src,dst", [(8000, 16000), (16000, 24000), (24000, 16000), (48000, 8000)])
    def test_stream_equals_one_shot(self, src, dst):
        x = float_to_pcm16(sine(1000, src, 1.0) + sine(150, src, 1.0, 0.2))
        one = resample(Frame(x, src), dst).samples.astype(np.int32)
        sr = StreamResampler(src, dst)
        rng = np.random.default_rng(src + dst)
        parts, i = [], 0
        while i < len(x):
            n = int(rng.integers(1, 700))
            parts.append(sr.process(x[i:i + n]))
            i += n
        parts.append(sr.process(np.zeros(0, dtype=np.int16)))
        parts.append(sr.flush())
        streamed = np.concatenate(parts).astype(np.int32)
        assert abs(len(streamed) - len(one)) <= 2
        n = min(len(one), len(streamed))
        assert np.abs(streamed[:n] - one[:n]).max() <= 4

    def test_stream_passthrough(self):
        sr = StreamResampler(16000, 16000)
        x = np.arange(100, dtype=np.int16)
        assert sr.process(x) is x
        assert len(sr.flush()) == 0


# --------------------------------------------------------------------------- log-mel


class TestLogMel:
    def test_matches_faster_whisper(self):
        from faster_whisper.feature_extractor import FeatureExtractor

        fe = FeatureExtractor(feature_size=80)
        rng = np.random.default_rng(3)
        t = np.arange(16000 * 3) / 16000
        voiced = (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t))
                  + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
        for x in (voiced, (0.1 * rng.standard_normal(12345)).astype(np.float32), voiced[:4000] * 0.001):
            ours = log_mel(x)
            ref = fe(x, padding=0)
            assert ours.shape == ref.shape == (80, len(x) // 160)
            assert np.abs(ours - ref).max() < 1e-3

    def test_shape_and_errors(self):
        short = log_mel(np.zeros(100, dtype=np.float32))  # shorter than one window: padded to one frame
        assert short.shape == (80, 1) and np.isfinite(short).all()
        assert log_mel(np.zeros(16000, dtype=np.float32)).shape == (80, 100)
        with pytest.raises(ValueError):
            log_mel(np.zeros((2, 160), dtype=np.float32))


# --- trim_leading_silence (a reply's first clause: Piper's leading near-silence is latency) ---


def _tone_after(silence_ms: int, rate: int = 24000, noise: float = 0.0) -> "Frame":
    import numpy as np

    from moksori.audio.frames import Frame

    rng = np.random.default_rng(0)
    quiet = noise * rng.standard_normal(silence_ms * rate // 1000)
    t = np.arange(rate // 2) / rate
    return Frame.from_float(np.concatenate([quiet, 0.3 * np.sin(2 * np.pi * 220 * t)]), rate)


def test_trim_leading_silence_keeps_10_ms_before_the_sound() -> None:
    from moksori.audio.frames import trim_leading_silence

    f = _tone_after(50, noise=0.001)  # -60 dBFS hiss, as Piper's lead-in
    out = trim_leading_silence(f)
    assert len(f) - len(out) == 40 * 24  # 50 ms of quiet -> 10 ms kept
    assert (out.samples[-100:] == f.samples[-100:]).all()


def test_trim_leading_silence_leaves_sound_silence_and_long_pauses_alone() -> None:
    import numpy as np

    from moksori.audio.frames import Frame, trim_leading_silence

    loud = _tone_after(0)
    assert trim_leading_silence(loud) is loud
    hush = Frame(np.zeros(2400, dtype=np.int16), 24000)  # 100 ms of nothing at all
    assert trim_leading_silence(hush) is hush
    assert len(trim_leading_silence(Frame(np.zeros(0, dtype=np.int16), 24000))) == 0
    late = _tone_after(500)
    assert len(late) - len(trim_leading_silence(late)) == 190 * 24  # at most max_ms (200) - keep_ms
