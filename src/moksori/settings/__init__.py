"""Settings: environment (`MOKSORI_` prefix) over an optional TOML file over defaults.

Groups are small option objects; a group's field is reached from the environment as
`MOKSORI_<GROUP>_<FIELD>`, e.g. `MOKSORI_LLM_MODEL=/models/qwen.gguf`, `MOKSORI_TTS_SPEED=1.1`.
The TOML file is `$MOKSORI_CONFIG`, else `./moksori.toml` if it exists, with one table per group:

    [llm]
    provider = "openai"
    base_url = "http://127.0.0.1:8080/v1"

The groups live in one module per concern and are all re-exported here (`from moksori.settings
import Settings, load_settings`): `root` (`Settings`, `load_settings`), `listening` (vad, turn,
audio), `providers` (stt, llm, tts), `agent` (agent, guardrails), `tools`, `server` (server,
webrtc), `ice` (webrtc's STUN/TURN servers), `telephony` (the carriers, telephony), `realtime`,
`store`, `cluster` (redis, cluster), `values` (the shared value types).
"""

from __future__ import annotations

from .agent import AgentSettings, GuardrailSettings
from .cluster import ClusterSettings, RedisSettings
from .ice import IceServer
from .listening import AudioSettings, TurnSettings, VADSettings
from .providers import PACKAGED_PARALLEL, LLMSettings, STTSettings, TTSSettings, llm_api_key
from .realtime import RealtimeSettings
from .root import Settings, config_file, load_settings
from .server import ServerSettings, WebRTCSettings
from .store import StoreSettings, store_url
from .telephony import PlivoSettings, TelephonySettings, TelnyxSettings, TwilioSettings, VonageSettings
from .tools import HTTPToolSettings, MCPServerSettings, ToolsSettings
from .values import Language

__all__ = [
    "Settings", "load_settings", "config_file", "store_url", "llm_api_key", "Language", "PACKAGED_PARALLEL",
    "VADSettings", "TurnSettings", "AudioSettings", "STTSettings", "LLMSettings", "TTSSettings",
    "AgentSettings", "GuardrailSettings", "ToolsSettings", "MCPServerSettings", "HTTPToolSettings",
    "ServerSettings", "WebRTCSettings", "IceServer", "TwilioSettings", "TelnyxSettings", "PlivoSettings", "VonageSettings",
    "TelephonySettings", "RealtimeSettings", "StoreSettings", "RedisSettings", "ClusterSettings",
]
