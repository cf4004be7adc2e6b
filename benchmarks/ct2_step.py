"""One Whisper decoder step in CTranslate2: where its time goes, and which knobs change it.

For every file of the shared speech sets (LibriVox en_001..005 at 16 kHz, the 8 kHz telephone
files tel_001..016), the features and encoder output are computed once per process, exactly as
`WhisperSTT._transcribe_window` does for a live turn (language en, 3 s of padding), and then
`generate` runs with today's arguments (`_decode`: greedy, suppress_tokens, return_scores,
return_no_speech_prob, max_initial_timestamp_index=50). Each decode is timed twice:

* `full`: the whole decode (`tokens` new tokens plus the end token: `tokens + 1` steps);
* `one`: the same call capped at one new token (the prompt, the cross-attention keys/values of
  the encoder output, the no-speech probability, and one step);

so `step_ms = (full - one) / tokens` is the cost of one decoder step without the fixed first
part (`first_ms` = `one`). The encoder is timed too (`encoder_ms`).

Arms (`--arms`, A first) are settings that need their own process (environment variables read
when CTranslate2 or its libgomp loads, `threads`, `compute_type`): each runs in a child process,
the children alternate round by round (A B C A B C ..., the order rotating), so the load hits them
alike. An arm is `name` or `name:KEY=VALUE;KEY=VALUE` with KEY an environment variable or
`threads` / `compute_type` / `dec_threads` (generate on a second
instance with that many threads; the encoder stays on the first). `base` is today's settings.

Variants (`--variants`) are argument sets of `generate` timed in the same process, interleaved
file by file: `today` (A), `nosuppress` (no suppress_tokens / suppress_blank), `nonospeech`
(return_no_speech_prob off), `noscores` (return_scores off), `bare` (all three off and no
max_initial_timestamp_index).

Every arm's and variant's token ids are compared with arm A's `today` ids (`same_ids`): a setting
that changes any token is not a drop-in replacement.

    python benchmarks/ct2_step.py --rounds 3 --arms base,t1:threads=1,spin1000:GOMP_SPINCOUNT=1000
    python benchmarks/ct2_step.py --arms base --variants today,bare,nosuppress --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _stats import pct

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/speech.py: corpus paths

PAD_FRAMES = 300


def parse_arm(spec: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """'name:K=V;K=V' -> (name, environment, model options)."""
    name, _, rest = spec.partition(":")
    env: dict[str, str] = {}
    model: dict[str, Any] = {}
    if not name:
        raise ValueError(f"arm {spec!r}: no name")
    for pair in filter(None, rest.split(";")):
        k, eq, v = pair.partition("=")
        if not k or not eq:
            raise ValueError(f"arm {spec!r}: expected KEY=VALUE, got {pair!r}")
        if k in ("threads", "dec_threads"):
            if not v.isdigit() or int(v) < 1:
                raise ValueError(f"arm {spec!r}: {k} must be a positive integer")
            model[k] = int(v)
        elif k == "compute_type":
            model[k] = v
        else:
            env[k] = v
    return name, env, model


def variant_kwargs(name: str, stt: Any) -> dict:
    today = dict(return_scores=True, return_no_speech_prob=True, suppress_blank=True,
                 suppress_tokens=stt._suppress, max_initial_timestamp_index=50)
    if name == "today":
        return today
    if name == "nosuppress":
        return {**today, "suppress_blank": False, "suppress_tokens": []}
    if name == "nonospeech":
        return {**today, "return_no_speech_prob": False}
    if name == "noscores":
        return {**today, "return_scores": False}
    if name == "bare":
        return dict(return_scores=False, return_no_speech_prob=False, suppress_blank=False, suppress_tokens=[])
    raise SystemExit(f"unknown variant {name}")


def files(quick: bool) -> list[tuple[str, Path]]:
    from speech import utt

    out = [(f"en/{n}", utt(n).path) for n in (f"en_{i:03d}" for i in range(1, 6))]
    tel = range(1, 6) if quick else range(1, 17)
    out += [(f"tel8k/{u.name}", u.path_8k) for u in (utt(f"tel_{i:03d}") for i in tel)]
    return out


def worker(args: argparse.Namespace) -> None:
    """One arm in this process: every file, every variant; JSON rows on stdout."""
    import ctranslate2
    import numpy as np
    from speech import load16k

    from moksori.providers import cpu
    from moksori.providers.models import prepare_whisper
    from moksori.providers.stt_whisper import WhisperSTT
    from moksori.settings import STTSettings

    _, _, model = parse_arm(args.worker)
    # base: today's default (`auto`: 1 thread with VNNI/AMX, 2 on AVX2 only; the runs in results/ had 2)
    default = STTSettings().threads
    threads = default if isinstance(default, int) else cpu.whisper_threads(cpu.detect())
    stt = WhisperSTT(prepare_whisper(Path(args.data_dir)), threads=model.get("threads", threads),
                     compute_type=model.get("compute_type", "int8"))
    cm = stt._wm.model
    dec = cm  # the model whose generate runs: with dec_threads, a second instance with its own threads
    if "dec_threads" in model:
        dec = ctranslate2.models.Whisper(str(stt.model_dir), device="cpu", compute_type=model.get("compute_type", "int8"),
                                         intra_threads=model["dec_threads"], inter_threads=1)
    fe = stt._wm.feature_extractor
    tok = stt._tokenizer("en")
    prompt = list(tok.sot_sequence)
    variants = args.variants.split(",")
    corpus = [(label, load16k(path)) for label, path in files(args.quick)]
    prepared = []
    for label, audio in corpus:
        n_frames = max(1, len(audio) // 160)
        window = min(3000, n_frames + PAD_FRAMES)
        feats = fe(audio, padding=160 * (window - n_frames) + 160)[:, :window]
        prepared.append((label, n_frames, np.ascontiguousarray(feats[None])))
    # warm up: one file, every variant
    enc = cm.encode(ctranslate2.StorageView.from_array(prepared[0][2]), to_cpu=False)
    for v in variants:
        dec.generate(enc, [prompt], beam_size=1, max_length=40, **variant_kwargs(v, stt))
    for rep in range(args.reps):
        for i, (label, n_frames, feats) in enumerate(prepared):
            t0 = time.perf_counter()
            enc = cm.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
            enc_ms = 1000 * (time.perf_counter() - t0)
            max_len = min(440, 24 + int(n_frames / 100 * 9))
            order = variants[i % len(variants):] + variants[:i % len(variants)]
            for v in order:
                kw = variant_kwargs(v, stt)
                t0 = time.perf_counter()
                res = dec.generate(enc, [prompt], beam_size=1, max_length=max_len, **kw)[0]
                full = 1000 * (time.perf_counter() - t0)
                # one new token: CTranslate2 allows min(max_length / 2, max_length - prompt + 1)
                t0 = time.perf_counter()
                dec.generate(enc, [prompt], beam_size=1, max_length=len(prompt), **kw)
                one = 1000 * (time.perf_counter() - t0)
                ids = res.sequences_ids[0]
                row = {"file": label, "rep": rep, "variant": v, "encoder_ms": round(enc_ms, 2),
                       "full_ms": round(full, 2), "one_ms": round(one, 2), "tokens": len(ids), "ids": ids,
                       "no_speech": round(float(res.no_speech_prob), 5) if kw.get("return_no_speech_prob") else None}
                print(json.dumps(row), flush=True)


def summarise(rows: list[dict], arm_names: list[str], variants: list[str]) -> dict:
    ref = {r["file"]: r["ids"] for r in rows if r["arm"] == arm_names[0] and r["variant"] == variants[0]}
    out: dict = {}
    for arm in arm_names:
        for v in variants:
            mine = [r for r in rows if r["arm"] == arm and r["variant"] == v]
            if not mine:
                continue
            steps = [(r["full_ms"] - r["one_ms"]) / r["tokens"] for r in mine if r["tokens"] > 1]
            out[f"{arm}/{v}"] = {
                "n": len(mine),
                "step_ms_p50": round(pct(steps, 0.5), 2),
                "step_ms_p25": round(pct(steps, 0.25), 2),
                "step_ms_p75": round(pct(steps, 0.75), 2),
                "first_ms_p50": round(pct([r["one_ms"] for r in mine], 0.5), 1),
                "decode_ms_p50": round(pct([r["full_ms"] for r in mine], 0.5), 1),
                "decode_per_step_ms_p50": round(pct([r["full_ms"] / (r["tokens"] + 1) for r in mine], 0.5), 2),
                "encoder_ms_p50": round(pct([r["encoder_ms"] for r in mine], 0.5), 1),
                "tokens_p50": pct([r["tokens"] for r in mine], 0.5),
                "same_ids": sum(r["ids"] == ref.get(r["file"]) for r in mine),
                "ids_differ_files": sorted({r["file"] for r in mine if r["ids"] != ref.get(r["file"])}),
            }
    return out


def dump(summary: dict, rows: list[dict]) -> str:
    """The summary indented, then one row per line (the token ids make rows long)."""
    body = ",\n".join(json.dumps(r) for r in rows)
    return '{"summary": ' + json.dumps(summary, indent=1) + ',\n"rows": [\n' + body + "\n]}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="base", help="comma-separated arm specs; the first is A")
    ap.add_argument("--variants", default="today", help="comma-separated generate argument sets; the first is A")
    ap.add_argument("--rounds", type=int, default=2, help="child processes per arm (alternating)")
    ap.add_argument("--reps", type=int, default=1, help="passes over the files inside each child")
    ap.add_argument("--quick", action="store_true", help="tel_001..005 only")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    import tempfile

    from moksori.providers.models import prepare_whisper

    data_dir = os.environ.get("MOKSORI_DATA_DIR") or tempfile.mkdtemp(prefix="moksori-ct2step-")
    prepare_whisper(Path(data_dir))
    try:
        arms = [parse_arm(a) for a in args.arms.split(",")]
    except ValueError as e:
        raise SystemExit(str(e)) from None
    names = [a[0] for a in arms]
    if len(set(names)) != len(names):
        raise SystemExit("arm names must differ")
    specs = dict(zip(names, args.arms.split(",")))
    rows: list[dict] = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    t_start = time.time()
    for rnd in range(args.rounds):
        order = arms[rnd % len(arms):] + arms[:rnd % len(arms)]
        for name, env, _ in order:
            cmd = [sys.executable, __file__, "--worker", specs[name], "--data-dir", data_dir,
                   "--variants", args.variants, "--reps", str(args.reps)] + (["--quick"] if args.quick else [])
            child_env = {**os.environ, **env}
            proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
            if proc.returncode:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"arm {name} failed")
            got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            for r in got:
                r.update(arm=name, round=rnd)
            rows += got
            steps = [(r["full_ms"] - r["one_ms"]) / r["tokens"] for r in got if r["tokens"] > 1]
            print(f"round {rnd} {name}: step p50 {pct(steps, 0.5):.2f} ms ({len(got)} decodes)", file=sys.stderr)
    summary = {"arms": specs, "variants": args.variants.split(","), "rounds": args.rounds, "reps": args.reps,
               "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
               "seconds": round(time.time() - t_start), "cpus": os.cpu_count(),
               "results": summarise(rows, names, args.variants.split(","))}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(dump(summary, rows))


if __name__ == "__main__":
    main()
