"""Several replies asked at once of the embedded LLM: `LlamaCppLLM` (one reply at a time) against
the batched provider (`MOKSORI_LLM_PARALLEL`, providers/llm_llamacpp_batched.py), in one run.

N = 1, 2, 4, 6 chat requests are asked together, each the real system prompt (in the KV cache:
`warm`) and a user line from the speech set's English transcripts, a different line for every
request of the run (so no reply finds its whole prompt cached), 40-token replies at the default
temperature 0.5. Each round runs every N on both providers, alternating which goes first, so
both see the same machine; the load average is recorded at each run (the machine is shared).

Per request: first-token latency (from when the N were asked: queueing included, as a user
waits for it) and its stream's tokens per second after its first token. Per run: throughput
(all N replies' tokens / time until the last one ended).

    python benchmarks/llm_parallel.py [--rounds 3] [--levels 1,2,4,6] [--parallel 6] \\
        [--json benchmarks/results/llm_parallel.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
from pathlib import Path

from _stats import pct
from server_latency import manifest

HERE = Path(__file__).resolve().parent


def user_lines() -> list[str]:
    """The speech set's English transcripts (no markup), each once."""
    lines: list[str] = []
    for item in manifest().values():
        text = item["transcript"].strip()
        if text and "<" not in text and "[" not in text and len(text) <= 300 and text not in lines \
                and not str(item["file"]).split("/")[-2] == "ko":
            lines.append(text)
    return lines


async def one(llm, req, t0: float) -> dict:
    from moksori.providers.base import TextDelta, Usage

    first = None
    tokens = 0
    async for ev in llm.chat(req):
        if isinstance(ev, TextDelta) and first is None:
            first = time.perf_counter()
        elif isinstance(ev, Usage):
            tokens = ev.output_tokens
    end = time.perf_counter()
    return {"first_token_s": (first or end) - t0, "end_s": end - t0, "tokens": tokens,
            "stream_tok_s": (tokens - 1) / (end - first) if first is not None and tokens > 1 and end > first else None}


async def run(args: argparse.Namespace) -> dict:
    from moksori.engine.prompts import system_prompt
    from moksori.providers.base import ChatRequest, Message
    from moksori.providers.llm_llamacpp import LlamaCppLLM
    from moksori.providers.llm_llamacpp_batched import BatchedLlamaCppLLM
    from moksori.providers.models import path_of
    from moksori.settings import load_settings

    settings = load_settings()
    system = system_prompt(settings.agent.instructions, ("en",))
    model = path_of("smollm2-135m")
    providers = {
        "one_at_a_time": LlamaCppLLM(model, threads=args.threads, context_tokens=args.context),
        f"batched_{args.parallel}": BatchedLlamaCppLLM(model, parallel=args.parallel, threads=args.threads,
                                                       context_tokens=args.context),
    }
    for llm in providers.values():
        await llm.warm(system)
    lines = itertools.cycle(user_lines())
    names = list(providers)
    runs: list[dict] = []
    for rnd in range(args.rounds):
        for n in args.levels:
            texts = [next(lines) for _ in range(n)]
            order = names if (rnd + args.levels.index(n)) % 2 == 0 else names[::-1]
            for name in order:
                llm = providers[name]
                reqs = [ChatRequest(messages=(Message("system", system), Message("user", t)),
                                    max_tokens=args.max_tokens, temperature=args.temperature) for t in texts]
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                replies = await asyncio.gather(*(one(llm, r, t0) for r in reqs))
                wall = max(r["end_s"] for r in replies)
                tokens = sum(r["tokens"] for r in replies)
                runs.append({"round": rnd, "provider": name, "n": n, "load_1min": load,
                             "load_1min_after": os.getloadavg()[0], "wall_s": wall, "tokens": tokens,
                             "throughput_tok_s": tokens / wall, "requests": replies})
                print(f"round {rnd} N={n} {name:>15}: first token p50 {pct([r['first_token_s'] for r in replies], 0.5):.2f} s, "
                      f"{tokens / wall:.1f} tok/s in all, load {load:.1f}", flush=True)
    for llm in providers.values():
        await llm.close()
    return {"names": names, "runs": runs}


def summarise(data: dict, levels: list[int]) -> list[dict]:
    rows = []
    for n in levels:
        for name in data["names"]:
            runs = [r for r in data["runs"] if r["provider"] == name and r["n"] == n]
            reqs = [q for r in runs for q in r["requests"]]
            first = [q["first_token_s"] for q in reqs]
            rates = [q["stream_tok_s"] for q in reqs if q["stream_tok_s"]]
            rows.append({
                "n": n, "provider": name, "requests": len(reqs),
                "first_token_p50_s": round(pct(first, 0.5), 3), "first_token_p95_s": round(pct(first, 0.95), 3),
                "stream_tok_s_p50": round(pct(rates, 0.5), 1), "stream_tok_s_p05": round(pct(rates, 0.05), 1),
                "throughput_tok_s_median": round(statistics.median(r["throughput_tok_s"] for r in runs), 1),
                "tokens_per_reply_mean": round(statistics.mean(q["tokens"] for q in reqs), 1),
                "load_1min": [round(min(r["load_1min"] for r in runs), 1), round(max(r["load_1min"] for r in runs), 1)],
            })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", default="1,2,4,6", help="how many requests are asked together, comma-separated")
    ap.add_argument("--parallel", type=int, default=6, help="the batched provider's slots")
    ap.add_argument("--context", type=int, default=4096, help="context tokens of each provider (the batched one splits it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "llm_parallel.json")
    args = ap.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    started = time.time()
    data = asyncio.run(run(args))
    rows = summarise(data, args.levels)
    print(f"\n{'N':>2} {'provider':>15} {'first token p50/p95 s':>22} {'stream tok/s p50':>17} {'all tok/s':>10} {'load':>10}")
    for r in rows:
        print(f"{r['n']:>2} {r['provider']:>15} {r['first_token_p50_s']:>10.2f} / {r['first_token_p95_s']:<9.2f} "
              f"{r['stream_tok_s_p50']:>17.1f} {r['throughput_tok_s_median']:>10.1f} {str(r['load_1min']):>10}")
    out = {"benchmark": "llm_parallel", "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
           "cpus": os.cpu_count(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
           "summary": rows, **data}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
