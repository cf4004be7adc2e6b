"""Bad input on the HTTP APIs of a real `moksori serve` (embedded models, the SQLite store).

Found by sending a real server what broken clients send:

* a WAV holding no samples (a header with an empty `data` chunk, or less data than one frame of
  its channels) was transcribed as "" with a 200, where any other empty audio file is a 400;
* metadata keys that differ only by a NUL or a lone surrogate (`"\\u0000"`, `"\\ud800"`: valid
  JSON) were stored as one key after the store cleaned them: a pair was lost without a word;
* a message whose whole text is NULs passed the "holds no text" check and was stored empty;
* `POST /v1/realtime/client_secrets` took `"session": []` (or `""`, `0`, `false`) for no session.

Also kept here, because no other test sends them through a real server: WAVs that are odd but
valid (stereo, 8-bit, cut short, of unknown length, WAVE_FORMAT_EXTENSIBLE) are transcribed, WAVs
whose header no decoder can read are the client's 400, and wrong methods are a 405 with a JSON
body. After each probe the server still serves a good request, and its log has no traceback.
"""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from servers import ServerProcess
from speech import prepared_data_dir, requires_speech, utt
from test_audio_api import moksori_serve

from moksori.audio.g711 import ulaw_encode
from moksori.audio.wav import load_audio

pytestmark = [pytest.mark.models, requires_speech]

EN = utt("en_028")  # "i have a thousand thoughts about that thing"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    with moksori_serve(prepared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("bad-input-http")) as srv:
        yield srv


@pytest.fixture
def clean_log(server: ServerProcess) -> Iterator[None]:
    """The probe leaves no traceback in the server's log, and a good request is served after it."""
    mark = len(server.log_text())
    yield
    r = httpx.post(f"{server.url}/v1/conversations", json={"items": [{"role": "user", "content": "Still here?"}]},
                   timeout=30)
    assert r.status_code == 200, r.text
    log = server.log_text()[mark:]
    assert "Traceback" not in log, log[-3000:]


def refused(r: httpx.Response, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI-shaped error of a refused request."""
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == code and err["message"], err
    if param is not None:
        assert err["param"] == param, err
    return err


# --------------------------------------------------------------------------- audio files


def riff(*chunks: tuple[bytes, bytes], size: int | None = None) -> bytes:
    """A RIFF/WAVE file of `(id, body)` chunks; `size` overrides the last chunk's size field."""
    out = b"WAVE"
    for i, (cid, body) in enumerate(chunks):
        n = size if size is not None and i == len(chunks) - 1 else len(body)
        out += cid + struct.pack("<I", n) + body + (b"\0" if len(body) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(out)) + out


def fmt(tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16) -> bytes:
    block = channels * max(bits, 8) // 8
    return struct.pack("<HHIIHH", tag, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)


def speech_pcm() -> np.ndarray:
    frame = load_audio(EN.path)
    assert frame.rate == 16000
    return frame.samples


def std_wav(samples: np.ndarray, *, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def transcribe(srv: ServerProcess, data: bytes, name: str = "speech.wav") -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/audio/transcriptions", files={"file": (name, data, "audio/wav")},
                      data={"model": "whisper-1"}, timeout=60)


EMPTY_WAVS = {
    "an empty data chunk": lambda: riff((b"fmt ", fmt()), (b"data", b"")),
    "less data than one frame": lambda: riff((b"fmt ", fmt(channels=3)), (b"data", b"\1\0\2\0")),
    "65535 channels, a second of data": lambda: riff((b"fmt ", fmt(channels=65535)), (b"data", b"\0" * 32000)),
}


@pytest.mark.parametrize("what", sorted(EMPTY_WAVS))
def test_a_wav_with_no_samples_is_the_clients_400(server: ServerProcess, clean_log: None, what: str) -> None:
    """Was a 200 with the text "" (an empty mp3 or ogg was, and is, a 400)."""
    err = refused(transcribe(server, EMPTY_WAVS[what](), "nothing.wav"), 400, "invalid_audio", "file")
    assert "nothing.wav" in err["message"] and "no audio" in err["message"], err


ODD_WAVS = {  # name -> the WAV of 16 kHz speech samples
    "stereo": lambda pcm: std_wav(np.repeat(pcm, 2), channels=2),
    "8-bit": lambda pcm: std_wav((pcm.astype(np.int32) // 256 + 128).astype(np.uint8), width=1),
    "mu-law": lambda pcm: riff((b"fmt ", fmt(tag=7, bits=8)), (b"data", ulaw_encode(pcm))),
    "cut short (the header says more)": lambda pcm: std_wav(pcm)[: 44 + len(pcm) * 9 // 10 * 2],
    "unknown length (0xFFFFFFFF)": lambda pcm: riff((b"fmt ", fmt()), (b"data", pcm.tobytes()), size=0xFFFFFFFF),
    "a LIST chunk first": lambda pcm: riff((b"LIST", b"INFOISFT\x05\0\0\0test\0"), (b"fmt ", fmt()),
                                           (b"data", pcm.tobytes())),
    "WAVE_FORMAT_EXTENSIBLE": lambda pcm: riff((b"fmt ", fmt(tag=0xFFFE) + struct.pack("<HHIH", 22, 16, 4, 1)
                                                + b"\0\0\0\0\x10\0\x80\0\0\xaa\0\x38\x9b\x71"),
                                               (b"data", pcm.tobytes())),
}


@pytest.mark.parametrize("what", list(ODD_WAVS))
def test_odd_but_valid_wavs_are_transcribed(server: ServerProcess, clean_log: None, what: str) -> None:
    r = transcribe(server, ODD_WAVS[what](speech_pcm()))
    assert r.status_code == 200, r.text
    assert "thousand" in r.json()["text"].lower(), r.json()


def size_field(data: bytes, at: int, size: int) -> bytes:
    return data[:at] + struct.pack("<I", size) + data[at + 4:]


BROKEN_WAVS = {
    "no fmt chunk": lambda: riff((b"data", b"\0" * 3200)),
    "a fmt chunk of 8 bytes": lambda: riff((b"fmt ", fmt()[:8]), (b"data", b"\0" * 3200)),
    "no data chunk": lambda: riff((b"fmt ", fmt())),
    "0 channels": lambda: riff((b"fmt ", fmt(channels=0)), (b"data", b"\0" * 3200)),
    "12-bit samples": lambda: riff((b"fmt ", fmt(bits=12)), (b"data", b"\0" * 3200)),
    "MPEG in a WAV": lambda: riff((b"fmt ", fmt(tag=0x55)), (b"data", b"\0" * 3200)),
    "500 Hz": lambda: riff((b"fmt ", fmt(rate=500)), (b"data", b"\0" * 3200)),
    "a fmt chunk 4 GB long": lambda: size_field(riff((b"fmt ", fmt()), (b"data", b"\0" * 3200)), 16, 0xFFFFFFF0),
    "not a WAVE (AVI)": lambda: riff((b"fmt ", fmt()), (b"data", b"\0" * 3200)).replace(b"WAVE", b"AVI ", 1),
}


@pytest.mark.parametrize("what", sorted(BROKEN_WAVS))
def test_a_wav_header_no_decoder_can_read_is_the_clients_400(server: ServerProcess, clean_log: None,
                                                             what: str) -> None:
    err = refused(transcribe(server, BROKEN_WAVS[what](), "broken.wav"), 400, "invalid_audio", "file")
    assert "broken.wav" in err["message"] and "/tmp" not in err["message"], err


# --------------------------------------------------------------------------- the Conversations API


def test_metadata_keys_that_differ_only_by_text_no_database_holds_are_refused(server: ServerProcess,
                                                                              clean_log: None) -> None:
    """Stored as one key each pair (the store drops NULs and turns lone surrogates into U+FFFD)."""
    before = httpx.get(f"{server.url}/v1/conversations?limit=100", timeout=10).json()["data"]
    conv = httpx.post(f"{server.url}/v1/conversations", json={"metadata": {"k": "v"}}, timeout=10).json()
    for raw in (b'{"metadata": {"a\\u0000": "1", "a": "2"}}', b'{"metadata": {"\\ud800": "1", "\\udbff": "2"}}'):
        for path in ("/v1/conversations", f"/v1/conversations/{conv['id']}"):
            r = httpx.post(server.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=10)
            refused(r, 400, "invalid_value", "metadata")
    assert httpx.get(f"{server.url}/v1/conversations/{conv['id']}", timeout=10).json()["metadata"] == \
        {"k": "v", "channel": "api"}
    after = httpx.get(f"{server.url}/v1/conversations?limit=100", timeout=10).json()["data"]
    assert [c["id"] for c in after] == [conv["id"]] + [c["id"] for c in before][:99]
    # values are text like an item's: a NUL dropped, a lone surrogate U+FFFD
    r = httpx.post(f"{server.url}/v1/conversations", content=b'{"metadata": {"k": "a\\u0000b\\ud800"}}',
                   headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 200 and r.json()["metadata"]["k"] == "ab\ufffd", r.text


def test_a_message_of_nothing_but_nuls_holds_no_text(server: ServerProcess, clean_log: None) -> None:
    """Was stored as an empty message."""
    conv = httpx.post(f"{server.url}/v1/conversations", json={}, timeout=10).json()
    body = b'{"items": [{"role": "user", "content": "\\u0000\\u0000"}]}'
    for path in ("/v1/conversations", f"/v1/conversations/{conv['id']}/items"):
        r = httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=10)
        refused(r, 400, "empty_text", "items[0].content")
    assert httpx.get(f"{server.url}/v1/conversations/{conv['id']}/items", timeout=10).json()["data"] == []


# --------------------------------------------------------------------------- ephemeral keys


@pytest.mark.parametrize("session", [[], "", 0, False, "realtime"], ids=repr)
def test_a_session_that_is_not_an_object_gets_no_key(server: ServerProcess, clean_log: None, session: Any) -> None:
    """Falsy ones (`[]`, `""`, `0`, `false`) were taken for no session and minted a key."""
    r = httpx.post(f"{server.url}/v1/realtime/client_secrets", json={"session": session}, timeout=10)
    refused(r, 400, "invalid_type", "session")


# --------------------------------------------------------------------------- wrong methods


@pytest.mark.parametrize("method, path", [
    ("PUT", "/v1/conversations"), ("PATCH", "/v1/conversations/conv_x"), ("POST", "/v1/conversations/conv_x/usage"),
    ("GET", "/v1/audio/speech"), ("GET", "/v1/audio/transcriptions"), ("GET", "/v1/realtime/client_secrets"),
    ("GET", "/telephony/twilio/voice"), ("PUT", "/telephony/plivo/answer"), ("DELETE", "/telephony/vonage/answer"),
])
def test_a_wrong_method_is_a_405_with_a_json_body(server: ServerProcess, clean_log: None, method: str,
                                                  path: str) -> None:
    r = httpx.request(method, server.url + path, content=b"{}", timeout=10)
    assert r.status_code == 405 and r.json(), r.text
