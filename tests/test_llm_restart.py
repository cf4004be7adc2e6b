"""An LLM server that dies mid-reply and comes back: the session it cut answers again, and a dead
upstream never holds a reply for ever.

The session tests run a real `moksori serve` (the embedded speech models, no store) whose LLM is
the scripted stand-in (`tests/scripted_llm_server.py`) behind a TCP proxy on loopback
(`tests/tcp_proxy.py`): `cut()` is the LLM server killed with `kill -9` (every open connection
dropped, new ones refused), `restore()` is it started again on the same port. The official
`openai` Realtime client types its turns. A reply cut that way fails (`provider_error`,
`response.done` failed); the same session's next reply must then be spoken and finished. It was
not: the failed reply had handed its playback to the session's speaker, which plays one reply at a
time, and never ended it, so every later reply of the session queued behind it, silent and never
done, until the client sent `response.cancel` (found on a cluster, where the LLM server is shared).
The virtual-time tests hold the engine alone to the same: a `Session` with the scripted fakes whose
LLM loses its connection after a word (no audio made yet) or after ten (the first clause playing).

The provider tests hold `resilient_openai_llm` (what the server builds from `MOKSORI_LLM_*`)
against servers on loopback that stop answering: the first-token and gap limits end the wait.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
from realtime_speech import Client
from scripted_llm_server import MODEL, ScriptedLLM
from servers import HOST, ServerProcess, ThreadedASGIServer, free_port
from speech import prepared_data_dir
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from tcp_proxy import TCPProxy

from moksori.engine import events as E
from moksori.engine.config import SessionConfig
from moksori.engine.session import Session
from moksori.errors import ProviderError, ProviderTimeout
from moksori.providers.base import ChatEvent, ChatRequest, Message, TextDelta
from moksori.providers.llm_openai import resilient_openai_llm
from moksori.settings import LLMSettings
from moksori.testing.fakes import ScriptedLLM as FakeLLM
from moksori.testing.fakes import fake_stack
from moksori.testing.harness import Recording
from moksori.testing.virtual_time import run_virtual

KEY = "sk-llm-restart-1"
SLOW_TOKEN_S = 0.3  # the cut reply's pace: LONG_REPLY takes ~20 s, so the cut lands mid-stream
ANSWER_S = 45.0  # the next reply's whole time on a busy 2-core machine (it hung for ever)


@pytest.fixture(scope="module")
def llm():
    scripted = ScriptedLLM()
    with ThreadedASGIServer(scripted.app) as srv, TCPProxy(HOST, srv.port) as proxy:
        yield scripted, proxy


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory):
    _, proxy = llm
    port = free_port()
    argv = [sys.executable, "-m", "moksori", "serve", "--host", HOST, "--port", str(port)]
    env = {"MOKSORI_DATA_DIR": str(prepared_data_dir(tmp_path_factory)), "MOKSORI_API_KEYS": KEY,
           "MOKSORI_STORE_URL": "none", "MOKSORI_LLM_PROVIDER": "openai",
           "MOKSORI_LLM_BASE_URL": f"http://{HOST}:{proxy.port}/v1", "MOKSORI_LLM_MODEL": MODEL,
           "MOKSORI_LANGUAGE": "en", "MOKSORI_CONFIG": "", "PYTHONUNBUFFERED": "1"}
    with ServerProcess(argv, port=port, ready_path="/health", ready_timeout_s=240, env=env,
                       cwd=tmp_path_factory.mktemp("serve")) as srv:
        yield srv


def _of(c: Client, typ: str, response_id: str) -> list[dict[str, Any]]:
    return [e for e in c.events if e["type"] == typ and e.get("response_id", e.get("response", {}).get("id")) == response_id]


async def _ask(c: Client, text: str, **response: Any) -> str:
    """A typed turn and `response.create`; the new reply's id."""
    before = {e["response"]["id"] for e in c.events if e["type"] == "response.created"}
    await c.conn.conversation.item.create(item={"type": "message", "role": "user",
                                                "content": [{"type": "input_text", "text": text}]})
    await c.conn.response.create(**({"response": response} if response else {}))
    created = await c.wait("response.created", lambda e: e["response"]["id"] not in before, timeout=60)
    return str(created["response"]["id"])


@pytest.mark.models
@pytest.mark.parametrize("cut_at", ["response.output_audio_transcript.delta", "response.output_audio.delta"],
                         ids=["before_its_audio", "while_it_plays"])
async def test_the_session_a_dead_llm_cut_answers_again_once_it_is_back(server, llm, cut_at):
    scripted, proxy = llm
    c = await Client.open(server.port, KEY, user="llm-restart")
    try:
        await c.wait("session.created", timeout=30)
        scripted.token_delay_s = SLOW_TOKEN_S
        cut = await _ask(c, "Tell me a long story.", instructions="scripted:long")
        await c.wait(cut_at, lambda e: e["response_id"] == cut, timeout=60)
        proxy.cut()  # the LLM server is killed mid-stream: its connections drop, new ones are refused
        try:
            done = await c.wait("response.done", lambda e: e["response"]["id"] == cut, timeout=60)
            assert done["response"]["status"] == "failed"
            assert any(e["type"] == "error" and e["error"]["code"] == "provider_error" for e in c.events)
        finally:
            scripted.token_delay_s = 0.01
            proxy.restore()  # back on the same port

        t0 = time.monotonic()
        again = await _ask(c, "Say hello.")
        done = await c.wait("response.done", lambda e: e["response"]["id"] == again, timeout=ANSWER_S)
        assert done["response"]["status"] == "completed", done["response"].get("status_details")
        assert _of(c, "response.output_audio.delta", again), "the reply after the restart was never heard"
        print(f"\nthe reply after the LLM came back: done in {time.monotonic() - t0:.1f} s")
    finally:
        await c.conn.close()


# ------------------------------------------------------------------ the same, in virtual time


class DiesMidReply(FakeLLM):
    """Its first stream says `words` words, then the connection is lost (as a killed server's);
    every later one answers in full."""

    def __init__(self, words: int, error: Exception | None = None) -> None:
        super().__init__("Once upon a time, a dragon lived in a cave. It slept all day long.", token_delay_s=0.2)
        self.words = words
        self.error = error or ProviderError(
            "cannot reach LLM server 127.0.0.1:8761 (RemoteProtocolError: peer closed connection without sending "
            "complete message body)", retryable=True)

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        if len(self.requests) > 0:
            async for ev in super().chat(request):
                yield ev
            return
        self.requests.append(request)
        for i, word in enumerate(str(self.reply).split(" ")[:self.words]):
            yield TextDelta(word if i == 0 else " " + word)
            await asyncio.sleep(self.token_delay_s)
        raise self.error


@pytest.mark.parametrize("bug", [False, True], ids=["provider_error", "a_bug_in_the_code"])
@pytest.mark.parametrize("words", [1, 10], ids=["before_its_audio", "while_it_plays"])
def test_a_reply_after_one_the_llm_failed_is_spoken_and_done(words, bug):
    """A provider's error, or an exception no provider translated (a bug: a KeyError in a
    plug-in's code), fails that reply and only that one: it ended the reply's task with the
    exception, the reply was never done and every later reply of the session waited on it."""
    llm = DiesMidReply(words, KeyError("choices") if bug else None)

    async def main() -> Recording:
        s = Session(fake_stack(llm=llm), SessionConfig(output_rate=16000, partial_interval_ms=0))
        rec = Recording(s.cfg.output_rate)
        s.bus.listen(rec)
        for text in ("Tell me a long story.", "Say hello."):  # as Realtime's item.create + response.create
            s.add_user_text(text, respond=False)
            s.create_response()
            await s.clock.sleep(15.0)
        seen = len(rec.events)
        await s.close()
        del rec.events[seen:]  # (closing cancels whatever still goes on)
        return rec

    rec = run_virtual(main())
    cut, again = (r.response_id for r in rec.of(E.AgentResponseStarted))
    done = {e.response_id: e for e in rec.of(E.AgentResponseDone)}
    assert done[cut].status == "failed"
    assert [e.code for e in rec.of(E.ErrorEvent)] == ["server_error" if bug else "provider_error"]
    assert again in done, "the reply after the failed one never ended"
    assert done[again].status == "completed" and not done[again].interrupted
    assert any(e.response_id == again for e in rec.of(E.AgentAudioStarted))
    if words > 1:  # the failed reply's first clause was made: it is played, then the reply ends
        assert any(e.response_id == cut for e in rec.of(E.AgentAudioStarted))
        heard = [e for e in rec.of(E.AgentAudioDone) if e.response_id == cut]
        assert heard and heard[0].samples > 0 and heard[0].t <= done[cut].t


# ------------------------------------------------------------------ a dead upstream, provider level

HELLO = ChatRequest(messages=(Message("user", "Say hello."),), max_tokens=12)


def _settings(url: str, **kw: Any) -> LLMSettings:
    return LLMSettings(provider="openai", base_url=url, model=MODEL, max_retries=0, **kw)


async def _drain(llm: Any) -> list[Any]:
    got: list[Any] = []
    async with aclosing(llm.chat(HELLO)) as events:
        async for ev in events:
            got.append(ev)
    return got


class OneTokenThenSilence:
    """Answers a chat request with its headers, one token, then SSE keep-alive comments for ever
    (bytes keep arriving, so no socket read timeout fires): a server stuck mid-generation."""

    def __init__(self) -> None:
        self.gone = threading.Event()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> StreamingResponse:
        await request.body()
        first = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}

        async def stream():
            try:
                yield f"data: {json.dumps(first)}\n\n"
                while True:
                    await asyncio.sleep(0.1)
                    yield ": still here\n\n"
            finally:
                self.gone.set()

        return StreamingResponse(stream(), media_type="text/event-stream")


async def test_a_stream_that_goes_silent_after_a_token_ends_at_the_gap_limit():
    server = OneTokenThenSilence()
    with ThreadedASGIServer(server.app) as srv:
        llm = resilient_openai_llm(_settings(srv.url + "/v1", timeout_s=0.6, first_token_timeout_s=5.0))
        got: list[Any] = []
        t0 = time.monotonic()
        try:
            with pytest.raises(ProviderTimeout, match="silent"):
                async with aclosing(llm.chat(HELLO)) as events:
                    async for ev in events:
                        got.append(ev)
        finally:
            await llm.close()
        assert got == [TextDelta("Hel")]
        assert time.monotonic() - t0 < 4.0  # 0.6 s plus slack for a busy 2-core machine
        assert await asyncio.to_thread(server.gone.wait, 5)  # and the stream was abandoned


async def test_a_server_that_takes_the_connection_and_never_answers_ends_at_the_first_token_limit():
    # a listening socket nobody accepts from: the kernel completes the handshake and takes the
    # request, and no byte ever comes back (a server frozen, or a host gone behind a live port)
    with socket.create_server((HOST, 0), backlog=8) as hole:
        url = f"http://{HOST}:{hole.getsockname()[1]}/v1"
        llm = resilient_openai_llm(_settings(url, timeout_s=30.0, first_token_timeout_s=0.6))
        t0 = time.monotonic()
        try:
            with pytest.raises(ProviderTimeout, match="sent nothing"):
                await _drain(llm)
        finally:
            await llm.close()
        assert time.monotonic() - t0 < 4.0
