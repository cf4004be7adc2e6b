"""The pipeline's providers: speech-to-text (`stt`), the LLM (`llm`, and its API key), text-to-speech
(`tts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from .values import split_csv

# llm.parallel=auto with the packaged model: 4 replies at once brought 4 sessions' first audio p50
# 0.86 -> 0.32 s and one session's +6 ms (README, Load section)
PACKAGED_PARALLEL = 4
MIN_MESSAGE_TOKENS = 64  # llm.max_message_tokens: fewer leave no room for a start, an end and the cut mark


class STTSettings(BaseModel):
    provider: Literal["whisper", "openai"] = "whisper"
    model: str | None = None  # a CTranslate2 Whisper folder; default: packaged Whisper base
    base_url: str | None = None  # for provider=openai (an OpenAI-compatible /v1)
    api_key: SecretStr | None = None
    remote_model: str = "whisper-1"
    # Whisper's intra-op threads; auto: 1 on a CPU with VNNI/AMX (paired -28 ms there), 2 on an
    # AVX2-only one (paired -56 ms there); see providers/cpu.whisper_threads, docs/LATENCY.md
    threads: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    beam_size: int = Field(1, ge=1, le=10)
    # int8: fast; CTranslate2's int8 kernels round differently per instruction set (same words,
    # punctuation and confidences can differ). float32: the same transcript on every CPU, 1.4-2x
    # Whisper's time. See providers/numerics.py.
    compute_type: Literal["int8", "float32"] = "int8"
    partial_interval_ms: int = Field(1200, ge=0)  # 0 turns live partial transcripts off
    # live partials only while something reads them (the browser app, a live-events follower,
    # the LLM prefill): auto; on: always; off: never (engine/partial_readers.py; README)
    partials: Literal["auto", "on", "off"] = "auto"
    # a live partial's decode gives way to a turn's final decode (engine/partials.py; README)
    partial_yield: bool = True
    # a preemptible decode caught in its decoder step is abandoned, not waited for: CTranslate2
    # finishes it unread on a second model replica while the final decode starts on the first
    # (providers/stt_whisper.py; docs/LATENCY.md). Off: see the A/B there
    partial_abandon: bool = False
    # decode the turn in pieces while the user speaks (committed once two decodes agree), so that
    # only the tail is decoded at its end (engine/incremental_stt.py). Off: on the 2-core VM it did
    # not pay at p50 (benchmarks/incremental_stt.py; docs/LATENCY.md)
    incremental: bool = False
    # provider=openai: one attempt's limit, retries, and extra base URLs tried in order
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    fallback: Annotated[list[str], NoDecode] = Field(default_factory=list)

    _split = field_validator("fallback", mode="before")(split_csv)


class LLMSettings(BaseModel):
    provider: Literal["llamacpp", "openai"] = "llamacpp"
    model: str | None = None  # GGUF path (llamacpp) or model name (openai); default: SmolLM2-135M
    base_url: str | None = None  # e.g. http://127.0.0.1:8080/v1
    api_key: SecretStr | None = None
    threads: int = Field(2, ge=1, le=64)
    # replies the embedded llama.cpp model generates at once: 1 serves one at a time (a reply
    # waits for those before it); N >= 2 batches N sequences in one context, each with a window
    # of context_tokens (the KV cache holds N of them: providers/llm_llamacpp_batched.py). auto:
    # PACKAGED_PARALLEL for the packaged model (~70 MiB of cache a slot), 1 for a model given
    # by path (a large model's cache can take GBs a slot: set it yourself)
    parallel: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    # the local GGUF's weights in another type, written once into data_dir/llm-weights
    # (providers/llm_weights.py): q8_0 lets llama.cpp's batched kernels evaluate the prompt
    # (the packaged Q4_1 cannot); as_is loads the file as it is (docs/LATENCY.md)
    weights: Literal["as_is", "q8_0", "f16"] = "as_is"
    # the window one reply's prompt is fitted to (the embedded model's KV cache holds `parallel`
    # of them; a remote model's own window)
    context_tokens: int = Field(4096, ge=512)
    # the most tokens one user or tool message is sent to the embedded llama.cpp model with (its
    # start and its end, `engine/context.cut_middle`: one pasted text cost minutes of prompt
    # evaluation on 2 cores). auto: 512, at most a quarter of `context_tokens`
    # (providers/llm_llamacpp.MESSAGE_TOKENS); 0: no such limit (only the context window bounds a
    # message); else 64 up to less than `context_tokens`. A remote model (provider=openai) has none
    max_message_tokens: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    temperature: float = Field(0.5, ge=0.0, le=2.0)
    max_tokens: int = Field(160, ge=1, le=8192)
    timeout_s: float = Field(30.0, gt=0)
    first_token_timeout_s: float = Field(15.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    # evaluate the user's words heard so far (incremental STT's commits when stt.incremental is
    # on, else live partials) into the local LLM's KV cache while they speak (engine/prefill.py);
    # only the embedded llama.cpp model has such a cache (with another LLM it does nothing, and
    # asks for no partials). On: the LLM's own step after the final transcript goes from p50 ~245
    # to ~183 ms; on AVX2-only CPUs a single caller's first audio came 33-37 ms sooner (paired,
    # two machines); on CPUs with an int8 dot product the A/B runs disagree at p50; and without
    # incremental STT every session decodes live partials for it, which an overlapping caller
    # pays. alone: on while this process has no other live session. auto: alone on CPUs without
    # an int8 dot product (AVX2 only), else off (docs/LATENCY.md)
    prefill: bool | Literal["auto", "alone"] = "auto"
    # when the user starts speaking, evaluate the history and the chat template's header before
    # their words (`<|im_end|>\n<|im_start|>user\n` after a reply) into the local LLM's KV cache
    # (engine/prefill.py; the replies are token for token the same: benchmarks/turn_prefix.py;
    # a second turn's LLM start -> first token p50 73 -> 63 ms: engine_second_turn.py, README).
    # Off: the first audio played did not move (paired median 0), and with several sessions on
    # one model it replaces another session's cached history, a cost not yet measured
    prefill_history: bool = False
    fallback: Annotated[list[str], NoDecode] = Field(default_factory=list)  # extra base URLs tried in order
    # a file holding the API key (first line); used when api_key is not set
    api_key_file: Path | None = None
    # Azure OpenAI: "auto" = azure when the host ends in .openai.azure.com / .cognitiveservices.azure.com.
    # Azure sends the key in an `api-key` header, adds `?api-version=` and addresses a deployment.
    api_flavor: Literal["auto", "openai", "azure"] = "auto"
    api_version: str | None = None  # Azure `api-version`, e.g. 2024-10-21
    deployment: str | None = None  # Azure deployment name (the URL becomes .../openai/deployments/<name>)

    _split = field_validator("fallback", mode="before")(split_csv)

    @field_validator("max_message_tokens")
    @classmethod
    def _message_fits_the_window(cls, v: int | Literal["auto"], info: ValidationInfo) -> int | Literal["auto"]:
        if v == "auto" or v == 0:
            return v
        if v < MIN_MESSAGE_TOKENS:
            raise ValueError(f"{v} is too few to keep a message's start and end: use at least "
                             f"{MIN_MESSAGE_TOKENS}, or 0 for no per-message limit")
        context = info.data.get("context_tokens")
        if isinstance(context, int) and v >= context:
            raise ValueError(f"{v} does not fit the {context}-token context window (llm.context_tokens) with "
                             f"anything else: use less, or 0 for no per-message limit")
        return v

    def replies_at_once(self) -> int:
        """`parallel` resolved: the replies the embedded model generates at once."""
        if self.parallel != "auto":
            return self.parallel
        return PACKAGED_PARALLEL if self.model is None else 1


class TTSSettings(BaseModel):
    provider: Literal["local", "openai"] = "local"
    voice_en: str | None = None  # Piper .onnx path; default: the packaged en_US joe voice
    voice_ko: str | None = None  # Piper .onnx path for Korean; default: espeak-ng
    base_url: str | None = None
    api_key: SecretStr | None = None
    remote_model: str = "tts-1"
    speed: float = Field(1.0, gt=0.25, le=4.0)
    threads: int = Field(2, ge=1, le=64)
    # Piper streams each sentence's audio in windows (its graph cut before the decoder) instead
    # of making the whole sentence first; off: Piper's one-shot path
    piper_stream: bool = True
    # the reply's first clause is cut at this many characters (0: no cap; shorter is sooner, and
    # more often cut mid-phrase); with the ramp, the caps of the clauses after it double from it
    first_clause_max_chars: int = Field(50, ge=0, le=1000)
    first_clause_ramp: bool = False
    # once the first clause is complete the local LLM pauses while it is synthesised: "max_ahead"
    # (after the token stream's few tokens of backpressure) or "now" (before its next token)
    first_clause_pause: Literal["max_ahead", "now"] = "max_ahead"
    # provider=openai: time to a clause's first audio, longest gap after it, retries, extra base URLs
    first_audio_timeout_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    fallback: Annotated[list[str], NoDecode] = Field(default_factory=list)

    _split = field_validator("fallback", mode="before")(split_csv)


def llm_api_key(s: LLMSettings) -> str | None:
    """The LLM key from `api_key`, else the first line of `api_key_file`; never from code."""
    if s.api_key is not None and s.api_key.get_secret_value():
        return s.api_key.get_secret_value()
    if s.api_key_file is not None:
        from moksori.errors import ConfigError

        try:
            text = Path(s.api_key_file).expanduser().read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read LLM API key file {s.api_key_file}: {e.strerror}") from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), "")
        if not first:
            raise ConfigError(f"LLM API key file {s.api_key_file} is empty")
        return first
    return None
