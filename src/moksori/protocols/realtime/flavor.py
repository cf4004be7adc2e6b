"""Which dialect of the OpenAI Realtime protocol a connection speaks.

Three dialects share one event model:

* ``GA`` – the generally available OpenAI Realtime API (``response.output_audio.delta``,
  nested ``session.audio`` config, ``conversation.item.added``/``done``).
* ``BETA`` – the older OpenAI beta (``response.audio.delta``, flat session,
  ``conversation.item.created``), still spoken by many clients.
* ``AZURE`` – Azure AI Voice Live: beta-shaped, plus Azure extras (voice objects, extra
  turn-detection types, a real ``warning`` event, more output formats).

Internally the codec always uses the GA event names; :func:`event_name` translates.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

__all__ = ["Flavor", "detect_flavor", "event_name"]


class Flavor(StrEnum):
    GA = "ga"
    BETA = "beta"
    AZURE = "azure"

    @property
    def beta_shaped(self) -> bool:
        """True for the flat-session dialects (beta and Azure)."""
        return self is not Flavor.GA


# GA name -> beta/Azure name. ``None`` means the event does not exist there.
_BETA_NAMES: dict[str, str | None] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
    "input_audio_buffer.timeout_triggered": None,
}

# GA events that the OpenAI beta does not have (Azure Voice Live does).
_NOT_IN_BETA = frozenset({
    "mcp_list_tools.in_progress", "mcp_list_tools.completed", "mcp_list_tools.failed",
    "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
    "response.mcp_call.in_progress", "response.mcp_call.completed", "response.mcp_call.failed",
})

# Events that Azure Voice Live does not define although the OpenAI beta does.
_AZURE_MISSING = frozenset({"rate_limits.updated"})


def event_name(ga_name: str, flavor: Flavor) -> str | None:
    """The wire name of a server event in ``flavor``, or ``None`` if it is not sent there."""
    if flavor is Flavor.GA:
        return ga_name
    if flavor is Flavor.AZURE and ga_name in _AZURE_MISSING:
        return None
    if flavor is Flavor.BETA and ga_name in _NOT_IN_BETA:
        return None
    return _BETA_NAMES.get(ga_name, ga_name)


def detect_flavor(path: str, headers: Mapping[str, str], subprotocols: list[str]) -> Flavor:
    """Pick the dialect from the upgrade request.

    ``/voice-live/...`` is Azure; the header ``OpenAI-Beta: realtime=v1`` or the offered
    subprotocol ``openai-beta.realtime-v1`` is the beta; anything else is GA.
    """
    if path.split("?", 1)[0].startswith("/voice-live"):
        return Flavor.AZURE
    for key, value in headers.items():
        if key.lower() != "openai-beta" or not isinstance(value, str):
            continue
        if any(part.strip().lower() == "realtime=v1" for part in value.split(",")):
            return Flavor.BETA
    if any(isinstance(p, str) and p.strip().lower() == "openai-beta.realtime-v1" for p in subprotocols):
        return Flavor.BETA
    return Flavor.GA
