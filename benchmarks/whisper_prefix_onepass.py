"""What a one-pass forced prefix would cost (results/whisper_prefix_onepass.json; README).

k text tokens evaluated in CTranslate2's one-pass prompt path (the only one: tokens before the
SOT sequence) vs the same k tokens forced step by step after it (today's hard prefix), each
followed by one generated token; interleaved, 7 reps, LibriVox en_001 and en_004.

    flock /work/bench.lock python benchmarks/whisper_prefix_onepass.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from speech import load16k, utt

    from moksori.providers.models import prepare_whisper
    from moksori.providers.registry import build_stt
    from moksori.settings import load_settings

    d = tempfile.mkdtemp()
    prepare_whisper(Path(d))
    stt: Any = build_stt(load_settings(data_dir=d))
    m, tok = stt._wm.model, stt._tokenizer("en")
    out: dict = {"load_before": os.getloadavg()}
    kw = dict(beam_size=1, return_scores=True, return_no_speech_prob=True, suppress_blank=True,
              suppress_tokens=stt._suppress, max_initial_timestamp_index=50)
    for name in ("en_001", "en_004"):
        audio = load16k(utt(name).path)
        nf = len(audio) // 160
        window = min(3000, nf + 300)
        enc = stt._encode(stt._wm.feature_extractor(audio, padding=160 * (window - nf) + 160)[:, :window])
        sot = list(tok.sot_sequence)
        text = [i for i in m.generate(enc, [sot], max_length=440, **kw)[0].sequences_ids[0] if i < tok.eot]
        for k in (0, 8, 16):
            one, step = [], []
            for _ in range(7):
                p1 = ([tok.sot_prev] + text[:k] if k else []) + sot
                t0 = time.perf_counter()
                m.generate(enc, [p1], max_length=len(p1), **kw)  # one new token after the prompt
                one.append(1000 * (time.perf_counter() - t0))
                p2 = sot + ([tok.timestamp_begin] + text[:k] if k else [])
                t0 = time.perf_counter()
                m.generate(enc, [p2], max_length=2 * (k + 2), **kw)  # the forced tokens, then one
                step.append(1000 * (time.perf_counter() - t0))
            out[f"{name}/k{k}"] = {"one_pass_ms": round(statistics.median(one), 1),
                                   "stepped_ms": round(statistics.median(step), 1)}
            print(name, k, out[f"{name}/k{k}"], file=sys.stderr, flush=True)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
