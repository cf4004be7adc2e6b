"""llama.cpp (llama-cpp-python) running any GGUF: chat template from the file, streaming, tools.

The prompt is rendered with the model's own chat template (read from the GGUF). When tools are
given and the template has no tool support, tool descriptions go into the system message and
the model is asked for a `<tool_call>{json}</tool_call>` reply. Tool calls are recognised in
the common formats (Hermes/Qwen `<tool_call>`, Llama 3 JSON, Mistral `[TOOL_CALLS]`).
llama.cpp reuses the KV cache for the longest common token prefix, so the system prompt and
earlier turns are not re-evaluated: only the new user message costs prompt time. `prefill`
evaluates the user's words heard so far while they are still speaking (background work that
yields to any interactive job), so at the end of the turn only the last words are left.

A reply's prompt is evaluated in short steps (`_evaluate`), so a reply cancelled or timed out
while its prompt is read frees the model within one step, and one user or tool message is sent
with at most `max_message_tokens` (its start and its end: engine/context.cut_middle, which the
context window applies too), so one pasted text cannot cost a whole window of prompt time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from moksori.engine.context import cut_middle, surely_fits
from moksori.errors import ModelError, ProviderError
from moksori.providers.base import (
    LLM,
    ChatDone,
    ChatEvent,
    ChatRequest,
    LLMCaps,
    Message,
    ToolCallEvent,
    Usage,
)
from moksori.providers.threads import ModelExecutor, background, interactive_running, iterate_blocking, run_blocking
from moksori.providers.tool_calls import ToolCallScanner, call_text, tools_system_block
from moksori.settings.providers import MIN_MESSAGE_TOKENS

log = logging.getLogger(__name__)

MIN_REPLY_TOKENS = 32
PREFILL_BATCH = 8  # prompt tokens per llama.cpp call while prefilling: interactive work waits at most one
# a reply's prompt is evaluated in steps of about this long (at least PROMPT_STEP_MIN tokens, at
# most n_batch), checking between them whether the reply was cancelled: llama.cpp cannot stop a
# step, and a whole prompt took minutes on 2 busy cores, the model held all along. Each step
# costs a fixed ~0.1 s there besides its ~20 ms a token, so steps are not shorter than
# PROMPT_STEP_MIN, and a turn's usual few dozen new tokens are still one step (PROMPT_STEP_FIRST)
PROMPT_STEP_S = 0.25
PROMPT_STEP_MIN = 32
PROMPT_STEP_FIRST = 64
# one user or tool message is sent with at most MESSAGE_TOKENS tokens and a quarter of the
# context window (`max_message_tokens`), its start and its end (engine/context.cut_middle): the
# rest of the window is for the history and the reply. SmolLM2-135M's first token after a 100 KB
# message on 2 cores shared with a load of ~9.5: 15 s cut to 512 tokens, 27 s cut to 1,024, and a
# whole window of ~3,900 tokens (what was sent before) at that rate ~2 minutes.
# `MOKSORI_LLM_MAX_MESSAGE_TOKENS` sets another limit, or none
MESSAGE_TOKENS = 512
MESSAGE_SHARE = 0.25

_STOP_STRINGS = ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|end|>"]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """llama.cpp logs to fd 2 from C; silence it while loading."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def _common_prefix(cached: Iterable[int], tokens: Sequence[int]) -> int:
    """How many leading tokens of `tokens` the KV cache already holds (llama.cpp reuses them)."""
    n = 0
    for a, b in zip(cached, tokens):
        if a != b:
            break
        n += 1
    return n

class LlamaCppLLM(LLM):
    name = "llamacpp"

    def __init__(self, model_path: str | Path, *, threads: int = 2, context_tokens: int = 4096,
                 languages: tuple[str, ...] = ("en",), llama_options: Mapping[str, Any] | None = None,
                 max_message_tokens: int | None = None) -> None:
        """`llama_options`: more `llama_cpp.Llama` keyword arguments, over Moksori's (n_batch,
        flash_attn, type_k, ...; benchmarks/llm_speed.py compares them). `max_message_tokens`:
        the most tokens one user or tool message is sent with (`MOKSORI_LLM_MAX_MESSAGE_TOKENS`;
        None: MESSAGE_TOKENS, at most MESSAGE_SHARE of the context; 0: no such limit, only the
        context window bounds a message; at least MIN_MESSAGE_TOKENS)."""
        from moksori.providers.llama_cpu import use_portable_kernels

        # first: loads llama.cpp with its own OpenMP spin count (llama_cpu.import_llama)
        use_portable_kernels()  # no AMX / repacked weights: they crash or differ per CPU
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.path = Path(model_path)
        if not self.path.is_file():
            raise ModelError(f"LLM model file not found: {self.path}", hint="set MOKSORI_LLM_MODEL to a .gguf file")
        try:
            with _quiet_stderr():
                options: dict[str, Any] = {"n_ctx": context_tokens, "n_threads": threads,
                                           "n_threads_batch": threads, "n_batch": 256, "verbose": False}
                options.update(llama_options or {})
                self._llm = Llama(model_path=str(self.path), **options)
        except Exception as e:  # llama-cpp raises ValueError("Failed to load model from file")
            raise ModelError(f"cannot load LLM {self.path}: the file is corrupt or not a GGUF model",
                             hint="check the file, or run `moksori models verify` for the packaged one") from e
        meta = self._llm.metadata or {}
        template = meta.get("tokenizer.chat_template")
        if not template:
            template = _CHATML
        self._template_has_tools = "tools" in template
        tok = self._llm._model  # noqa: SLF001 - token text lookup
        bos = tok.token_get_text(self._llm.token_bos()) if self._llm.token_bos() >= 0 else ""
        eos = tok.token_get_text(self._llm.token_eos()) if self._llm.token_eos() >= 0 else ""
        self._bos_text = bos
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._lock = threading.Lock()
        self.executor = ModelExecutor(f"llm:{self.path.name}")
        self.caps = LLMCaps(tools=True, context_tokens=context_tokens, languages=languages)
        # read by the context window too (engine/context.message_limit), so it counts what is sent
        self.max_message_tokens: int | None = None if max_message_tokens == 0 else max(
            MIN_MESSAGE_TOKENS, max_message_tokens or min(MESSAGE_TOKENS, int(context_tokens * MESSAGE_SHARE)))
        self._cut: dict[str, str] = {}  # a long message's text → what the model is sent of it
        self._step = PROMPT_STEP_FIRST
        self.name = f"llamacpp:{self.path.name}"

    # ------------------------------------------------------------------ prompt

    def _bounded(self, m: Message) -> Message:
        """A user or tool message within `max_message_tokens` (`cut_middle`: its start and its
        end). The context window cuts them the same way already; this catches what reaches the
        model around it (an out-of-band response's input, a tool result of the reply itself)."""
        limit = self.max_message_tokens
        if limit is None or m.role not in ("user", "tool") or surely_fits(m.content, limit):
            return m
        text = self._cut.get(m.content)
        if text is None:
            text = cut_middle(m.content, limit, self.count_tokens)
            if text != m.content:
                log.debug("a %s message of %d characters is cut to %d for %s (%d-token limit per message)",
                          m.role, len(m.content), len(text), self.name, limit)
            if len(self._cut) > 256:
                self._cut.clear()
            self._cut[m.content] = text
        return m if text == m.content else replace(m, content=text)

    def render(self, request: ChatRequest) -> str:
        messages = [self._bounded(m).to_openai() for m in request.messages]
        tools = [t.to_openai() for t in request.tools] if request.tools and request.tool_choice != "none" else None
        if tools and not self._template_has_tools:
            block = tools_system_block(request.tools, request.tool_choice)
            if messages and messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{block}"}
            else:
                messages.insert(0, {"role": "system", "content": block})
            tools = None
        # templates without tool roles: show tool results as user-visible context
        if not self._template_has_tools:
            messages = [_flatten_tool_message(m) for m in messages]
        else:
            messages = [_arguments_as_objects(m) for m in messages]
        try:
            # plain dicts in the shape of llama_cpp's ChatCompletionRequest*/ChatCompletionTool TypedDicts
            out = self._formatter(messages=messages, tools=tools)  # type: ignore[arg-type]
        except Exception as e:  # a template raising (e.g. role order rules) is a request problem
            raise ProviderError(f"chat template rejected the conversation: {e}", retryable=False,
                                provider=self.name) from e
        return out.prompt

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this model's vocabulary (for context budgets)."""
        if not text:
            return 0
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _tokens(self, prompt: str) -> list[int]:
        add_bos = not (self._bos_text and prompt.startswith(self._bos_text))
        return self._llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    # ------------------------------------------------------------------ generation

    def _fit(self, request: ChatRequest) -> tuple[list[int], int]:
        """Prompt tokens and the reply's token budget, within the context window.

        A conversation too long for the window loses its oldest messages (the system prompt and
        the last message stay) rather than failing every later reply; the reply gets whatever
        room is left, at least MIN_REPLY_TOKENS."""
        context = self.caps.context_tokens
        messages = list(request.messages)
        while True:
            tokens = self._tokens(self.render(replace(request, messages=tuple(messages))))
            room = context - len(tokens)
            if room >= min(request.max_tokens, MIN_REPLY_TOKENS):
                return tokens, max(1, min(request.max_tokens, room))
            first = 1 if messages and messages[0].role == "system" else 0
            if len(messages) - first <= 1:
                # the last message alone is too long: keep its end (what was said last)
                last = messages[-1]
                words = last.content.split()
                if len(words) < 2:
                    # (the instructions themselves too long for the window: say so, not "the last message")
                    system = len(self._tokens(self.render(replace(request, messages=tuple(messages[:first]))))) \
                        if first else 0
                    what = (f"the instructions (system prompt) alone are {system} tokens"
                            if system + min(request.max_tokens, MIN_REPLY_TOKENS) > context
                            else f"the last message alone is {len(tokens)} tokens")
                    raise ProviderError(f"{what}: more than the {context}-token context window allows",
                                        retryable=False, provider=self.name)
                fits = context - min(request.max_tokens, MIN_REPLY_TOKENS)
                keep = max(1, int(len(words) * max(0.1, min(0.9, 0.9 * fits / max(1, len(tokens))))))
                messages[-1] = replace(last, content="… " + " ".join(words[-keep:]))
                continue
            del messages[first]
            while len(messages) - first > 1 and messages[first].role == "tool":
                del messages[first]  # a tool result without its call makes no sense

    def _evaluate(self, tokens: Sequence[int], stop: threading.Event) -> bool:
        """Evaluate the prompt `tokens` into the KV cache after the prefix it holds already, in
        steps of about PROMPT_STEP_S, and stop between two steps once `stop` is set: a reply
        cancelled or timed out while its prompt is read frees the model within one step
        (llama.cpp's `create_completion` reads the whole prompt before it yields anything, so the
        stop flag was first seen after it). The step adapts to the model's measured speed
        (PROMPT_STEP_MIN to n_batch tokens). Once the whole prompt is in, `create_completion`
        finds it there with the last step's logits live, and samples at once.
        False: stopped; the cache keeps what was evaluated, a valid prefix for the next request."""
        llm = self._llm
        if getattr(llm, "_is_recurrent", False) or getattr(llm, "_is_hybrid", False):
            return not stop.is_set()  # its cache cannot drop a suffix: create_completion reads it whole
        common = _common_prefix(llm._input_ids, tokens)  # noqa: SLF001 - the tokens in the KV cache
        if common >= len(tokens):
            return not stop.is_set()  # all cached: create_completion re-evaluates the last token
        llm.n_tokens = common  # `eval` drops what the cache holds past the common prefix
        at = common
        while at < len(tokens):
            if stop.is_set():
                llm._requires_eval = True  # noqa: SLF001 - no logits for a prompt's end: as after a prefill
                return False
            left = len(tokens) - at
            # the rest in one go if it is at most half a step more (no short step at the end)
            n = left if left <= min(llm.n_batch, self._step * 3 // 2) else min(self._step, llm.n_batch)
            started = time.perf_counter()
            llm.eval(tokens[at:at + n])  # its logits: the step's last token's (the next token's odds)
            took = time.perf_counter() - started
            at += n
            if n >= PROMPT_STEP_MIN:
                self._step = max(PROMPT_STEP_MIN, min(llm.n_batch, int(n * PROMPT_STEP_S / max(took, 1e-4))))
        return True

    def _generate(self, request: ChatRequest, stop: threading.Event) -> Iterator[Any]:
        with self._lock:
            tokens, max_tokens = self._fit(request)
            cached = _common_prefix(self._llm._input_ids, tokens)  # noqa: SLF001 - KV cache reuse accounting
            if not self._evaluate(tokens, stop):
                return  # cancelled while reading the prompt: nobody is listening any more
            produced = 0
            stream = cast(Generator[dict[str, Any], None, None], self._llm.create_completion(  # stream=True
                prompt=tokens, max_tokens=max_tokens, temperature=request.temperature,
                top_p=0.95, repeat_penalty=1.1, stop=_STOP_STRINGS, stream=True))
            finish = "stop"
            try:
                for chunk in stream:
                    if stop.is_set():
                        finish = "cancelled"
                        break
                    choice = chunk["choices"][0]
                    text = choice.get("text") or ""
                    if text:
                        produced += 1
                        yield text
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
            finally:
                stream.close()
            yield Usage(input_tokens=len(tokens), output_tokens=produced, cached_tokens=min(cached, len(tokens)))
            yield ChatDone(finish_reason=finish)

    def _prefix(self, request: ChatRequest, upto: str | None) -> str | None:
        """The prompt of `request` up to the end of `upto`; with `upto` None, up to where its
        last message's content starts (the history and the chat template's header before the
        words: `<|im_end|>\n<|im_start|>user\n` after a reply). None: no such place."""
        if upto is not None:
            upto = upto.strip()
            if not upto:
                return None
            prompt = self.render(request)
            at = prompt.rfind(upto)
            return prompt[:at + len(upto)] if at >= 0 else None
        if not request.messages:
            return None
        mark = "\ue000"  # a private-use character: in no message, and kept whole by the template
        last = request.messages[-1]
        prompt = self.render(replace(request, messages=(*request.messages[:-1], replace(last, content=mark))))
        at = prompt.rfind(mark)
        return prompt[:at] if at > 0 else None

    def _prefill(self, request: ChatRequest, upto: str | None) -> int:
        prefix = self._prefix(request, upto)
        if not prefix:
            return 0
        tokens = self._tokens(prefix)
        if len(tokens) + MIN_REPLY_TOKENS > self.caps.context_tokens:
            return 0  # the real request will drop history: its prefix would differ anyway
        if not self._lock.acquire(blocking=False):
            return 0  # a reply is being generated: it owns the cache
        try:
            llm = self._llm
            common = _common_prefix(llm._input_ids, tokens)  # noqa: SLF001 - the tokens in the KV cache
            done = 0
            for i in range(common, len(tokens), PREFILL_BATCH):
                if interactive_running() or self.executor.stats.queued_interactive:
                    break  # a live STT, reply or synthesis (any session) wants the cores
                if i == common:
                    # only now drop what the cache holds past the common prefix (perhaps another
                    # session's history, which its queued reply may still want): `eval` trims it
                    llm.n_tokens = common
                    llm._requires_eval = True  # noqa: SLF001 - no logits to sample from: re-evaluate one token
                batch = tokens[i:i + PREFILL_BATCH]
                llm.eval(batch)
                llm._requires_eval = True  # noqa: SLF001 - the next generate re-evaluates its last token (a prefill keeps no sampling state)
                done += len(batch)
            return done
        finally:
            self._lock.release()

    async def prefill(self, request: ChatRequest, upto: str) -> int:
        """Evaluate the prompt up to the end of `upto` into the KV cache, as background work: it
        queues behind interactive jobs, skips if a reply holds the model, and stops between
        PREFILL_BATCH-token steps as soon as any interactive job runs or waits. The next request
        reuses the longest common token prefix, as always, so a wrong guess costs nothing but
        the background time."""
        with background():
            return await run_blocking(self._prefill, request, upto, executor=self.executor)

    async def prefill_history(self, request: ChatRequest) -> int:
        """`prefill` up to where the last message's content starts: the history (the last reply
        as the template renders it) and the template's header before the user's words, as
        background work when the user starts speaking; the words and the assistant header are
        then all that is left to evaluate once the transcript is final."""
        with background():
            return await run_blocking(self._prefill, request, None, executor=self.executor)

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        scanner = ToolCallScanner(enabled=bool(request.tools) and request.tool_choice != "none")
        done: ChatDone | None = None
        async for item in iterate_blocking(lambda stop: self._generate(request, stop), executor=self.executor,
                                           max_ahead=3):
            if isinstance(item, str):
                for ev in scanner.feed(item):
                    yield ev
            elif isinstance(item, ChatDone):
                done = item
            else:
                yield item
        calls = scanner.finish()
        for last in calls:
            yield last
        has_calls = any(isinstance(e, ToolCallEvent) for e in calls)
        yield ChatDone("tool_calls" if has_calls else (done.finish_reason if done else "stop"))

    async def warm(self, system_prompt: str) -> None:
        """Evaluate the system prompt once so the first real turn reuses it from the KV cache."""
        req = ChatRequest(messages=(Message("system", system_prompt), Message("user", "Hi")), max_tokens=1)
        async for _ in self.chat(req):
            pass

    async def close(self) -> None:
        await run_blocking(self._llm.close, executor=self.executor) if hasattr(self._llm, "close") else None


def _arguments_as_objects(m: dict[str, Any]) -> dict[str, Any]:
    """Tool-calling templates (Qwen2.5/Hermes, Llama 3.1, Mistral) write `arguments | tojson`:
    they expect an object, as in Hugging Face's chat-template convention. OpenAI-style messages
    carry a JSON string, which would be encoded a second time ("{\"city\": ...}") and teach
    the model a wrong format from its own earlier calls."""
    if not m.get("tool_calls"):
        return m
    calls = []
    for c in m["tool_calls"]:
        fn = dict(c.get("function") or {})
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                parsed = json.loads(args or "{}")
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                fn["arguments"] = parsed
        calls.append({**c, "function": fn})
    return {**m, "tool_calls": calls, "content": m.get("content") or ""}


def _flatten_tool_message(m: dict[str, Any]) -> dict[str, Any]:
    if m.get("role") == "tool":
        return {"role": "user", "content": f"[tool result for {m.get('name') or m.get('tool_call_id')}]: {m.get('content')}"}
    if m.get("tool_calls"):
        # in the format the tools block asks for: a model copies its own earlier calls, and
        # `name({...})` was copied, not parsed, and spoken as text
        calls = "".join(call_text(c["function"]["name"], c["function"].get("arguments") or "{}")
                        for c in m["tool_calls"])
        return {"role": "assistant", "content": (m.get("content") or "") + calls}
    return m


_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
