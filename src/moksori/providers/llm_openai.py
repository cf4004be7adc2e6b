"""LLM provider for any OpenAI-compatible chat server: vLLM, Ollama, llama.cpp, Azure OpenAI.

Talks to `POST {base_url}/chat/completions` with `stream: true` over plain httpx streaming (no
SDK: retries belong to `moksori.providers.resilience` alone). Every failure is translated here
into `ProviderError` / `ProviderTimeout`; no httpx exception leaves this module.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from moksori.errors import ConfigError, ProviderError, is_retryable_status
from moksori.providers._sse import SSEError, aiter_sse
from moksori.providers.http import (
    answer_error,
    check_base_url,
    host_of,
    read_at_most,
    too_large,
    transport_error,
    truncate,
)
from moksori.providers.base import (
    LLM,
    ChatDone,
    ChatEvent,
    ChatRequest,
    LLMCaps,
    Message,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from moksori.providers.resilience import note_progress

if TYPE_CHECKING:
    from moksori.providers.resilience import ResilientLLM
    from moksori.settings import LLMSettings

log = logging.getLogger(__name__)

PROVIDER = "openai"
_RETRYABLE_ERROR_TYPES = ("server_error", "internal_server_error", "overloaded_error", "rate_limit_error", "timeout")

# Caps on what one answer may make this process hold. llm.max_tokens is at most 8192: ~32 KB of
# text, ~200 KB even with every character JSON-escaped (`\uXXXX`), so these are far above any
# real answer. A 200 MB non-streamed answer read whole stalled the event loop 22 s and was
# spoken and stored as a 209,715,200-character reply.
MAX_WHOLE_ANSWER_BYTES = 4 << 20  # a non-streamed answer (`stream: false`, or `stream` ignored)
MAX_TOOL_ARGUMENTS_CHARS = 1 << 20  # names and arguments of one answer's tool calls, all together
MAX_MODEL_LIST_BYTES = 16 << 20  # `GET /models`: room for thousands of entries
# usage numbers above this are nonsense (no context window is near it) and are read as 0
MAX_USAGE_TOKENS = 100_000_000


def _message(m: Message) -> dict[str, Any]:
    d = m.to_openai()
    # An assistant turn that only calls tools: send "" rather than null. OpenAI accepts both;
    # llama-cpp-python's server rejects null (HTTP 500), and many local chat templates read
    # `message['content']` unconditionally, so omitting the key breaks them too.
    if "content" in d and d["content"] is None:
        d["content"] = ""
    return d


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _ToolCallAccumulator:
    """Merges streamed `tool_calls` fragments by index.

    Servers differ: OpenAI sends id/name once and arguments in pieces; llama.cpp's Python
    server repeats id and the full name on every fragment; some send arguments as an object.
    """

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}
        self.size = 0  # characters of names and arguments received in this answer

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, fragments: list[Any]) -> None:
        for pos, frag in enumerate(fragments):
            if not isinstance(frag, dict):
                continue
            index = frag.get("index")
            if not isinstance(index, int):
                index = pos
            call = self._calls.setdefault(index, _PartialCall())
            if isinstance(frag.get("id"), str) and frag["id"] and not call.id:
                call.id = frag["id"]
            fn = frag.get("function")
            if not isinstance(fn, dict):
                continue
            name = fn.get("name")
            if isinstance(name, str) and name and name != call.name:
                call.name += name
                self.size += len(name)
            args = fn.get("arguments")
            if isinstance(args, str):
                call.arguments.append(args)
                self.size += len(args)
            elif isinstance(args, dict):
                call.arguments = [json.dumps(args, ensure_ascii=False)]
                self.size += len(call.arguments[0])

    def drain(self) -> list[ToolCall]:
        out: list[ToolCall] = []
        for index in sorted(self._calls):
            c = self._calls[index]
            if not c.name:
                log.warning("dropping a streamed tool call without a function name (index %d)", index)
                continue
            out.append(ToolCall(id=c.id or f"call_{uuid.uuid4().hex[:24]}", name=c.name,
                                arguments="".join(c.arguments) or "{}"))
        self._calls.clear()
        return out


def is_azure_host(host: str) -> bool:
    return host.endswith((".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com"))


def azure_url(base_url: str, deployment: str | None, api_version: str | None) -> str:
    """Azure OpenAI: `https://RESOURCE.openai.azure.com` + deployment + `?api-version=` →
    `…/openai/deployments/DEPLOYMENT?api-version=…` (the provider appends /chat/completions).
    A URL that already names a deployment, or Azure's `/openai/v1` path, is kept as it is."""
    url = httpx.URL(base_url)
    path = url.path.rstrip("/")
    if deployment and "/deployments/" not in path and not path.endswith("/openai/v1"):
        if not path.endswith("/openai"):
            path += "/openai"
        path += f"/deployments/{deployment}"
    url = url.copy_with(path=path or "/")
    if api_version and "api-version" not in url.params:
        url = url.copy_merge_params({"api-version": api_version})
    return str(url)


def _stream_error(obj: dict[str, Any], host: str) -> ProviderError:
    err = obj.get("error")
    message = err.get("message") if isinstance(err, dict) else err
    code = err.get("code") if isinstance(err, dict) else None
    etype = err.get("type") if isinstance(err, dict) else None
    status = code if isinstance(code, int) else None
    if status is not None:
        retryable = is_retryable_status(status)
    else:
        retryable = isinstance(etype, str) and etype in _RETRYABLE_ERROR_TYPES
    return ProviderError(
        f"{host} reported an error mid-stream: {truncate(str(message or err))}",
        retryable=retryable, status=status, provider=PROVIDER,
    )


class OpenAICompatLLM(LLM):
    """Streams chat completions from an OpenAI-compatible server."""

    name = PROVIDER

    def __init__(
        self,
        *,
        base_url: str,
        model: str | None,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        caps: LLMCaps | None = None,
        extra_headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        include_usage: bool = True,
        azure: bool | None = None,
        stream: bool = True,
    ) -> None:
        url = check_base_url(base_url, "LLM")
        self._base = url
        self.base_url = str(url.copy_with(path=url.path.rstrip("/") or "/")).rstrip("/")
        self.model = model
        self._api_key = api_key or None
        self.timeout_s = timeout_s
        self.caps = caps or LLMCaps()
        self._extra_headers = dict(extra_headers or {})
        self._client = client
        self._owns_client = client is None
        self.include_usage = include_usage
        self.azure = is_azure_host(url.host or "") if azure is None else azure
        self.stream = stream  # False: ask for one whole answer (`stream: false`)
        self._host = host_of(url)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICompatLLM(base_url={self._host!r}, model={self.model!r})"

    @classmethod
    def from_settings(cls, settings: LLMSettings, *, base_url: str | None = None) -> OpenAICompatLLM:
        from moksori.settings import llm_api_key

        url = base_url or settings.base_url
        if not url:
            raise ConfigError("llm.base_url is required for the openai LLM provider",
                              hint="set MOKSORI_LLM_BASE_URL, e.g. http://127.0.0.1:8080/v1")
        key = llm_api_key(settings)
        host = httpx.URL(url).host if "://" in url else ""
        azure = settings.api_flavor == "azure" or (settings.api_flavor == "auto" and is_azure_host(host or ""))
        model = settings.model
        if azure:
            url = azure_url(url, settings.deployment, settings.api_version)
            model = model or settings.deployment
        return cls(base_url=url, model=model, api_key=key, timeout_s=settings.timeout_s,
                   caps=LLMCaps(context_tokens=settings.context_tokens, languages=("en", "ko")),
                   azure=True if azure else None)

    # ------------------------------------------------------------------ lifecycle

    def _url(self, suffix: str) -> httpx.URL:
        # keeps any query string of base_url (Azure's `?api-version=...`)
        return self._base.copy_with(path=self._base.path.rstrip("/") + suffix)

    def _headers(self, *, stream: bool) -> dict[str, str]:
        h = {"Accept": "text/event-stream" if stream else "application/json"}
        h.update(self._extra_headers)
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
            if self.azure:
                h["api-key"] = self._api_key
        return h

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
                follow_redirects=False,
            )
            self._owns_client = True
        return self._client

    async def load(self) -> None:
        self._http()
        if self.model is None:
            self.model = await self._first_model()
            log.info("LLM at %s: using model %s", self._host, self.model)

    async def close(self) -> None:
        if self._client is not None and self._owns_client:
            client, self._client = self._client, None
            await client.aclose()

    async def _first_model(self) -> str:
        try:
            async with self._http().stream("GET", self._url("/models"), headers=self._headers(stream=False)) as resp:
                if (err := await self._answer_error(resp)) is not None:
                    raise err
                raw, whole = await read_at_most(resp, MAX_MODEL_LIST_BYTES)
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None
        if not whole:
            raise too_large("LLM", self._host, MAX_MODEL_LIST_BYTES, PROVIDER, "a model list")
        try:
            data = json.loads(raw)["data"]
            return str(data[0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise ProviderError(f"{self._host}/models listed no usable model", retryable=False,
                                provider=PROVIDER, hint="set llm.model explicitly") from None

    # ------------------------------------------------------------------ errors

    async def _answer_error(self, resp: httpx.Response) -> ProviderError | None:
        return await answer_error("LLM", self._host, resp, PROVIDER, key_hint="check llm.api_key")

    def _transport_error(self, e: Exception) -> ProviderError:
        return transport_error("LLM", self._host, e, PROVIDER)

    # ------------------------------------------------------------------ chat

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [_message(m) for m in request.messages],
            "stream": self.stream,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if self.model is not None:
            body["model"] = self.model
        if self.include_usage and self.stream:
            body["stream_options"] = {"include_usage": True}
        if request.tools:
            body["tools"] = [t.to_openai() for t in request.tools]
            body["tool_choice"] = _tool_choice(request.tool_choice)
        return body

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        if self.model is None:
            await self.load()
        client = self._http()
        try:
            async with client.stream("POST", self._url("/chat/completions"), json=self._body(request),
                                     headers=self._headers(stream=self.stream)) as resp:
                if (err := await self._answer_error(resp)) is not None:
                    raise err
                ctype = resp.headers.get("content-type", "")
                media = ctype.partition(";")[0].strip().lower()
                if media in ("text/html", "application/xhtml+xml"):  # a proxy's or web server's page
                    raise ProviderError(f"LLM server {self._host} answered {media}, not an event stream",
                                        retryable=False, provider=PROVIDER,
                                        hint="check llm.base_url: it should be the API's root, often ending in /v1")
                if "text/event-stream" not in ctype and "json" in ctype:
                    # the server ignored `stream: true` and sent one complete answer
                    raw, whole = await read_at_most(resp, MAX_WHOLE_ANSWER_BYTES)
                    if not whole:
                        raise too_large("LLM", self._host, MAX_WHOLE_ANSWER_BYTES, PROVIDER)
                    for ev in self._whole_response(raw):
                        yield ev
                    return
                async with aclosing(self._events(resp)) as events:
                    async for ev in events:
                        yield ev
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None
        except httpx.InvalidURL as e:
            raise ProviderError(f"invalid LLM URL: {e}", retryable=False, provider=PROVIDER) from None

    async def _events(self, resp: httpx.Response) -> AsyncGenerator[ChatEvent, None]:
        calls = _ToolCallAccumulator()
        usage: dict[str, Any] | None = None
        finish: str | None = None
        done = False

        events = aiter_sse(resp.aiter_bytes())
        try:
            async for sse_event in events:
                data = sse_event.data.strip()
                if done:
                    continue  # read to the end so the connection can be reused
                if data == "[DONE]":
                    done = True
                    continue
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise ProviderError(f"LLM server {self._host} sent a malformed stream chunk: {truncate(data, 120)}",
                                        retryable=False, provider=PROVIDER) from None
                if not isinstance(obj, dict):
                    raise ProviderError(f"LLM server {self._host} sent a stream chunk that is not an object",
                                        retryable=False, provider=PROVIDER)
                if obj.get("error") is not None or sse_event.event == "error":
                    raise _stream_error(obj, self._host)
                if isinstance(obj.get("usage"), dict):
                    usage = obj["usage"]  # some servers repeat cumulative usage: keep the last
                for choice in obj.get("choices") or ():
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta") or {}
                    text = delta.get("content") if isinstance(delta, dict) else None
                    if isinstance(text, str) and text:
                        yield TextDelta(text)
                    fragments = delta.get("tool_calls") if isinstance(delta, dict) else None
                    if isinstance(fragments, list):
                        before = calls.size
                        calls.add(fragments)
                        if calls.size > MAX_TOOL_ARGUMENTS_CHARS:
                            raise ProviderError(
                                f"LLM server {self._host} sent tool calls longer than {MAX_TOOL_ARGUMENTS_CHARS} "
                                "characters; not read further", retryable=False, provider=PROVIDER)
                        if calls.size > before:
                            note_progress()  # nothing to yield until the call is whole, but it is output
                    reason = choice.get("finish_reason")
                    if isinstance(reason, str) and reason:
                        finish = reason
                        if reason == "tool_calls":
                            for call in calls.drain():
                                yield ToolCallEvent(call)
        except SSEError as e:
            raise ProviderError(f"LLM server {self._host} sent a broken event stream: {e}",
                                retryable=False, provider=PROVIDER) from None
        finally:
            await events.aclose()

        if not done and finish is None:
            raise ProviderError(f"LLM server {self._host} closed the stream before finishing",
                                retryable=True, provider=PROVIDER)
        emitted_calls = False
        for call in calls.drain():
            emitted_calls = True
            yield ToolCallEvent(call)
        if usage is not None:
            yield _usage(usage)
        if finish is None or (emitted_calls and finish == "stop"):
            finish = "tool_calls" if emitted_calls else "stop"
        yield ChatDone(finish)

    def _whole_response(self, raw: bytes) -> list[ChatEvent]:
        try:
            obj = json.loads(raw)
            choice = obj["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError(f"LLM server {self._host} sent an unreadable response",
                                retryable=False, provider=PROVIDER) from None
        if not isinstance(message, dict):
            raise ProviderError(f"LLM server {self._host} sent a response whose message is not an object: "
                                f"{truncate(repr(message), 120)}", retryable=False, provider=PROVIDER)
        out: list[ChatEvent] = []
        if isinstance(message.get("content"), str) and message["content"]:
            out.append(TextDelta(message["content"]))
        calls = _ToolCallAccumulator()
        if isinstance(message.get("tool_calls"), list):
            calls.add(message["tool_calls"])
        out.extend(ToolCallEvent(c) for c in calls.drain())
        if isinstance(obj.get("usage"), dict):
            out.append(_usage(obj["usage"]))
        out.append(ChatDone(choice.get("finish_reason") or "stop"))
        return out


def _token_count(v: Any) -> int:
    """A token count from the upstream's usage; anything else (a string, a bool, a negative, a
    non-finite number: `1e999` parses as inf, absurdly large) counts as 0, never an error."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return 0
    if isinstance(v, float) and not math.isfinite(v):  # (an int too large for a float is caught below)
        return 0
    return int(v) if 0 <= v <= MAX_USAGE_TOKENS else 0


def _usage(u: dict[str, Any]) -> Usage:
    details = u.get("prompt_tokens_details")
    cached = _token_count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(input_tokens=_token_count(u.get("prompt_tokens")),
                 output_tokens=_token_count(u.get("completion_tokens")), cached_tokens=cached)


def resilient_openai_llm(settings: LLMSettings) -> ResilientLLM:
    """The configured server plus each `settings.fallback` URL, wrapped in retries/timeouts."""
    from moksori.providers.resilience import ResilientLLM, RetryPolicy, Timeouts

    urls = [settings.base_url, *settings.fallback]
    providers = [OpenAICompatLLM.from_settings(settings, base_url=u) for u in urls if u]
    if not providers:
        OpenAICompatLLM.from_settings(settings)  # raises the ConfigError explaining what is missing
    return ResilientLLM(providers, policy=RetryPolicy.from_settings(settings), timeouts=Timeouts.from_settings(settings))
