"""The stack's providers when the realtime brain speaks (`MOKSORI_BRAIN=realtime`).

The upstream hears and speaks, so no local LLM or TTS model is loaded:

* `RealtimeLLM` is the upstream used as a text model (`moksori chat --text`, summaries of old
  turns): one upstream session in text mode, kept in step with the messages each request
  carries (new messages are added, diverging ones deleted), one response per request.
* `UpstreamTTS` stands where the voice was: it names the upstream's voices (so a Realtime
  client's `voice: "marin"` passes through) and refuses to synthesize.
* `UpstreamSTT` stands in for speech recognition when the upstream's VAD ends turns (the upstream
  transcribes); with `MOKSORI_REALTIME_TURN_DETECTION=moksori` the real STT is loaded instead,
  for the transcript cue of Moksori's turn-taking.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np

from moksori.audio.frames import Frame
from moksori.errors import ProviderError
from moksori.providers.base import (
    LLM,
    STT,
    TTS,
    ChatDone,
    ChatEvent,
    ChatRequest,
    LLMCaps,
    Message,
    STTCaps,
    STTOptions,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    Transcript,
    TTSCaps,
    TTSOptions,
    Usage,
)

from . import events as ev
from .client import RealtimeUpstream
from .options import UpstreamOptions
from .transport import Connector

log = logging.getLogger("moksori.brains.realtime")

__all__ = ["RealtimeLLM", "UpstreamTTS", "UpstreamSTT", "OPENAI_VOICES"]

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
REPLY_TIMEOUT_S = 60.0


class UpstreamTTS(TTS):
    """No local voice: the upstream speaks. Its voices are listed so clients may pick one."""

    name = "realtime-upstream"
    standin = True

    def __init__(self, voices: tuple[str, ...] = OPENAI_VOICES) -> None:
        self.caps = TTSCaps(sample_rate=24000, languages=("en", "ko"), voices=voices)

    async def synthesize(self, text: str, opts: TTSOptions) -> AsyncIterator[Frame]:
        raise ProviderError("there is no local voice with MOKSORI_BRAIN=realtime: the upstream speaks",
                            retryable=False, provider=self.name)
        yield  # pragma: no cover


class UpstreamSTT(STT):
    """No local speech recognition: the upstream transcribes the user's turns."""

    name = "realtime-upstream"
    standin = True
    caps = STTCaps(languages=("en", "ko"))

    async def transcribe(self, audio: AsyncIterable[np.ndarray], opts: STTOptions) -> AsyncIterator[Transcript]:
        raise ProviderError("there is no local speech recognition with MOKSORI_BRAIN=realtime and the upstream's "
                            "turn detection (set MOKSORI_REALTIME_TURN_DETECTION=moksori to load it)",
                            retryable=False, provider=self.name)
        yield  # pragma: no cover


def _key(m: Message) -> tuple[Any, ...]:
    return (m.role, m.content.strip(), tuple((c.id, c.name, c.arguments) for c in m.tool_calls), m.tool_call_id)


class RealtimeLLM(LLM):
    """The upstream as a text model. One request at a time; the upstream's conversation mirrors
    the request's messages (after the system prompt, which goes as the response's instructions)."""

    name = "realtime"

    def __init__(self, options: UpstreamOptions, *, connector: Connector | None = None,
                 context_tokens: int = 32_000) -> None:
        session = replace(options.session, turn="manual", output_modalities=("text",), transcription_model="",
                          tools=())
        self.options = replace(options, session=session, reconnect=replace(options.reconnect, resume=False))
        self.model = options.endpoint.model or "realtime"
        self.caps = LLMCaps(tools=True, context_tokens=context_tokens, languages=("en", "ko"))
        self._connector = connector
        self._up: RealtimeUpstream | None = None
        self._lock = asyncio.Lock()
        self._mirror: list[tuple[tuple[Any, ...], list[str]]] = []  # (message key, its upstream item ids)

    async def close(self) -> None:
        if self._up is not None:
            await self._up.close()
            self._up = None

    async def _client(self) -> RealtimeUpstream:
        if self._up is not None and self._up.failure is not None:
            await self._up.close()
            self._up, self._mirror = None, []
        if self._up is None:
            up = RealtimeUpstream(self.options, connector=self._connector)
            await up.start()
            self._up = up
        return self._up

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        async with self._lock:
            up = await self._client()
            system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
            msgs = [m for m in request.messages if m.role != "system"]
            await self._sync(up, msgs)
            up.discard_pending()
            tools = tuple({"name": t.name, "description": t.description, "parameters": t.parameters}
                          for t in request.tools)
            choice: Any = request.tool_choice if request.tool_choice in ("auto", "none", "required") else \
                {"type": "function", "name": request.tool_choice}
            await up.create_response(instructions=system or None, modalities=("text",), tools=tools or None,
                                     tool_choice=choice if tools else None)
            finished, items, text, calls = False, [], "", []
            try:
                while True:
                    e = await up.next_event(REPLY_TIMEOUT_S)
                    if e is None or isinstance(e, ev.UpstreamFailed):
                        raise ProviderError("the realtime upstream is gone", retryable=True, provider=self.name)
                    if isinstance(e, ev.AssistantTranscriptDelta):
                        if e.item_id not in items:
                            items.append(e.item_id)
                        if e.delta:
                            text += e.delta
                            yield TextDelta(e.delta)
                    elif isinstance(e, ev.FunctionCall):
                        items.append(e.item_id)
                        call = ToolCall(e.call_id, e.name, e.arguments)
                        calls.append(call)
                        yield ToolCallEvent(call)
                    elif isinstance(e, ev.ResponseDone):
                        if e.synthetic:
                            raise ProviderError("the realtime upstream dropped mid-reply", retryable=True,
                                                provider=self.name)
                        if e.status == "failed":
                            raise ProviderError(f"the realtime upstream failed the reply ({e.reason})",
                                                retryable=False, provider=self.name)
                        items += [i for i in e.item_ids if i not in items]
                        finished = True
                        self._mirror.append((_key(Message("assistant", text.strip(), tool_calls=tuple(calls))), items))
                        u = e.usage
                        if u is not None:
                            yield Usage(input_tokens=u.input_tokens + u.input_audio_tokens,
                                        output_tokens=u.output_tokens + u.output_audio_tokens,
                                        cached_tokens=u.cached_tokens + u.cached_audio_tokens)
                        yield ChatDone("tool_calls" if calls else "length" if e.status == "incomplete" else "stop")
                        return
                    elif isinstance(e, ev.UpstreamError) and e.client_event == "response.create":
                        raise ProviderError(f"the realtime upstream refused the request: {e.message}",
                                            retryable=False, provider=self.name)
            except asyncio.TimeoutError:
                raise ProviderError(f"no reply from the realtime upstream in {REPLY_TIMEOUT_S:g} s", retryable=True,
                                    provider=self.name) from None
            finally:
                if not finished:  # cancelled, or failed: nothing of it stays upstream
                    await up.cancel_response()
                    for iid in items:
                        await up.delete_item(iid)

    async def _sync(self, up: RealtimeUpstream, msgs: list[Message]) -> None:
        """Make the upstream conversation hold exactly `msgs`: keep the common start, delete
        what diverges, add the rest."""
        keys = [_key(m) for m in msgs]
        n = 0
        while n < len(self._mirror) and n < len(keys) and self._mirror[n][0] == keys[n]:
            n += 1
        for _, ids in self._mirror[n:]:
            for iid in ids:
                await up.delete_item(iid)
        del self._mirror[n:]
        for m, key in zip(msgs[n:], keys[n:]):
            self._mirror.append((key, await self._add(up, m)))

    async def _add(self, up: RealtimeUpstream, m: Message) -> list[str]:
        if m.role == "tool":
            return [await up.add_function_output(m.tool_call_id or "", m.content)]
        ids = []
        if m.content.strip() or not m.tool_calls:
            ids.append(await up.add_message(m.role if m.role in ("user", "assistant") else "system", m.content))
        for c in m.tool_calls:
            ids.append(await up.add_function_call(c.id, c.name, c.arguments or json.dumps({})))
        return ids
