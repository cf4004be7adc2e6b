"""The realtime brain: a speech-to-speech upstream (OpenAI Realtime GA, Azure Voice Live, another
Moksori) hears and speaks behind Moksori's own session.

* `client.RealtimeUpstream`: the upstream client (typed events out, clamped truncates, timeouts,
  reconnects with re-seeding);
* `session.RealtimeSession` and `reply.UpstreamReply`: the engine's `Session` with its reply part
  swapped for the upstream (open one with `moksori.brains.open_session`);
* `providers`: what the stack holds instead of local LLM/TTS models (`RealtimeLLM`: the upstream
  as a text model).

See docs/ARCHITECTURE.md ("Two brains, one session").
"""

from . import events
from .client import RealtimeUpstream
from .conversation import HistoryItem
from .options import (AZURE_API_VERSION, Endpoint, ReconnectPolicy, ReseedBudget, SessionOptions, Timeouts,
                      TurnMode, UpstreamFlavor, UpstreamOptions, resolve_endpoint)
from .protocol import TruncateResult, UpstreamProtocol
from .settings import options_from_settings
from .transport import Connection, Connector, TransportClosed, websocket_connector
from .wire import ClientWire, parse_server_event, usage_from_wire

__all__ = [
    "AZURE_API_VERSION", "ClientWire", "Connection", "Connector", "Endpoint", "HistoryItem", "RealtimeUpstream",
    "ReconnectPolicy", "ReseedBudget", "SessionOptions", "Timeouts", "TransportClosed", "TruncateResult",
    "TurnMode", "UpstreamFlavor", "UpstreamOptions", "UpstreamProtocol", "events", "options_from_settings",
    "parse_server_event", "resolve_endpoint", "usage_from_wire", "websocket_connector",
]
