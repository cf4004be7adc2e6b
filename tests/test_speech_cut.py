"""`/v1/audio/speech` when the synthesis fails after the answer has started: a `pcm` answer is
left incomplete (the connection closes without HTTP's last chunk), so a client can tell it from a
whole one (it ended cleanly, as if the text were all said); a `wav` answer, sent whole, is a 502.
The real app on 127.0.0.1 with a fake TTS that fails on a later piece of the text (a named stand-in:
the packaged Piper does not fail on demand)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from moksori.audio.frames import Frame
from moksori.errors import ProviderError
from moksori.providers.base import TTSOptions
from moksori.server.app import create_app
from moksori.settings import load_settings
from moksori.testing.fakes import ToneTTS, fake_stack
from servers import ThreadedASGIServer, free_port

TEXT = "This is the first sentence of a long answer. " * 20 + "And this is where the voice breaks down. " * 20


class FailsMidAnswer(ToneTTS):
    """Synthesizes text until it meets the words "breaks down", then raises (a TTS server that
    died mid-answer)."""

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        if "breaks down" in text:
            raise ProviderError("the voice broke down", retryable=False, provider="fake-tts")
        async for frame in super().synthesize(text, opts):
            yield frame


@pytest.fixture(scope="module")
def server():
    port = free_port()
    settings = load_settings(store={"url": "none"})
    srv = ThreadedASGIServer(create_app(settings, fake_stack(tts=FailsMidAnswer(seconds_per_char=0.002))),
                             port=port).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_pcm_answer_cut_by_a_failure_is_left_incomplete(server) -> None:
    body = ('{"model": "tts-1", "voice": "alloy", "response_format": "pcm", "input": "%s"}' % TEXT).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        received = b""
        while chunk := s.recv(1 << 16):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in received.lower()
    assert len(received) > 1000  # the first text's audio went out
    assert not received.endswith(b"0\r\n\r\n")  # but the answer was not ended as if whole


def test_a_wav_answer_cut_by_a_failure_is_a_502(server) -> None:
    r = httpx.post(f"{server.url}/v1/audio/speech", timeout=20,
                   json={"model": "tts-1", "voice": "alloy", "response_format": "wav", "input": TEXT})
    assert r.status_code == 502, r.status_code
    assert r.json()["error"]["code"] == "synthesis_failed" and "broke down" in r.json()["error"]["message"]
