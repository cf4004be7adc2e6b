"""The normalised session configuration, ``session.update`` merging, and the session object
sent in ``session.created`` / ``session.updated``.

Both shapes are accepted from any client (GA nested ``audio.input``/``audio.output`` and the
flat beta/Azure fields); the reply is always in the connection's own dialect.
Invalid values raise ProtocolError with ``param`` set (the whole update is then rejected and
the previous config stays in force). Settings that are valid but not honoured are accepted
and reported in the returned warnings, so the server can tell the client instead of
silently dropping them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from . import mcp
from ._checks import as_dict, as_int, as_number, as_str, fail
from .audio_formats import PCM16_24K, AudioFormat, parse_audio_format
from .flavor import Flavor
from .session_fields import (InputTranscription, TurnDetection, parse_max_tokens, parse_modalities,
                             parse_temperature, parse_tool_choice, parse_tools, parse_transcription,
                             parse_turn_detection, parse_voice, transcription_to_wire, turn_detection_to_wire)

__all__ = ["SessionConfig", "apply_session_update", "session_to_wire", "SUPPORTED_NOISE_REDUCTION"]

SUPPORTED_NOISE_REDUCTION = frozenset({"near_field", "far_field"})
"""Noise-reduction types honoured; others (e.g. Azure's ``azure_deep_noise_suppression``) warn."""

# Accepted without effect and without a warning: identifiers, server-side bookkeeping and
# observability settings that change nothing the client could notice.
_SILENT = frozenset({"type", "model", "id", "object", "expires_at", "client_secret", "tracing", "include",
                     "truncation", "metadata"})
# Accepted, recorded where useful, but not honoured: warn.
_UNSUPPORTED = frozenset({"prompt", "reasoning", "reasoning_effort", "parallel_tool_calls", "interim_response",
                          "output_audio_timestamp_types", "agent"})


@dataclass(frozen=True)
class SessionConfig:
    instructions: str = ""
    voice: str = "alloy"
    output_modalities: tuple[str, ...] = ("audio",)
    input_format: AudioFormat = PCM16_24K
    output_format: AudioFormat = PCM16_24K
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    input_transcription: InputTranscription | None = None
    tools: tuple[dict[str, Any], ...] = ()
    mcp_tools: tuple[mcp.MCPToolConfig, ...] = ()
    tool_choice: str | dict[str, Any] = "auto"
    temperature: float = 0.8
    max_output_tokens: int | Literal["inf"] = "inf"
    speed: float = 1.0
    # Azure extras and voice objects, kept as the client sent them.
    voice_config: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None
    echo_cancellation: dict[str, Any] | None = None
    avatar: dict[str, Any] | None = None
    animation: dict[str, Any] | None = None


def _noise_reduction(value: Any, param: str, warnings: list[str]) -> dict[str, Any] | None:
    if value is None:
        return None
    obj = as_dict(value, param)
    kind = obj.get("type")
    if kind is not None:
        as_str(kind, f"{param}.type")
    if "strength" in obj:
        as_number(obj["strength"], f"{param}.strength", lo=0.0, hi=1.0)
    if kind not in SUPPORTED_NOISE_REDUCTION:
        warnings.append(f"{param}.type {str(kind)[:40]!r} is not supported; noise reduction stays off "
                        f"(supported: {', '.join(sorted(SUPPORTED_NOISE_REDUCTION))})")
    return copy.deepcopy(obj)


def _opt_object(value: Any, param: str) -> dict[str, Any] | None:
    return None if value is None else copy.deepcopy(as_dict(value, param))


class _Merger:
    """Collects changes from one session.update payload."""

    def __init__(self, cfg: SessionConfig, flavor: Flavor) -> None:
        self.cfg = cfg
        self.flavor = flavor
        self.changes: dict[str, Any] = {}
        self.warnings: list[str] = []

    def cur(self, name: str) -> Any:
        return self.changes.get(name, getattr(self.cfg, name))

    def voice(self, value: Any, param: str) -> None:
        self.changes["voice"], self.changes["voice_config"] = parse_voice(value, param)

    def turn_detection(self, value: Any, param: str) -> None:
        self.changes["turn_detection"] = parse_turn_detection(value, self.cur("turn_detection"), param,
                                                              self.warnings, self.flavor)

    def unknown(self, key: str, param: str) -> None:
        self.warnings.append(f"{param}.{key[:60]} is not a known setting and was ignored")

    def audio(self, value: Any, param: str) -> None:
        audio = as_dict(value, param)
        for key, v in audio.items():
            if key == "input":
                self.audio_input(as_dict(v, f"{param}.input") if v is not None else {}, f"{param}.input")
            elif key == "output":
                self.audio_output(as_dict(v, f"{param}.output") if v is not None else {}, f"{param}.output")
            else:
                self.unknown(key, param)

    def audio_input(self, obj: dict[str, Any], param: str) -> None:
        for key, v in obj.items():
            p = f"{param}.{key}"
            if key == "format":
                self.changes["input_format"] = parse_audio_format(v, param=p)
            elif key == "turn_detection":
                self.turn_detection(v, p)
            elif key == "transcription":
                self.changes["input_transcription"] = parse_transcription(v, p, self.warnings)
            elif key == "noise_reduction":
                self.changes["noise_reduction"] = _noise_reduction(v, p, self.warnings)
            else:
                self.unknown(key, param)

    def audio_output(self, obj: dict[str, Any], param: str) -> None:
        for key, v in obj.items():
            p = f"{param}.{key}"
            if key == "format":
                self.changes["output_format"] = parse_audio_format(v, param=p)
            elif key == "voice":
                self.voice(v, p)
            elif key == "speed":
                self.changes["speed"] = as_number(v, p, lo=0.25, hi=1.5)
            else:
                self.unknown(key, param)

    def top(self, key: str, v: Any, p: str) -> None:
        if key == "audio":
            self.audio(v, p)
        elif key == "instructions":
            self.changes["instructions"] = "" if v is None else as_str(v, p)
        elif key in ("output_modalities", "modalities"):
            self.changes["output_modalities"] = parse_modalities(v, p, self.warnings)
        elif key == "voice":
            self.voice(v, p)
        elif key == "input_audio_format":
            self.changes["input_format"] = parse_audio_format(v, param=p)
        elif key == "output_audio_format":
            self.changes["output_format"] = parse_audio_format(v, param=p)
        elif key == "turn_detection":
            self.turn_detection(v, p)
        elif key == "input_audio_transcription":
            self.changes["input_transcription"] = parse_transcription(v, p, self.warnings)
        elif key == "input_audio_noise_reduction":
            self.changes["noise_reduction"] = _noise_reduction(v, p, self.warnings)
        elif key == "input_audio_echo_cancellation":
            self.changes["echo_cancellation"] = _opt_object(v, p)
        elif key in ("avatar", "animation"):
            self.changes[key] = _opt_object(v, p)
            if v is not None:
                self.warnings.append(f"{p} is recorded but not supported: no {key} output will be produced")
        elif key == "tools":
            self.changes["tools"] = parse_tools(v, p, self.warnings)
            self.changes["mcp_tools"] = mcp.parse_mcp_tools(v, p, self.warnings)
        elif key == "tool_choice":
            self.changes["tool_choice"] = parse_tool_choice(v, p, self.warnings)
        elif key == "temperature":
            self.changes["temperature"] = parse_temperature(v, p)
        elif key in ("max_output_tokens", "max_response_output_tokens"):
            self.changes["max_output_tokens"] = parse_max_tokens(v, p)
        elif key == "speed":
            self.changes["speed"] = as_number(v, p, lo=0.25, hi=1.5)
        elif key == "input_audio_sampling_rate":
            pass  # applied after the input format, see apply_session_update
        elif key in _UNSUPPORTED:
            if v is not None:
                self.warnings.append(f"{p} is accepted but not supported; it has no effect")
        elif key not in _SILENT:
            self.unknown(key, "session")


def apply_session_update(cfg: SessionConfig, session_payload: Any, flavor: Flavor, *,
                         transcription: bool = False) -> tuple[SessionConfig, list[str]]:
    """Merge the ``session`` object of a ``session.update`` into ``cfg``.

    `transcription`: the connection is transcription-only (``?intent=transcription``, a key
    minted for a transcription session, a ``transcription_session.update``): its session type
    is ``transcription`` and its turns never create a response.

    Returns the new config and warnings (one sentence each, naming the param) for settings
    that were accepted but have no effect. Raises ProtocolError on invalid values.
    """
    s = as_dict(session_payload, "session")
    kind = s.get("type")
    if transcription and kind not in (None, "transcription"):
        fail("this is a transcription session: session.type must be 'transcription'", "session.type")
    if not transcription and kind not in (None, "realtime"):
        if kind == "transcription":
            fail("transcription sessions are not supported on a conversation connection "
                 "(open it with ?intent=transcription)", "session.type")
        fail("session.type must be 'realtime'", "session.type")
    m = _Merger(cfg, flavor)
    for key, v in s.items():
        m.top(key, v, f"session.{key}")
    if s.get("input_audio_sampling_rate") is not None:
        p = "session.input_audio_sampling_rate"
        rate = as_int(s["input_audio_sampling_rate"], p)
        fmt: AudioFormat = m.cur("input_format")
        if fmt.encoding == "pcm16":
            if rate not in (8000, 16000, 24000):
                fail(f"{p} must be 8000, 16000 or 24000", p)
            m.changes["input_format"] = AudioFormat("pcm16", rate)
        elif rate != 8000:
            m.warnings.append(f"{p} {rate} was ignored: G.711 input is always 8000 Hz")
    td: TurnDetection | None = m.cur("turn_detection")
    if transcription and td is not None and td.create_response:  # what is in force, as echoed
        m.changes["turn_detection"] = replace(td, create_response=False)
    return replace(cfg, **m.changes), m.warnings


def _noise_reduction_wire(cfg: SessionConfig) -> dict[str, Any] | None:
    nr = cfg.noise_reduction
    if nr is None or nr.get("type") not in SUPPORTED_NOISE_REDUCTION:
        return None  # an unsupported type is not in force, so it is not echoed as if it were
    return {k: nr[k] for k in ("type", "strength") if k in nr}


def _tools_wire(cfg: SessionConfig) -> list[dict[str, Any]]:
    out = [{"type": "function", **t} for t in cfg.tools]
    if mcp.SERVED:  # recorded MCP tools are echoed only once the server runs them
        out += [mcp.mcp_tool_to_wire(t) for t in cfg.mcp_tools]
    return out


def session_to_wire(cfg: SessionConfig, flavor: Flavor, *, session_id: str, model: str,
                    transcription: bool = False) -> dict[str, Any]:
    """The ``session`` object of ``session.created`` / ``session.updated``.

    It describes what is in force: settings that were only recorded (unsupported noise
    reduction types, avatar, animation) are not echoed as if they were active.
    `transcription`: a transcription-only connection, whose session object is OpenAI's
    transcription session (its input audio only: GA nested, beta flat); Azure's stays as it is."""
    if flavor is Flavor.GA:
        audio_input = {"format": cfg.input_format.to_wire(flavor),
                       "transcription": transcription_to_wire(cfg.input_transcription, flavor),
                       "noise_reduction": _noise_reduction_wire(cfg),
                       "turn_detection": turn_detection_to_wire(cfg.turn_detection, flavor)}
        if transcription:
            return {"type": "transcription", "object": "realtime.transcription_session", "id": session_id,
                    "audio": {"input": audio_input}}
        voice: Any = cfg.voice
        if cfg.voice_config is not None and set(cfg.voice_config) == {"id"}:
            voice = dict(cfg.voice_config)  # GA custom voice
        return {
            "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
            "output_modalities": list(cfg.output_modalities), "instructions": cfg.instructions,
            "audio": {
                "input": audio_input,
                "output": {"format": cfg.output_format.to_wire(flavor), "voice": voice, "speed": cfg.speed},
            },
            "tools": _tools_wire(cfg), "tool_choice": copy.deepcopy(cfg.tool_choice),
            "max_output_tokens": cfg.max_output_tokens, "tracing": None,
        }
    if transcription and flavor is Flavor.BETA:
        return {"id": session_id, "object": "realtime.transcription_session",
                "input_audio_format": cfg.input_format.to_wire(flavor, direction="input"),
                "input_audio_transcription": transcription_to_wire(cfg.input_transcription, flavor),
                "turn_detection": turn_detection_to_wire(cfg.turn_detection, flavor),
                "input_audio_noise_reduction": _noise_reduction_wire(cfg), "include": None}
    out: dict[str, Any] = {
        "id": session_id, "object": "realtime.session", "model": model,
        "modalities": list(cfg.output_modalities), "instructions": cfg.instructions, "voice": cfg.voice,
        "input_audio_format": cfg.input_format.to_wire(flavor, direction="input"),
        "output_audio_format": cfg.output_format.to_wire(flavor),
        "input_audio_transcription": transcription_to_wire(cfg.input_transcription, flavor),
        "turn_detection": turn_detection_to_wire(cfg.turn_detection, flavor),
        "tools": _tools_wire(cfg), "tool_choice": copy.deepcopy(cfg.tool_choice),
        "temperature": cfg.temperature, "max_response_output_tokens": cfg.max_output_tokens,
    }
    if flavor is Flavor.BETA:
        out["input_audio_noise_reduction"] = _noise_reduction_wire(cfg)
        out["speed"] = cfg.speed
        return out
    if cfg.voice_config is not None:
        out["voice"] = copy.deepcopy(cfg.voice_config)
    if cfg.input_format.encoding == "pcm16":
        out["input_audio_sampling_rate"] = cfg.input_format.rate
    out["input_audio_noise_reduction"] = _noise_reduction_wire(cfg)
    out["input_audio_echo_cancellation"] = copy.deepcopy(cfg.echo_cancellation)
    return out  # avatar/animation are recorded but not in force, so they are not echoed
