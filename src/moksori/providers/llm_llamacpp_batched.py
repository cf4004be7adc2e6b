"""llama.cpp serving several replies at once: N sequences ("slots") in one context, one decode thread.

`LlamaCppLLM` serves one reply at a time from one KV cache: with N sessions asking at once the
N-th waits for the N−1 before it, and each switch of session re-evaluates the other's prompt.
Generating a token reads all the weights once whether it is for one sequence or for several, so
one `llama_decode` of a few sequences' next tokens costs little more than one's (what
llama-server's slots do). Here:

* the context holds `parallel` sequences, each with its own part of the KV cache (`n_ctx /
  parallel` tokens, `context_tokens`: the window a request is fitted to, `caps.context_tokens`);
* each slot keeps the tokens of the session that used it last. A request goes to the free slot
  holding its conversation (a cache that is a prefix of its prompt but for the last reply's
  end), else to an empty slot, else to the one idle longest, so a session's next turn evaluates
  only what is new and a new session does not evict another's history while a slot is empty. A
  longer prefix that another slot holds (the system prompt, most often) is copied from it
  (`llama_memory_seq_cp`) rather than evaluated again;
* one decode thread steps every active reply together: each step, one `llama_decode` of one
  token of every generating reply, then prompt chunks of new requests (continuous batching),
  at most about GEN_STEP_S of prompt work while replies generate (PROMPT_STEP_S while none
  does), oldest request first: a new request delays the others' next token by one short step,
  and a cancelled one frees its slot within one step. A prompt chunk gets a `llama_decode` of
  its own: llama.cpp cuts a batch of several sequences into pieces with as many tokens of each,
  and a token evaluated alone gets slightly other K/V values than in a chunk, so a chunk beside
  one-token sequences made a reply depend on what else ran (the same number of evaluations);
  so at temperature 0 a reply alone is token for token `LlamaCppLLM`'s from the same cached
  prefix, and beside others as a rule: a reply beside three others parted from its solo text
  after ~45 characters in 2 of ~13 test runs on an Intel Xeon with AMX, most likely a near-tie
  that a step of several sequences rounds otherwise than a step of one (a cached reply's
  tokens were evaluated one by one as it was generated: a next turn that reuses them can differ
  from one that evaluates them anew, in both providers);
* sampling per slot with llama.cpp's sampler chain, as `llama_cpp.Llama.create_completion`
  builds it for `LlamaCppLLM` (repeat penalty 1.1 over the last 64 tokens; greedy at
  temperature 0, else top-k 40, top-p 0.95, min-p 0.05, temperature);
* the model's executor has `parallel` workers: a request holds one for its whole reply, so a
  request beyond `parallel` waits in the executor's queue (and counts in its stats, which
  admission control reads), interactive before background, as before. A reply whose reader
  stops taking tokens (its first clause being synthesised) sits out the steps after AHEAD
  tokens, which gives its share of the cores to the others.

The context, its slots and the decode thread are `providers/llama_batcher.Batcher`. Everything
else (chat template, fitting to the window, per-message limits, tool-call scanning,
`chat`, `warm`) is `LlamaCppLLM`'s own. `prefill` and `prefill_history` evaluate into the slot
the next request of the conversation would get, as background work that stops as soon as a
reply needs the model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from moksori.errors import ModelError
from moksori.providers.base import ChatRequest
from moksori.providers.llama_batcher import Batcher
from moksori.providers.llama_cpu import import_llama
from moksori.providers.llm_llamacpp import (
    MIN_REPLY_TOKENS,
    PROMPT_STEP_MIN,
    LlamaCppLLM,
    _quiet_stderr,
)
from moksori.providers.threads import ModelExecutor, interactive_running, run_blocking

INNER_CTX = 512  # the KV cache of the wrapped `Llama` (only its tokenizer and weights are used)


class BatchedLlamaCppLLM(LlamaCppLLM):
    """`LlamaCppLLM` with `parallel` replies at once (continuous batching in one context)."""

    def __init__(self, model_path: str | Path, *, parallel: int = 4, threads: int = 2, context_tokens: int = 4096,
                 languages: tuple[str, ...] = ("en",), llama_options: Mapping[str, Any] | None = None,
                 max_message_tokens: int | None = None) -> None:
        """`context_tokens`: each slot's window (rounded down to a multiple of 256, llama.cpp's
        granularity, at least 256); the KV cache holds `parallel` of them. Each slot has a KV
        buffer of its own (not llama.cpp's unified one, where every step attends over all slots'
        cells: half the throughput here with 4 replies at once, and replies that depend on where
        the other slots' cells lie)."""
        if parallel < 1:
            raise ModelError(f"the batched LLM needs at least one slot, not {parallel}")
        slot = max(256, context_tokens // 256 * 256)
        # the wrapped Llama only tokenizes and holds the weights: a small KV cache of its own
        super().__init__(model_path, threads=threads, context_tokens=slot, languages=languages,
                         llama_options={**(llama_options or {}), "n_ctx": min(slot, INNER_CTX)},
                         max_message_tokens=max_message_tokens)
        lib = import_llama()
        base = self._llm.context_params
        params = type(base).from_buffer_copy(base)
        params.n_ctx = slot * parallel
        params.n_seq_max = parallel
        params.kv_unified = False
        params.n_batch = params.n_ubatch = max(self._llm.n_batch, PROMPT_STEP_MIN) + parallel
        # a reply holds a worker for its whole length: requests beyond `parallel` queue here
        self.executor = ModelExecutor(f"llm:{self.path.name}", workers=parallel)
        executor = self.executor

        def busy() -> bool:
            return interactive_running() > 0 or executor.stats.queued_interactive > 0

        try:
            with _quiet_stderr():
                self._batcher = Batcher(lib, self._llm.model, params, parallel, busy)
        except ModelError:
            self._llm.close()
            raise
        self.parallel = parallel
        self.caps = replace(self.caps, context_tokens=self._batcher.slot_tokens)
        self.name = f"llamacpp:{self.path.name}:parallel{parallel}"

    @property
    def slot_tokens(self) -> int:
        return self._batcher.slot_tokens

    def _generate(self, request: ChatRequest, stop: threading.Event) -> Iterator[Any]:
        with self._batcher.using_model():
            tokens, max_tokens = self._fit(request)
            reply = self._batcher.submit(tokens, max_tokens, request.temperature, stop)
        try:
            while (item := self._batcher.take(reply, stop)) is not None:
                yield item
        finally:
            self._batcher.release(reply)

    def _prefill(self, request: ChatRequest, upto: str | None) -> int:
        with self._batcher.using_model():
            prefix = self._prefix(request, upto)
            if not prefix:
                return 0
            tokens = self._tokens(prefix)
            if len(tokens) + MIN_REPLY_TOKENS > self.caps.context_tokens:
                return 0  # the real request will drop history: its prefix would differ anyway
            reply = self._batcher.submit(tokens, 0, 0.0, threading.Event(), prefill=True)
        try:
            self._batcher.wait(reply)
        finally:
            self._batcher.release(reply)
        return max(0, reply.at - reply.cached)

    def forget_cached_prompts(self) -> None:
        """No slot reuses what it evaluated before (one still replying, once its reply ends), as
        after start-up: a benchmark's fresh sessions of one utterance would otherwise find each
        other's prompts cached."""
        self._batcher.forget()

    async def close(self) -> None:
        await run_blocking(self._batcher.close)
        await super().close()
