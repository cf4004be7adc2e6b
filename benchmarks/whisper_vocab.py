"""Whisper with only the text tokens English and Korean are written in: is the output layer worth cutting?

Every decoder step ends in the output projection, one row per vocabulary entry (51,865 x 512 in
the multilingual Whisper base), about as many weights as the six decoder layers together. Moksori
transcribes English and Korean only, so the idea was a copy of the model whose vocabulary keeps
the text tokens whose bytes can be part of text in those scripts (Latin, with its punctuation,
symbols and fullwidth forms; Greek; Hangul: `SCRIPTS`) and every special token after them, in
their order (CTranslate2 takes the timestamps as the ids after `<|notimestamps|>`). Greedy
decoding cannot change while the full vocabulary's best token is a kept one (the timestamp rule
compares log-probabilities with one normaliser), so it costs no accuracy on English and Korean.

This writes that copy (CTranslate2's model.bin read and written by the small codec below: the
embedding rows and their vocabulary sliced, config.json's id lists mapped) and times the final
decode of each turn on both, interleaved, the order alternating, on one shared encoder output
per arm, as `WhisperSTT._decode` calls it (3 s of padding, timestamps on, suppressions mapped);
prompts are mapped into the smaller vocabulary and results back, and the token ids compared.

Result (2026-12-06, Intel Xeon with AMX, CTranslate2 held to AVX2 kernels; README latency
section; results/whisper_vocab_avx2_emulated.json): the scripts keep 45,842 of 51,865 entries
(ASCII alone is 38,912: most of Whisper's BPE is Latin-script text); not worth a second model.

    CT2_FORCE_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
      flock /work/bench.lock python benchmarks/whisper_vocab.py [--threads 2] [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/speech.py: corpus paths and WER

# ---------------------------------------------------------------- CTranslate2's model.bin
# (its python/ctranslate2/specs/model_spec.py writes it, src/models/model.cc reads it): u32
# binary version, str spec, u32 revision, u32 n, n x (str name, u8 rank, rank x u32 dims, u8
# dtype id, u32 byte count, bytes), u32 m, m x (str alias, str target); str = u16 length with
# its NUL, bytes, NUL; little-endian.
DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_NUMPY = {"float32": np.float32, "int8": np.int8, "int16": np.int16, "int32": np.int32, "float16": np.float16,
          "bfloat16": np.uint16}  # bfloat16 kept as its raw 16-bit words


class CT2FormatError(ValueError):
    """Not a CTranslate2 model.bin this codec reads."""


@dataclass
class Variable:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray  # shape `shape`, numpy dtype of `dtype` (bfloat16 as uint16)


@dataclass
class CT2Model:
    binary_version: int
    spec: str
    revision: int
    variables: list[Variable] = field(default_factory=list)
    aliases: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> Variable | None:
        """The variable `name`, following an alias (and an alias's `_scale`/`_zero` companions)."""
        by_name = {v.name: v for v in self.variables}
        if name in by_name:
            return by_name[name]
        for alias, target in self.aliases:
            for suffix in ("", "_scale", "_zero"):
                if name == alias + suffix:
                    return by_name.get(target + suffix)
        return None


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = memoryview(buf), 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise CT2FormatError(f"truncated model.bin: {n} bytes wanted at offset {self.pos}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def string(self) -> str:
        n = self.u16()
        if n == 0:
            raise CT2FormatError(f"empty string at offset {self.pos - 2}")
        return bytes(self.take(n)[:-1]).decode("utf-8")


def read_ct2(buf: bytes) -> CT2Model:
    """A model.bin's bytes -> its variables (arrays copied out of `buf`) and aliases."""
    r = _Reader(buf)
    version = r.u32()
    if version < 4 or version > 6:
        raise CT2FormatError(f"model.bin binary version {version}: only 4-6 are read")
    model = CT2Model(version, r.string(), r.u32())
    for _ in range(r.u32()):
        name = r.string()
        shape = tuple(r.u32() for _ in range(r.u8()))
        type_id = r.u8()
        if type_id >= len(DTYPES):
            raise CT2FormatError(f"variable {name}: unknown dtype id {type_id}")
        dtype = DTYPES[type_id]
        raw = r.take(r.u32())
        arr = np.frombuffer(raw, dtype=_NUMPY[dtype]).copy()
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise CT2FormatError(f"variable {name}: {arr.size} items for shape {shape}")
        model.variables.append(Variable(name, dtype, shape, arr.reshape(shape)))
    if r.pos < len(r.buf):
        model.aliases = [(r.string(), r.string()) for _ in range(r.u32())]
    if r.pos != len(r.buf):
        raise CT2FormatError(f"{len(r.buf) - r.pos} trailing bytes after the aliases")
    return model


def write_ct2(model: CT2Model) -> bytes:
    """`read`'s inverse: the model.bin bytes of `model`."""
    out: list[bytes] = []

    def string(s: str) -> None:
        b = s.encode("utf-8") + b"\0"
        out.append(struct.pack("<H", len(b)) + b)

    out.append(struct.pack("<I", model.binary_version))
    string(model.spec)
    out.append(struct.pack("<I", model.revision))
    out.append(struct.pack("<I", len(model.variables)))
    for v in model.variables:
        data = np.asarray(v.data, dtype=_NUMPY[v.dtype], order="C")  # (ascontiguousarray makes a scalar 1-d)
        if tuple(data.shape) != tuple(v.shape):
            raise CT2FormatError(f"variable {v.name}: data shape {data.shape} is not {v.shape}")
        string(v.name)
        out.append(struct.pack("<B", len(v.shape)) + b"".join(struct.pack("<I", d) for d in v.shape))
        raw = data.tobytes()
        out.append(struct.pack("<BI", DTYPES.index(v.dtype), len(raw)))
        out.append(raw)
    out.append(struct.pack("<I", len(model.aliases)))
    for alias, target in model.aliases:
        string(alias)
        string(target)
    return b"".join(out)


# ---------------------------------------------------------------- the smaller vocabulary






# Unicode blocks (inclusive code point ranges) per script
LATIN = ((0x0000, 0x036F), (0x1E00, 0x1EFF), (0x2000, 0x22FF), (0x2460, 0x24FF), (0x2C60, 0x2C7F),
         (0xA720, 0xA7FF), (0xFB00, 0xFB06), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0xFFFD, 0xFFFD))
GREEK = ((0x0370, 0x03FF), (0x1F00, 0x1FFF))
HANGUL = ((0x1100, 0x11FF), (0x3000, 0x303F), (0x3130, 0x318F), (0x3200, 0x32FF), (0xA960, 0xA97F),
          (0xAC00, 0xD7FF))
# what each language's transcripts are written in: English and Korean text both carry Latin
# letters, digits and punctuation (Korean speech is full of English words and numbers)
SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {"en": LATIN + GREEK, "ko": LATIN + GREEK + HANGUL}
VOCAB_FILE = "moksori-vocab.json"
FORMAT = 1


def byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins -> the bytes they encode (GPT-2's table: the
    printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100 upwards, in order)."""
    direct = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in direct}
    n = 0
    for b in range(256):
        if b not in direct:
            table[chr(256 + n)] = b
            n += 1
    return table


def _allowed(cp: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def _lead_allowed(head: bytes, ranges: Sequence[tuple[int, int]]) -> bool:
    """Can the incomplete UTF-8 sequence `head` (a lead byte and 0+ continuation bytes) start an
    allowed character? The code points it can start are one contiguous range."""
    lead = head[0]
    if lead >= 0xF0:
        n, bits = 4, lead & 0x07
    elif lead >= 0xE0:
        n, bits = 3, lead & 0x0F
    elif lead >= 0xC0:
        n, bits = 2, lead & 0x1F
    else:
        return False
    value = bits
    for b in head[1:]:
        value = (value << 6) | (b & 0x3F)
    missing = n - len(head)
    lo, hi = value << (6 * missing), ((value + 1) << (6 * missing)) - 1
    return any(a <= hi and lo <= b for a, b in ranges)


def token_allowed(data: bytes, ranges: Sequence[tuple[int, int]]) -> bool:
    """Can the bytes of one text token be part of UTF-8 text written only in `ranges`?
    Leading continuation bytes (a character begun in an earlier token) are taken as possible."""
    i = 0
    while i < len(data) and 0x80 <= data[i] < 0xC0:
        i += 1
    while i < len(data):
        b = data[i]
        n = 1 if b < 0x80 else 2 if b >= 0xC0 and b < 0xE0 else 3 if b >= 0xE0 and b < 0xF0 else 4 if b >= 0xF0 else 0
        if n == 0 or b >= 0xF8:
            return False  # a stray continuation byte or an invalid lead
        if i + n > len(data):
            return _lead_allowed(data[i:], ranges)
        try:
            ch = data[i:i + n].decode("utf-8")
        except UnicodeDecodeError:
            return False
        if not _allowed(ord(ch), ranges):
            return False
        i += n
    return True


def kept_ids(vocabulary: Sequence[str], eot: int, languages: Iterable[str]) -> list[int] | None:
    """The original ids the smaller vocabulary keeps, in order: text tokens (ids below `eot`,
    byte-level BPE strings) allowed in the languages' scripts, then every id from `eot` on.
    None: a language whose script is not known here (keep the whole vocabulary)."""
    ranges: list[tuple[int, int]] = []
    for lang in languages:
        if lang not in SCRIPTS:
            return None
        ranges.extend(SCRIPTS[lang])
    decoder = byte_decoder()
    keep = []
    for i in range(eot):
        try:
            data = bytes(decoder[c] for c in vocabulary[i])
        except KeyError:
            continue  # not a byte-level BPE string: CTranslate2 could not have produced it either
        if token_allowed(data, ranges):
            keep.append(i)
    return keep + list(range(eot, len(vocabulary)))


@dataclass(frozen=True)
class IdMap:
    """Ids of the smaller model <-> the original vocabulary's."""
    new_to_old: np.ndarray  # int64, one per new id

    @property
    def old_to_new(self) -> dict[int, int]:
        return {int(o): n for n, o in enumerate(self.new_to_old)}

    def to_new(self, ids: Iterable[int]) -> list[int]:
        """Original ids -> the smaller model's, dropping those it does not have."""
        table = self.old_to_new
        return [table[i] for i in ids if i in table]

    def to_old(self, ids: Iterable[int]) -> list[int]:
        return [int(self.new_to_old[i]) for i in ids]

    @classmethod
    def load(cls, model_dir: Path) -> IdMap | None:
        """The map of a model `prune_model` wrote; None for any other model folder."""
        f = model_dir / VOCAB_FILE
        if not f.is_file():
            return None
        meta = json.loads(f.read_text())
        return cls(np.asarray(meta["new_to_old"], dtype=np.int64))


def _vocabulary(model_dir: Path) -> list[str]:
    if (model_dir / "vocabulary.json").is_file():
        return list(json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8")))
    return (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]


def pruned_dir(model_dir: Path, out_root: Path, languages: Sequence[str]) -> Path:
    """Where the pruned copy of `model_dir` for `languages` lives (its name says the languages and
    a hash of the original model.bin's size and mtime, so a changed model gets a new copy)."""
    st = (model_dir / "model.bin").stat()
    tag = hashlib.sha256(f"{model_dir.resolve()}|{st.st_size}|{st.st_mtime_ns}|{FORMAT}".encode()).hexdigest()[:10]
    return out_root / f"{model_dir.name}-{'+'.join(sorted(languages))}-{tag}"


def prune_model(model_dir: Path, out_dir: Path, languages: Sequence[str]) -> Path | None:
    """Write `model_dir` with only the languages' text tokens into `out_dir` (once: an existing
    complete copy is reused). None: nothing to prune (a language of unknown script, or a model
    without the tied embedding/projection this expects). Raises OSError, CT2FormatError."""
    if (out_dir / VOCAB_FILE).is_file():
        return out_dir
    vocab = _vocabulary(model_dir)
    if "<|endoftext|>" not in vocab:
        return None
    keep = kept_ids(vocab, vocab.index("<|endoftext|>"), languages)
    if keep is None or len(keep) == len(vocab):
        return None
    model = read_ct2((model_dir / "model.bin").read_bytes())
    rows = np.asarray(keep, dtype=np.int64)
    sliced = 0
    for v in model.variables:
        if v.shape and v.shape[0] == len(vocab):  # the embedding (and its scale), the projection's bias
            v.data = v.data[rows]
            v.shape = (len(keep), *v.shape[1:])
            sliced += 1
        elif len(v.shape) == 2 and v.shape[1] == len(vocab):
            return None  # a vocabulary-wide matrix laid out otherwise: not a model this knows
    if not sliced or model.get("decoder/embeddings/weight") is None:
        return None
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "model.bin").write_bytes(write_ct2(model))
        (tmp / "vocabulary.txt").write_text("".join(vocab[i] + "\n" for i in keep), encoding="utf-8")
        config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
        old_to_new = {o: n for n, o in enumerate(keep)}
        for key in ("suppress_ids", "suppress_ids_begin", "lang_ids"):
            if isinstance(config.get(key), list):
                config[key] = [old_to_new[i] for i in config[key] if i in old_to_new]
        (tmp / "config.json").write_text(json.dumps(config))
        for f in model_dir.iterdir():
            if f.is_file() and f.name not in ("model.bin", "vocabulary.txt", "vocabulary.json", "config.json",
                                              "moksori-stamp.json"):
                shutil.copyfile(f, tmp / f.name)
        (tmp / VOCAB_FILE).write_text(json.dumps({"format": FORMAT, "languages": sorted(languages),
                                                  "source": str(model_dir), "new_to_old": keep}))
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# ---------------------------------------------------------------- the timing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=str(HERE / "results" / "whisper_vocab_avx2_emulated.json"))
    args = ap.parse_args()

    import ctranslate2
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens
    from speech import cer, load16k, utt, wer

    from moksori.providers.models import prepare_whisper

    data = Path(os.environ.get("MOKSORI_DATA_DIR") or tempfile.mkdtemp())
    full_dir = prepare_whisper(data)
    cut_dir = prune_model(full_dir, pruned_dir(full_dir, Path(tempfile.mkdtemp()), ["en", "ko"]), ["en", "ko"])
    assert cut_dir is not None
    idmap = IdMap.load(cut_dir)
    assert idmap is not None
    arms = {"full": (WhisperModel(str(full_dir), device="cpu", compute_type="int8", cpu_threads=args.threads,
                                  local_files_only=True), None),
            "en_ko": (WhisperModel(str(cut_dir), device="cpu", compute_type="int8", cpu_threads=args.threads,
                                   local_files_only=True), idmap)}
    files = [f"en_{i:03d}" for i in range(1, 11)] + [f"tel_{i:03d}" for i in range(1, 11)] + ["ko_001", "ko_002"]
    rows: list[dict] = []
    load_before = os.getloadavg()
    for rep in range(args.reps):
        for n, name in enumerate(files):
            u = utt(name)
            lang = "ko" if name.startswith("ko") else "en"
            audio = load16k(u.path)
            nf = len(audio) // 160
            window = min(3000, nf + 300)
            order = list(arms) if (rep + n) % 2 == 0 else list(reversed(arms))
            row: dict = {"file": name, "rep": rep}
            for arm in order:
                wm, mp = arms[arm]
                tok = Tokenizer(wm.hf_tokenizer, True, task="transcribe", language=lang)
                suppress, prompt = get_suppressed_tokens(tok, [-1]), list(tok.sot_sequence)
                if mp is not None:
                    suppress, prompt = mp.to_new(suppress), mp.to_new(prompt)
                feats = wm.feature_extractor(audio, padding=160 * (window - nf) + 160)[:, :window]
                enc = wm.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None])),
                                      to_cpu=False)
                t0 = time.perf_counter()
                res = wm.model.generate(enc, [prompt], beam_size=1, max_length=min(440, 24 + int(nf / 100 * 9)),
                                        return_scores=True, return_no_speech_prob=True, suppress_blank=True,
                                        suppress_tokens=suppress, max_initial_timestamp_index=50)[0]
                ms = (time.perf_counter() - t0) * 1000
                ids = res.sequences_ids[0] if mp is None else mp.to_old(res.sequences_ids[0])
                text = tok.decode([i for i in ids if i < tok.eot]).strip()
                err = cer(u.transcript, text) if lang == "ko" else wer(u.transcript, text)
                row[arm] = {"ms": round(ms, 2), "tokens": len(ids), "ids": ids, "text": text, "err": round(err, 4),
                            "no_speech": round(float(res.no_speech_prob), 5)}
            rows.append(row)
            print(name, rep, {a: row[a]["ms"] for a in arms}, flush=True)
    summary: dict = {"load_before": load_before, "load_after": os.getloadavg(), "threads": args.threads,
                     "isa_env": {k: os.environ.get(k) for k in ("CT2_FORCE_CPU_ISA", "ONEDNN_MAX_CPU_ISA",
                                                                "MKL_ENABLE_INSTRUCTIONS")},
                     "vocabulary": {"full": len(_vocabulary(full_dir)),
                                    "en_ko": int(len(idmap.new_to_old))}}
    for arm in arms:
        ms = [r[arm]["ms"] for r in rows]
        summary[arm] = {"decode_p50_ms": round(statistics.median(ms), 1),
                        "ms_per_token_p50": round(statistics.median(r[arm]["ms"] / r[arm]["tokens"] for r in rows), 2),
                        "mean_err_en": round(statistics.mean(r[arm]["err"] for r in rows if not r["file"].startswith("ko")), 4)}
    summary["paired_median_ms"] = round(statistics.median(r["en_ko"]["ms"] - r["full"]["ms"] for r in rows), 1)
    summary["paired_per_token_ms"] = round(statistics.median(
        (r["en_ko"]["ms"] - r["full"]["ms"]) / r["full"]["tokens"] for r in rows), 3)
    summary["same_ids"] = sum(r["en_ko"]["ids"] == r["full"]["ids"] for r in rows)
    summary["decodes"] = len(rows)
    summary["max_no_speech_diff"] = max(abs(r["en_ko"]["no_speech"] - r["full"]["no_speech"]) for r in rows)
    print(json.dumps(summary, indent=1))
    Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
