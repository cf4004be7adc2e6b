"""The packaged LLM's weights in other llama.cpp quantizations: how close they stay to the shipped file.

The packaged SmolLM2-135M is Q4_1, a type llama.cpp's batched matrix kernels (llamafile's tinyBLAS)
do not cover, so its prompt evaluation takes the generic per-row dot-product path. This script
writes the same weights in the other types `llm.weights` offers (providers/llm_weights.py: Q8_0
moves each weight by at most half a Q8_0 step, F16 holds them exactly) and measures, per
type, against a reference on the same tokens (`--ref`: the shipped Q4_1, or F16, the Q4_1
weights computed without quantizing the activations, as close to the original model as these
weights get):

* perplexity over English text: the sentences of ../shared/speech (LibriVox and telephone
  transcripts) and Debian's GPL-3 text in 1,000-word parts (`text_ppl`, and `text_kl_mean` /
  `text_top1_same` against the reference);
* over chat turns as a voice reply sees them (system prompt, a LibriVox user turn, the
  reference's own greedy reply): the reply's perplexity, the mean KL divergence of each
  next-token distribution from the reference's, and the share of positions whose most likely
  token is the same;
* the file size.

Speed is measured by benchmarks/llm_speed.py with `model=PATH` variants.

    python benchmarks/llm_quant.py [--types q8_0,f16] [--ref f16] [--dir /tmp/llm-quant] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SPEECH = HERE.parent.parent / "shared" / "speech" / "MANIFEST.tsv"
LICENSE = Path("/usr/share/common-licenses/GPL-3")  # plain English prose on every Debian machine


def english_texts() -> list[str]:
    """The shared speech set's English transcripts as one text, and the GPL-3 text in 1,000-word parts."""
    rows = [line.split("\t") for line in SPEECH.read_text(encoding="utf-8").splitlines()[1:]]
    texts = [" ".join(r[3] for r in rows if r[1] == "en" and not r[3].startswith("["))]
    if LICENSE.is_file():
        words = LICENSE.read_text(encoding="utf-8").split()
        texts += [" ".join(words[i:i + 1000]) for i in range(0, len(words), 1000)]
    return texts


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_logprobs(llm: Any, tokens: list[int]) -> np.ndarray:
    """log-softmax of the logits after each token (rows: positions 0..n-1)."""
    llm.reset()
    llm.eval(tokens)
    return log_softmax(np.array(llm.scores[: len(tokens)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="q8_0,f16")
    ap.add_argument("--dir", default="/tmp/moksori-llm-quant")
    ap.add_argument("--ref", default="q4_1", help="the type the others are compared with")
    ap.add_argument("--json")
    args = ap.parse_args()

    sys.path.insert(0, str(HERE))
    from llm_speed import TRANSCRIPTS
    from moksori.providers.llama_cpu import use_portable_kernels
    from moksori.providers.llm_weights import weights_file
    from moksori.engine.prompts import system_prompt
    from moksori.providers.models import path_of

    use_portable_kernels()
    from llama_cpp import Llama

    base = Path(path_of("smollm2-135m"))
    out_dir = Path(args.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"q4_1": base}
    for kind in filter(None, args.types.split(",")):
        files[kind] = weights_file(base, kind, out_dir)  # what MOKSORI_LLM_WEIGHTS=kind loads

    def load(path: Path) -> Any:
        return Llama(model_path=str(path), n_ctx=2048, n_threads=2, n_threads_batch=2, n_batch=512,
                     logits_all=True, verbose=False)

    ref = load(files[args.ref])
    texts = [ref.tokenize(t.encode(), add_bos=True)[:1800] for t in english_texts()]
    system = system_prompt(None, ("en",))  # as llm_speed.py: the packaged model is English only
    chats: list[tuple[list[int], int]] = []  # (tokens, where the reply starts)
    for user in TRANSCRIPTS:
        prompt = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                  "<|im_start|>assistant\n")
        p = ref.tokenize(prompt.encode(), add_bos=False, special=True)
        reply = ref.create_completion(prompt, max_tokens=48, temperature=0.0)["choices"][0]["text"]
        r = ref.tokenize(reply.encode(), add_bos=False, special=False)
        chats.append((p + r, len(p)))
    seqs = [(t, 1) for t in texts] + chats
    ref_lps = [token_logprobs(ref, toks) for toks, _ in seqs]
    del ref
    rows: dict[str, Any] = {}
    for kind, path in files.items():
        llm = load(path)
        acc: dict[str, list[float]] = {k: [] for k in ("text_nll", "text_kl", "text_same",
                                                       "reply_nll", "reply_kl", "reply_same")}
        for n, ((toks, start), rlp) in enumerate(zip(seqs, ref_lps)):
            part = "text" if n < len(texts) else "reply"
            lp = token_logprobs(llm, toks)
            span = slice(start - 1, len(toks) - 1)  # the predictions of tokens start..end
            acc[f"{part}_kl"].extend((np.exp(rlp[span]) * (rlp[span] - lp[span])).sum(axis=-1).tolist())
            acc[f"{part}_same"].extend((rlp[span].argmax(-1) == lp[span].argmax(-1)).tolist())
            acc[f"{part}_nll"].extend(-lp[span][np.arange(len(toks) - start), toks[start:]])
        del llm
        rows[kind] = {"file": str(path), "mib": round(path.stat().st_size / 2**20, 1)}
        for part in ("text", "reply"):
            rows[kind].update({
                f"{part}_ppl": round(math.exp(float(np.mean(acc[f"{part}_nll"]))), 3),
                f"{part}_tokens": len(acc[f"{part}_nll"]),
                f"{part}_kl_mean": round(float(np.mean(acc[f"{part}_kl"])), 5),
                f"{part}_top1_same": round(float(np.mean(acc[f"{part}_same"])), 4)})
        print(kind, rows[kind], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": {
            "what": "packaged SmolLM2-135M Q4_1 requantized: closeness to the shipped file",
            "cpu": platform.processor() or platform.machine(), "reference": args.ref, "types": rows}}, indent=1))


if __name__ == "__main__":
    main()
