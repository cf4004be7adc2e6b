"""Where a final Whisper decode's time goes, stage by stage, and interleaved A/Bs of its knobs.

For each turn (LibriVox en_001..005 at 16 kHz, the 8 kHz telephone files tel_001..016) the
final decode runs through Moksori's `WhisperSTT.transcribe_array` as a live turn does (language
pinned to en, or detected among en/ko as with the default `language=auto`), and a proxy around
the CTranslate2 model times each stage: features (faster-whisper's mel extractor, for the
window only), encoder, language detection, decoder (`generate`), and counts the tokens the
decoder generated (text and timestamp tokens; each is one decoder step, plus the end token).

Variants (`--variants`, A first; each runs on every file in the same run, the order rotating
file by file, so the load hits them alike):

* `base`: today's settings (int8, 2 intra-op threads, 3 s of encoder padding, language en);
* `auto`: language detected among en/ko (the default `language=auto`): the detection's cost;
* `threads1` / `threads3` / `threads4`: CTranslate2 intra-op threads;
* `split`: the encoder on the 2-thread model, language detection and the decoder on a second
  instance with 1 thread (its own copy of the weights);
* `int8_float32` / `float32`: the other compute types CTranslate2 4.8 offers on this CPU;
* `pad200` / `pad400` ...: more or less silence padding after the speech in the encoder window.

Reported per variant: per-stage p50 (ms), total p50/p95, tokens p50, decoder ms per token,
WER on the en and tel sets (as tests/speech.py computes it), and how many transcripts differ
from variant A's.

    python benchmarks/whisper_stages.py [--reps 2] [--variants base,auto,threads1] [--json out.json]

Uses MOKSORI_DATA_DIR if set, otherwise a temporary data dir (Whisper is joined there, ~1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _stats import pct

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/speech.py: corpus paths and WER

COMPUTE_TYPES = ("int8_float32", "float32")  # what CTranslate2 4.8 offers on CPU besides int8


class StageClock:
    """Wraps the CTranslate2 Whisper model and the feature extractor; records each call's time."""

    def __init__(self, model: Any, fe: Any) -> None:
        self._model, self._fe = model, fe
        self.rec: dict[str, float] = {}
        self.tokens: list[int] = []

    def reset(self) -> None:
        self.rec, self.tokens = {}, []

    def _add(self, key: str, t0: float) -> None:
        self.rec[key] = self.rec.get(key, 0.0) + 1000 * (time.perf_counter() - t0)

    def features(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = self._fe(*a, **kw)
        self._add("features", t0)
        return out

    def encode(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = self._model.encode(*a, **kw)
        self._add("encoder", t0)
        return out

    def detect_language(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = self._model.detect_language(*a, **kw)
        self._add("detect", t0)
        return out

    def generate(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = self._model.generate(*a, **kw)
        self._add("decoder", t0)
        if not kw.get("asynchronous"):
            self.tokens.extend(len(r.sequences_ids[0]) for r in out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class FE:
    """The feature extractor, timed (WhisperSTT calls `self._wm.feature_extractor(audio, padding=...)`)."""

    def __init__(self, clock: StageClock, fe: Any) -> None:
        self._clock, self._fe = clock, fe

    def __call__(self, *a: Any, **kw: Any) -> Any:
        return self._clock.features(*a, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fe, name)


def instrument(stt: Any) -> StageClock:
    clock = StageClock(stt._wm.model, stt._wm.feature_extractor)
    stt._wm.model = clock
    stt._wm.feature_extractor = FE(clock, clock._fe)
    return clock


@contextmanager
def patched(module: Any, **values: Any) -> Iterator[None]:
    old = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


def build_variant(name: str, settings: Any, cache: dict) -> tuple[Any, Callable[[], Any], dict]:
    """-> (stt, context manager factory for the call, STTOptions overrides)."""
    import moksori.providers.stt_whisper as sw
    from moksori.providers.stt_whisper import WhisperSTT

    def stt_for(threads: int = 2, compute_type: str = "int8") -> Any:
        key = (threads, compute_type)
        if key not in cache:
            from moksori.providers.registry import build_stt

            if key == (2, "int8"):
                stt = build_stt(settings)
            else:
                stt = WhisperSTT(stt_for()[0].model_dir, threads=threads, compute_type=compute_type)
            cache[key] = (stt, instrument(stt))
        return cache[key]

    none = contextmanager(lambda: iter([None]))
    opts: dict = {"language": "en"}
    if name == "base":
        return stt_for(), none, opts
    if name == "auto":
        return stt_for(), none, {"language": None, "languages": ("en", "ko")}
    if name == "split":  # encoder on the 2-thread model, language detection and decoder on a 1-thread one
        if "split" not in cache:
            import ctranslate2
            import numpy as np

            stt = WhisperSTT(stt_for()[0].model_dir, threads=1)
            clock = instrument(stt)
            encoder = stt_for()[1]._model

            def encode(feats: Any) -> Any:
                t0 = time.perf_counter()
                out = encoder.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None])),
                                     to_cpu=False)
                clock._add("encoder", t0)
                return out

            stt._encode = encode
            cache["split"] = (stt, clock)
        return cache["split"], none, opts
    if name.startswith("threads"):
        return stt_for(threads=int(name[7:])), none, opts
    if name in COMPUTE_TYPES:
        return stt_for(compute_type=name), none, opts
    if name.startswith("pad"):
        return stt_for(), lambda: patched(sw, PAD_FRAMES=int(name[3:])), opts
    raise SystemExit(f"unknown variant {name}")


def files(quick: bool, every: bool = False) -> list[tuple[str, Path, str, str, str]]:
    """(label, path, transcript, group, language); `every`: all of MANIFEST.tsv's English,
    telephone (8 kHz) and Korean files instead of en_001..005 and tel_001..016."""
    from speech import manifest, utt

    names = sorted(manifest())
    en = [n for n in names if n.startswith("en_")] if every else [f"en_{i:03d}" for i in range(1, 6)]
    tel = ([n for n in names if n.startswith("tel_")] if every
           else [f"tel_{i:03d}" for i in (range(1, 6) if quick else range(1, 17))])
    out = [(f"en/{n}", utt(n).path, utt(n).transcript, "en", "en") for n in en]
    out += [(f"tel8k/{u.name}", u.path_8k, u.transcript, "tel", u.language) for u in map(utt, tel)]
    if every:
        out += [(f"ko/{n}", utt(n).path, utt(n).transcript, "ko", "ko") for n in names if n.startswith("ko_")]
    return out


def run(args: argparse.Namespace, settings: Any) -> dict:
    from speech import char_errors, load16k, word_errors

    from moksori.providers.base import STTOptions

    names = args.variants.split(",")
    cache: dict = {}
    variants = {n: build_variant(n, settings, cache) for n in names}
    corpus = [(label, load16k(path), ref, group, lang) for label, path, ref, group, lang in files(args.quick, args.all)]
    for stt, _ in cache.values():  # warm every instance
        stt.transcribe_array(corpus[0][1], STTOptions(language="en"))
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows: list[dict] = []
    n = 0
    for rep in range(args.reps):
        for label, audio, ref, group, lang in corpus:
            order = names[n % len(names):] + names[:n % len(names)]
            n += 1
            for name in order:
                (stt, clock), ctx, opts = variants[name]
                clock.reset()
                with ctx():
                    t0 = time.perf_counter()
                    tr = stt.transcribe_array(audio, STTOptions(**(opts | {"language": lang} if opts["language"] else opts)))
                    total = 1000 * (time.perf_counter() - t0)
                errors, words = (char_errors if lang == "ko" else word_errors)(ref, tr.text)
                row = {"variant": name, "rep": rep, "file": label, "group": group, "audio_s": round(len(audio) / 16000, 2),
                       "total_ms": round(total, 1), **{k: round(v, 1) for k, v in clock.rec.items()},
                       "tokens": sum(clock.tokens), "decodes": len(clock.tokens), "errors": errors, "words": words,
                       "text": tr.text, "language": tr.language}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    summary: dict = {"loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                     "cpus": os.cpu_count(), "reps": args.reps}
    ref_text = {(r["file"], r["rep"]): r["text"] for r in rows if r["variant"] == names[0]}
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        s: dict = {}
        for key in ("features", "encoder", "detect", "decoder", "total_ms", "tokens"):
            vals = [r[key] for r in mine if key in r]
            if vals:
                s[f"{key}_p50"] = round(pct(vals, 0.5), 1)
                s[f"{key}_p95"] = round(pct(vals, 0.95), 1)
        per_tok = [r["decoder"] / (r["tokens"] + r["decodes"]) for r in mine if r.get("decoder") and r["tokens"]]
        s["decoder_ms_per_step_p50"] = round(pct(per_tok, 0.5), 2) if per_tok else None
        for group in ("en", "tel", "ko"):  # Korean files: character errors
            g = [r for r in mine if r["group"] == group]
            if not g:
                continue
            s[f"wer_{group}"] = round(sum(r["errors"] for r in g) / max(1, sum(r["words"] for r in g)), 4)
            s[f"total_{group}_p50"] = round(pct([r["total_ms"] for r in g], 0.5), 1)
        s["retries_30s"] = sum(1 for r in mine if r["decodes"] > 1)
        s["differs_from_A"] = sum(1 for r in mine if r["text"] != ref_text[(r["file"], r["rep"])])
        summary[name] = s
    return {"summary": summary, "rows": rows}


def chunk_check(args: argparse.Namespace, settings: Any) -> dict:
    """Can a greedy decode be split into calls of N tokens, each continuing from the tokens so
    far (the prompt + a forced prefix), and give the tokens of one call? Encoder output shared;
    one call and the chunked calls alternate per file. Reports equality and the decoder times."""
    from speech import load16k

    from moksori.providers.registry import build_stt

    stt = build_stt(settings)
    model = stt._wm.model
    rows = []
    for label, path, *_ in files(args.quick):
        audio = load16k(path)
        n_frames = len(audio) // 160
        window = min(3000, n_frames + 300)
        feats = stt._wm.feature_extractor(audio, padding=160 * (window - n_frames) + 160)
        enc = stt._encode(feats[:, :window])
        tok = stt._tokenizer("en")
        prompt = list(tok.sot_sequence)
        max_len = min(440, 24 + int(n_frames / 100 * 9))
        kw = dict(beam_size=1, return_scores=True, return_no_speech_prob=True, suppress_tokens=stt._suppress)
        t0 = time.perf_counter()
        one = model.generate(enc, [prompt], max_length=max_len, suppress_blank=True,
                             max_initial_timestamp_index=50, **kw)[0].sequences_ids[0]
        t_one = time.perf_counter() - t0
        cap = min(max_len // 2, max_len - (len(prompt) - 1))  # new tokens CTranslate2 allows one call
        got: list[int] = []
        calls = 0
        t0 = time.perf_counter()
        while len(got) < cap:
            want = min(args.chunk_check, cap - len(got))
            res = model.generate(enc, [prompt + got], max_length=max(2 * want, want + len(prompt) - 1),
                                 suppress_blank=not got, max_initial_timestamp_index=50 if not got else 1500, **kw)[0]
            calls += 1
            new = res.sequences_ids[0][:want]
            got += new
            if len(new) < want:
                break  # ended with the end token
        t_chunked = time.perf_counter() - t0
        first_diff = next((i for i, (a, b) in enumerate(zip(one, got)) if a != b), None)
        if first_diff is None and len(one) != len(got):
            first_diff = min(len(one), len(got))
        row = {"file": label, "tokens": len(one), "same": one == got, "first_diff": first_diff, "calls": calls,
               "one_call_ms": round(1000 * t_one, 1), "chunked_ms": round(1000 * t_chunked, 1),
               "one": tok.decode_with_timestamps(one), "chunked": tok.decode_with_timestamps(got)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return {"chunk_tokens": args.chunk_check, "same": sum(r["same"] for r in rows), "n": len(rows),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "rows": rows}


async def _behind_partial(stt: Any, partial_audio: Any, final_audio: Any, delay_s: float) -> dict:
    """A preemptible background decode of `partial_audio` (a live partial), and `delay_s` after
    its decoder step started, an interactive decode of `final_audio` (the turn's final): how
    long the final took from being queued, and when the partial's caller got control back."""
    import asyncio

    from moksori.providers import threads
    from moksori.providers.base import STTOptions

    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    real = stt._wm.model

    class Signal:  # the model, telling when the partial's decoder step starts
        def generate(self, *a: Any, **kw: Any) -> Any:
            loop.call_soon_threadsafe(started.set)
            return real.generate(*a, **kw)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    stt._wm.model = Signal()
    try:
        with threads.background():
            partial = asyncio.ensure_future(threads.run_blocking(
                stt._transcribe_array, partial_audio, STTOptions(language="en", preemptible=True),
                executor=stt.executor))
        await started.wait()
    finally:
        stt._wm.model = real
    await asyncio.sleep(delay_s)
    t0 = loop.time()
    final = await threads.run_blocking(stt._transcribe_array, final_audio, STTOptions(language="en"),
                                       executor=stt.executor)
    final_ms = 1000 * (loop.time() - t0)
    got = await partial
    return {"final_ms": round(final_ms, 1), "partial_gave_way": got is None, "final_text": final.text if final else ""}


def behind_partial(args: argparse.Namespace, settings: Any) -> dict:
    """Interleaved A/B: the final decode queued while a live partial is in its decoder step,
    with the partial waited for (abandon off: today) and abandoned (`stt.partial_abandon`)."""
    import asyncio
    import random

    from speech import load16k

    from moksori.providers.base import STTOptions
    from moksori.providers.registry import build_stt

    arms = {"wait": build_stt(settings), "abandon": build_stt(settings.model_copy(
        update={"stt": settings.stt.model_copy(update={"partial_abandon": True})}))}
    corpus = [(label, load16k(path)) for label, path, *_ in files(args.quick)]
    longest = max(corpus, key=lambda c: len(c[1]))[1]  # the partial: the longest turn so far
    alone = {}
    for stt in arms.values():  # warm both
        stt.transcribe_array(corpus[0][1], STTOptions(language="en"))
    for label, audio in corpus:
        alone[label] = arms["wait"].transcribe_array(audio, STTOptions(language="en")).text
    rng = random.Random(14)
    rows = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    n = 0
    for rep in range(args.reps):
        for label, audio in corpus:
            delay = rng.uniform(0.0, 0.25)  # where in the partial's decoder step the final arrives
            order = ["wait", "abandon"] if n % 2 == 0 else ["abandon", "wait"]
            n += 1
            for arm in order:
                row = asyncio.run(_behind_partial(arms[arm], longest, audio, delay))
                row.update(arm=arm, file=label, rep=rep, delay_ms=round(1000 * delay),
                           same_as_alone=row["final_text"] == alone[label])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
            # an abandoned decoder step is still finishing: let it end before the next pair
            time.sleep(0.5)
    summary: dict = {"loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        vals = [r["final_ms"] for r in mine]
        summary[arm] = {"final_ms_p50": round(pct(vals, 0.5), 1), "final_ms_p95": round(pct(vals, 0.95), 1),
                        "final_ms_max": round(max(vals), 1), "n": len(mine),
                        "partial_gave_way": sum(r["partial_gave_way"] for r in mine),
                        "final_same_as_alone": sum(r["same_as_alone"] for r in mine)}
    return {"summary": summary, "rows": rows}


def whisper_settings() -> tuple[Any, "tempfile.TemporaryDirectory[str] | None"]:
    """Settings whose data dir holds the joined Whisper model (MOKSORI_DATA_DIR, or a temporary
    dir, returned so the caller keeps it alive); exits without the speech corpus."""
    from speech import speech_available

    from moksori.providers.models import prepare_whisper
    from moksori.settings import load_settings

    if not speech_available():
        raise SystemExit("no speech corpus: expected ../shared/speech/MANIFEST.tsv next to the repo")
    tmp = None
    data_dir = os.environ.get("MOKSORI_DATA_DIR")
    if not data_dir:
        tmp = tempfile.TemporaryDirectory(prefix="moksori-bench-")
        data_dir = tmp.name
    prepare_whisper(Path(data_dir))
    return load_settings(data_dir=data_dir), tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--variants", default="base,auto", help="comma-separated; the first is A")
    ap.add_argument("--quick", action="store_true", help="tel_001..005 only")
    ap.add_argument("--all", action="store_true", help="every en, tel (8 kHz) and ko file in MANIFEST.tsv")
    ap.add_argument("--chunk-check", type=int, default=0, metavar="N",
                    help="instead: compare one decode call with calls of N tokens continuing from the tokens so far")
    ap.add_argument("--behind-partial", action="store_true",
                    help="instead: A/B of a final decode queued behind a live partial's decoder, waited for vs abandoned")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    settings, tmp = whisper_settings()
    from moksori.providers.cpu import detect

    if args.behind_partial:
        result = behind_partial(args, settings)
        print(json.dumps(result["summary"], indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False))
        return
    if args.chunk_check:
        result = chunk_check(args, settings)
        print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False))
        return
    out = run(args, settings)
    out["summary"]["cpu"] = detect().summary()
    print(json.dumps(out["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
