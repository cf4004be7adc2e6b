"""The packaged LLM's speed through `providers/llm_llamacpp.py`, llama.cpp settings compared in one run.

Each variant is a set of `llama_cpp.Llama` keyword arguments (n_threads, n_batch, n_ubatch,
flash_attn, type_k, ...) and/or environment variables (UPPER-CASE keys, e.g. MOKSORI_LLAMA_SPINCOUNT,
llama.cpp's OpenMP spin count: libgomp reads it once, when it loads, so every variant runs in its
own child process). The
children alternate (A B C, then B C A, ...), so all variants see the same machine. Per child:

* `reply`: the provider's own path, as a voice turn uses it: the KV cache set back to the system
  prompt (`warm`), then `chat()` with the LibriVox transcripts as the user's message (about 24
  new prompt tokens), temperature 0, 48 tokens at most: call -> first token, -> first 50
  characters (the first clause the chunker releases to TTS), generation tokens/s after the first
  token, and the reply's text (compared with variant A's: a setting must not change the words).
* `pp24`: llama.cpp evaluating 24 new prompt tokens after the cached system prompt;
  `cold`: the whole 110-token prompt from an empty cache; `tg`: one token at a time (generation).

    python benchmarks/llm_speed.py [--rounds 3] [--reps 2] [--json out.json] \\
        --variant spin0:MOKSORI_LLAMA_SPINCOUNT=0 --variant spin1000: --variant fa:flash_attn=true

A variant is `NAME:KEY=VALUE,KEY=VALUE` (empty after the colon: the provider's defaults); the key
`model` gives another GGUF file (e.g. the packaged weights requantized: benchmarks/llm_quant.py).
`--info` prints llama.cpp's system info (how the wheel was built) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _stats import pct

HERE = Path(__file__).resolve().parent
TRANSCRIPTS = [  # what Whisper heard in shared/speech/en/en_001..005 (engine_latency.py's turns)
    "And Mr. John Dashwood had then leisure to consider how much there might be prudently in his power to do for them.",
    "He was not an ill-sposed young man.",
    "Unless to be rather cold-hearted and rather selfish is to be ill-disposed.",
    "Had he married a more amiable woman he might have been made still more respectable than he was.",
    "He might even have been made amiable himself.",
]


def parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if low.startswith(("f16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "bf16")):
        import llama_cpp

        return getattr(llama_cpp, f"GGML_TYPE_{low.upper()}")
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_variant(spec: str) -> dict:
    name, _, rest = spec.partition(":")
    env: dict[str, str] = {}
    options: dict[str, str] = {}
    for pair in filter(None, rest.split(",")):
        key, value = pair.split("=", 1)
        (env if key.isupper() else options)[key] = value
    return {"name": name, "env": env, "options": options}


async def child(options: dict, reps: int) -> dict:
    from moksori.engine.prompts import system_prompt
    from moksori.providers.base import ChatRequest, Message, TextDelta, Usage
    from moksori.providers.llm_llamacpp import LlamaCppLLM, _common_prefix
    from moksori.providers.models import path_of
    from moksori.settings import load_settings

    t0 = time.perf_counter()
    options = dict(options)
    model = options.pop("model", None) or path_of("smollm2-135m")  # model=PATH: another GGUF
    llm = LlamaCppLLM(model, llama_options={k: parse_value(v) for k, v in options.items()})
    load_ms = 1000 * (time.perf_counter() - t0)
    system = system_prompt(load_settings().agent.instructions, ("en",))
    replies: list[dict] = []
    await llm.warm(system)
    for rep in range(reps + 1):  # the first pass warms caches and pages: not counted
        for text in TRANSCRIPTS:
            await llm.warm(system)
            req = ChatRequest(messages=(Message("system", system), Message("user", text)), temperature=0.0,
                              max_tokens=48)
            t = time.perf_counter()
            first = first50 = None
            out = ""
            usage = None
            async for ev in llm.chat(req):
                if isinstance(ev, TextDelta):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    out += ev.text
                    if first50 is None and len(out) >= 50:
                        first50 = now
                elif isinstance(ev, Usage):
                    usage = ev
            end = time.perf_counter()
            if rep == 0 or first is None or usage is None:
                continue
            n = usage.output_tokens
            replies.append({
                "text": text, "reply": out, "first_token_ms": 1000 * (first - t),
                "first50_ms": 1000 * ((first50 or end) - t),
                "gen_tok_s": (n - 1) / (end - first) if n > 1 and end > first else None,
                "prompt_tokens": usage.input_tokens, "cached_tokens": usage.cached_tokens, "tokens": n})
    raw = llm._llm
    tokens = llm._tokens(llm.render(ChatRequest(messages=(Message("system", system),
                                                          Message("user", TRANSCRIPTS[3])))))
    hi = llm._tokens(llm.render(ChatRequest(messages=(Message("system", system), Message("user", "Hi")))))
    cached = _common_prefix(hi, tokens)  # what warm() leaves in the cache

    def fresh() -> None:
        raw.reset()
        raw._ctx.kv_cache_seq_rm(-1, 0, -1)

    pp24, cold, tg = [], [], []
    for _ in range(reps * 3):
        fresh()
        raw.eval(tokens[:cached])
        t = time.perf_counter()
        raw.eval(tokens[cached:cached + 24])
        pp24.append(1000 * (time.perf_counter() - t))
        fresh()
        t = time.perf_counter()
        raw.eval(tokens)
        cold.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        for i in range(32):
            raw.eval([tokens[cached + i % 20]])
        tg.append(1000 * (time.perf_counter() - t) / 32)
    await llm.close()
    return {"load_ms": load_ms, "replies": replies, "pp24_ms": pp24, "cold_ms": cold, "cold_tokens": len(tokens),
            "tg_ms_per_token": tg, "cached_prefix": cached}


def run_child(variant: dict, reps: int) -> dict:
    env = {**os.environ, **variant["env"]}
    src = HERE.parent / "src"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(variant["options"]), "--reps", str(reps)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"variant {variant['name']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(results: list[dict], reference: list[dict] | None) -> dict:
    replies = [r for res in results for r in res["replies"]]

    def q(xs: list[float], p: float) -> float | None:
        xs = [x for x in xs if x is not None]
        return round(pct(xs, p), 1) if xs else None

    out: dict = {
        "replies": len(replies),
        "first_token_ms": {"p50": q([r["first_token_ms"] for r in replies], 0.5),
                           "p95": q([r["first_token_ms"] for r in replies], 0.95)},
        "first50_ms": {"p50": q([r["first50_ms"] for r in replies], 0.5),
                       "p95": q([r["first50_ms"] for r in replies], 0.95)},
        "gen_tok_s_p50": q([r["gen_tok_s"] for r in replies], 0.5),
        "new_prompt_tokens_p50": q([r["prompt_tokens"] - r["cached_tokens"] for r in replies], 0.5),
        "pp24_ms": {"p50": q([x for res in results for x in res["pp24_ms"]], 0.5),
                    "p95": q([x for res in results for x in res["pp24_ms"]], 0.95)},
        "cold_ms_p50": q([x for res in results for x in res["cold_ms"]], 0.5),
        "cold_tokens": results[0]["cold_tokens"] if results else None,
        "tg_ms_per_token_p50": q([x for res in results for x in res["tg_ms_per_token"]], 0.5),
        "load_ms_p50": q([res["load_ms"] for res in results], 0.5),
    }
    if out["pp24_ms"]["p50"]:
        out["pp24_tok_s"] = round(24000 / out["pp24_ms"]["p50"])
    if out["cold_ms_p50"] and out["cold_tokens"]:
        out["cold_tok_s"] = round(1000 * out["cold_tokens"] / out["cold_ms_p50"])
    if out["tg_ms_per_token_p50"]:
        out["tg_tok_s"] = round(1000 / out["tg_ms_per_token_p50"])
    if reference is not None:
        ref = {r["text"]: r["reply"] for r in reference}
        out["replies_differing_from_A"] = sorted({r["text"] for r in replies if ref.get(r["text"]) != r["reply"]})
    return out


def info() -> None:
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    print(f"llama-cpp-python {llama_cpp.__version__}")
    print(lib.llama_print_system_info().decode().strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... (first one is A)")
    ap.add_argument("--rounds", type=int, default=3, help="child processes per variant")
    ap.add_argument("--reps", type=int, default=2, help="passes over the 5 transcripts per child")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--info", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.info:
        info()
        return
    if args.child is not None:
        print(json.dumps(asyncio.run(child(json.loads(args.child), args.reps))))
        return
    variants = [parse_variant(v) for v in (args.variant or ["base:"])]
    results: dict[str, list[dict]] = {v["name"]: [] for v in variants}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            res = run_child(v, args.reps)
            results[v["name"]].append(res)
            s = summarise([res], None)
            print(f"round {r} {v['name']}: first token p50 {s['first_token_ms']['p50']} ms, first 50 chars "
                  f"{s['first50_ms']['p50']} ms, pp24 {s['pp24_ms']['p50']} ms, tg {s['tg_ms_per_token_p50']} ms/token"
                  f" (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
    first = variants[0]["name"]
    reference = [r for res in results[first] for r in res["replies"]]
    summary = {
        "what": "SmolLM2-135M Q4_1 through providers/llm_llamacpp.py: reply first token, prompt eval, generation",
        "cpu": _cpu(), "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds, "reps": args.reps,
        "variants": {v["name"]: {"env": v["env"], "options": v["options"],
                                 **summarise(results[v["name"]], None if v["name"] == first else reference)}
                     for v in variants},
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "results": results}, indent=2, ensure_ascii=False))


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({isa}{', VNNI' if 'avx512_vnni' in flags else ''})"


if __name__ == "__main__":
    main()
