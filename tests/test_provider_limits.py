"""What a misbehaving OpenAI-compatible upstream (LLM, STT, TTS) can make this process hold.

Each test runs a raw HTTP server on 127.0.0.1 that answers badly: a huge error body, a huge
answer, a tool call streamed for longer than the first-token timeout or without end, usage
numbers that are not numbers, a redirect, a web page. Huge answers are finite (64 MiB) so
that the code before these fixes read them whole and the test failed rather than hung; what is
asserted is bounded (bytes the server could send before the client hung up, the length of an
error, how much audio came out), never how long something took.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import numpy as np
import pytest

from moksori.errors import ProviderError, ProviderTimeout
from moksori.providers.base import (
    ChatDone,
    ChatRequest,
    Message,
    STTOptions,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    ToolSpec,
    TTSOptions,
    Usage,
    one_chunk,
)
from moksori.providers.http import MAX_ERROR_BODY_BYTES
from moksori.providers.llm_openai import MAX_TOOL_ARGUMENTS_CHARS, MAX_WHOLE_ANSWER_BYTES, OpenAICompatLLM
from moksori.providers.resilience import ResilientLLM, RetryPolicy, Timeouts, note_progress, resilient_stream
from moksori.providers.stt_remote import RemoteSTT
from moksori.providers.tts_remote import PCM_RATE, RemoteTTS, max_speech_seconds

MiB = 1 << 20
HUGE = 64 * MiB  # what a hostile server offers
# Bytes a server can push into loopback socket buffers and the transport's write buffer before it
# notices that its client hung up: well under HUGE, whatever the kernel's buffer autotuning does.
SLACK = 16 * MiB
BLOCK = 64 * 1024

HELLO = ChatRequest(messages=(Message("user", "Say hello."),), max_tokens=12)
TOOL = ToolSpec("lookup", "Look something up", {"type": "object", "properties": {"q": {"type": "string"}}})
ASK_TOOL = ChatRequest(messages=(Message("user", "Look it up."),), tools=(TOOL,), tool_choice="auto")

Send = Callable[[bytes], Awaitable[None]]
Handler = Callable[[str, str, bytes, Send], Awaitable[None]]


class RawHTTP:
    """An HTTP/1.1 server on 127.0.0.1 in the test's own loop; one `handler(method, path, body,
    send)` answers every request, then the connection closes. `sent` counts the bytes the
    transport took (a write after the client hung up fails: the handler stops there)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent = 0
        self.requests: list[tuple[str, str, bytes]] = []
        self.client_gone = 0
        self.url = ""
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawHTTP:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()
            self.sent += len(data)

        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            method, path, _ = (await reader.readline()).decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            n = int(headers.get("content-length", "0"))
            body = await reader.readexactly(n) if n else b""
            self.requests.append((method, path, body))
            await self.handler(method, path, body, send)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.client_gone += 1
        finally:
            writer.close()
            self._tasks.discard(task)


def head(status: str, ctype: str, length: int | None = None, extra: str = "") -> bytes:
    h = f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\nconnection: close\r\n{extra}"
    if length is not None:
        h += f"content-length: {length}\r\n"
    return (h + "\r\n").encode()


async def send_filler(send: Send, n: int, byte: bytes = b"e") -> None:
    block = byte * BLOCK
    for _ in range(n // BLOCK):
        await send(block)


def sse(obj: dict[str, Any] | str) -> bytes:
    return b"data: " + (obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n\n"


def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def args_fragment(text: str, *, first: bool = False) -> dict[str, Any]:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": text}}
    if first:
        call.update(id="call_1", type="function")
        call["function"]["name"] = "lookup"
    return delta({"tool_calls": [call]})


SSE_HEAD = head("200 OK", "text/event-stream")


def llm(url: str, **kw: Any) -> OpenAICompatLLM:
    kw.setdefault("model", "m")
    return OpenAICompatLLM(base_url=url + "/v1", **kw)


async def chat(provider: Any, request: ChatRequest = HELLO) -> list[Any]:
    async with aclosing(provider.chat(request)) as events:
        return [ev async for ev in events]


async def transcribe(stt: RemoteSTT) -> list[Any]:
    return [t async for t in stt.transcribe(one_chunk(np.zeros(16000, np.float32)), STTOptions())]


async def synthesize(tts: RemoteTTS, text: str = "Hi there.") -> list[Any]:
    return [f async for f in tts.synthesize(text, TTSOptions())]


# --------------------------------------------------------------------------- 1. error bodies


async def huge_500(method: str, path: str, body: bytes, send: Send) -> None:
    await send(head("500 Internal Server Error", "text/plain", HUGE))
    await send_filler(send, HUGE)
    await asyncio.sleep(30)  # keeps the connection open: only the client can end it


@pytest.mark.parametrize("kind", ["llm", "llm_models", "stt", "tts"])
async def test_a_huge_error_body_is_read_only_up_to_the_cap(kind):
    async with RawHTTP(huge_500) as srv:
        provider: Any = (RemoteSTT(srv.url + "/v1") if kind == "stt" else RemoteTTS(srv.url + "/v1")
                         if kind == "tts" else llm(srv.url, model=None if kind == "llm_models" else "m"))
        try:
            with pytest.raises(ProviderError) as info:
                if kind == "stt":
                    await transcribe(provider)
                elif kind == "tts":
                    await synthesize(provider)
                elif kind == "llm_models":
                    await provider.load()  # asks GET /models for a model name
                else:
                    await chat(provider)
        finally:
            await provider.close()
        for _ in range(100):  # the server notices the hang-up at its next write
            if srv.client_gone:
                break
            await asyncio.sleep(0.02)
    err = info.value
    assert err.status == 500 and err.retryable and "HTTP 500: eeee" in str(err)
    assert len(str(err)) < 400
    assert srv.sent < MAX_ERROR_BODY_BYTES + SLACK  # of HUGE
    assert srv.client_gone == 1  # it hung up, rather than wait for the rest


# --------------------------------------------------------------------------- 2. huge answers


async def huge_json_answer(method: str, path: str, body: bytes, send: Send) -> None:
    pre = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"'
    post = b'"},"finish_reason":"stop"}]}'
    await send(head("200 OK", "application/json", len(pre) + HUGE + len(post)) + pre)
    await send_filler(send, HUGE, b"a")
    await send(post)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_huge_whole_answer_fails_and_is_not_retried(stream):
    async with RawHTTP(huge_json_answer) as srv:
        chain = ResilientLLM([llm(srv.url, stream=stream)], policy=RetryPolicy(max_attempts=3, base_delay_s=0.01))
        try:
            with pytest.raises(ProviderError) as info:
                await chat(chain)
        finally:
            await chain.close()
    err = info.value
    assert not err.retryable and "larger than 4 MiB" in str(err) and err.hint is None
    assert len(srv.requests) == 1
    assert srv.sent < MAX_WHOLE_ANSWER_BYTES + SLACK


async def test_a_huge_transcript_fails():
    async def answer(method: str, path: str, body: bytes, send: Send) -> None:
        await send(head("200 OK", "application/json", len(b'{"text":"') + HUGE + 2) + b'{"text":"')
        await send_filler(send, HUGE, b"a")
        await send(b'"}')

    async with RawHTTP(answer) as srv:
        stt = RemoteSTT(srv.url + "/v1")
        try:
            with pytest.raises(ProviderError, match="sent a transcript larger than") as info:
                await transcribe(stt)
        finally:
            await stt.close()
    assert not info.value.retryable and srv.sent < 2 * MiB + SLACK


def wav_head(data_bytes: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, PCM_RATE, PCM_RATE * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_bytes))


async def test_a_wav_far_longer_than_its_text_fails():
    async def answer(method: str, path: str, body: bytes, send: Send) -> None:
        await send(head("200 OK", "audio/wav", 44 + HUGE) + wav_head(HUGE))
        await send_filler(send, HUGE, b"\0")

    async with RawHTTP(answer) as srv:
        tts = RemoteTTS(srv.url + "/v1", response_format="wav")
        try:
            with pytest.raises(ProviderError, match="s of audio for 3 characters") as info:
                await synthesize(tts, "Hi.")
        finally:
            await tts.close()
    assert not info.value.retryable
    assert srv.sent < max_speech_seconds("Hi.", 1.0) * 48000 * 2 * 4 + SLACK


async def test_pcm_far_longer_than_its_text_is_cut_at_the_limit():
    async def answer(method: str, path: str, body: bytes, send: Send) -> None:
        await send(head("200 OK", "audio/pcm", HUGE))
        await send_filler(send, HUGE, b"\0")

    frames: list[Any] = []
    async with RawHTTP(answer) as srv:
        tts = RemoteTTS(srv.url + "/v1")
        try:
            with pytest.raises(ProviderError, match="s of audio for 3 characters") as info:
                async for f in tts.synthesize("Hi.", TTSOptions()):
                    frames.append(f)
        finally:
            await tts.close()
    assert not info.value.retryable
    seconds = sum(len(f) for f in frames) / PCM_RATE
    assert 0 < seconds <= max_speech_seconds("Hi.", 1.0) < 20
    assert srv.sent < HUGE // 2


# --------------------------------------------------------------------------- 3. tool-call arguments


def slow_tool_call(pieces: int, gap_s: float) -> Handler:
    async def answer(method: str, path: str, body: bytes, send: Send) -> None:
        await send(SSE_HEAD + sse(args_fragment('{"q": "', first=True)))
        for _ in range(pieces):
            await asyncio.sleep(gap_s)
            await send(sse(args_fragment("ab")))
        await send(sse(args_fragment('"}')) + sse(delta({}, "tool_calls")) + sse("[DONE]"))

    return answer


async def test_a_tool_call_streamed_for_longer_than_the_first_token_timeout_is_not_cut():
    # arguments arrive every 0.1 s for ~2.5 s: far past the 1 s limits, never 1 s apart
    async with RawHTTP(slow_tool_call(25, 0.1)) as srv:
        chain = ResilientLLM([llm(srv.url)], policy=RetryPolicy(max_attempts=1),
                             timeouts=Timeouts(first_item_s=1.0, idle_s=1.0))
        try:
            events = await chat(chain, ASK_TOOL)
        finally:
            await chain.close()
    assert events == [ToolCallEvent(ToolCall("call_1", "lookup", '{"q": "' + "ab" * 25 + '"}')),
                      ChatDone("tool_calls")]


async def test_a_tool_call_that_goes_silent_still_times_out():
    async def answer(method: str, path: str, body: bytes, send: Send) -> None:
        await send(SSE_HEAD + sse(args_fragment('{"q": "', first=True)))
        await asyncio.sleep(30)

    async with RawHTTP(answer) as srv:
        chain = ResilientLLM([llm(srv.url)], policy=RetryPolicy(max_attempts=2, base_delay_s=0.01),
                             timeouts=Timeouts(first_item_s=0.3, idle_s=0.3))
        try:
            with pytest.raises(ProviderTimeout, match="went silent for more than 0.3 s"):
                await chat(chain, ASK_TOOL)
        finally:
            await chain.close()
    assert len(srv.requests) == 2  # nothing was handed on: the attempt was retried


async def test_endless_tool_call_arguments_fail_at_the_cap():
    async def answer(method: str, path: str, body: bytes, send: Send) -> None:
        await send(SSE_HEAD + sse(args_fragment('{"q": "', first=True)))
        piece = sse(args_fragment("y" * 60_000))
        for _ in range(2 * MAX_TOOL_ARGUMENTS_CHARS // 60_000):
            await send(piece)
        await send(sse(args_fragment('"}')) + sse(delta({}, "tool_calls")) + sse("[DONE]"))

    async with RawHTTP(answer) as srv:
        chain = ResilientLLM([llm(srv.url)], policy=RetryPolicy(max_attempts=3, base_delay_s=0.01))
        try:
            with pytest.raises(ProviderError, match="tool calls longer than") as info:
                await chat(chain, ASK_TOOL)
        finally:
            await chain.close()
    assert not info.value.retryable and len(srv.requests) == 1


class Sleeps:
    async def __call__(self, s: float) -> None:
        return None


async def test_progress_restarts_the_first_and_idle_clocks_but_is_not_an_item():
    attempts = 0

    def make():
        async def gen():
            nonlocal attempts
            attempts += 1
            for _ in range(6):  # 0.6 s of progress before the first item, limits of 0.25 s
                await asyncio.sleep(0.1)
                note_progress()
            yield "first"
            for _ in range(6):
                await asyncio.sleep(0.1)
                note_progress()
            yield "second"

        return gen()

    out = [x async for x in resilient_stream(make, timeouts=Timeouts(first_item_s=0.25, idle_s=0.25),
                                             sleep=Sleeps())]
    assert out == ["first", "second"] and attempts == 1

    # a failure after progress (before any item) is retried: nothing was handed on
    tries = 0

    def flaky():
        async def gen():
            nonlocal tries
            tries += 1
            note_progress()
            if tries == 1:
                raise ProviderError("dropped", retryable=True, provider="fake")
            yield "ok"

        return gen()

    assert [x async for x in resilient_stream(flaky, sleep=Sleeps())] == ["ok"] and tries == 2


# --------------------------------------------------------------------------- 4. usage numbers


@pytest.mark.parametrize("stream", [True, False])
async def test_usage_numbers_that_are_not_counts_are_ignored(stream):
    # inf (`1e999`), an int no float can hold, NaN; and a negative count
    usage = ('{"prompt_tokens": 1e999, "completion_tokens": 1' + "0" * 400 + ', "total_tokens": -3, '
             '"prompt_tokens_details": {"cached_tokens": NaN}}')

    async def answer(method: str, path: str, body: bytes, send: Send) -> None:
        if stream:
            await send(SSE_HEAD + sse(delta({"content": "Hello."})) + sse(delta({}, "stop"))
                       + sse('{"choices": [], "usage": ' + usage + "}") + sse("[DONE]"))
        else:
            raw = ('{"choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "Hello."}}], '
                   '"usage": ' + usage + "}").encode()
            await send(head("200 OK", "application/json", len(raw)) + raw)

    async with RawHTTP(answer) as srv:
        chain = ResilientLLM([llm(srv.url, stream=stream)], policy=RetryPolicy(max_attempts=1))
        try:
            events = await chat(chain)
        finally:
            await chain.close()
    assert events == [TextDelta("Hello."), Usage(0, 0, 0), ChatDone("stop")]


# --------------------------------------------------------------------------- 5. not an answer


async def test_a_redirect_is_reported_and_not_retried():
    async def answer(method: str, path: str, body: bytes, send: Send) -> None:
        page = b"<html>moved</html>"
        await send(head("307 Temporary Redirect", "text/html", len(page), "location: /elsewhere/v1\r\n") + page)

    async with RawHTTP(answer) as srv:
        chain = ResilientLLM([llm(srv.url)], policy=RetryPolicy(max_attempts=3, base_delay_s=0.01))
        stt, tts = RemoteSTT(srv.url + "/v1"), RemoteTTS(srv.url + "/v1")
        try:
            with pytest.raises(ProviderError) as info:
                await chat(chain)
            assert len(srv.requests) == 1
            with pytest.raises(ProviderError, match="redirected to"):
                await transcribe(stt)
            with pytest.raises(ProviderError, match="redirected to"):  # not the page read as audio
                await synthesize(tts)
        finally:
            await chain.close()
            await stt.close()
            await tts.close()
    err = info.value
    assert f"redirected to {srv.url}/elsewhere/v1, not followed" in str(err)
    assert not err.retryable and err.status == 307


async def test_a_web_page_is_reported_and_not_retried():
    async def answer(method: str, path: str, body: bytes, send: Send) -> None:
        page = b"<html><body><h1>Welcome to nginx!</h1></body></html>\n"
        await send(head("200 OK", "text/html; charset=utf-8", len(page)) + page)

    async with RawHTTP(answer) as srv:
        chain = ResilientLLM([llm(srv.url)], policy=RetryPolicy(max_attempts=3, base_delay_s=0.01))
        try:
            with pytest.raises(ProviderError, match="answered text/html, not an event stream") as info:
                await chat(chain)
        finally:
            await chain.close()
    assert not info.value.retryable and len(srv.requests) == 1


async def test_a_whole_answer_whose_message_is_a_string_is_a_provider_error():
    async def answer(method: str, path: str, body: bytes, send: Send) -> None:
        raw = json.dumps({"choices": [{"message": "hello", "finish_reason": "stop"}]}).encode()
        await send(head("200 OK", "application/json", len(raw)) + raw)

    async with RawHTTP(answer) as srv:
        chain = ResilientLLM([llm(srv.url)], policy=RetryPolicy(max_attempts=3, base_delay_s=0.01))
        try:
            with pytest.raises(ProviderError, match="message is not an object") as info:
                await chat(chain)
        finally:
            await chain.close()
    assert not info.value.retryable and info.value.hint is None and "unexpected" not in str(info.value)


# --------------------------------------------------------------------------- moderation


async def test_a_huge_moderation_error_body_is_read_only_up_to_the_cap():
    """The moderation client (guardrails) read an error answer's body whole, as the providers did."""
    from moksori.guardrails.moderation import ModerationClient

    async with RawHTTP(huge_500) as srv:
        client = ModerationClient(srv.url + "/v1", retries=0, timeout_s=20)
        try:
            result = await client.check("hello")
        finally:
            await client.close()
        for _ in range(100):
            if srv.client_gone:
                break
            await asyncio.sleep(0.02)
    assert result.error is not None and "HTTP 500" in result.error and len(result.error) < 400
    assert srv.sent < MAX_ERROR_BODY_BYTES + SLACK  # of HUGE
    assert srv.client_gone == 1
