"""The engine of `BatchedLlamaCppLLM` (providers/llm_llamacpp_batched.py, whose docstring says
how requests are placed in slots and stepped, and why): one llama.cpp context of N sequences
("slots"), their caches, the sampler chains and the one thread that decodes them all.

Every llama.cpp call on the context is made in the decode thread; readers (the executor's
workers) only queue requests (`Batcher.submit`) and take items (`Batcher.take`). `ReplyText`
turns a reply's token bytes into text as it streams.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from moksori.errors import ModelError, ProviderError
from moksori.providers.base import ChatDone, Usage
from moksori.providers.llm_llamacpp import _STOP_STRINGS, PROMPT_STEP_MIN, PROMPT_STEP_S, _common_prefix

__all__ = ["AHEAD", "Batcher", "ReplyText"]

log = logging.getLogger("moksori.providers.llm_llamacpp_batched")

# while replies are generating, a step's prompt tokens are capped to about this long, so their
# next tokens wait at most about this (speech needs ~3-4 tokens a second)
GEN_STEP_S = 0.1
MIN_CHUNK = 8  # prompt tokens: a step's budget is not cut into chunks smaller than this
AHEAD = 2  # items a reply produces ahead of its reader before it sits out the steps
BORROW_MIN = 16  # copy another slot's prefix when it is at least this many tokens longer
# a slot holds a request's conversation when all but this many of its tokens (or a quarter) are
# a prefix of the request's prompt
OWN_SLACK = 16
# llama_cpp.Llama.create_completion's sampler for LlamaCppLLM: its defaults (top_k, min_p,
# typical_p, last_n_tokens_size) and LlamaCppLLM's top_p and repeat_penalty
TOP_K, TOP_P, MIN_P, TYPICAL_P = 40, 0.95, 0.05, 1.0
REPEAT_PENALTY, PENALTY_LAST_N = 1.1, 64


class ReplyText:
    """A reply's text from its tokens' bytes: whole UTF-8 characters, cut before the first stop
    string, an end that may begin one held back until it is known not to (as llama_cpp's
    `create_completion` streams)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, piece: bytes) -> tuple[str, bool]:
        """(text to send now, whether a stop string ended the reply)."""
        text = self._held + self._decoder.decode(piece)
        cuts = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if cuts:
            self._held = ""
            return text[:min(cuts)], True
        hold = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        self._held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def flush(self) -> str:
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return text


@dataclass(eq=False)
class _Reply:
    """One request in the batcher: its prompt, where it is, and what its reader has not taken."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    stop: threading.Event
    order: int
    prefill: bool = False  # evaluate the prompt into a slot and end (no reply)
    slot: _Slot | None = None
    at: int = 0  # prompt tokens in the slot's cache
    cached: int = 0  # of them, reused from a cache (Usage.cached_tokens)
    token: int | None = None  # sampled, not yet evaluated
    produced: int = 0
    out: deque[Any] = field(default_factory=deque)
    ended: bool = False  # nothing more will come
    released: bool = False  # the reader has gone
    sampler: Any = None
    text: ReplyText = field(default_factory=lambda: ReplyText(_STOP_STRINGS))


@dataclass(frozen=True)
class _Work:
    """Tokens of one reply for one llama_decode, and whether to sample after them."""

    reply: _Reply
    tokens: list[int]
    sample: bool


def _seq(r: _Reply) -> int:
    return r.slot.seq if r.slot is not None else -1


@dataclass(eq=False)
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # the tokens its KV cache holds, from position 0
    used_at: float = 0.0
    reply: _Reply | None = None
    forget: bool = False  # forget `cached` once its reply ends (`Batcher.forget`)


class Batcher:
    """The context, its slots and the decode thread. Every llama.cpp call on the context is made
    in the decode thread; readers (the executor's workers) only queue requests and take items."""

    def __init__(self, lib: Any, model: Any, params: Any, parallel: int, busy: Callable[[], bool]) -> None:
        """`busy()`: whether live work elsewhere wants the cores (a prefill then gives way)."""
        self._lib = lib
        self._busy = busy
        self._ctx = lib.llama_init_from_model(model, params)
        if not self._ctx:
            raise ModelError("llama.cpp could not create a context for the batched LLM",
                             hint="lower MOKSORI_LLM_PARALLEL or MOKSORI_LLM_CONTEXT_TOKENS")
        self._mem = lib.llama_get_memory(self._ctx)
        self._vocab = lib.llama_model_get_vocab(model)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self.slot_tokens = int(lib.llama_n_ctx_seq(self._ctx))
        self.n_batch = int(params.n_batch)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        self._slots = [_Slot(i) for i in range(parallel)]
        self._waiting: deque[_Reply] = deque()
        self._active: list[_Reply] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._users = 0  # readers tokenizing (`using_model`)
        self._order = itertools.count()
        self._prompt_token_s = 0.004  # measured: seconds per prompt token in a step (an EWMA)

    # ------------------------------------------------------------------ readers' side

    @contextlib.contextmanager
    def using_model(self) -> Iterator[None]:
        """Around a reader's use of the model's weights (tokenizing): `close` waits for it, and
        it fails cleanly once the model is closed."""
        with self._cond:
            if self._closed:
                raise ProviderError("the LLM is closed", retryable=False, provider="llamacpp")
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def submit(self, prompt: list[int], max_tokens: int, temperature: float, stop: threading.Event, *,
               prefill: bool = False) -> _Reply:
        reply = _Reply(prompt, max_tokens, temperature, stop, next(self._order), prefill=prefill)
        with self._cond:
            if self._closed:
                raise ProviderError("the LLM is closed", retryable=False, provider="llamacpp")
            self._waiting.append(reply)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="moksori-llm-batch", daemon=False)
                self._thread.start()
            self._cond.notify_all()
        return reply

    def take(self, reply: _Reply, stop: threading.Event) -> Any:
        """The reply's next item (text, Usage, ChatDone), waiting for it; None once it has
        ended or `stop` is set. A failed step's error is raised."""
        with self._cond:
            while True:
                if reply.out:
                    item = reply.out.popleft()
                    self._cond.notify_all()  # a reply sitting out for its reader may go on
                    if isinstance(item, BaseException):
                        raise item
                    return item
                if reply.ended or stop.is_set():
                    return None
                self._cond.wait(0.05)

    def wait(self, reply: _Reply) -> None:
        """Until `reply` (a prefill) has ended or its stop flag is set."""
        with self._cond:
            while not reply.ended and not reply.stop.is_set():
                self._cond.wait(0.05)

    def forget(self) -> None:
        """Every slot forgets the tokens its KV cache holds, a busy one once its reply ends
        (their cells are dropped when the slot is next given a request): the requests after
        that find nothing cached."""
        with self._cond:
            for s in self._slots:
                if s.reply is None:
                    s.cached = []
                else:
                    s.forget = True

    def release(self, reply: _Reply) -> None:
        """The reader is gone: the decode thread ends the reply at its next step."""
        with self._cond:
            reply.released = True
            self._cond.notify_all()

    def close(self) -> None:
        """End every reply (their readers get an error), wait for the step in progress and for
        readers tokenizing, free the context. Blocking: call it off the event loop. The
        weights are the wrapped `Llama`'s: free them after this."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while self._users:
                self._cond.wait(0.05)
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._cond:
            for r in [*self._waiting, *self._active]:
                self._end(r, ProviderError("the LLM was closed", retryable=False, provider="llamacpp"))
            self._waiting.clear()
            if self._ctx:
                self._lib.llama_batch_free(self._batch)
                self._lib.llama_free(self._ctx)
                self._ctx = None
            self._cond.notify_all()

    # ------------------------------------------------------------------ the decode thread

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    calls = self._plan()
                    while not calls:
                        if self._closed or not (self._waiting or self._active):
                            self._thread = None  # the next submit starts another
                            return
                        self._cond.wait(0.05)  # replies sitting out for their readers
                        calls = self._plan()
                for call in calls:
                    if self._closed:
                        break
                    self._decode(call)
        except BaseException as e:  # a bug here must fail the replies, not hang their readers
            log.exception("the batched LLM's decode thread failed")
            with self._cond:
                for r in [*self._waiting, *self._active]:
                    self._end(r, ProviderError(f"the LLM failed: {e}", retryable=False, provider="llamacpp"))
                self._waiting.clear()
                self._thread = None

    def _plan(self) -> list[list[_Work]]:
        """Under the lock: end what is over, give free slots to waiting requests, and choose
        this step's llama_decode calls: first one token of every generating reply (in slot
        order), then a prompt chunk per call (never beside other sequences' tokens: see the
        module's docstring). [] : nothing to do now."""
        if self._closed:
            return []
        now = time.monotonic()
        for r in list(self._active):
            if r.released or r.stop.is_set():
                self._end(r)
        for r in list(self._waiting):
            if r.released or r.stop.is_set():
                self._waiting.remove(r)
                self._end(r)
        while self._waiting and any(s.reply is None for s in self._slots):
            r = self._waiting.popleft()
            if r.prefill and (self._active or self._waiting or self._busy()):
                self._end(r)  # background work: it gives way to any live work
                continue
            self._assign(r, now)
            if r.at >= len(r.prompt):
                self._end(r)  # a prefill found all of it cached already
        generating = [r for r in self._active if r.token is not None and len(r.out) < AHEAD]
        reading = [r for r in self._active if r.at < len(r.prompt)]
        if any(r.prefill for r in reading) and (len(self._active) > 1 or self._waiting or self._busy()):
            for r in [r for r in reading if r.prefill]:
                self._end(r)  # as above: a reply or another model's live work wants the cores
                reading.remove(r)
        calls: list[list[_Work]] = []
        if generating:
            calls.append([_Work(r, [r.token], True) for r in sorted(generating, key=_seq) if r.token is not None])
        step_s = GEN_STEP_S if generating else PROMPT_STEP_S
        budget = min(self.n_batch, max(PROMPT_STEP_MIN, int(step_s / self._prompt_token_s)))
        for r in sorted(reading, key=lambda r: r.order):  # oldest first: its first token soonest
            if budget < MIN_CHUNK:
                break
            left = len(r.prompt) - r.at
            # the rest in one go if it is at most half a step more (no short step at the end);
            # never a chunk of one token (but a whole prompt's last): one token alone is
            # evaluated (slightly) differently, and the reply would depend on the chunking
            n = left if left <= min(self.n_batch, budget * 3 // 2) else min(budget, left - MIN_CHUNK)
            calls.append([_Work(r, r.prompt[r.at:r.at + n], r.at + n == len(r.prompt) and not r.prefill)])
            budget -= n
        return calls

    def _assign(self, r: _Reply, now: float) -> None:
        """Give `r` a free slot: the one holding its conversation if there is one (a cache
        that is, but for its last few tokens, a prefix of the prompt: the longest such), else
        an empty one, else the one idle longest. Then copy a longer prefix from any slot (the
        system prompt, most often) and drop the rest of the slot's cache."""
        limit = len(r.prompt) - (0 if r.prefill else 1)  # a reply re-evaluates its last token: logits
        common = {s.seq: min(_common_prefix(s.cached, r.prompt), limit) for s in self._slots}
        free = [s for s in self._slots if s.reply is None]
        # what choosing the slot would drop of its cache: a few tokens where this conversation's
        # prompt differs from what was evaluated (the last reply's end), else another's history
        mine = [s for s in free if common[s.seq] > 0
                and len(s.cached) - common[s.seq] <= max(OWN_SLACK, len(s.cached) // 4)]
        if mine:
            slot = max(mine, key=lambda s: common[s.seq])
        else:
            slot = min(free, key=lambda s: (len(s.cached) > 0, s.used_at))
        n = common[slot.seq]
        donor = max(self._slots, key=lambda s: common[s.seq])
        lib, mem = self._lib, self._mem
        if donor is not slot and common[donor.seq] >= n + BORROW_MIN:
            n = common[donor.seq]
            lib.llama_memory_seq_rm(mem, slot.seq, -1, -1)
            lib.llama_memory_seq_cp(mem, donor.seq, slot.seq, -1, -1)
            slot.cached = list(donor.cached)
        lib.llama_memory_seq_rm(mem, slot.seq, n, -1)
        del slot.cached[n:]
        slot.reply, slot.used_at = r, now
        r.slot, r.at, r.cached = slot, n, n
        if not r.prefill:
            r.sampler = self._sampler(r.temperature)
        self._active.append(r)

    def _sampler(self, temperature: float) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lib.llama_sampler_chain_add
        add(chain, lib.llama_sampler_init_penalties(self._n_vocab, PENALTY_LAST_N, REPEAT_PENALTY, 0.0, 0.0))
        if temperature <= 0:
            add(chain, lib.llama_sampler_init_greedy())
        else:
            add(chain, lib.llama_sampler_init_top_k(TOP_K))
            add(chain, lib.llama_sampler_init_typical(TYPICAL_P, 1))
            add(chain, lib.llama_sampler_init_top_p(TOP_P, 1))
            add(chain, lib.llama_sampler_init_min_p(MIN_P, 1))
            add(chain, lib.llama_sampler_init_temp(temperature))
            add(chain, lib.llama_sampler_init_dist(random.getrandbits(32)))
        return chain

    def _end(self, r: _Reply, error: BaseException | None = None) -> None:
        """Under the lock: `r` is over; its slot is free and keeps what it evaluated."""
        if error is not None:
            r.out.append(error)
        r.ended = True
        if r.sampler is not None:
            self._lib.llama_sampler_free(r.sampler)
            r.sampler = None
        if r in self._active:
            self._active.remove(r)
        if r.slot is not None and r.slot.reply is r:
            r.slot.reply = None
            r.slot.used_at = time.monotonic()
            if r.slot.forget:
                r.slot.cached, r.slot.forget = [], False
        self._cond.notify_all()

    def _decode(self, call: list[_Work]) -> None:
        """One llama_decode (no lock held: readers take items meanwhile), then its sampled
        tokens handed out."""
        lib, batch = self._lib, self._batch
        i = 0
        outputs: list[tuple[_Reply, int]] = []
        for w in call:
            slot = w.reply.slot
            assert slot is not None
            pos = len(slot.cached)
            for k, tok in enumerate(w.tokens):
                batch.token[i] = tok
                batch.pos[i] = pos + k
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = slot.seq
                batch.logits[i] = w.sample and k == len(w.tokens) - 1
                i += 1
            if w.sample:
                outputs.append((w.reply, i - 1))
        batch.n_tokens = i
        started = time.perf_counter()
        status = lib.llama_decode(self._ctx, batch)
        took = time.perf_counter() - started
        if status != 0:
            self._failed(call, status)
            return
        prompt = call[0].reply.token is None
        if prompt and i >= PROMPT_STEP_MIN:
            self._prompt_token_s = 0.5 * self._prompt_token_s + 0.5 * took / i
        sampled = {id(r): int(lib.llama_sampler_sample(r.sampler, self._ctx, idx)) for r, idx in outputs}
        with self._cond:
            for w in call:
                r = w.reply
                assert r.slot is not None
                r.slot.cached.extend(w.tokens)
                if prompt:
                    r.at += len(w.tokens)
                if id(r) in sampled:
                    self._hand_out(r, sampled[id(r)])
                elif r.prefill and r.at >= len(r.prompt):
                    self._end(r)
            self._cond.notify_all()

    def _hand_out(self, r: _Reply, token: int) -> None:
        """Under the lock: the reply's new token as text, or its end."""
        lib = self._lib
        finish = None
        if lib.llama_vocab_is_eog(self._vocab, token):
            finish = "stop"
            text = r.text.flush()
        else:
            r.produced += 1
            text, stopped = r.text.feed(self._token_bytes(token))
            if stopped:
                finish = "stop"
            elif r.produced >= r.max_tokens:
                finish, text = "length", text + r.text.flush()
        if text:
            r.out.append(text)
        if finish is None:
            r.token = token
            return
        r.token = None
        r.out.append(Usage(input_tokens=len(r.prompt), output_tokens=r.produced, cached_tokens=r.cached))
        r.out.append(ChatDone(finish_reason=finish))
        self._end(r)

    def _token_bytes(self, token: int) -> bytes:
        n = self._lib.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        if n < 0:  # longer than the buffer
            self._piece = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        return bytes(self._piece.raw[:max(0, n)])

    def _failed(self, call: list[_Work], status: int) -> None:
        """A llama_decode failed: its replies get the error, and their slots forget their
        caches (what llama.cpp kept of the batch is not known)."""
        log.warning("llama_decode failed (%d) for a batch of %d replies", status, len(call))
        with self._cond:
            for r in (w.reply for w in call):
                if r.slot is not None:
                    self._lib.llama_memory_seq_rm(self._mem, r.slot.seq, -1, -1)
                    r.slot.cached.clear()
                if not r.ended:
                    self._end(r, ProviderError(f"llama.cpp failed to evaluate the batch ({status})",
                                               retryable=True, provider="llamacpp"))
