"""Shared helpers for tests that use real recorded speech.

* where the speech lives: `../shared/speech` (MANIFEST.tsv) and Debian's pocketsphinx-testdata
  LibriVox files;
* reading a file as 16 kHz float32;
* word and character error rates with a small English normaliser;
* one prepared Whisper data dir per test session (never ~/.local/share).
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _speech_root() -> Path:
    env = os.environ.get("MOKSORI_SPEECH_DIR")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "speech", Path("/work/shared/speech")]
    for c in candidates:
        if (c / "MANIFEST.tsv").is_file():
            return c
    return candidates[0]


SPEECH = _speech_root()
MANIFEST = SPEECH / "MANIFEST.tsv"
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")

# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Utterance:
    file: str  # relative to SPEECH, e.g. "en/en_001.wav"
    language: str
    duration: float
    transcript: str  # "" when the manifest has no reference transcript
    notes: str

    @property
    def path(self) -> Path:
        return SPEECH / self.file

    @property
    def path_8k(self) -> Path:
        """The 8 kHz copy of a tel/ file."""
        return SPEECH / "tel" / "8k" / Path(self.file).name

    @property
    def name(self) -> str:
        return Path(self.file).stem

    @property
    def lead_trail(self) -> tuple[float, float] | None:
        m = re.search(r"Lead/trail silence ([\d.]+)/([\d.]+) s", self.notes)
        return (float(m.group(1)), float(m.group(2))) if m else None

    @property
    def pauses(self) -> list[tuple[float, float]]:
        """[(at_s, length_s)] of the pauses of 300 ms or more that the notes list."""
        return [(float(at), int(ms) / 1000) for ms, at in re.findall(r"(\d+) ms pause at ([\d.]+) s", self.notes)]


def speech_available() -> bool:
    return MANIFEST.is_file()


requires_speech = pytest.mark.skipif(not speech_available(), reason=f"no speech corpus at {SPEECH}")


@lru_cache(maxsize=1)
def manifest() -> dict[str, Utterance]:
    """name (e.g. 'en_001') -> Utterance."""
    out: dict[str, Utterance] = {}
    lines = MANIFEST.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    col = {name: i for i, name in enumerate(header)}
    for line in lines[1:]:
        if not line.strip():
            continue
        f = line.split("\t")
        transcript = f[col["transcript"]]
        if transcript.startswith("[NO REFERENCE TRANSCRIPT"):
            transcript = ""
        u = Utterance(f[col["file"]], f[col["language"]], float(f[col["duration_s"]]), transcript,
                      f[col["notes"]] if len(f) > col["notes"] else "")
        out[u.name] = u
    return out


def utt(name: str) -> Utterance:
    return manifest()[name]


def load16k(path: str | Path) -> np.ndarray:
    """Any WAV -> mono float32 at 16 kHz, through the project's own reader and resampler."""
    from moksori.audio.wav import load_audio

    return load_audio(path, rate=16000).to_float()


def librivox_set() -> list[tuple[Path, str]]:
    """Debian pocketsphinx-testdata LibriVox utterances: [(wav, transcript)], [] if not installed."""
    trans = LIBRIVOX / "transcription"
    if not trans.is_file():
        return []
    out = []
    for line in trans.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^)]+)\)\s*$", line)
        if not m:
            continue
        wav = LIBRIVOX / f"{m.group(2)}.wav"
        if wav.is_file():
            out.append((wav, m.group(1).strip()))
    return out


# --------------------------------------------------------------------------- error rates

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """0-99 in words; larger numbers digit by digit (enough for these transcripts)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    return " ".join(_ONES[int(d)] for d in str(n))


_CONTRACTIONS = {
    "i'm": "i am", "you're": "you are", "we're": "we are", "they're": "they are", "that's": "that is",
    "it's": "it is", "what's": "what is", "here's": "here is", "there's": "there is", "let's": "let us",
    "can't": "cannot", "won't": "will not", "don't": "do not", "doesn't": "does not", "isn't": "is not",
    "aren't": "are not", "i'll": "i will", "you'll": "you will", "i've": "i have", "i'd": "i would",
    "gonna": "going to",
}


def normalize_en(text: str) -> str:
    t = text.lower().replace("\u2019", "'")
    t = re.sub(r"<[^>]*>|\[[^\]]*\]", " ", t)  # <hes-x>, [laughter] tags
    t = re.sub(r"\bmr\.?(?=\s|$)", "mister", t)
    t = re.sub(r"\bmrs\.?(?=\s|$)", "missus", t)
    t = t.replace("-", " ").replace("\u2014", " ").replace("\u2013", " ")
    t = re.sub(r"\d+", lambda m: f" {number_words(int(m.group(0)))} ", t)
    t = re.sub(r"[^\w\s']", " ", t)
    t = re.sub(r"(?<!\w)'|'(?!\w)", " ", t)  # quotes, not apostrophes inside words
    return " ".join(_CONTRACTIONS.get(w, w) for w in " ".join(t.split()).split()).strip()


def edit_distance(ref: list, hyp: list) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(errors, reference words) after normalising both sides."""
    r, h = normalize_en(ref).split(), normalize_en(hyp).split()
    return edit_distance(r, h), len(r)


def wer(ref: str, hyp: str) -> float:
    e, n = word_errors(ref, hyp)
    return e / max(1, n)


def normalize_chars(text: str) -> str:
    """For CER (Korean): NFC, no punctuation, no spaces."""
    t = unicodedata.normalize("NFC", text)
    return "".join(ch for ch in t if ch.isalnum())


def char_errors(ref: str, hyp: str) -> tuple[int, int]:
    r, h = list(normalize_chars(ref)), list(normalize_chars(hyp))
    return edit_distance(r, h), len(r)


def cer(ref: str, hyp: str) -> float:
    e, n = char_errors(ref, hyp)
    return e / max(1, n)


def has_hangul(text: str) -> bool:
    return re.search(r"[\uac00-\ud7a3]", text) is not None


# --------------------------------------------------------------------------- models

_DATA_DIR: dict[str, Path] = {}


def prepared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MOKSORI_DATA_DIR per test session, with Whisper base joined into it (once)."""
    if "dir" not in _DATA_DIR:
        from moksori.providers.models import prepare_whisper

        d = tmp_path_factory.mktemp("moksori-data")
        prepare_whisper(d)
        _DATA_DIR["dir"] = d
    return _DATA_DIR["dir"]
