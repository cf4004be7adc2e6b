"""Options of the upstream Realtime client: where it connects, how the session is set up, and
how it survives a slow or lost upstream. Small frozen option objects, validated when built.

`resolve_endpoint` turns what a user writes (`MOKSORI_REALTIME_URL`) into the URL to open and
the auth headers to send:

* OpenAI (GA): `wss://api.openai.com/v1/realtime?model=gpt-realtime`, `Authorization: Bearer`.
  A bare `ws://host:port` or `…/v1` gets `/v1/realtime` (another Moksori is such a URL).
  An `*.azure.com` host (Azure OpenAI's GA endpoint) gets the key as `api-key` instead.
* Azure Voice Live: `https://<resource>.services.ai.azure.com` (or any URL with
  `/voice-live/realtime`) becomes `wss://…/voice-live/realtime?api-version=…&model=…`, key in `api-key`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from moksori.errors import ConfigError
from moksori.protocols.realtime import PCM16_24K, AudioFormat

__all__ = ["UpstreamFlavor", "TurnMode", "Endpoint", "resolve_endpoint", "Timeouts", "ReconnectPolicy",
           "ReseedBudget", "SessionOptions", "UpstreamOptions", "AZURE_API_VERSION"]

UpstreamFlavor = Literal["openai", "azure"]
TurnMode = Literal["server_vad", "semantic_vad", "manual"]
"""`server_vad`/`semantic_vad`: the upstream detects turns and answers by itself. `manual`:
the upstream's VAD is off (`turn_detection: null`); Moksori commits and asks for responses."""

AZURE_API_VERSION = "2025-10-01"


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str  # ws:// or wss://, with every query parameter
    headers: tuple[tuple[str, str], ...] = field(repr=False)  # they hold the key: never in logs
    flavor: UpstreamFlavor = "openai"
    model: str | None = None


def _is_azure_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host.endswith(".azure.com") or host.endswith(".azure.cn") or host.endswith(".azure.us")


def resolve_endpoint(url: str, *, flavor: Literal["auto", "openai", "azure"] = "auto", api_key: str | None = None,
                     model: str | None = None, api_version: str | None = None) -> Endpoint:
    """The URL and headers to open; `ConfigError` (one line, naming the setting) if unusable."""
    raw = (url or "").strip()
    if not raw:
        raise ConfigError("MOKSORI_REALTIME_URL is empty", hint="e.g. wss://api.openai.com/v1/realtime?model=gpt-realtime")
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https"):
        raise ConfigError(f"MOKSORI_REALTIME_URL must start with ws://, wss://, http:// or https://, not {raw[:60]!r}")
    if not parts.hostname:
        raise ConfigError(f"MOKSORI_REALTIME_URL has no host: {raw[:80]!r}")
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    path = parts.path.rstrip("/")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if flavor == "auto":
        flavor = "azure" if "/voice-live" in path or (_is_azure_host(parts.hostname) and "/openai" not in path) \
            else "openai"
    if flavor not in ("openai", "azure"):
        raise ConfigError(f"MOKSORI_REALTIME_FLAVOR must be openai or azure, not {flavor!r}")
    if model:
        query["model"] = model
    headers: list[tuple[str, str]] = []
    if flavor == "azure":
        if not path.endswith("/voice-live/realtime"):
            path = path + "/voice-live/realtime"
        query.setdefault("api-version", api_version or AZURE_API_VERSION)
        if api_version:
            query["api-version"] = api_version
        if api_key:
            headers.append(("api-key", api_key))
    else:
        if path in ("", "/v1", "/openai/v1"):
            path = path + ("/realtime" if path else "/v1/realtime")
        if not query.get("model"):
            raise ConfigError("MOKSORI_REALTIME_URL needs ?model=… (or set MOKSORI_REALTIME_MODEL)",
                              hint="e.g. wss://api.openai.com/v1/realtime?model=gpt-realtime")
        if api_key:
            headers.append(("api-key", api_key) if _is_azure_host(parts.hostname)
                           else ("Authorization", f"Bearer {api_key}"))
    final = urlunsplit((ws_scheme, parts.netloc, path, urlencode(query), ""))
    return Endpoint(final, tuple(headers), flavor, query.get("model"))


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """A slow or dead upstream is detected by these, never waited on forever (seconds).

    * `connect_s`: TCP + TLS + the WebSocket handshake.
    * `first_event_s`: connected, but no `session.created`.
    * `response_s`: a response was asked for (or the upstream committed a turn it must answer),
      but no `response.created`.
    * `idle_s`: a response is in progress and the upstream sent nothing for this long.
    * `keepalive_s`: WebSocket ping interval; a ping unanswered for as long drops the link
      (`None`: no pings, e.g. on an in-memory transport).
    """

    connect_s: float = 10.0
    first_event_s: float = 10.0
    response_s: float = 15.0
    idle_s: float = 15.0
    keepalive_s: float | None = 15.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_event_s", "response_s", "idle_s", "keepalive_s"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """After a drop: the first try at once, then full-jitter backoff; give up after
    `max_attempts` failed tries in a row. `rotate_after_s` opens a fresh session at a quiet moment
    before the upstream's own time limit ends it (OpenAI: 60 min); `None` = never."""

    max_attempts: int = 8
    base_delay_s: float = 0.25
    max_delay_s: float = 5.0
    rotate_after_s: float | None = None
    resume: bool = True  # after re-seeding, answer a turn the drop left unanswered
    resume_note: str = ("(The connection dropped for a moment and was restored. If you were in the middle of "
                        "a reply, say in a few words that you were cut off, then continue it; otherwise answer "
                        "the user's last turn.)")
    # audio sent while disconnected is kept (up to this much) and sent once connected again
    buffer_while_down_s: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        _positive("rotate_after_s", self.rotate_after_s)
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds before try `attempt` (1 = the first try after a drop: no wait)."""
        if attempt <= 1:
            return 0.0
        return rand * min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 2))


@dataclass(frozen=True, slots=True)
class ReseedBudget:
    """How much of the conversation a new connection is given (as text items), newest first."""

    max_items: int = 40
    max_chars: int = 12_000
    # a user turn whose transcript never arrived is sent as audio when it is this recent
    keep_user_audio_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_items < 0 or self.max_chars < 0:
            raise ValueError("reseed budgets must be >= 0")


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What the upstream session is configured with (sent again after every reconnect)."""

    instructions: str = ""
    voice: str | dict[str, Any] | None = None  # None: the upstream's default voice
    tools: tuple[dict[str, Any], ...] = ()  # {"name", "description", "parameters"}
    tool_choice: str | dict[str, Any] = "auto"
    turn: TurnMode = "server_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"  # semantic_vad
    silence_duration_ms: int = 500  # server_vad
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    create_response: bool = True  # upstream VAD answers by itself
    interrupt_response: bool = True
    transcription_model: str | None = None  # None: a per-flavor default; "" = no input transcription
    transcription_language: str | None = None
    input_format: AudioFormat = PCM16_24K
    output_format: AudioFormat = PCM16_24K
    output_modalities: tuple[str, ...] = ("audio",)
    temperature: float | None = None  # Azure/beta only: GA sessions have no temperature
    max_output_tokens: int | Literal["inf"] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # merged into `session` as given

    def __post_init__(self) -> None:
        if self.turn not in ("server_vad", "semantic_vad", "manual"):
            raise ValueError(f"turn must be server_vad, semantic_vad or manual, not {self.turn!r}")
        if not set(self.output_modalities) <= {"audio", "text"} or not self.output_modalities:
            raise ValueError("output_modalities must be a non-empty subset of audio, text")
        names = [t.get("name") for t in self.tools]
        if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
            raise ValueError("every tool needs a unique, non-empty name")


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    endpoint: Endpoint
    session: SessionOptions = SessionOptions()
    timeouts: Timeouts = Timeouts()
    reconnect: ReconnectPolicy = ReconnectPolicy()
    reseed: ReseedBudget = ReseedBudget()
    max_message_bytes: int = 16 * 1024 * 1024
