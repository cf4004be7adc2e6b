"""The root of the settings tree: `Settings` (the `MOKSORI_` environment, the TOML file, the top-level
fields and one field per group), the config file's path, and `load_settings`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .agent import AgentSettings, GuardrailSettings
from .cluster import ClusterSettings, RedisSettings
from .listening import AudioSettings, TurnSettings, VADSettings
from .providers import LLMSettings, STTSettings, TTSSettings
from .realtime import RealtimeSettings
from .server import ServerSettings, WebRTCSettings
from .store import StoreSettings
from .telephony import PlivoSettings, TelephonySettings, TelnyxSettings, TwilioSettings, VonageSettings
from .tools import ToolsSettings
from .values import Language, split_csv


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

    _validate_keys = field_validator("api_keys", mode="before")(split_csv)

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


def _field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of an error's location that names settings: it stops at the first field that is
    not itself a group of settings (what follows a plain field is pydantic's type tags)."""
    from pydantic import BaseModel

    model: Any = Settings
    for i, part in enumerate(loc):
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return loc
        sub = field.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return loc[:i + 1]
        model = sub
    return loc


def _first_problem(errors: list[Any]) -> tuple[str, str]:
    """(setting, what is wrong) for pydantic's first error. A value that fits none of a union's
    types (`threads`: a number or "auto") comes as one error per type, located under a type tag
    (`stt.threads.constrained-int`): the setting is the tag's parent, and every type's message is
    said, `or`-joined."""
    loc, msgs = tuple(errors[0].get("loc", ())), [str(errors[0].get("msg") or "")]
    field = _field_path(loc)
    if field != loc:  # the rest of the path are a union's type tags
        msgs = [str(x.get("msg") or "") for x in errors if tuple(x.get("loc", ()))[:len(field)] == field]
        loc = field
    said = [m.removeprefix("Value error, ") for m in msgs]
    return ".".join(str(p) for p in loc), "; or ".join(dict.fromkeys(said))


def load_settings(**overrides: Any) -> Settings:
    """Build settings; a bad value becomes one `ConfigError` line, not a pydantic dump."""
    import tomllib

    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from moksori.errors import ConfigError

    try:
        return Settings(**overrides)
    except ValidationError as e:
        where, msg = _first_problem(e.errors())
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
