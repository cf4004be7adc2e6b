"""Real recorded speech spoken into a Realtime session by the official `openai` client.

`Client.open(port, key, user=...)` connects the SDK's Realtime client (`?user=` or the
`X-Moksori-User` header), keeps every server event in order, and `speak()` sends PCM at real-time
pace; `speech_pcm()` is an utterance of `../shared/speech` at 24 kHz with trailing silence;
`user_messages()` the non-system messages of a chat request (what the LLM was sent).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import numpy as np
import openai
from speech import utt

from moksori.audio.wav import load_audio

RATE = 24000
CHUNK_MS = 40


def speech_pcm(name: str = "en_028", *, pad_s: float = 3.0) -> np.ndarray:
    from moksori.audio.resample import resample

    frame = resample(load_audio(utt(name).path), RATE)
    return np.concatenate([frame.samples, np.zeros(int(pad_s * RATE), dtype=np.int16)])


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode()


class Client:
    """The official openai Realtime client, its events kept in order by a reader task."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, port: int, key: str, *, user: str | None = None, header: bool = False,
                   query: dict[str, str] | None = None) -> Client:
        client = openai.AsyncOpenAI(api_key=key, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
        extra_query = dict(query or {})
        extra_headers = {}
        if user is not None and header:
            extra_headers["X-Moksori-User"] = user
        elif user is not None:
            extra_query["user"] = user
        conn = await client.realtime.connect(model="moksori", extra_query=extra_query, extra_headers=extra_headers,
                                             max_retries=0).enter()
        return cls(conn)

    async def _read(self) -> None:
        try:
            while True:
                self.events.append(json.loads(await self.conn.recv_bytes()))
        except Exception:  # noqa: BLE001 - closed
            self.closed = True

    async def wait(self, typ: str, pred=lambda e: True, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e["type"] == typ and pred(e):
                    return e
            if self.closed or time.monotonic() > deadline:
                raise AssertionError(f"no {typ}; got {[e['type'] for e in self.events][-20:]}")
            await asyncio.sleep(0.02)

    async def setup(self, instructions: str | None = None) -> None:
        session: dict[str, Any] = {"type": "realtime", "audio": {"input": {
            "transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}
        if instructions:
            session["instructions"] = instructions
        await self.wait("session.created", timeout=10)
        await self.conn.session.update(session=session)
        await self.wait("session.updated", timeout=10)

    async def speak(self, pcm: np.ndarray) -> None:
        step = RATE * CHUNK_MS // 1000
        t0 = time.monotonic()
        for start in range(0, len(pcm), step):
            await self.conn.input_audio_buffer.append(audio=b64(pcm[start:start + step]))
            delay = t0 + (start + step) / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.conn.close()


def user_messages(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in request["messages"] if m["role"] != "system"]
