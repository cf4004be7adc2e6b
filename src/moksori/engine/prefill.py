"""KV prefill: the LLM reads the user's words while they are still speaking.

Without it, the reply's prompt (system prompt + history, cached by llama.cpp since the last
reply, then the new user message) costs the evaluation of all of the user's words after the
final transcript. With it (setting `llm.prefill`, env `MOKSORI_LLM_PREFILL`; by default on CPUs
without an int8 dot product while one session is live, else off: `engine/config.prefill_mode`,
docs/LATENCY.md), the words heard so far go to the LLM's `prefill`: the prompt the reply
would have, up to those words, is evaluated into the KV cache as background work. The words
come from

* incremental transcription's commits (engine/incremental_stt.py, `stt.incremental`): words no
  later decode changes, free (those decodes run anyway); with it on, the prefill does not ask
  for live partials;
* else (or also, when something else reads them) each live partial transcript
  (engine/partials.py), less its last word (often cut mid-word): each costs a Whisper decode.

The reply's request then reuses the longest common token prefix, as always, and only the words
after it are evaluated once the turn ends. Words that the final transcript contradicts cost only
their background time.

With `llm.prefill_history` (env `MOKSORI_LLM_PREFILL_HISTORY`), as each turn starts, the prompt up
to where the user's words will start is evaluated the same way (`LLM.prefill_history`): the last
reply as the chat template renders it and the template's header before the words
(`<|im_end|>\n<|im_start|>user\n`), so those tokens are not left for after the transcript. It
needs no partials.

One prefill at a time per session; a newer partial replaces one still waiting; the turn's end
drops what has not started. The provider's side (providers/llm_llamacpp.py) never holds the
model against a reply or a live STT of any session: it queues as background work, skips while a
reply generates, and stops between 8-token steps when interactive work appears.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from moksori.engine.reply_request import offered_tools
from moksori.engine.session_context import SessionContext
from moksori.providers.base import LLM, ChatRequest, Message

log = logging.getLogger("moksori.session")


def has_prompt_cache(llm: LLM) -> bool:
    """The LLM (a fallback chain's first) keeps a prompt cache a prefill can fill: it has its own
    `prefill` (the embedded llama.cpp models; a remote one has none)."""
    first = getattr(llm, "providers", (llm,))[0]
    return type(first).prefill is not LLM.prefill


def stable_words(text: str) -> str:
    """A partial transcript without its last word (the audio may end inside it)."""
    words = text.split()
    return " ".join(words[:-1])


class LlmPrefill:
    def __init__(self, ctx: SessionContext, incremental: Callable[[], bool] = lambda: False) -> None:
        self._ctx = ctx
        self._incremental = incremental  # incremental STT is on: its commits feed the prefill
        self._task: asyncio.Task[None] | None = None
        self._pending: tuple[int, str] | None = None
        self._turn_id: int | None = None
        self._history: asyncio.Task[None] | None = None
        self.evaluated = 0  # prompt tokens prefilled, all turns (for tests and benchmarks)
        self.calls = 0

    @property
    def enabled(self) -> bool:
        cfg = self._ctx.cfg
        mode = cfg.llm_prefill
        if not mode or not cfg.turn.create_response or cfg.turn.mode == "manual":
            return False
        stack = self._ctx.stack
        if not has_prompt_cache(stack.llm):  # nothing to fill: no partials decoded for it either
            return False
        return mode != "alone" or stack.live_sessions() <= 1

    @property
    def wants_partials(self) -> bool:
        """Live partials are decoded for the prefill only when incremental STT's commits do not
        feed it (engine/partial_readers.py)."""
        return self.enabled and not self._incremental()

    @property
    def history_enabled(self) -> bool:
        cfg = self._ctx.cfg
        return cfg.llm_prefill_history and cfg.turn.create_response and cfg.turn.mode != "manual"

    def begin(self, turn_id: int) -> None:
        self.end_turn()
        self._turn_id = turn_id
        if self.history_enabled:
            self._history = self._ctx.spawn(self._run_history(), f"llm-prefill-history-{turn_id}")

    def offer(self, turn_id: int, text: str) -> None:
        """The words of turn `turn_id` so far (a live partial transcript)."""
        if not self.enabled or turn_id != self._turn_id:
            return
        self._want(turn_id, stable_words(text))

    def committed(self, turn_id: int, words: str) -> None:
        """Incremental STT committed the words of turn `turn_id` so far (all of them are final)."""
        if not self.enabled or turn_id != self._turn_id:
            return
        self._want(turn_id, words.strip())

    def _want(self, turn_id: int, words: str) -> None:
        if not words:
            return
        self._pending = (turn_id, words)
        if self._task is None or self._task.done():
            self._task = self._ctx.spawn(self._run(), f"llm-prefill-{turn_id}")

    def recheck(self) -> None:
        """Another session opened on the same models: with `alone` the prefill stops now, the
        step under way or queued behind the provider's other work included, not after it."""
        if self.enabled:
            return
        self._pending = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    def end_turn(self) -> None:
        """The turn ended (or was dropped): a prefill not yet started is not wanted any more."""
        self._turn_id, self._pending = None, None
        for task in (self._task, self._history):
            if task is not None and not task.done():
                task.cancel()  # dropped if still queued; once running it ends within one step
        self._task = self._history = None

    def request(self, words: str) -> ChatRequest:
        """The request a reply to `words` would make (as `reply_request` builds the reply's)."""
        ctx = self._ctx
        cfg = ctx.cfg
        tools = offered_tools(cfg.tools, ctx.toolbox)
        messages = ctx.memory.messages(ctx.system_prompt(cfg.instructions)) + [Message("user", words)]
        return ChatRequest(messages=tuple(messages), tools=tools, tool_choice=cfg.tool_choice,
                           temperature=cfg.temperature, max_tokens=cfg.max_output_tokens)

    async def _run_history(self) -> None:
        try:
            n = await self._ctx.stack.llm.prefill_history(self.request(""))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - an optimisation: the reply works without it
            log.debug("session %s: LLM history prefill failed: %s", self._ctx.id, e)
            return
        self.calls += 1
        self.evaluated += n

    async def _run(self) -> None:
        while self._pending is not None:
            turn_id, words = self._pending
            self._pending = None
            if turn_id != self._turn_id or not self.enabled:
                return
            try:
                n = await self._ctx.stack.llm.prefill(self.request(words), words)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - an optimisation: the reply works without it
                log.debug("session %s: LLM prefill failed: %s", self._ctx.id, e)
                return
            self.calls += 1
            self.evaluated += n
