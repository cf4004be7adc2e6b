"""The second turn of a conversation with and without the chat template's header prefilled.

After a reply, llama.cpp's KV cache holds the system prompt, the history and the reply's tokens as
generated. The next turn's prompt adds `<|im_end|>\\n<|im_start|>user\\n` before the user's words
(and the reply as the template re-renders it, whose tokens may differ from the generated ones).
`LlamaCppLLM.prefill_history(request)` evaluates all of that ahead of time (when the user starts
speaking), so only the words and the assistant header are left once the transcript is final.

Per pair (LibriVox transcripts i and i+1, turn 1 then turn 2, temperature 0, 48 tokens): the
cache is set back to the system prompt, turn 1 is answered, then turn 2 is asked either at once
(A) or after the header's prefill (B), interleaved (A B, then B A). Measured: prompt tokens left
after the cache (and prefill), chat() call -> first token, and whether B's reply is token for
token A's (same CPU, same process).

    python benchmarks/turn_prefix.py [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _stats import pct
from llm_speed import TRANSCRIPTS


async def turn2(llm, system: str, first: str, second: str, prefill: bool) -> dict:
    from moksori.providers.base import ChatRequest, Message, TextDelta, Usage

    await llm.warm(system)
    req1 = ChatRequest(messages=(Message("system", system), Message("user", first)), temperature=0.0,
                       max_tokens=48)
    reply1 = ""
    async for ev in llm.chat(req1):
        if isinstance(ev, TextDelta):
            reply1 += ev.text
    req2 = ChatRequest(messages=(Message("system", system), Message("user", first),
                                 Message("assistant", reply1.strip()), Message("user", second)),
                       temperature=0.0, max_tokens=48)
    prefilled = await llm.prefill_history(req2) if prefill else 0
    t = time.perf_counter()
    ttft = None
    reply2 = ""
    usage = None
    async for ev in llm.chat(req2):
        if isinstance(ev, TextDelta):
            ttft = ttft if ttft is not None else 1000 * (time.perf_counter() - t)
            reply2 += ev.text
        elif isinstance(ev, Usage):
            usage = ev
    assert usage is not None
    return {"prefilled": prefilled, "new_tokens": usage.input_tokens - usage.cached_tokens,
            "ttft_ms": round(ttft or 0.0, 1), "reply": reply2}


async def run(reps: int) -> dict:
    from moksori.engine.prompts import system_prompt
    from moksori.providers.llm_llamacpp import LlamaCppLLM
    from moksori.providers.models import path_of
    from moksori.settings import load_settings

    load_before = os.getloadavg()
    llm = LlamaCppLLM(path_of("smollm2-135m"))
    system = system_prompt(load_settings().agent.instructions, ("en",))
    rows: list[dict] = []
    n = 0
    for rep in range(reps + 1):  # the first pass warms caches and pages: not counted
        for i in range(len(TRANSCRIPTS)):
            first, second = TRANSCRIPTS[i], TRANSCRIPTS[(i + 1) % len(TRANSCRIPTS)]
            order = (False, True) if n % 2 == 0 else (True, False)
            n += 1
            pair = {}
            for prefill in order:
                pair[prefill] = await turn2(llm, system, first, second, prefill)
            if rep == 0:
                continue
            for prefill, r in pair.items():
                row = {"pair": i, "rep": rep, "variant": "B" if prefill else "A", **r,
                       "same_reply": r["reply"] == pair[False]["reply"]}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)

    def summary(v: str) -> dict:
        rs = [r for r in rows if r["variant"] == v]
        return {"n": len(rs), "ttft_p50_ms": round(pct([r["ttft_ms"] for r in rs], 0.5), 1),
                "ttft_p95_ms": round(pct([r["ttft_ms"] for r in rs], 0.95), 1),
                "new_tokens_p50": statistics.median(r["new_tokens"] for r in rs),
                "prefilled_p50": statistics.median(r["prefilled"] for r in rs),
                "same_reply": sum(r["same_reply"] for r in rs)}
    a = {(r["pair"], r["rep"]): r["ttft_ms"] for r in rows if r["variant"] == "A"}
    diffs = [r["ttft_ms"] - a[(r["pair"], r["rep"])] for r in rows if r["variant"] == "B"]
    return {"summary": {"what": "turn 2: chat() -> first token, without (A) / with (B) the header prefilled",
                        "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                        "A": summary("A"), "B": summary("B"),
                        "paired_median_diff_ms": round(statistics.median(diffs), 1)},
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args.reps))
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
